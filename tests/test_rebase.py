"""Rebasing an approved change onto a default branch that moved, and the git plumbing that keeps
the default branch equal to production: real repositories (the sample storefront)."""

import json
from pathlib import Path

import pytest

from activities.change_engine import (
    ChangeAlreadyPresent,
    ChangeProposal,
    RebaseConflict,
)
from activities.diffs import changed_lines, same_changed_lines
from activities.git_change_engine import GitChangeEngine
from activities.git_store import fast_forward, first_parents_since, restore_tree
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


async def test_a_change_the_default_branch_already_holds_is_said_to_be_there(repo: Path) -> None:
    proposal = await plan(repo, "set theme to dark")
    push_config(repo, theme="dark")
    with pytest.raises(ChangeAlreadyPresent, match="already holds"):
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


# --- additions from one base merge: sorted placement, and the change made again on the head ---


async def ship(repo: Path, prompt: str, proposal: ChangeProposal, branch: str) -> str:
    """Apply onto main and advance main to it, as a verified production release does."""
    applied = await engine.apply(
        repo=repo, proposal=proposal, prompt=prompt, branch=branch, onto="main"
    )
    assert await fast_forward(repo, "main", applied.commit_sha)
    return applied.commit_sha


def added_lines_only(diff: str, path: str) -> list[str]:
    [(file, _, removed, added)] = [c for c in changed_lines(diff) if c[0] == path]
    assert removed == [], f"{file} had lines edited, not only added: {removed}"
    return added


async def test_a_new_key_goes_in_sorted_position_and_edits_no_existing_line(repo: Path) -> None:
    proposal = await plan(repo, "set banner to Summer sale")
    assert added_lines_only(proposal.diff, "config.json") == ['  "banner": "Summer sale",']
    proposal = await plan(repo, "set checkout.gift_wrap to true")
    assert added_lines_only(proposal.diff, "config.json") == ['    "gift_wrap": true,']
    applied = await engine.apply(
        repo=repo, proposal=proposal, prompt="set checkout.gift_wrap to true", branch="c"
    )
    checkout = config_at(repo, applied.commit_sha)["checkout"]
    # Before the first key after it (the sample's keys are not sorted).
    assert list(checkout) == ["gift_wrap", "payment_provider", "guest_checkout"]  # type: ignore[call-overload]


async def test_a_page_is_listed_in_sorted_position(repo: Path) -> None:
    # The sample lists ["home", "about"]: "contact" goes before the first name after it.
    proposal = await plan(repo, "add a page contact")
    assert added_lines_only(proposal.diff, "config.json") == ['    "contact",']
    assert "pages/contact.md" in proposal.files_changed


@pytest.mark.parametrize(
    "prompts",
    [
        ("set tagline to Fresh finds", "set banner to Summer sale"),  # apart: git merges
        ("set banner to Summer sale", "set logo to shop.png"),  # one place: made again
        ("add a page contact", "add a page faq"),
        ("add a page contact", "set banner to Summer sale"),
    ],
    ids=["keys apart", "keys at one place", "two pages", "a page and a key"],
)
async def test_two_additions_planned_from_one_base_both_apply_with_their_approved_lines(
    repo: Path, prompts: tuple[str, str]
) -> None:
    first, second = prompts
    planned = [await plan(repo, first), await plan(repo, second)]
    assert planned[0].base_commit == planned[1].base_commit
    shipped = await ship(repo, first, planned[0], "first")
    applied = await engine.apply(
        repo=repo, proposal=planned[1], prompt=second, branch="second", onto="main"
    )
    assert git(repo, "rev-parse", f"{applied.commit_sha}^") == shipped
    # The approved lines, nothing else: the request needs no new approval.
    assert same_changed_lines(planned[1].diff, applied.diff)
    both = {json.dumps(config_at(repo, applied.commit_sha), sort_keys=True)}
    # The same result whichever ships first.
    git(repo, "update-ref", "refs/heads/main", planned[0].base_commit)
    shipped = await ship(repo, second, planned[1], "second-first")
    other = await engine.apply(
        repo=repo, proposal=planned[0], prompt=first, branch="first-second", onto="main"
    )
    assert same_changed_lines(planned[0].diff, other.diff)
    both.add(json.dumps(config_at(repo, other.commit_sha), sort_keys=True))
    assert len(both) == 1
    for prompt in prompts:
        if prompt.startswith("add a page"):
            page = prompt.rsplit(" ", 1)[1]
            assert git(repo, "cat-file", "-t", f"{other.commit_sha}:pages/{page}.md") == "blob"


async def test_ten_additions_from_one_base_ship_one_after_another(repo: Path) -> None:
    prompts = [
        *(f"add a page {name}" for name in ("contact", "faq", "blog", "returns", "careers")),
        *(
            f"set {key} to {value}"
            for key, value in (
                ("banner", '"Sale"'),
                ("logo", '"shop.png"'),
                ("tagline", '"Fresh finds"'),
                ("checkout.gift_wrap", "true"),
                ("analytics_id", '"UA-1"'),
            )
        ),
    ]
    planned = [await plan(repo, p) for p in prompts]
    for number, (prompt, proposal) in enumerate(zip(prompts, planned, strict=True)):
        await ship(repo, prompt, proposal, f"change-{number}")
    config = config_at(repo, "main")
    assert sorted(config["pages"]) == sorted(  # type: ignore[call-overload]
        ["home", "about", "contact", "faq", "blog", "returns", "careers"]
    )
    assert (config["banner"], config["logo"], config["tagline"], config["analytics_id"]) == (
        "Sale",
        "shop.png",
        "Fresh finds",
        "UA-1",
    )
    assert config["checkout"]["gift_wrap"] is True  # type: ignore[index]


async def test_a_true_conflict_made_again_on_the_head_still_conflicts(repo: Path) -> None:
    """The same line edited differently: made again, the change edits another line than the
    approved one, so it is a conflict (the lifecycle plans it again for a new approval)."""
    proposal = await plan(repo, "set theme to dark")
    push_config(repo, theme="blue")
    with pytest.raises(RebaseConflict, match=r"config\.json"):
        await engine.apply(
            repo=repo, proposal=proposal, prompt="set theme to dark", branch="change", onto="main"
        )


async def test_first_parents_since_lists_how_a_branch_moved(repo: Path) -> None:
    base = git(repo, "rev-parse", "main")
    first = push_config(repo, theme="dark")
    second = push_config(repo, currency="GBP")
    assert await first_parents_since(repo, base, second) == [second, first]
    assert await first_parents_since(repo, base, base) == []
    assert await first_parents_since(repo, second, base) is None  # not on the way: rewritten
