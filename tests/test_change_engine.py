"""The built-in GitChangeEngine on real git repositories (the sample storefront)."""

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from activities.change_engine import ChangeProposal, ChangeRequestInvalid, RepositoryError
from activities.git_change_engine import GitChangeEngine
from activities.risk import assess_risk
from models.lifecycle import RiskLevel
from scripts.sample_repo import (
    FAILS_IN_PRODUCTION_PROMPT,
    FAILS_IN_STAGING_PROMPT,
    HIGH_RISK_PROMPT,
    OVERSPEND_PROMPT,
    SAFE_PROMPT,
    create_sample_repo,
)
from workflows.contracts.lifecycle import MAX_PROMPT_CHARS

engine = GitChangeEngine()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return create_sample_repo(tmp_path / "storefront")


IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **IDENTITY},
    ).stdout


def applies_cleanly(repo: Path, diff: str) -> bool:
    check = subprocess.run(["git", "-C", str(repo), "apply", "--check", "-"], input=diff, text=True)
    return check.returncode == 0


def repository_state(repo: Path) -> tuple[str, str, str]:
    """Refs, working tree status and HEAD: what a plan must leave as it was."""
    return (
        git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        git(repo, "status", "--porcelain", "--untracked-files=all"),
        git(repo, "rev-parse", "HEAD"),
    )


async def plan(repo: Path, prompt: str) -> ChangeProposal:
    return await engine.plan(repo=repo, base_branch="main", prompt=prompt)


# --- risk from diff facts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "level", "reason"),
    [
        (SAFE_PROMPT, RiskLevel.LOW, "small change: 1 file(s), 2 changed lines"),
        ("add a page faq", RiskLevel.LOW, "small change: 2 file(s)"),
        ("make the footer friendlier", RiskLevel.LOW, "small change: 1 file(s)"),
        (
            "set checkout.payment_provider to adyen",
            RiskLevel.HIGH,
            "changes payment-sensitive setting payment_provider",
        ),
        ("set currency to USD", RiskLevel.HIGH, "changes payment-sensitive setting currency"),
        (
            HIGH_RISK_PROMPT,
            RiskLevel.HIGH,
            "adds database migration migrations/0002_create_loyalty_points.sql",
        ),
        ("add a migration drop_orders", RiskLevel.CRITICAL, "destructive SQL in migrations/"),
        # Tests verify the change: touching them is critical, whatever else is found.
        ("remove the pages test", RiskLevel.CRITICAL, "deletes test file tests/test_pages.py"),
        (
            "remove the pages test",
            RiskLevel.CRITICAL,
            "changes what verifies it: tests/test_pages.py (a test file)",
        ),
        ("remove the checkout test", RiskLevel.CRITICAL, "2 high-risk changes at once"),
        ("skip the pages test", RiskLevel.CRITICAL, "skips tests in tests/test_pages.py"),
    ],
)
async def test_risk_level_and_reasons_follow_from_the_diff(
    repo: Path, prompt: str, level: RiskLevel, reason: str
) -> None:
    proposal = await plan(repo, prompt)
    assert proposal.risk_level == level
    assert any(r.startswith(reason) for r in proposal.risk_reasons), proposal.risk_reasons


def file_diff(path: str, added: int, removed: int = 0, status: str = "") -> str:
    header = f"diff --git a/{path} b/{path}\n{status}--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n"
    return header + "".join(f"+line {i}\n" for i in range(added)) + "-old\n" * removed


def test_size_and_sensitive_paths_raise_the_risk_of_any_diff() -> None:
    assert assess_risk(file_diff("src/app.py", 10))[0] == RiskLevel.LOW
    assert assess_risk(file_diff("src/app.py", 401)) == (
        RiskLevel.MEDIUM,
        ["large diff: 401 changed lines"],
    )
    assert assess_risk(file_diff("src/app.py", 900, 200))[0] == RiskLevel.HIGH
    assert assess_risk(file_diff("src/checkout/cart.py", 3)) == (
        RiskLevel.HIGH,
        ["touches checkout/payment code: src/checkout/cart.py"],
    )
    assert assess_risk(file_diff("migrations/0001_init.sql", 1, 1))[0] == RiskLevel.CRITICAL
    deleted = file_diff("src/legacy.py", 0, 5, status="deleted file mode 100644\n")
    assert assess_risk(deleted) == (RiskLevel.MEDIUM, ["deletes src/legacy.py"])
    many_files = "".join(file_diff(f"pages/p{i}.md", 1) for i in range(21))
    assert assess_risk(many_files) == (RiskLevel.MEDIUM, ["touches 21 files"])


# --- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        SAFE_PROMPT,
        HIGH_RISK_PROMPT,
        FAILS_IN_STAGING_PROMPT,
        FAILS_IN_PRODUCTION_PROMPT,
        "add a page faq",
        "skip the pages test",
        "remove the pages test",
        "make the footer friendlier for returning customers",
        "set theme to dark; add a page faq",
    ],
)
async def test_a_normal_prompt_uses_about_what_was_estimated(repo: Path, prompt: str) -> None:
    proposal = await plan(repo, prompt)
    applied = await engine.apply(repo=repo, proposal=proposal, prompt=prompt, branch="change")
    assert abs(applied.tokens_used - proposal.token_estimate) <= 0.2 * proposal.token_estimate


async def test_the_overspend_prompt_uses_more_than_half_again_its_estimate(repo: Path) -> None:
    proposal = await plan(repo, OVERSPEND_PROMPT)
    applied = await engine.apply(
        repo=repo, proposal=proposal, prompt=OVERSPEND_PROMPT, branch="change"
    )
    assert proposal.risk_level == RiskLevel.LOW
    assert applied.tokens_used > 1.5 * proposal.token_estimate


async def test_a_longer_prompt_is_estimated_higher(repo: Path) -> None:
    short = await plan(repo, "make the footer friendlier")
    long = await plan(repo, "make the footer friendlier " + "and warmer " * 40)
    assert long.token_estimate > short.token_estimate


# --- plans -----------------------------------------------------------------------------------


async def test_a_plan_is_a_real_diff_and_leaves_the_repository_as_it_was(repo: Path) -> None:
    before = repository_state(repo)
    proposal = await plan(repo, SAFE_PROMPT)
    assert repository_state(repo) == before
    assert proposal.base_commit == git(repo, "rev-parse", "main").strip()
    assert proposal.files_changed == ["config.json"]
    assert '-  "theme": "light",\n+  "theme": "dark",' in proposal.diff
    assert 'Set theme to "dark" in config.json (was "light").' in proposal.diff_summary
    assert "1 file(s) changed, +1 -1 lines." in proposal.diff_summary
    # The diff applies to the base: it is a diff of this repository, not a description.
    assert applies_cleanly(repo, proposal.diff)


async def test_the_same_prompt_plans_the_same_proposal(repo: Path) -> None:
    assert await plan(repo, HIGH_RISK_PROMPT) == await plan(repo, HIGH_RISK_PROMPT)


async def test_free_text_is_recorded_in_a_change_note(repo: Path) -> None:
    prompt = "Make the footer friendlier for returning customers"
    proposal = await plan(repo, prompt)
    assert proposal.files_changed == ["docs/change-requests.md"]
    assert f"+{prompt}" in proposal.diff.splitlines()


async def test_concurrent_plans_and_applies_of_one_repository_do_not_collide(repo: Path) -> None:
    prompts = [SAFE_PROMPT, "add a page faq", HIGH_RISK_PROMPT, "set debug to true", "set x to 1"]

    async def change(i: int, prompt: str) -> str:
        proposal = await plan(repo, prompt)
        applied = await engine.apply(
            repo=repo, proposal=proposal, prompt=prompt, branch=f"change-{i}"
        )
        return applied.commit_sha

    commits = await asyncio.gather(*(change(i, p) for i, p in enumerate(prompts)))
    assert len(set(commits)) == len(prompts)
    for i, commit in enumerate(commits):
        assert git(repo, "rev-parse", f"change-{i}").strip() == commit
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "the prompt is empty"),
        ("   \n ", "the prompt is empty"),
        ("x" * (MAX_PROMPT_CHARS + 1), "at most 4000"),
        ("?!", "no words"),
        ("set theme to light", "theme is already"),
        ("set pages.home to 1", "pages is not a section"),
        ("add a page about", "page about already exists"),
        ("add a page ../../etc", "is not a page name"),
        ("add a migration create_orders", "already exists"),
        ("remove the search test", "no test named 'search'; the tests are: tests/test_"),
        ("add a page catalog listing every product; remove the catalog test", "no test named"),
    ],
)
async def test_a_prompt_the_engine_cannot_act_on_is_refused_and_changes_nothing(
    repo: Path, prompt: str, message: str
) -> None:
    before = repository_state(repo)
    with pytest.raises(ChangeRequestInvalid, match=message.replace("?", r"\?")):
        await plan(repo, prompt)
    assert repository_state(repo) == before


async def test_a_missing_repository_or_branch_is_a_repository_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        await engine.plan(repo=tmp_path / "absent", base_branch="main", prompt=SAFE_PROMPT)
    (tmp_path / "plain").mkdir()
    with pytest.raises(RepositoryError, match="not a git repository"):
        await engine.plan(repo=tmp_path / "plain", base_branch="main", prompt=SAFE_PROMPT)
    repo = create_sample_repo(tmp_path / "storefront")
    with pytest.raises(RepositoryError, match="no branch or commit 'develop'"):
        await engine.plan(repo=repo, base_branch="develop", prompt=SAFE_PROMPT)


# --- apply -----------------------------------------------------------------------------------


async def test_apply_commits_the_proposed_diff_on_the_branch(repo: Path) -> None:
    proposal = await plan(repo, "add a page faq")
    applied = await engine.apply(
        repo=repo, proposal=proposal, prompt="add a page faq", branch="changeflow/req-1"
    )
    assert git(repo, "rev-parse", "changeflow/req-1").strip() == applied.commit_sha
    assert git(repo, "rev-parse", f"{applied.commit_sha}^").strip() == proposal.base_commit
    committed = git(repo, "diff", "--full-index", proposal.base_commit, applied.commit_sha)
    assert committed == proposal.diff
    assert git(repo, "show", f"{applied.commit_sha}:pages/faq.md").startswith("# Faq\n")
    # main and the working tree are untouched.
    assert git(repo, "rev-parse", "main").strip() == proposal.base_commit
    assert git(repo, "status", "--porcelain") == ""


async def test_applying_twice_returns_the_same_commit_without_a_second_one(repo: Path) -> None:
    proposal = await plan(repo, SAFE_PROMPT)
    first = await engine.apply(repo=repo, proposal=proposal, prompt=SAFE_PROMPT, branch="c")
    second = await engine.apply(repo=repo, proposal=proposal, prompt=SAFE_PROMPT, branch="c")
    assert second == first
    assert git(repo, "rev-list", "--count", "c").strip() == "2"  # base + the change
    # A branch that moved on past the change still holds it.
    later = git(repo, "commit-tree", "-p", first.commit_sha, "-m", "later", "HEAD^{tree}")
    git(repo, "branch", "later", later.strip())
    again = await engine.apply(repo=repo, proposal=proposal, prompt=SAFE_PROMPT, branch="later")
    assert again.commit_sha == first.commit_sha


async def test_apply_refuses_a_proposal_the_prompt_does_not_produce(repo: Path) -> None:
    proposal = await plan(repo, SAFE_PROMPT)
    with pytest.raises(ChangeRequestInvalid, match="plan again"):
        await engine.apply(repo=repo, proposal=proposal, prompt="set debug to true", branch="c")
    tampered = proposal.model_copy(update={"diff": proposal.diff.replace("dark", "dusk")})
    with pytest.raises(ChangeRequestInvalid, match="plan again"):
        await engine.apply(repo=repo, proposal=tampered, prompt=SAFE_PROMPT, branch="c")
    assert "refs/heads/c" not in git(repo, "for-each-ref")


async def test_apply_refuses_a_branch_that_holds_something_else(repo: Path) -> None:
    other = await plan(repo, "add a page faq")
    await engine.apply(repo=repo, proposal=other, prompt="add a page faq", branch="c")
    proposal = await plan(repo, SAFE_PROMPT)
    with pytest.raises(RepositoryError, match="neither holds the change"):
        await engine.apply(repo=repo, proposal=proposal, prompt=SAFE_PROMPT, branch="c")
    with pytest.raises(ChangeRequestInvalid, match="not a valid branch name"):
        await engine.apply(repo=repo, proposal=proposal, prompt=SAFE_PROMPT, branch="a..b")


async def test_an_edited_file_keeps_its_mode(repo: Path) -> None:
    git(repo, "update-index", "--chmod=+x", "config.json")
    git(repo, "commit", "--quiet", "--no-gpg-sign", "-m", "executable config")
    proposal = await plan(repo, SAFE_PROMPT)
    assert "old mode" not in proposal.diff
    assert "index " in proposal.diff and " 100755\n" in proposal.diff


async def test_keys_are_matched_regardless_of_case(repo: Path) -> None:
    proposal = await plan(repo, "Set Checkout.Payment_Provider to paypal")
    assert 'Set checkout.payment_provider to "paypal"' in proposal.diff_summary
    assert '+    "payment_provider": "paypal",' in proposal.diff.splitlines()


async def test_a_config_that_is_not_json_is_refused(tmp_path: Path) -> None:
    repo = create_sample_repo(tmp_path / "storefront")
    (repo / "config.json").write_text("{not json")
    git(repo, "commit", "--quiet", "--no-gpg-sign", "-am", "broken config")
    with pytest.raises(ChangeRequestInvalid, match=r"config\.json is not valid JSON"):
        await plan(repo, SAFE_PROMPT)
