"""Which deployments' releases stay kept: the one rule that decides both which release refs
(`refs/changeflow/releases/<deployment id>`) may be pruned and which rollback targets are too old.

Kept, per project:
- every deployment still running (queued, releasing, verifying): its release is being made;
- in each environment, the live release and the `keep` verified releases before it (the newest
  `keep + 1` verified deployments by verification time): what an operator may roll back to, and
  what an automatic rollback or a compensation restores (the live one, the last that succeeded);
- the live deployment of each environment, whatever its rank (the last that succeeded).

A ref is pruned when its deployment is not kept and no running deployment releases or restores
its commit (a queued rollback's target stays kept until that rollback ends, however many releases
verify ahead of it in the lane). A ref whose deployment is unknown here (another project sharing
the repository, another installation) is never touched.

A deployment once out of retention never comes back: new verified releases only push older ones
down, and a running deployment's commit only delays the prune of refs already out. So a rollback
refused as too old was, or will be, pruned; one allowed still finds its ref, but for a target
at the very edge of retention whose rollback is planned, then overtaken by another release
marked verified and a prune, all before the rollback's row is recorded (its release then fails
as UnknownCommit once the commit is garbage collected, having moved nothing).

Pure: no database, no Temporal, no git. Callers read the facts (models.queries.release_facts)
and act on the answer.
"""

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from models.lifecycle import DeploymentStatus

# How many verified releases before the live one each environment keeps as rollback targets.
DEFAULT_RELEASE_RETENTION = 10

RUNNING = frozenset(
    {DeploymentStatus.QUEUED, DeploymentStatus.IN_PROGRESS, DeploymentStatus.VERIFYING}
)


@dataclass(frozen=True)
class ReleaseFacts:
    """What the rule reads of one deployment."""

    id: uuid.UUID
    environment: str
    status: DeploymentStatus
    commit_sha: str | None
    previous_commit_sha: str | None
    verified_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class Retention:
    kept: frozenset[uuid.UUID]
    # Each verified deployment's place among its environment's verified releases (1: newest).
    rank: Mapping[uuid.UUID, int]
    # Commits a running deployment releases or may restore: refs holding them are not pruned.
    protected_commits: frozenset[str]
    keep: int

    def too_old(self, deployment_id: uuid.UUID) -> bool:
        return deployment_id not in self.kept


def compensation_release_id(deployment_id: uuid.UUID) -> uuid.UUID:
    """The id under which the undo of a cancelled deployment's release is released (the deploy
    target keys releases by deployment; the undo is a release of its own, with no row)."""
    return uuid.uuid5(deployment_id, "compensation")


def _newest_first(moment: datetime | None) -> tuple[bool, float]:
    # PostgreSQL's `ORDER BY ... DESC` puts NULL first: the same order as activities.deployments.
    return (moment is None, moment.timestamp() if moment is not None else 0.0)


def retention(facts: Iterable[ReleaseFacts], keep: int) -> Retention:
    """The deployments of one project whose releases stay kept, `keep` releases deep."""
    if keep < 0:
        raise ValueError(f"release retention must be 0 or more, not {keep}")
    deployments = list(facts)
    kept = {d.id for d in deployments if d.status in RUNNING}
    rank: dict[uuid.UUID, int] = {}
    for environment in {d.environment for d in deployments}:
        here = [d for d in deployments if d.environment == environment]
        verified = sorted(
            (d for d in here if d.verified_at is not None),
            key=lambda d: (_newest_first(d.verified_at), str(d.id)),
            reverse=True,
        )
        for place, d in enumerate(verified, start=1):
            rank[d.id] = place
            if place <= keep + 1:
                kept.add(d.id)
        succeeded = [d for d in here if d.status is DeploymentStatus.SUCCEEDED]
        if succeeded:
            kept.add(max(succeeded, key=lambda d: _newest_first(d.finished_at)).id)
    protected = {
        sha
        for d in deployments
        if d.status in RUNNING
        for sha in (d.commit_sha, d.previous_commit_sha)
        if sha
    }
    return Retention(frozenset(kept), rank, frozenset(protected), keep)


def refs_to_prune(
    refs: Mapping[str, str], facts: Iterable[ReleaseFacts], keep: int
) -> dict[str, str]:
    """Of a repository's release refs (deployment id as the ref names it -> the commit it
    holds), those the rule lets go, each with the commit it must still hold to be deleted."""
    deployments = list(facts)
    rule = retention(deployments, keep)
    owners: dict[uuid.UUID, uuid.UUID] = {}
    for d in deployments:
        owners[d.id] = d.id
        owners[compensation_release_id(d.id)] = d.id
    prunable: dict[str, str] = {}
    for name, commit in refs.items():
        try:
            owner = owners.get(uuid.UUID(name))
        except ValueError:
            owner = None
        if owner is None or owner in rule.kept or commit in rule.protected_commits:
            continue
        prunable[name] = commit
    return prunable
