"""Pruning a project's release refs: `refs/changeflow/releases/<deployment id>` of deployments the
retention rule (models.release_retention) lets go are deleted, on the remote and in the mirror.

Each ref is deleted only while it still holds the commit it was read at (compare-and-swap; a
remote's in one push carrying a lease on each), so a ref someone moved or made again stays.
Nothing is recorded between reading and deleting: a prune that dies half-way leaves refs the
next one finds and deletes, and deleting a ref already gone is no deletion at all.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from activities.git_store import RELEASE_REFS, delete_refs, in_repository, release_refs
from models.db import SessionFactory
from models.queries import release_facts
from models.release_retention import ReleaseFacts, refs_to_prune


@dataclass(frozen=True)
class PrunedReleases:
    kept: int  # release refs left in the repository
    pruned: list[str]  # the deployment ids whose refs were deleted


async def read_release_facts(session: AsyncSession, project_id: uuid.UUID) -> list[ReleaseFacts]:
    rows: Sequence[Any] = (await session.exec(release_facts(project_id))).all()
    return [ReleaseFacts(*row) for row in rows]


# The most refs one prune deletes: one push to a remote (about 0.5 s here), and where the refs
# are packed (after `git gc`) about 5 ms a ref, as libgit2 rewrites packed-refs for each. The first
# prune of a long history stays well within the step that runs it; the next releases finish it.
PRUNE_LIMIT = 500


async def prune_release_refs(
    sessions: SessionFactory,
    repo: Path,
    project_id: uuid.UUID,
    keep: int,
    *,
    limit: int = PRUNE_LIMIT,
) -> PrunedReleases:
    """Delete the release refs of `repo` that the retention rule lets go, `keep` releases deep,
    at most `limit` of them.

    The refs are read before the deployments: whatever is recorded in between, a release or a
    rollback that will restore a commit, is seen by the rule or made a ref this prune never saw.
    """
    refs = await in_repository(repo, release_refs)
    async with sessions() as session:
        facts = await read_release_facts(session, project_id)
    prunable = refs_to_prune(refs, facts, keep)
    if not prunable:
        return PrunedReleases(kept=len(refs), pruned=[])
    expected = {f"{RELEASE_REFS}/{name}": prunable[name] for name in sorted(prunable)[:limit]}
    deleted = await in_repository(repo, lambda r: delete_refs(r, expected))
    pruned = sorted(ref.removeprefix(f"{RELEASE_REFS}/") for ref in deleted)
    return PrunedReleases(kept=len(refs) - len(pruned), pruned=pruned)
