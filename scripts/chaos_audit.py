"""The auditor of `make chaos`: what a run's lifecycles must have left behind, whatever faults
they met. Each check reads the database (and the repositories) once and names every violation
it finds, one line each; no violation is an empty list.

- outcome: each workflow's result is its PromptRequest row's status and tokens, and fits what
  the driver did (an approved change completes, a rejected one is rejected, a change failing
  production is rolled back; a cancelled one may have finished first);
- settlement: exactly one settlement entry per request that used tokens, none for the others;
- hold: no hold is left active;
- ledger: every account reconciles (activities.reconciliation);
- branch: each environment branch of each project points at the commit of the environment's
  last succeeded deployment (none: no branch);
- overlap: no two deployments of one project and environment ran at the same time (a
  deployment's own automatic rollback runs inside its turn and is not another deployment);
- cancelled: a cancelled request's commit is in no environment branch and not on the default
  branch;
- check_passed: no deployment whose check passed (its log ends "# exit code 0") was failed or
  rolled back automatically (an outage must not fail a healthy release);
- release: every verified deployment still in retention (models/release_retention.py) has its
  commit kept by `refs/changeflow/releases/<its id>`, and no release ref holds another commit
  than its deployment released.

A project on a git remote is audited on the remote itself: its refs are mirrored
(`git clone --mirror`) into a scratch folder first, and the checks read that copy.
"""

import asyncio
import subprocess
import tempfile
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlmodel import col, select

from activities.deploy_target import environment_ref
from activities.git_store import RELEASE_REFS, is_ancestor, release_ref, resolve_commit
from activities.reconciliation import reconcile
from activities.remote_repository import parse_repository
from models import (
    Deployment,
    DeploymentEnvironment,
    DeploymentStatus,
    Project,
    PromptRequest,
    PromptStatus,
    TokenTransaction,
    TokenTransactionKind,
)
from models.billing import HoldStatus, TokenHold
from models.db import SessionFactory
from models.release_retention import DEFAULT_RELEASE_RETENTION, ReleaseFacts, retention
from workflows.contracts.ids import prompt_request_workflow_id
from workflows.contracts.lifecycle import PromptRequestResult

# What the driver's handling of each kind of lifecycle allows it to end as.
ALLOWED_OUTCOMES: dict[str, set[PromptStatus] | None] = {
    "auto": {PromptStatus.COMPLETED},
    "human": {PromptStatus.COMPLETED},
    "rollback": {PromptStatus.ROLLED_BACK},
    "reject": {PromptStatus.REJECTED},
    "cancel": None,  # any end: the cancel may arrive after the lifecycle finished
    # Cancelled while an environment verifies; completed only when production verified first
    # (the cancel is refused then).
    "cancel_staging": {PromptStatus.CANCELLED, PromptStatus.COMPLETED},
    "cancel_production": {PromptStatus.CANCELLED, PromptStatus.COMPLETED},
}


@dataclass(frozen=True)
class Expected:
    """A lifecycle of the run: its kind and the result its workflow gave."""

    request_id: uuid.UUID
    kind: str
    result: PromptRequestResult
    tenant_id: uuid.UUID


@dataclass(frozen=True)
class RequestRecord:
    """One request as Temporal (the result) and the database (row, settlements) tell it."""

    request_id: uuid.UUID
    kind: str
    workflow_status: PromptStatus
    workflow_tokens_used: int
    row_status: PromptStatus | None  # None: no row
    row_tokens_used: int
    settlements: int
    reason: str = ""


@dataclass(frozen=True)
class DeploymentSpan:
    deployment_id: uuid.UUID
    project_id: uuid.UUID
    environment: DeploymentEnvironment
    status: DeploymentStatus
    commit_sha: str | None
    started_at: datetime | None
    finished_at: datetime | None
    rollback_of_id: uuid.UUID | None = None


def outcome_violations(records: list[RequestRecord]) -> list[str]:
    found = []
    for r in records:
        if r.row_status is None:
            found.append(f"outcome: request {r.request_id} has no row")
            continue
        if r.row_status is not r.workflow_status:
            found.append(
                f"outcome: request {r.request_id}: workflow ended {r.workflow_status.value}, "
                f"its row says {r.row_status.value}"
            )
        if r.row_tokens_used != r.workflow_tokens_used:
            found.append(
                f"outcome: request {r.request_id}: workflow used {r.workflow_tokens_used} "
                f"tokens, its row says {r.row_tokens_used}"
            )
        allowed = ALLOWED_OUTCOMES[r.kind]
        # No outcome is excused: other changes shipping first never fail a request (it
        # re-stages on top of them), and the driver pushes nothing from outside.
        if allowed is not None and r.workflow_status not in allowed:
            found.append(
                f"outcome: request {r.request_id} ({r.kind}) ended {r.workflow_status.value}, "
                f"expected {' or '.join(sorted(s.value for s in allowed))}"
            )
    return found


def settlement_violations(records: list[RequestRecord]) -> list[str]:
    found = []
    for r in records:
        expected = 1 if r.workflow_tokens_used > 0 else 0
        if r.settlements != expected:
            found.append(
                f"settlement: request {r.request_id} used {r.workflow_tokens_used} tokens "
                f"and has {r.settlements} settlements, expected {expected}"
            )
    return found


def overlap_violations(spans: list[DeploymentSpan]) -> list[str]:
    """Deployments of one lane (project, environment) whose [started, finished] intersect."""
    lanes: dict[tuple[uuid.UUID, DeploymentEnvironment], list[DeploymentSpan]] = defaultdict(list)
    for span in spans:
        if span.started_at is not None:
            lanes[(span.project_id, span.environment)].append(span)
    found = []
    for (project_id, environment), lane in lanes.items():
        lane.sort(key=lambda s: s.started_at or datetime.min)
        for i, first in enumerate(lane):
            for second in lane[i + 1 :]:
                assert first.started_at is not None and second.started_at is not None
                if first.finished_at is not None and second.started_at >= first.finished_at:
                    break  # sorted by start: no later one overlaps `first` either
                if second.rollback_of_id == first.deployment_id:
                    continue  # its own rollback, inside its turn
                found.append(
                    f"overlap: {environment.value} of project {project_id}: deployment "
                    f"{first.deployment_id} ({first.started_at:%H:%M:%S.%f}-"
                    f"{_time(first.finished_at)}) and {second.deployment_id} "
                    f"({second.started_at:%H:%M:%S.%f}-{_time(second.finished_at)})"
                )
    return found


def _time(at: datetime | None) -> str:
    return f"{at:%H:%M:%S.%f}" if at else "unfinished"


def expected_heads(
    spans: list[DeploymentSpan],
) -> dict[tuple[uuid.UUID, DeploymentEnvironment], str | None]:
    """Per lane, the commit of its last succeeded deployment (by finish)."""
    heads: dict[tuple[uuid.UUID, DeploymentEnvironment], tuple[datetime, str | None]] = {}
    for span in spans:
        if span.status is not DeploymentStatus.SUCCEEDED or span.finished_at is None:
            continue
        lane = (span.project_id, span.environment)
        if lane not in heads or heads[lane][0] < span.finished_at:
            heads[lane] = (span.finished_at, span.commit_sha)
    return {lane: commit for lane, (_, commit) in heads.items()}


def branch_violations(
    expected: dict[tuple[uuid.UUID, DeploymentEnvironment], str | None],
    actual: dict[tuple[uuid.UUID, DeploymentEnvironment], str | None],
) -> list[str]:
    found = []
    for lane in sorted(set(expected) | set(actual), key=lambda k: (str(k[0]), k[1].value)):
        want, have = expected.get(lane), actual.get(lane)
        if want != have:
            project_id, environment = lane
            found.append(
                f"branch: env/{environment.value} of project {project_id} is at {have}, its "
                f"last succeeded deployment released {want}"
            )
    return found


async def cancelled_violations(
    cancelled: list[tuple[str, str]],
    projects: dict[uuid.UUID, Project],
    repositories: dict[uuid.UUID, Path] | None = None,
) -> list[str]:
    """(commit, project id) pairs of cancelled requests whose commit a branch holds."""
    found = []
    for commit, project_id_text in cancelled:
        project = projects[uuid.UUID(project_id_text)]
        repo = (repositories or {}).get(project.id) or Path(project.repo_url)
        refs = [environment_ref(e.value) for e in DeploymentEnvironment]
        for ref in [*refs, f"refs/heads/{project.default_branch}"]:
            head = await resolve_commit(repo, ref)
            if head is not None and await is_ancestor(repo, str(commit), head):
                found.append(f"cancelled: commit {commit} of a cancelled request is on {ref}")
    return found


def check_passed(workspaces: list[Path], deployment: Deployment) -> bool:
    """Whether the deployment's check ran to exit code 0 (its log, not the database, says) on
    any of the workers' workspaces (the folder of the repository each worker released from)."""
    name = f"{deployment.id}-{deployment.environment.value}-verify.log"
    for workspace in workspaces:
        for log in workspace.glob(f"*/logs/{name}"):
            try:
                if "# exit code 0 " in log.read_text(errors="replace"):
                    return True
            except OSError:
                continue
    return False


def passed_check_violations(workspaces: list[Path], deployments: list[Deployment]) -> list[str]:
    """Deployments failed, or rolled back by their own workflow, though their check passed."""
    auto_rolled_back = {
        d.rollback_of_id
        for d in deployments
        for undone in deployments
        if d.rollback_of_id == undone.id and d.workflow_id == undone.workflow_id
    }
    found = []
    for d in deployments:
        failed = d.status is DeploymentStatus.FAILED or d.id in auto_rolled_back
        if failed and d.project_id and check_passed(workspaces, d):
            found.append(
                f"check_passed: deployment {d.id} ({d.environment.value}) ended "
                f"{d.status.value} though its check passed"
            )
    return found


def release_violations(
    deployments: list[Deployment],
    kept: dict[uuid.UUID, dict[str, str]],
    keep: int = DEFAULT_RELEASE_RETENTION,
) -> list[str]:
    """Verified deployments still in retention (models.release_retention, `keep` deep) whose
    commit no release ref keeps, and release refs holding another commit than their deployment
    released; `kept` is each project's refs under RELEASE_REFS."""
    retained: set[uuid.UUID] = set()
    for project_id in {d.project_id for d in deployments}:
        facts = [
            ReleaseFacts(
                d.id,
                d.environment,
                d.status,
                d.commit_sha,
                d.previous_commit_sha,
                d.verified_at,
                d.finished_at,
            )
            for d in deployments
            if d.project_id == project_id
        ]
        retained |= retention(facts, keep).kept
    found = []
    for d in deployments:
        if d.project_id is None or d.commit_sha is None:
            continue
        held = kept.get(d.project_id, {}).get(release_ref(d.id))
        if held is None and d.verified_at is not None and d.id in retained:
            found.append(
                f"release: deployment {d.id} ({d.environment.value}) was verified and no "
                f"{release_ref(d.id)} keeps {d.commit_sha}"
            )
        elif held is not None and held != d.commit_sha:
            found.append(
                f"release: {release_ref(d.id)} holds {held}, its deployment released {d.commit_sha}"
            )
    return found


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], check=True, capture_output=True, text=True)
    return done.stdout


def readable_copy(project: Project, scratch: Path) -> Path:
    """Where the project's repository can be read: its path, or for a remote a mirror clone of
    every ref it has now (branches and release refs) made in `scratch`."""
    if not parse_repository(project.repo_url).remote:
        return Path(project.repo_url)
    copy = scratch / f"{project.id}.git"
    _git("clone", "--quiet", "--mirror", project.repo_url, str(copy))
    return copy


def release_refs(repo: Path) -> dict[str, str]:
    listing = _git(
        "-C", str(repo), "for-each-ref", "--format=%(refname) %(objectname)", RELEASE_REFS
    )
    return dict(line.split(" ", 1) for line in listing.splitlines())


async def audit(
    sessions: SessionFactory, expected: list[Expected], *, workspaces: list[Path] | None = None
) -> list[str]:
    """Every violation the run left, one line each; with the workers' workspaces, the checks'
    own logs are read too."""
    with tempfile.TemporaryDirectory(prefix="chaos-audit-") as scratch:
        return await _audit(sessions, expected, workspaces, Path(scratch))


async def _audit(
    sessions: SessionFactory,
    expected: list[Expected],
    workspaces: list[Path] | None,
    scratch: Path,
) -> list[str]:
    tenants = {e.tenant_id for e in expected}
    async with sessions() as session:
        rows = {
            r.id: r
            for r in (
                await session.exec(
                    select(PromptRequest).where(
                        col(PromptRequest.id).in_([e.request_id for e in expected])
                    )
                )
            ).all()
        }
        settlements: dict[str, int] = defaultdict(int)
        for entry in (
            await session.exec(
                select(TokenTransaction).where(
                    TokenTransaction.kind == TokenTransactionKind.SETTLEMENT,
                    col(TokenTransaction.tenant_id).in_(tenants),
                )
            )
        ).all():
            # Ledger keys of a workflow's steps start with its workflow id (activities.billing).
            settlements[entry.idempotency_key.rsplit(":", 2)[0]] += 1
        active_holds = (
            await session.exec(
                select(TokenHold).where(
                    TokenHold.status == HoldStatus.ACTIVE, col(TokenHold.tenant_id).in_(tenants)
                )
            )
        ).all()
        deployments = (
            await session.exec(select(Deployment).where(col(Deployment.tenant_id).in_(tenants)))
        ).all()
        projects = (
            await session.exec(select(Project).where(col(Project.tenant_id).in_(tenants)))
        ).all()
    records = [
        RequestRecord(
            request_id=e.request_id,
            kind=e.kind,
            workflow_status=e.result.status,
            workflow_tokens_used=e.result.tokens_used,
            row_status=row.status if (row := rows.get(e.request_id)) else None,
            row_tokens_used=row.tokens_used if row else 0,
            settlements=settlements.get(prompt_request_workflow_id(e.request_id), 0),
            reason=e.result.reason,
        )
        for e in expected
    ]
    spans = [
        DeploymentSpan(
            deployment_id=d.id,
            project_id=d.project_id,
            environment=d.environment,
            status=d.status,
            commit_sha=d.commit_sha,
            started_at=d.started_at,
            finished_at=d.finished_at,
            rollback_of_id=d.rollback_of_id,
        )
        for d in deployments
        if d.project_id is not None
    ]
    repositories = {p.id: await asyncio.to_thread(readable_copy, p, scratch) for p in projects}
    actual = {
        (p.id, environment): await resolve_commit(
            repositories[p.id], environment_ref(environment.value)
        )
        for p in projects
        for environment in DeploymentEnvironment
    }
    kept = {p.id: await asyncio.to_thread(release_refs, repositories[p.id]) for p in projects}
    actual = {lane: head for lane, head in actual.items() if head is not None}
    reports = await reconcile(sessions)
    by_id = {p.id: p for p in projects}
    cancelled = [
        (e.result.commit_sha, str(row.project_id))
        for e in expected
        if e.result.status is PromptStatus.CANCELLED
        and e.result.commit_sha
        and (row := rows.get(e.request_id)) is not None
    ]
    return [
        *outcome_violations(records),
        *settlement_violations(records),
        *(f"hold: hold {h.id} of tenant {h.tenant_id} is still active" for h in active_holds),
        *(
            f"ledger: account {r.account_id}: {finding}"
            for r in reports
            if r.tenant_id in tenants
            for finding in r.drift
        ),
        *branch_violations(expected_heads(spans), actual),
        *overlap_violations(spans),
        *await cancelled_violations(cancelled, by_id, repositories),
        *(passed_check_violations(workspaces, list(deployments)) if workspaces else []),
        *release_violations(list(deployments), kept),
    ]
