"""`GitChangeEngine`, the built-in change engine: offline and deterministic.

It carries out the rule engine's instructions (activities.rule_engine) on the base commit's
files and commits the result through activities.git_store: no working tree is touched, so
concurrent plans of one repository cannot collide, and the same prompt on the same base is the
same commit (applying twice is a no-op). Risk comes from the diff and what verifies it
(activities.risk), tokens
from text lengths (activities.pricing).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pygit2

from activities.change_engine import (
    AppliedChange,
    ChangeAlreadyPresent,
    ChangeProposal,
    ChangeRequestInvalid,
    ChangeStep,
    NothingToChange,
    RebaseConflict,
    RepositoryError,
)
from activities.diffs import same_changed_lines
from activities.git_store import (
    CAS_ATTEMPTS,
    Workspace,
    commit_at,
    commit_tree,
    compare_and_swap,
    descends,
    diff_trees,
    in_repository,
    peel_commit,
    point_branch,
    rebase_tree,
    reference_target,
    valid_branch_name,
)
from activities.pricing import token_estimate, tokens_used
from activities.risk import assess_change
from activities.rule_engine import Instruction, carry_out, parse_prompt
from models.lifecycle import RiskLevel


@dataclass
class BuiltChange:
    tree: str
    diff: str
    summary: list[str]
    files_changed: list[str]


@dataclass
class Committed:
    commit_sha: str
    base_commit: str
    diff: str


class GitChangeEngine:
    """The built-in engine: deterministic edits of the repository for a documented prompt set."""

    async def plan(
        self,
        *,
        repo: Path,
        base_branch: str,
        prompt: str,
        step: ChangeStep | None = None,
        check_command: str = "",
    ) -> ChangeProposal:
        instructions = parse_prompt(prompt)

        def build(r: pygit2.Repository) -> tuple[str, BuiltChange, tuple[RiskLevel, list[str]]]:
            base = peel_commit(r, base_branch)
            if base is None:
                raise RepositoryError(f"{repo} has no branch or commit {base_branch!r}")
            built = _build(r, base, instructions)
            risk = assess_change(
                r, built.diff, base=str(base.id), changed=built.tree, check_command=check_command
            )
            return str(base.id), built, risk

        base_commit, built, (risk_level, risk_reasons) = await in_repository(repo, build)
        return ChangeProposal(
            diff=built.diff,
            diff_summary="\n".join(built.summary),
            files_changed=built.files_changed,
            risk_level=risk_level,
            risk_reasons=risk_reasons,
            token_estimate=token_estimate(instructions, prompt),
            base_commit=base_commit,
        )

    async def apply(
        self,
        *,
        repo: Path,
        proposal: ChangeProposal,
        prompt: str,
        branch: str,
        onto: str | None = None,
        step: ChangeStep | None = None,
    ) -> AppliedChange:
        """Commit the proposal on `branch`. With `onto` (the default branch) and that branch
        moved past the proposal's base, the change is rebased onto its head (3-way, no work
        tree); the result carries the diff actually committed, to compare with the approved.
        When git's line merge conflicts, the instructions are carried out again on the head: a
        result that changes the same lines as the approved diff is that change, rebased (two
        additions at one place of a list conflict for git, not for the change)."""
        instructions = parse_prompt(prompt)

        def commit(r: pygit2.Repository) -> Committed:
            approved = _approved_commit(r, proposal, prompt, instructions)
            return publish(
                r,
                approved,
                proposal,
                branch=branch,
                onto=onto,
                rebuild=lambda head: _build(r, head, instructions),
            )

        done = await in_repository(repo, commit)
        return AppliedChange(
            commit_sha=done.commit_sha,
            tokens_used=tokens_used(prompt, proposal.diff),
            base_commit=done.base_commit,
            diff=done.diff,
        )


def publish(
    r: pygit2.Repository,
    approved: pygit2.Commit,
    proposal: ChangeProposal,
    *,
    branch: str,
    onto: str | None,
    rebuild: Callable[[pygit2.Commit], BuiltChange] | None = None,
) -> Committed:
    """Put the approved commit on `branch`: as it is when `onto` has not moved past the
    proposal's base, rebased onto `onto`'s head otherwise. `rebuild` makes the change anew on a
    commit: the way out of a conflict when it changes the same lines as the approved diff."""
    if not valid_branch_name(branch):
        raise ChangeRequestInvalid(f"{branch!r} is not a valid branch name")
    head = reference_target(r, f"refs/heads/{onto}") if onto else None
    if onto and head is None:
        raise RepositoryError(f"the repository has no branch {onto!r}")
    if head is None or head == proposal.base_commit:
        _advance_branch(r, branch, str(approved.id), proposal.base_commit)
        return Committed(str(approved.id), proposal.base_commit, proposal.diff)
    try:
        rebased, diff = _rebase(r, approved, commit_at(r, head), onto or "")
    except RebaseConflict:
        made = rebuild and _rebuilt_on(r, approved, commit_at(r, head), proposal.diff, rebuild)
        if not made:
            raise
        rebased, diff = made
    point_branch(r, branch, rebased)
    return Committed(rebased, head, diff)


def reuse_made_commit(r: pygit2.Repository, proposal: ChangeProposal) -> pygit2.Commit | None:
    """The commit a rebased plan already made of its diff on its base, if it still is that."""
    if proposal.commit_sha and (made := peel_commit(r, proposal.commit_sha)) is not None:
        base = commit_at(r, proposal.base_commit)
        on_base = [str(parent) for parent in made.parent_ids] == [proposal.base_commit]
        if on_base and diff_trees(r, base.tree_id, made.tree_id).patch == proposal.diff:
            return made
    return None


def _build(
    r: pygit2.Repository, base: pygit2.Commit, instructions: list[Instruction]
) -> BuiltChange:
    ws = Workspace(r, base)
    summary = carry_out(ws, instructions)
    tree = ws.write_tree()
    stat = diff_trees(r, base.tree_id, tree)
    if not stat.patch:
        raise NothingToChange("the prompt changes nothing in the repository")
    summary.append(f"{len(stat.files)} file(s) changed, +{stat.added} -{stat.removed} lines.")
    return BuiltChange(str(tree), stat.patch, summary, stat.files)


def _approved_commit(
    r: pygit2.Repository, proposal: ChangeProposal, prompt: str, instructions: list[Instruction]
) -> pygit2.Commit:
    """The commit of the approved diff on its base: the plan's own when it is that (a rebased
    plan's), otherwise built again from the prompt, which must give the same diff."""
    base = commit_at(r, proposal.base_commit)
    if (made := reuse_made_commit(r, proposal)) is not None:
        return made
    built = _build(r, base, instructions)
    if built.diff != proposal.diff:
        raise ChangeRequestInvalid(
            "the prompt no longer produces the proposed diff on its base commit; plan again"
        )
    title = built.summary[0][:72]
    body = "\n".join(built.summary)
    message = f"{title}\n\n{body}\n\nRequested:\n{prompt.strip()}\n"
    return commit_at(r, commit_tree(r, built.tree, base, message))


def _rebase(
    r: pygit2.Repository, approved: pygit2.Commit, head: pygit2.Commit, onto: str
) -> tuple[str, str]:
    """`approved` replayed on `head`, committed like the approved one on the new parent."""
    tree = rebase_tree(r, approved, head, onto)
    if tree == str(head.tree_id):
        raise ChangeAlreadyPresent(f"{onto} at {str(head.id)[:12]} already holds this change")
    # One newline more than the approved message, as `git log --format=%B | git commit-tree`
    # wrote it: rebased commits keep the ids they had before the engine ran git in process.
    commit = commit_tree(r, tree, head, approved.message + "\n")
    return commit, diff_trees(r, head.tree_id, tree).patch


def _rebuilt_on(
    r: pygit2.Repository,
    approved: pygit2.Commit,
    head: pygit2.Commit,
    approved_diff: str,
    rebuild: Callable[[pygit2.Commit], BuiltChange],
) -> tuple[str, str] | None:
    """The change made anew on `head`, committed like a rebase of `approved`, when it changes
    the same lines as the approved diff; None otherwise (the merge's conflict stands)."""
    try:
        built = rebuild(head)
    except ChangeRequestInvalid:
        return None
    if not same_changed_lines(approved_diff, built.diff):
        return None
    commit = commit_tree(r, built.tree, head, approved.message + "\n")
    return commit, built.diff


def _advance_branch(r: pygit2.Repository, branch: str, commit: str, base: str) -> None:
    ref = f"refs/heads/{branch}"
    for _ in range(CAS_ATTEMPTS):
        current = reference_target(r, ref)
        if current == commit:
            return
        if current is not None:
            if descends(r, current, commit):
                return  # the branch already holds the change (and moved on since)
            if current != base:
                raise RepositoryError(
                    f"branch {branch} is at {current[:12]}, which neither holds the change "
                    f"nor is its base {base[:12]}"
                )
        if compare_and_swap(r, ref, commit, current):
            return
    raise RepositoryError(f"branch {branch} kept moving while the change was committed")
