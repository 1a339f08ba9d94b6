"""Rebasing an approved change onto a default branch that moved, and the git plumbing that keeps
the default branch equal to production: real repositories (the sample storefront)."""

import json
from pathlib import Path

import pytest

from activities.change_engine import ChangeProposal, ChangeRequestInvalid, RebaseConflict
from activities.diffs import changed_lines, same_changed_lines
from activities.git_change_engine import GitChangeEngine
from activities.git_store import fast_forward, restore_tree
from scripts.sample_repo import create_sample_repo
from tests.lifecycle_support import git, push_config

engine = GitChangeEngine()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return create_sample_repo(tmp_path / "storefront")


def config_at(repo: Path, revision: str) -> dict[str, object]:
    return json.loads(git(repo, "show", f"{revision}:config.json"))  # type: ignore[no-any-return]


async def plan(repo: Path, prompt: str) -> ChangeProposal:
    return await engine.plan(repo=repo, base_branch="main", prompt=prompt)


DIFF_A = """\
diff --git a/config.json b/config.json
--- a/config.json
+++ b/config.json
@@ -3,3 +3,3 @@
   "currency": "EUR",
-  "theme": "light",
+  "theme": "dark",
   "debug": false,
"""
# The same change, further down and among other context lines.
DIFF_A_MOVED = """\
diff --git a/config.json b/config.json
--- a/config.json
+++ b/config.json
@@ -9,3 +9,3 @@
   "currency": "USD",
-  "theme": "light",
+  "theme": "dark",
   "debug": true,
"""


def test_changed_lines_ignore_context_and_hunk_positions() -> None:
    assert changed_lines(DIFF_A) == [
        ("config.json", "modified", ['  "theme": "light",'], ['  "theme": "dark",'])
    ]
    assert same_changed_lines(DIFF_A, DIFF_A_MOVED)


def test_changed_lines_differ_when_a_changed_line_or_file_differs() -> None:
    assert not same_changed_lines(DIFF_A, DIFF_A.replace('"dark"', '"blue"'))
    assert not same_changed_lines(DIFF_A, DIFF_A.replace("config.json", "settings.json"))
    assert not same_changed_lines(DIFF_A, "")


async def test_apply_on_an_unmoved_default_branch_commits_on_the_plan_base(repo: Path) -> None:
    proposal = await plan(repo, "set theme to dark")
    applied = await engine.apply(
        repo=repo, proposal=proposal, prompt="set theme to dark", branch="change", onto="main"
    )
    assert applied.base_commit == proposal.base_commit
    assert applied.diff == proposal.diff
    assert git(repo, "rev-parse", f"{applied.commit_sha}^") == proposal.base_commit


async def test_a_clean_rebase_keeps_the_push_and_the_change_with_the_same_changed_lines(
    repo: Path,
) -> None:
    proposal = await plan(repo, "set theme to dark")
    pushed = push_config(repo, store_name="Corner Shop & Co")
    applied = await engine.apply(
        repo=repo, proposal=proposal, prompt="set theme to dark", branch="change", onto="main"
    )
    assert git(repo, "rev-parse", f"{applied.commit_sha}^") == pushed
    assert applied.base_commit == pushed
    assert same_changed_lines(proposal.diff, applied.diff)
    config = config_at(repo, applied.commit_sha)
    assert config["theme"] == "dark" and config["store_name"] == "Corner Shop & Co"
    assert git(repo, "rev-parse", "refs/heads/change") == applied.commit_sha
    # Deterministic: the same rebase is the same commit (a retried activity changes nothing).
    again = await engine.apply(
        repo=repo, proposal=proposal, prompt="set theme to dark", branch="change", onto="main"
    )
    assert again.commit_sha == applied.commit_sha
    assert git(repo, "rev-parse", "main") == pushed  # applying never moves the default branch


async def test_a_rebase_onto_part_of_the_change_has_other_changed_lines(repo: Path) -> None:
    prompt = "set theme to dark; set free_shipping_threshold to 75"
    proposal = await plan(repo, prompt)
    push_config(repo, theme="dark")
    applied = await engine.apply(
        repo=repo, proposal=proposal, prompt=prompt, branch="change", onto="main"
    )
    assert not same_changed_lines(proposal.diff, applied.diff)
    assert changed_lines(applied.diff) == [
        (
            "config.json",
            "modified",
            ['  "free_shipping_threshold": 50,'],
            ['  "free_shipping_threshold": 75,'],
        )
    ]
    # A plan of the rebased diff applies as that very commit, without the prompt rebuilt.
    rebased = proposal.model_copy(
        update={
            "diff": applied.diff,
            "base_commit": applied.base_commit,
            "commit_sha": applied.commit_sha,
        }
    )
    again = await engine.apply(
        repo=repo, proposal=rebased, prompt=prompt, branch="change", onto="main"
    )
    assert again.commit_sha == applied.commit_sha


async def test_a_conflicting_push_is_a_rebase_conflict_naming_the_file(repo: Path) -> None:
    proposal = await plan(repo, "set theme to dark")
    push_config(repo, theme="blue")
    with pytest.raises(RebaseConflict, match=r"config\.json"):
        await engine.apply(
            repo=repo, proposal=proposal, prompt="set theme to dark", branch="change", onto="main"
        )


async def test_a_change_the_default_branch_already_holds_is_refused(repo: Path) -> None:
    proposal = await plan(repo, "set theme to dark")
    push_config(repo, theme="dark")
    with pytest.raises(ChangeRequestInvalid, match="already holds"):
        await engine.apply(
            repo=repo, proposal=proposal, prompt="set theme to dark", branch="change", onto="main"
        )


async def test_fast_forward_advances_only_to_a_descendant(repo: Path) -> None:
    base = git(repo, "rev-parse", "main")
    proposal = await plan(repo, "set theme to dark")
    applied = await engine.apply(
        repo=repo, proposal=proposal, prompt="set theme to dark", branch="change"
    )
    assert await fast_forward(repo, "main", applied.commit_sha)
    assert git(repo, "rev-parse", "main") == applied.commit_sha
    assert await fast_forward(repo, "main", base)  # already held: nothing to do
    assert git(repo, "rev-parse", "main") == applied.commit_sha
    git(repo, "update-ref", "refs/heads/main", base)
    pushed = push_config(repo, currency="GBP")  # a sibling of the applied change
    assert not await fast_forward(repo, "main", applied.commit_sha)  # diverged: left alone
    assert git(repo, "rev-parse", "main") == pushed


async def test_restore_tree_adds_one_revert_commit_on_top(repo: Path) -> None:
    base = git(repo, "rev-parse", "main")
    pushed = push_config(repo, theme="dark")
    head = await restore_tree(repo, "main", base, "Revert to the base")
    assert git(repo, "rev-parse", f"{head}^") == pushed
    assert git(repo, "rev-parse", f"{head}^{{tree}}") == git(repo, "rev-parse", f"{base}^{{tree}}")
    assert git(repo, "log", "-1", "--format=%s", head) == "Revert to the base"
    assert await restore_tree(repo, "main", base, "Revert to the base") == head  # idempotent
