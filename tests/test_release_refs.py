"""Release refs are pruned by one retention rule (models/release_retention.py): the rule alone,
the compare-and-swap deletion on a real remote, and whole lifecycles on a smart-HTTP remote
(git's own `git http-backend`) and on a local-path project, where what is kept survives
`git gc`, what is kept can still be rolled back to, and the rest is refused as too old."""

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select
from temporalio.client import Client

from activities.git_store import (
    RELEASE_REFS,
    delete_refs,
    in_repository,
    release_ref,
    release_refs,
)
from activities.release_refs import prune_release_refs
from activities.remote_repository import Repositories
from client.lifecycle import LifecycleClient, LifecycleRefused
from models import (
    Deployment,
    DeploymentEnvironment,
    DeploymentPlan,
    DeploymentStatus,
    Project,
    PromptRequest,
    PromptStatus,
    Tenant,
)
from models.db import SessionFactory
from models.release_retention import (
    ReleaseFacts,
    compensation_release_id,
    refs_to_prune,
    retention,
)
from scripts.chaos_audit import release_violations
from scripts.github_stand_in.server import GitHubStandIn
from tests.cli_support import refused
from tests.lifecycle_support import git, make_shop, submit
from tests.remote_support import file_remote_shop, http_remote_shop, person_pushes
from tests.test_cli import corner_shop, signed_decisions
from tests.test_remote_projects import OUTCOME_WITHIN_S, hub, outcome, settings_for
from tests.workers import running_workers
from workers.registry import connector_clients

__all__ = ["hub"]  # the stand-in's fixture, used by name

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = DeploymentStatus


def release(
    environment: str,
    minute: int | None,
    status: DeploymentStatus = S.SUCCEEDED,
    commit: str | None = None,
    previous: str | None = None,
) -> ReleaseFacts:
    """A deployment verified (and finished) at T0 + `minute`; None: never verified."""
    at = T0 + timedelta(minutes=minute) if minute is not None else None
    return ReleaseFacts(
        id=uuid.uuid4(),
        environment=environment,
        status=status,
        commit_sha=commit or uuid.uuid4().hex[:12],
        previous_commit_sha=previous,
        verified_at=at,
        finished_at=at,
    )


def refs_of(repo: Path) -> dict[str, str]:
    """The release refs of a repository, read by git: deployment id -> commit."""
    listing = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", RELEASE_REFS)
    return dict(
        (name.removeprefix(f"{RELEASE_REFS}/"), sha)
        for name, sha in (line.split() for line in listing.splitlines())
    )


def gc(repo: Path) -> None:
    """Garbage collection that keeps nothing unreachable, reflogs included."""
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "--quiet", "--prune=now")


async def verified_history(
    sessions: SessionFactory, project: Project, commit: str, count: int
) -> list[Deployment]:
    """`count` production deployments of `commit`, verified a minute apart, oldest first."""
    async with sessions() as session:
        request = PromptRequest(tenant_id=project.tenant_id, project_id=project.id, prompt="p")
        session.add(request)
        await session.flush()
        plan = DeploymentPlan(tenant_id=project.tenant_id, prompt_request_id=request.id)
        session.add(plan)
        await session.flush()
        history = [
            Deployment(
                tenant_id=project.tenant_id,
                project_id=project.id,
                plan_id=plan.id,
                environment=DeploymentEnvironment.PRODUCTION,
                status=DeploymentStatus.SUCCEEDED,
                commit_sha=commit,
                verified_at=T0 + timedelta(minutes=m),
                finished_at=T0 + timedelta(minutes=m),
            )
            for m in range(count)
        ]
        session.add_all(history)
        await session.commit()
    return history


# --- the rule ------------------------------------------------------------------------------


def test_the_live_release_and_the_n_verified_before_it_are_kept_per_environment() -> None:
    production = [
        release("production", m, S.ROLLED_BACK if m == 3 else S.SUCCEEDED) for m in range(6)
    ]
    staging = [release("staging", m) for m in range(5)]

    kept = retention([*production, *staging], keep=2)

    # Newest first: the live one (minute 5) and the 2 before it, rolled back or not.
    assert kept.kept == {d.id for d in production[3:]} | {d.id for d in staging[2:]}
    assert [kept.rank[d.id] for d in production] == [6, 5, 4, 3, 2, 1]
    assert all(kept.too_old(d.id) for d in production[:3])


def test_a_running_deployment_is_kept_and_protects_the_commit_it_will_restore() -> None:
    old = release("production", 0, commit="a" * 40)
    newer = [release("production", m) for m in range(1, 5)]
    # A rollback to `old` queued in the lane while newer releases verified ahead of it.
    rollback = release("production", None, S.QUEUED, commit="a" * 40, previous=newer[-1].commit_sha)
    facts = [old, *newer, rollback]
    refs = {str(d.id): d.commit_sha or "" for d in [old, *newer]}

    kept = retention(facts, keep=1)

    assert rollback.id in kept.kept and kept.too_old(old.id)  # refused to a new rollback...
    assert str(old.id) not in refs_to_prune(refs, facts, keep=1)  # ...kept for the queued one
    assert set(refs_to_prune(refs, facts, keep=1)) == {str(newer[0].id), str(newer[1].id)}


def test_failed_and_cancelled_releases_go_once_they_end_and_a_compensation_follows_its_own() -> (
    None
):
    live = release("staging", 5)
    failed = release("staging", None, S.FAILED)
    cancelled = release("staging", None, S.CANCELLED)
    verifying = release("staging", None, S.VERIFYING)
    facts = [live, failed, cancelled, verifying]
    refs = {str(d.id): d.commit_sha or "" for d in facts} | {
        str(compensation_release_id(cancelled.id)): "c" * 40,
        str(compensation_release_id(verifying.id)): "d" * 40,
    }

    assert set(refs_to_prune(refs, facts, keep=10)) == {
        str(failed.id),
        str(cancelled.id),
        str(compensation_release_id(cancelled.id)),
    }


def test_a_ref_the_rule_cannot_account_for_is_never_pruned() -> None:
    facts = [release("production", m) for m in range(5)]
    stranger = str(uuid.uuid4())  # another project's, or another installation's
    refs = {stranger: "e" * 40, "not-a-deployment": "f" * 40}

    assert refs_to_prune(refs, facts, keep=1) == {}


def test_the_live_release_is_kept_whatever_its_rank() -> None:
    # Verified long ago, live again after every later release was rolled back past it.
    live = release("production", 0)
    undone = [release("production", m, S.ROLLED_BACK) for m in range(1, 4)]

    kept = retention([live, *undone], keep=1)

    assert live.id in kept.kept and kept.rank[live.id] == 4


def test_a_negative_retention_is_refused() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        retention([], keep=-1)


def test_the_chaos_audit_wants_a_ref_only_for_releases_still_in_retention() -> None:
    project_id = uuid.uuid4()
    history = [
        Deployment(
            id=uuid.uuid4(),
            tenant_id=uuid.uuid4(),
            project_id=project_id,
            plan_id=uuid.uuid4(),
            environment=DeploymentEnvironment.PRODUCTION,
            status=DeploymentStatus.SUCCEEDED,
            commit_sha=f"{m}" * 40,
            verified_at=T0 + timedelta(minutes=m),
            finished_at=T0 + timedelta(minutes=m),
        )
        for m in range(4)
    ]
    pruned, *kept = history
    refs = {release_ref(d.id): d.commit_sha or "" for d in kept[1:]}

    found = release_violations(history, {project_id: refs}, keep=2)

    assert found == [
        f"release: deployment {kept[0].id} (production) was verified and no "
        f"{release_ref(kept[0].id)} keeps {kept[0].commit_sha}"
    ]
    assert str(pruned.id) not in " ".join(found)


# --- deletion by compare-and-swap, on a real remote ----------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_a_prune_that_died_half_way_is_finished_by_the_next_and_a_moved_ref_stays(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    """The remote lost some refs the mirror still lists (a prune's push landed, its worker died
    before the mirror learned) and someone moved another: one more prune deletes exactly what
    still holds its commit, and a repeat changes nothing."""
    remote = await file_remote_shop(sessions, tmp_path)
    main = git(remote.bare, "rev-parse", "main")
    names = [str(uuid.uuid4()) for _ in range(5)]
    for name in names:
        git(remote.bare, "update-ref", f"{RELEASE_REFS}/{name}", main)
    repositories = Repositories(tmp_path / "cache")
    mirror = await repositories.local(remote.shop.project)
    gone, moved, *doomed, untouched = names
    git(remote.bare, "update-ref", "-d", f"{RELEASE_REFS}/{gone}")
    other = person_pushes(remote, theme="dark")
    git(remote.bare, "update-ref", f"{RELEASE_REFS}/{moved}", other)
    expected = {f"{RELEASE_REFS}/{n}": main for n in [gone, moved, *doomed]}

    deleted = await in_repository(mirror, lambda r: delete_refs(r, expected))
    again = await in_repository(mirror, lambda r: delete_refs(r, expected))

    assert deleted == {f"{RELEASE_REFS}/{n}" for n in doomed}
    assert again == set()
    on_remote = await in_repository(remote.bare, release_refs)
    assert on_remote == {moved: other, untouched: main}
    assert await in_repository(mirror, release_refs) == on_remote


@pytest.mark.asyncio(loop_scope="session")
async def test_a_long_history_is_pruned_a_limited_batch_at_a_time_down_to_what_the_rule_keeps(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    shop = await make_shop(sessions, tmp_path)
    repo = Path(shop.project.repo_url)
    main = git(repo, "rev-parse", "main")
    history = await verified_history(sessions, shop.project, main, 7)
    for d in history:
        git(repo, "update-ref", f"{RELEASE_REFS}/{d.id}", main)

    rounds = [
        await prune_release_refs(sessions, repo, shop.project.id, keep=2, limit=3) for _ in range(3)
    ]

    assert [len(r.pruned) for r in rounds] == [3, 1, 0]
    assert set(refs_of(repo)) == {str(d.id) for d in history[-3:]}


# --- whole lifecycles ----------------------------------------------------------------------

PROMPTS = [
    "set theme to dark",
    "set free_shipping_threshold to 75",
    "set store_name to Corner Shop Plus",
    "set theme to light",
]


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("where", ["http", "local"])
async def test_after_more_releases_than_retention_only_the_kept_refs_remain_and_roll_back(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    where: str,
) -> None:
    settings = settings_for(task_queue, deploy_queue, tmp_path).model_copy(
        update={"release_retention": 1}
    )
    if where == "http":
        hub: GitHubStandIn = request.getfixturevalue("hub")
        remote = await http_remote_shop(sessions, tmp_path, hub, settings)
        shop, repo = remote.shop, remote.bare
    else:
        shop = await make_shop(sessions, tmp_path)
        repo = Path(shop.project.repo_url)
    async with running_workers(client, sessions, settings):
        results = [await outcome(lifecycle, await submit(lifecycle, shop, p)) for p in PROMPTS]
        assert [r.status for r in results] == [PromptStatus.COMPLETED] * 4, results[-1].reason
        released = [{d.environment: d.deployment_id for d in r.deployments} for r in results]
        production = [r[DeploymentEnvironment.PRODUCTION] for r in released]
        staging = [r[DeploymentEnvironment.STAGING] for r in released]

        # Retention 1: the live release of each environment and the one before it. The prune
        # ran when the 4th production release verified, before it was marked: the 2nd stayed
        # (then the one before the live one), for the next production release to prune.
        assert set(refs_of(repo)) == {str(i) for i in [*production[1:], *staging[2:]]}
        async with sessions() as session:
            rows = {
                d.id: d
                for d in (
                    await session.exec(
                        select(Deployment).where(Deployment.project_id == shop.project.id)
                    )
                ).all()
            }
        assert all(refs_of(repo)[str(i)] == rows[i].commit_sha for i in production[1:])
        if where == "http":
            # The worker's mirror learned the deletions; a new mirror fetches only what is kept.
            for mirror in (tmp_path / "w-cache").glob("*.git"):
                assert refs_of(mirror) == refs_of(repo)
            store, _ = connector_clients(settings, sessions)
            fresh = await Repositories(tmp_path / "fresh", sessions, store).local(shop.project)
            assert refs_of(fresh) == refs_of(repo)
            for mirror in (tmp_path / "w-cache").glob("*.git"):
                gc(mirror)
        gc(repo)

        # The release before the live one is kept: restored after gc.
        rollback_id = await lifecycle.roll_back(
            tenant_id=shop.tenant.id, target_deployment_id=production[2], reason="back one"
        )
        async with asyncio.timeout(OUTCOME_WITHIN_S):
            restored = await lifecycle.rollback_result(rollback_id)
        assert restored.status is DeploymentStatus.SUCCEEDED, restored.verification_output
        assert git(repo, "rev-parse", "env/production") == results[2].commit_sha
        # That rollback's verified release pruned what was left over.
        assert str(production[1]) not in refs_of(repo)

        # Beyond retention: refused, typed, naming the deployment; nothing recorded or moved.
        before = len(rows) + 1
        refused_id = await lifecycle.roll_back(
            tenant_id=shop.tenant.id, target_deployment_id=production[0], reason="too far"
        )
        with pytest.raises(LifecycleRefused) as refusal:
            async with asyncio.timeout(OUTCOME_WITHIN_S):
                await lifecycle.rollback_result(refused_id)

    assert refusal.value.error_type == "RollbackTargetTooOld"
    assert str(production[0]) in refusal.value.message and "too old" in refusal.value.message
    assert "release retention 1" in refusal.value.message
    async with sessions() as session:
        query = select(Deployment).where(Deployment.project_id == shop.project.id)
        assert len((await session.exec(query)).all()) == before
    assert git(repo, "rev-parse", "env/production") == results[2].commit_sha


@pytest.mark.asyncio(loop_scope="session")
async def test_the_command_refuses_a_rollback_beyond_retention_typed_and_records_nothing(
    client: Client, sessions: SessionFactory, env: dict[str, str], tmp_path: Path
) -> None:
    slug = await corner_shop(env, tmp_path)
    async with sessions() as session:
        tenant = (await session.exec(select(Tenant).where(Tenant.slug == slug))).one()
        project = (await session.exec(select(Project).where(Project.tenant_id == tenant.id))).one()
    history = await verified_history(sessions, project, "a" * 40, 3)
    settings = signed_decisions(env).model_copy(update={"release_retention": 1})

    async with running_workers(client, sessions, settings):
        error = await refused(env, "RollbackTargetTooOld", "deployment", "rollback",
                              str(history[0].id), "-u", "bob@corner.example", "--wait")  # fmt: skip

    assert error["message"].startswith(f"deployment {history[0].id} is too old to roll back to")
    assert "2 verified releases of production came after it" in error["message"]
    async with sessions() as session:
        rows = await session.exec(select(Deployment).where(Deployment.project_id == project.id))
        assert len(rows.all()) == len(history)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_remote_that_refuses_to_delete_release_refs_fails_no_release(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
    hub: GitHubStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(task_queue, deploy_queue, tmp_path).model_copy(
        update={"release_retention": 1}
    )
    remote = await http_remote_shop(sessions, tmp_path, hub, settings)
    hook = remote.bare / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        "while read old new ref; do\n"
        '  case "$new $ref" in 0000000000000000000000000000000000000000\\ refs/changeflow/*)\n'
        '    echo "release refs are kept here" >&2; exit 1;;\n'
        "  esac\n"
        "done\n"
    )
    hook.chmod(0o755)
    caplog.set_level(logging.WARNING)
    async with running_workers(client, sessions, settings):
        results = [
            await outcome(lifecycle, await submit(lifecycle, remote.shop, p)) for p in PROMPTS
        ]

    assert [r.status for r in results] == [PromptStatus.COMPLETED] * 4, results[-1].reason
    assert len(refs_of(remote.bare)) == 8  # every release of the 4 requests, none pruned
    for mirror in (tmp_path / "w-cache").glob("*.git"):
        assert refs_of(mirror) == refs_of(remote.bare)
    assert "release refs not pruned this time" in caplog.text
    assert "refused to delete refs/changeflow/releases/" in caplog.text
