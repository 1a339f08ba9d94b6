"""`make chaos` in small: a few lifecycles of every kind under a worker kill and both server
restarts end with no violation; and the auditor reports what a broken run would leave."""

import asyncio
import json
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from activities.deploy_target import GitDeployTarget
from activities.git_store import release_ref
from models import Deployment, DeploymentEnvironment, DeploymentStatus, Project, PromptStatus
from scripts.chaos import KINDS, Options, plan_run
from scripts.chaos_audit import (
    DeploymentSpan,
    RequestRecord,
    branch_violations,
    cancelled_violations,
    expected_heads,
    outcome_violations,
    overlap_violations,
    passed_check_violations,
    release_violations,
    settlement_violations,
)
from scripts.sample_repo import create_sample_repo
from tests.process_support import clean_environment

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


# The chaos runs kill and restart servers of their own: one after the other, on one xdist worker.
@pytest.mark.system
@pytest.mark.xdist_group("chaos")
def test_a_small_chaos_run_ends_without_violations() -> None:
    # Under the repository, not pytest's basetemp: pgserver's server runs as its own user,
    # which cannot enter root's private temporary folders to stop and start it.
    data_dir = ROOT / ".changeflow" / f"chaos-test-{uuid.uuid4().hex[:8]}"
    try:
        figures, run = run_chaos(data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert figures["violations"] == 0
    assert figures["lifecycles"] == 7
    assert figures["kills"] == 1
    assert figures["restarts"] == 3  # Temporal, PostgreSQL briefly, PostgreSQL for 40 s
    # Every kind of lifecycle ran and ended as its kind should (a cancel may come too late).
    kinds = {key.split(":")[0] for key in figures["outcomes"]}
    assert kinds == set(KINDS)
    assert figures["outcomes"]["rollback:rolled_back"] >= 1
    assert figures["outcomes"]["reject:rejected"] >= 1


@pytest.mark.system
@pytest.mark.xdist_group("chaos")
def test_a_small_chaos_run_on_remote_projects_ends_without_violations() -> None:
    """The same run with every project on a smart HTTP remote and each worker a host of its
    own (no shared disk); the audit reads the remotes' refs."""
    data_dir = ROOT / ".changeflow" / f"chaos-test-{uuid.uuid4().hex[:8]}"
    try:
        figures, run = run_chaos(data_dir, "--remote")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (figures["remote"], figures["violations"], figures["lifecycles"]) == (True, 0, 7)
    assert figures["kills"] == 1
    assert figures["outcomes"]["rollback:rolled_back"] >= 1


def run_chaos(
    data_dir: Path, *options: str
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    env = clean_environment(
        CHANGEFLOW_DATA_DIR=str(data_dir),
        CHAOS_LIFECYCLES="7",
        CHAOS_KILLS="1",
        CHAOS_DEADLINE_S="240",
    )
    run = subprocess.run(
        [sys.executable, "-m", "scripts.chaos", *options],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=360,
    )
    lines = run.stdout.strip().splitlines()
    assert lines, run.stderr[-3000:]
    return json.loads(lines[-1]), run


def test_a_seed_makes_the_same_choices() -> None:
    options = Options(lifecycles=20, seed=7, kills=5)
    assert plan_run(options) == plan_run(options)
    assert plan_run(options) != plan_run(Options(lifecycles=20, seed=8, kills=5))
    planned, faults = plan_run(options)
    assert {p.kind for p in planned} == set(KINDS)
    assert [f.what for f in faults].count("kill") == 5
    assert all(f.worker != 0 for f in faults if f.what == "kill")  # the witness lives


def record(**changes: object) -> RequestRecord:
    fields: dict[str, object] = {
        "request_id": uuid.uuid4(),
        "kind": "auto",
        "workflow_status": PromptStatus.COMPLETED,
        "workflow_tokens_used": 40,
        "row_status": PromptStatus.COMPLETED,
        "row_tokens_used": 40,
        "settlements": 1,
    }
    return RequestRecord(**(fields | changes))  # type: ignore[arg-type]


def test_the_auditor_reports_settlements_that_are_not_exactly_one() -> None:
    twice, missing, spurious = (
        record(settlements=2),
        record(settlements=0),
        record(
            kind="reject",
            workflow_status=PromptStatus.REJECTED,
            row_status=PromptStatus.REJECTED,
            workflow_tokens_used=0,
            row_tokens_used=0,
            settlements=1,
        ),
    )
    found = settlement_violations([record(), twice, missing, spurious])
    assert len(found) == 3
    assert f"request {twice.request_id} used 40 tokens and has 2 settlements" in found[0]
    assert str(missing.request_id) in found[1] and str(spurious.request_id) in found[2]


def test_the_auditor_reports_outcomes_the_database_does_not_share() -> None:
    differs = record(row_status=PromptStatus.DEPLOYING_PRODUCTION)
    no_row = record(row_status=None)
    wrong_kind = record(kind="reject")  # a rejected plan that shipped anyway
    outpaced = record(
        workflow_status=PromptStatus.FAILED,
        row_status=PromptStatus.FAILED,
        reason="the default branch kept moving: not shipped after 3 applies",
    )
    found = outcome_violations([record(), differs, no_row, wrong_kind, outpaced])
    assert found == [
        f"outcome: request {differs.request_id}: workflow ended completed, its row says "
        "deploying_production",
        f"outcome: request {no_row.request_id} has no row",
        f"outcome: request {wrong_kind.request_id} (reject) ended completed, expected rejected",
        # Outpaced by other changes is no excuse: a request re-stages until it ships.
        f"outcome: request {outpaced.request_id} (auto) ended failed, expected completed",
    ]


def span(project: uuid.UUID, start_s: float, end_s: float | None, **changes: object):
    fields: dict[str, object] = {
        "deployment_id": uuid.uuid4(),
        "project_id": project,
        "environment": DeploymentEnvironment.PRODUCTION,
        "status": DeploymentStatus.SUCCEEDED,
        "commit_sha": uuid.uuid4().hex,
        "started_at": T0 + timedelta(seconds=start_s),
        "finished_at": None if end_s is None else T0 + timedelta(seconds=end_s),
    }
    return DeploymentSpan(**(fields | changes))  # type: ignore[arg-type]


def test_the_auditor_reports_overlapping_deployments_of_one_lane_only() -> None:
    project, other = uuid.uuid4(), uuid.uuid4()
    first = span(project, 0, 10)
    overlapping = span(project, 5, 12)
    after = span(project, 12, 20)  # starts as the one before finished: no overlap
    elsewhere = span(other, 5, 12)  # another project's lane
    staging = span(project, 5, 12, environment=DeploymentEnvironment.STAGING)
    own_rollback = span(project, 15, 18, rollback_of_id=after.deployment_id)
    found = overlap_violations([first, overlapping, after, elsewhere, staging, own_rollback])
    assert len(found) == 1
    assert str(first.deployment_id) in found[0] and str(overlapping.deployment_id) in found[0]


def test_the_auditor_reports_a_branch_not_at_the_last_succeeded_release() -> None:
    project = uuid.uuid4()
    old = span(project, 0, 10)
    last = span(project, 20, 30)
    failed = span(project, 40, 50, status=DeploymentStatus.ROLLED_BACK)
    heads = expected_heads([last, old, failed])
    lane = (project, DeploymentEnvironment.PRODUCTION)
    assert heads == {lane: last.commit_sha}
    assert branch_violations(heads, {lane: last.commit_sha}) == []
    (found,) = branch_violations(heads, {lane: old.commit_sha})
    assert f"is at {old.commit_sha}, its last succeeded deployment released {last.commit_sha}" in (
        found
    )
    # A branch where nothing ever succeeded is a violation too.
    assert len(branch_violations({}, {lane: old.commit_sha})) == 1


def test_the_auditor_reports_a_cancelled_change_left_on_a_branch(tmp_path: Path) -> None:
    repo = create_sample_repo(tmp_path / "repo")
    project = Project(
        id=uuid.uuid4(), tenant_id=uuid.uuid4(), name="p", slug="p", repo_url=str(repo)
    )
    git = ["git", "-C", str(repo)]
    head = subprocess.run([*git, "rev-parse", "main"], capture_output=True, text=True, check=True)
    commit = head.stdout.strip()
    subprocess.run([*git, "branch", "env/staging", commit], check=True)

    found = asyncio.run(cancelled_violations([(commit, str(project.id))], {project.id: project}))

    # Staging and the default branch hold it; production (no branch) does not.
    assert found == [
        f"cancelled: commit {commit} of a cancelled request is on refs/heads/{branch}"
        for branch in ("env/staging", "main")
    ]


def test_the_auditor_reports_a_release_failed_although_its_check_passed(tmp_path: Path) -> None:
    project = Project(
        id=uuid.uuid4(), tenant_id=uuid.uuid4(), name="p", slug="p", repo_url=str(tmp_path)
    )
    passed, failed = (
        Deployment(
            id=uuid.uuid4(),
            tenant_id=project.tenant_id,
            project_id=project.id,
            plan_id=uuid.uuid4(),
            environment=DeploymentEnvironment.STAGING,
            status=DeploymentStatus.FAILED,
            workflow_id=f"deployment-{n}",
        )
        for n in range(2)
    )
    logs = GitDeployTarget(tmp_path / "ws").project_dir(tmp_path) / "logs"
    logs.mkdir(parents=True)
    (logs / f"{passed.id}-staging-verify.log").write_text("$ check\nok\n# exit code 0 after 1s\n")
    (logs / f"{failed.id}-staging-verify.log").write_text("$ check\nFAIL\n# exit code 1 after 1s\n")

    found = passed_check_violations([tmp_path / "other-host", tmp_path / "ws"], [passed, failed])

    assert found == [
        f"check_passed: deployment {passed.id} (staging) ended failed though its check passed"
    ]


def test_the_auditor_reports_a_verified_release_no_ref_keeps(tmp_path: Path) -> None:
    project_id = uuid.uuid4()

    def deployment(commit: str, verified: bool) -> Deployment:
        return Deployment(
            id=uuid.uuid4(),
            tenant_id=uuid.uuid4(),
            project_id=project_id,
            plan_id=uuid.uuid4(),
            environment=DeploymentEnvironment.PRODUCTION,
            status=DeploymentStatus.SUCCEEDED if verified else DeploymentStatus.FAILED,
            commit_sha=commit,
            verified_at=T0 if verified else None,
            workflow_id="deployment-x",
        )

    kept, unkept, moved, unverified = (
        deployment("a" * 40, True),
        deployment("b" * 40, True),
        deployment("c" * 40, True),
        deployment("d" * 40, False),
    )
    refs = {release_ref(kept.id): "a" * 40, release_ref(moved.id): "e" * 40}

    found = release_violations([kept, unkept, moved, unverified], {project_id: refs})

    assert found == [
        f"release: deployment {unkept.id} (production) was verified and no "
        f"{release_ref(unkept.id)} keeps {'b' * 40}",
        f"release: {release_ref(moved.id)} holds {'e' * 40}, its deployment released {'c' * 40}",
    ]
