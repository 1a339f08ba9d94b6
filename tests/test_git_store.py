"""The in-process git plumbing (activities.git_store) on real repositories: compare-and-swap,
deterministic commits, the 3-way rebase, diffs as git prints them, path safety, checkouts."""

import subprocess
import uuid
from pathlib import Path

import pygit2
import pytest

from activities.change_engine import ChangeRequestInvalid, RebaseConflict
from activities.deploy_target import GitDeployTarget
from activities.diffs import parse_unified_diff
from activities.git_change_engine import GitChangeEngine
from activities.git_store import (
    ENGINE_EMAIL,
    ENGINE_NAME,
    Workspace,
    is_ancestor,
    move_ref,
    open_repository,
)
from scripts.sample_repo import create_sample_repo
from tests.lifecycle_support import git, push_config

engine = GitChangeEngine()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return create_sample_repo(tmp_path / "storefront")


def git_raw(
    repo: Path, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> bytes:
    """git's output as it is (tests.lifecycle_support.git strips it)."""
    run = subprocess.run(
        ["git", "-C", str(repo), *args], input=stdin, capture_output=True, check=True, env=env
    )
    return run.stdout


async def apply(
    repo: Path, prompt: str, branch: str = "change", push: dict[str, str] | None = None
) -> str:
    """Plan `prompt` on main and commit it on `branch`; with `push`, someone pushes that config
    change to main in between, and the change is rebased onto it."""
    proposal = await engine.plan(repo=repo, base_branch="main", prompt=prompt)
    if push is not None:
        push_config(repo, **push)
    applied = await engine.apply(
        repo=repo, proposal=proposal, prompt=prompt, branch=branch, onto="main"
    )
    assert (applied.base_commit == proposal.base_commit) == (push is None)
    return applied.commit_sha


# --- compare-and-swap --------------------------------------------------------------------


async def test_an_environment_branch_that_moved_is_not_swapped(repo: Path) -> None:
    main = git(repo, "rev-parse", "main")
    change = await apply(repo, "set theme to dark")
    ref = "refs/heads/env/staging"
    assert await move_ref(repo, ref, main, None)  # created: it did not exist
    assert not await move_ref(repo, ref, change, None)  # exists now: "must not exist" fails
    git(repo, "update-ref", ref, change)  # someone else releases meanwhile
    assert not await move_ref(repo, ref, main, main)  # expected main: it moved, left alone
    assert git(repo, "rev-parse", ref) == change
    assert await move_ref(repo, ref, main, change)
    assert git(repo, "rev-parse", ref) == main


async def test_a_branch_locked_by_another_writer_is_not_swapped(repo: Path) -> None:
    main = git(repo, "rev-parse", "main")
    change = await apply(repo, "set theme to dark")
    lock = repo / ".git" / "refs" / "heads" / "main.lock"
    lock.write_text(f"{change}\n")  # a git writer holding the branch's lock
    assert not await move_ref(repo, "refs/heads/main", change, main)
    lock.unlink()
    assert git(repo, "rev-parse", "main") == main
    assert await move_ref(repo, "refs/heads/main", change, main)


async def test_a_commit_is_its_own_ancestor_and_a_missing_one_is_nobodys(repo: Path) -> None:
    main = git(repo, "rev-parse", "main")
    change = await apply(repo, "set theme to dark")
    assert await is_ancestor(repo, main, main)
    assert await is_ancestor(repo, main, change)
    assert not await is_ancestor(repo, change, main)
    assert not await is_ancestor(repo, "0" * 40, main)


# --- deterministic commits ---------------------------------------------------------------


async def test_the_same_change_on_the_same_base_is_the_same_commit_in_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = create_sample_repo(tmp_path / "one")
    second = create_sample_repo(tmp_path / "two")
    assert git(first, "rev-parse", "main") == git(second, "rev-parse", "main")
    prompt = "set theme to dark; add a page faq"
    assert await apply(first, prompt) == await apply(second, prompt)
    # Rebased onto the same push (made at the same second in both), too.
    monkeypatch.setenv("GIT_AUTHOR_DATE", "1800000000 +0000")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "1800000000 +0000")
    push = {"store_name": "Corner Shop & Co"}
    assert await apply(first, prompt, "rebased", push) == await apply(
        second, prompt, "rebased", push
    )


async def test_a_commit_is_byte_for_byte_what_git_commit_tree_makes(repo: Path) -> None:
    commit = await apply(repo, "set theme to dark")
    date = git(repo, "log", "-1", "--format=%ct", "main")
    identity = {
        "GIT_AUTHOR_NAME": ENGINE_NAME,
        "GIT_AUTHOR_EMAIL": ENGINE_EMAIL,
        "GIT_AUTHOR_DATE": f"{date} +0000",
        "GIT_COMMITTER_NAME": ENGINE_NAME,
        "GIT_COMMITTER_EMAIL": ENGINE_EMAIL,
        "GIT_COMMITTER_DATE": f"{date} +0000",
    }
    message = git_raw(repo, "cat-file", "commit", commit).partition(b"\n\n")[2]
    env = {"PATH": "/usr/bin:/bin", **identity}
    by_git = git_raw(
        repo, "commit-tree", f"{commit}^{{tree}}", "-p", "main", stdin=message, env=env
    )
    assert by_git.decode().strip() == commit


async def test_a_rebased_commit_is_the_one_the_git_cli_made_before(repo: Path) -> None:
    """merge-tree, then commit-tree of `git log --format=%B` (one newline more) on the head:
    a rebase retried across the move to pygit2 makes the same commit."""
    prompt = "set theme to dark"
    approved = await apply(repo, prompt)
    rebased = await apply(repo, prompt, "rebased", push={"store_name": "Corner Shop & Co"})
    head = git(repo, "rev-parse", f"{rebased}^")
    tree = git(repo, "merge-tree", "--write-tree", head, approved)
    date = git(repo, "log", "-1", "--format=%ct", head)
    identity = {
        f"GIT_{who}_{what}": value
        for who in ("AUTHOR", "COMMITTER")
        for what, value in (
            ("NAME", ENGINE_NAME),
            ("EMAIL", ENGINE_EMAIL),
            ("DATE", f"{date} +0000"),
        )
    }
    message = git_raw(repo, "log", "-1", "--format=%B", approved)
    env = {"PATH": "/usr/bin:/bin", **identity}
    by_git = git_raw(repo, "commit-tree", tree, "-p", head, stdin=message, env=env)
    assert by_git.decode().strip() == rebased


# --- the 3-way rebase --------------------------------------------------------------------


def commit_work_tree(repo: Path, message: str) -> None:
    git(repo, "add", "--all")
    git(repo, "-c", "user.name=Someone", "-c", "user.email=someone@example.com",
        "commit", "--quiet", "--no-gpg-sign", "-m", message)  # fmt: skip


async def test_a_rebase_conflict_names_every_conflicted_file(repo: Path) -> None:
    prompt = "set theme to dark; add a page faq"
    proposal = await engine.plan(repo=repo, base_branch="main", prompt=prompt)
    (repo / "pages" / "faq.md").write_text("# Questions\n")
    commit_work_tree(repo, "a page of our own")
    push_config(repo, theme="blue")
    with pytest.raises(RebaseConflict, match=r"in config\.json, pages/faq\.md$"):
        await engine.apply(repo=repo, proposal=proposal, prompt=prompt, branch="c", onto="main")
    assert "refs/heads/c" not in git(repo, "for-each-ref")


# --- diffs as git prints them ------------------------------------------------------------


async def test_a_plan_is_the_diff_git_prints_for_the_same_trees(repo: Path) -> None:
    config = repo / "config.json"
    config.write_text(config.read_text().rstrip("\n"))  # no final newline
    config.chmod(0o755)
    commit_work_tree(repo, "an executable config without a final newline")
    prompt = "set theme to dark; add a page faq; remove the pages test; make it friendlier"
    proposal = await engine.plan(repo=repo, base_branch="main", prompt=prompt)
    commit = await apply(repo, prompt)
    assert (
        proposal.diff
        == git_raw(repo, "diff", "--full-index", "--no-renames", "main", commit).decode()
    )
    assert "\\ No newline at end of file" in proposal.diff
    assert " 100755\n" in proposal.diff
    assert len(proposal.files_changed) == 4


def test_a_quoted_path_in_a_diff_is_read_back_as_the_path(tmp_path: Path) -> None:
    repo = create_sample_repo(tmp_path / "storefront")
    (repo / "pages" / 'thé "menu".md').write_text("# Menu\n")
    commit_work_tree(repo, "menu")
    diff = git_raw(repo, "show", "--format=", "HEAD").decode()
    assert diff.startswith('diff --git "a/pages/th\\303\\251 \\"menu\\".md"')
    assert [f.path for f in parse_unified_diff(diff)] == ['pages/thé "menu".md']


# --- path safety -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["", "/etc/passwd", "../outside.md", "pages/../../outside.md", ".git/config",
     "pages/.GIT/hooks/post-checkout", "pages//double.md", "./config.json", "pages\\x.md"],
)  # fmt: skip
def test_a_change_cannot_write_outside_the_tree_or_into_git(repo: Path, path: str) -> None:
    r = open_repository(repo)
    head = r.revparse_single("main").peel(pygit2.Commit)
    assert isinstance(head, pygit2.Commit)
    workspace = Workspace(r, head)
    with pytest.raises(ChangeRequestInvalid, match="is not a file path inside the repository"):
        workspace.write(path, "anything\n")
    assert workspace.write_tree() == head.tree_id


# --- checkouts ---------------------------------------------------------------------------


async def test_a_check_works_in_a_checkout_of_its_own_and_the_project_is_untouched(
    repo: Path, tmp_path: Path
) -> None:
    before = (
        git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        git(repo, "status", "--porcelain", "--untracked-files=all"),
        (repo / ".git" / "index").read_bytes(),
    )
    target = GitDeployTarget(tmp_path / "workspace")
    result = await target.verify(
        repo=repo,
        environment="staging",
        commit_sha="main",
        check_command=(
            "git status --porcelain && echo '{}' > config.json && "
            "git -c user.name=c -c user.email=c@c commit --quiet -am scribble && "
            "git log --format=%s"
        ),
        deployment_id=uuid.uuid4(),
    )
    assert result.ok, result.output
    assert "scribble\nCorner Shop storefront\n" in result.output  # its own history, clean
    after = (
        git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        git(repo, "status", "--porcelain", "--untracked-files=all"),
        (repo / ".git" / "index").read_bytes(),
    )
    assert after == before
    assert "scribble" not in git(repo, "log", "--all", "--format=%s")
