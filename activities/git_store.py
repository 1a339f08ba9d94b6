"""The project's git repository, read and written in process through pygit2 (libgit2).

Nothing here touches a working tree of the project's repository: files are read from commits,
new trees are built in an in-memory index and written as objects, commits are made without
moving HEAD, and branches move by compare-and-swap only. Commits get the engine's fixed identity
and their parent's date, so the same change on the same parent is the same commit (a retried
activity makes the same commit, byte for byte what `git commit-tree` made before).

Each public coroutine opens the repository in a worker thread and does its whole job there:
libgit2 objects stay in the thread that made them, and the event loop never waits on disk.
"""

import asyncio
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import pygit2
from pygit2.enums import DiffOption, FileMode, RepositoryOpenFlag

from activities.change_engine import ChangeRequestInvalid, RebaseConflict, RepositoryError

ENGINE_NAME = "changeflow"
ENGINE_EMAIL = "changeflow@localhost"
# How often a compare-and-swap is tried again while others move the same branch.
CAS_ATTEMPTS = 5
# One ref per deployment, at the commit it released: every release stays reachable (a rollback
# target survives `git gc` once its request's branch is deleted and the environment moved on).
RELEASE_REFS = "refs/changeflow/releases"

REGULAR_FILE_MODES = (FileMode.BLOB, FileMode.BLOB_EXECUTABLE)

T = TypeVar("T")


def open_repository(repo: Path) -> pygit2.Repository:
    """The repository at `repo` itself (no search upwards: a folder inside another repository
    is not that repository)."""
    if not Path(repo).is_dir():
        raise RepositoryError(f"repository {repo} does not exist")
    try:
        return pygit2.Repository(str(repo), RepositoryOpenFlag.NO_SEARCH)
    except pygit2.GitError:
        raise RepositoryError(f"{repo} is not a git repository") from None


async def in_repository(repo: Path, work: Callable[[pygit2.Repository], T]) -> T:
    """`work` on the repository at `repo`, in a worker thread; a libgit2 failure is a
    RepositoryError."""

    def run() -> T:
        r = open_repository(repo)
        try:
            return work(r)
        except pygit2.GitError as exc:
            raise RepositoryError(f"git failed in {repo}: {exc}") from None

    return await asyncio.to_thread(run)


def peel_commit(r: pygit2.Repository, revision: str) -> pygit2.Commit | None:
    """The commit `revision` names (a sha, a branch, `main~1`, an annotated tag), or None."""
    try:
        found = r.revparse_single(revision).peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError):
        return None
    return found if isinstance(found, pygit2.Commit) else None


def reference_target(r: pygit2.Repository, ref: str) -> str | None:
    """The commit a branch reference points at (None: no such reference)."""
    try:
        found = r.references.get(ref)
    except (ValueError, pygit2.GitError):
        return None
    if found is None:
        return None
    commit = peel_commit(r, str(found.resolve().target))
    return str(commit.id) if commit is not None else None


def _resolve(repo: Path, revision: str) -> str | None:
    try:
        r = open_repository(repo)
    except RepositoryError:
        return None
    commit = peel_commit(r, revision)
    return str(commit.id) if commit is not None else None


async def resolve_commit(repo: Path, revision: str) -> str | None:
    """The full id of the commit `revision` names; None when there is none (nor a repository:
    `ensure_repository` says which)."""
    return await asyncio.to_thread(_resolve, repo, revision)


async def ensure_repository(repo: Path) -> None:
    await asyncio.to_thread(open_repository, repo)


def valid_branch_name(branch: str) -> bool:
    """git's rules for a branch name (`git check-ref-format --branch`)."""
    return (
        pygit2.reference_is_valid_name(f"refs/heads/{branch}")
        and not branch.startswith("-")
        and branch not in ("HEAD", "@")
    )


# --- ancestry and compare-and-swap -----------------------------------------------------------


def descends(r: pygit2.Repository, descendant: str, ancestor: str) -> bool:
    """Whether `descendant` holds `ancestor`; a commit holds itself, a missing one nothing."""
    if descendant == ancestor:
        return peel_commit(r, descendant) is not None
    try:
        return bool(r.descendant_of(descendant, ancestor))
    except (KeyError, ValueError, pygit2.GitError):
        return False


class RefPublisher(Protocol):
    """Where the refs of a repository truly live, when that is not the repository itself: a
    remote whose mirror the repository is (activities.remote_repository)."""

    def swap(self, r: pygit2.Repository, ref: str, new: str | None, old: str | None) -> bool: ...

    def delete(self, r: pygit2.Repository, expected: Mapping[str, str]) -> set[str]: ...


# Mirrors of remote repositories, by git folder: their refs move on the remote first.
_publishers: dict[str, RefPublisher] = {}


def publish_through(git_dir: Path, publisher: RefPublisher) -> None:
    """From now on, the repository at `git_dir` moves its refs through `publisher`."""
    _publishers[os.path.realpath(git_dir)] = publisher


def compare_and_swap(r: pygit2.Repository, ref: str, new: str | None, old: str | None) -> bool:
    """Point `ref` at `new` (None: delete it) if it points at `old` now (None: it must not
    exist); False if not.

    A mirror of a remote repository moves the ref on the remote first, by the same rule
    (RefPublisher). Otherwise a libgit2 reference transaction takes the ref's lock file
    (`<ref>.lock`, the lock `git update-ref` and every other git writer takes) before the
    current value is read, so the read, the comparison and the write are one atomic step
    against all writers of the branch, in this process or any other. A lock held by another
    writer is a lost race: False, as when the branch moved. (`Reference.set_target` compares
    under the lock too, but cannot express "must not exist"; one mechanism serves both cases.)
    """
    publisher = _publishers.get(os.path.realpath(r.path))
    if publisher is not None:
        return publisher.swap(r, ref, new, old)
    try:
        with r.transaction() as transaction:
            transaction.lock_ref(ref)
            if reference_target(r, ref) != old:
                return False  # leaving the block unlocks without writing
            if new is None:
                transaction.remove(ref)
            else:
                transaction.set_target(ref, pygit2.Oid(hex=new), message="changeflow: move")
    except (ValueError, pygit2.GitError):
        return False
    return True


def release_ref(deployment_id: uuid.UUID) -> str:
    """The ref keeping what deployment `deployment_id` released."""
    return f"{RELEASE_REFS}/{deployment_id}"


def keep_release(r: pygit2.Repository, ref: str, commit: str) -> str:
    """Create `ref` at `commit` by compare-and-swap (never moving it once made); the commit it
    holds afterwards: `commit`, or what an earlier release under the same ref kept."""
    for _ in range(CAS_ATTEMPTS):
        kept = reference_target(r, ref)
        if kept is not None or compare_and_swap(r, ref, commit, None):
            return kept or commit
    raise RepositoryError(f"{ref} kept moving while it was created")


def release_refs(r: pygit2.Repository) -> dict[str, str]:
    """The repository's release refs: the deployment id each is named after -> the commit it
    keeps."""
    prefix = f"{RELEASE_REFS}/"
    found = {}
    for name in r.references:
        if name.startswith(prefix):
            commit = reference_target(r, name)
            if commit is not None:
                found[name.removeprefix(prefix)] = commit
    return found


def delete_refs(r: pygit2.Repository, expected: Mapping[str, str]) -> set[str]:
    """Delete each ref of `expected` (ref -> commit) that still points at its commit, by
    compare-and-swap (a remote's mirror: on the remote first, in one push); the refs deleted.
    A ref gone already, or moved, is left out: repeating a deletion changes nothing."""
    publisher = _publishers.get(os.path.realpath(r.path))
    if publisher is not None:
        return publisher.delete(r, expected)
    return {ref for ref, old in expected.items() if compare_and_swap(r, ref, None, old)}


async def move_ref(repo: Path, ref: str, new: str | None, old: str | None) -> bool:
    """Compare-and-swap `ref` from `old` (None: must not exist) to `new` (None: delete it);
    False if it moved."""
    return await in_repository(repo, lambda r: compare_and_swap(r, ref, new, old))


def _first_parents(r: pygit2.Repository, old: str, new: str, limit: int) -> list[str] | None:
    commit = peel_commit(r, new)
    path: list[str] = []
    while commit is not None and len(path) <= limit:
        if str(commit.id) == old:
            return path
        path.append(str(commit.id))
        commit = commit.parents[0] if commit.parents else None
    return None


async def first_parents_since(
    repo: Path, old: str, new: str, *, limit: int = 1000
) -> list[str] | None:
    """The commits by which a branch went from `old` to `new` (newest first, `old` excluded),
    following first parents; None when `old` is not on that path within `limit` commits (the
    branch was rewritten, or moved that much)."""
    return await in_repository(repo, lambda r: _first_parents(r, old, new, limit))


async def is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    """Whether `descendant` holds `ancestor` (a commit is its own ancestor)."""
    return await in_repository(repo, lambda r: descends(r, descendant, ancestor))


def _without(r: pygit2.Repository, head: str, change: str) -> str | None:
    commit = peel_commit(r, head)
    while commit is not None and descends(r, str(commit.id), change):
        commit = commit.parents[0] if commit.parents else None
    return None if commit is None else str(commit.id)


async def last_without(repo: Path, head: str, change: str) -> str | None:
    """The newest commit on `head`'s first-parent line that does not hold `change`: a branch
    as it was before `change` was merged into it (`head` itself when it never was)."""
    return await in_repository(repo, lambda r: _without(r, head, change))


def _fast_forward(r: pygit2.Repository, branch: str, commit: str) -> bool:
    ref = f"refs/heads/{branch}"
    for _ in range(CAS_ATTEMPTS):
        current = reference_target(r, ref)
        if current is not None and descends(r, current, commit):
            return True
        if current is not None and not descends(r, commit, current):
            return False
        if compare_and_swap(r, ref, commit, current):
            return True
    raise RepositoryError(f"branch {branch} kept moving while it was advanced")


async def fast_forward(repo: Path, branch: str, commit: str) -> bool:
    """Advance `branch` to `commit` by compare-and-swap when the commit descends from it.

    True once the branch holds the commit (already, or now); False when the branch has moved
    to something the commit does not descend from, and was left alone.
    """
    return await in_repository(repo, lambda r: _fast_forward(r, branch, commit))


def _restore_tree(r: pygit2.Repository, branch: str, commit: str, message: str) -> str:
    ref = f"refs/heads/{branch}"
    restored = peel_commit(r, commit)
    if restored is None:
        raise RepositoryError(f"{_name(r)} has no commit {commit}")
    for _ in range(CAS_ATTEMPTS):
        current = reference_target(r, ref)
        if current is None:
            raise RepositoryError(f"{_name(r)} has no branch {branch}")
        head = r[current]
        assert isinstance(head, pygit2.Commit)
        if head.tree_id == restored.tree_id:
            return current
        revert = commit_tree(r, restored.tree_id, head, message)
        if compare_and_swap(r, ref, revert, current):
            return revert
    raise RepositoryError(f"branch {branch} kept moving while it was restored")


async def restore_tree(repo: Path, branch: str, commit: str, message: str) -> str:
    """Make `branch` hold `commit`'s tree by a new commit on top of it (a revert that keeps the
    history), by compare-and-swap; nothing when it holds that tree already. Returns the head."""
    return await in_repository(repo, lambda r: _restore_tree(r, branch, commit, message))


def point_branch(r: pygit2.Repository, branch: str, commit: str) -> None:
    """Point a branch only its owner writes at `commit`, whatever it held."""
    ref = f"refs/heads/{branch}"
    for _ in range(CAS_ATTEMPTS):
        current = reference_target(r, ref)
        if current == commit or compare_and_swap(r, ref, commit, current):
            return
    raise RepositoryError(f"branch {branch} kept moving while the change was committed")


# --- commits -------------------------------------------------------------------------------


def engine_signature(date: int) -> pygit2.Signature:
    """The engine's fixed identity at `date` (unix seconds, UTC)."""
    return pygit2.Signature(ENGINE_NAME, ENGINE_EMAIL, date, 0)


def commit_tree(
    r: pygit2.Repository, tree: pygit2.Oid | str, parent: pygit2.Commit, message: str
) -> str:
    """A commit of `tree` on `parent` by the engine, dated like its parent (deterministic).
    No reference moves: the caller publishes it by compare-and-swap."""
    identity = engine_signature(parent.commit_time)
    return str(r.create_commit(None, identity, identity, message, tree, [parent.id]))


def commit_at(r: pygit2.Repository, sha: str) -> pygit2.Commit:
    """The commit whose full id is `sha` (a branch name or short id is refused)."""
    commit = peel_commit(r, sha) if re.fullmatch(r"[0-9a-f]{40}", sha) else None
    if commit is None or str(commit.id) != sha:
        raise RepositoryError(f"{_name(r)} has no commit {sha}")
    return commit


def _name(r: pygit2.Repository) -> str:
    return str(Path(r.workdir or r.path))


# --- trees, diffs and the 3-way rebase ---------------------------------------------------


def check_tree_path(path: str) -> None:
    """A path a change may write: relative, inside the tree, never into git's own folder."""
    parts = path.split("/")
    if (
        not path
        or "\0" in path
        or "\\" in path
        or any(part in ("", ".", "..") or part.casefold() == ".git" for part in parts)
    ):
        raise ChangeRequestInvalid(f"{path!r} is not a file path inside the repository")


class IndexEntries(Mapping[str, pygit2.IndexEntry]):
    """An index's entries by path, each looked up in libgit2 when asked: a tree of 20,000
    files is not copied into Python objects (1.2 s) unless every path is listed."""

    def __init__(self, index: pygit2.Index) -> None:
        self._index = index
        self._paths: list[str] | None = None

    def __getitem__(self, path: str) -> pygit2.IndexEntry:
        try:
            return self._index[path]
        except (KeyError, ValueError, TypeError):
            raise KeyError(path) from None

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and path in self._index

    def __iter__(self) -> Iterator[str]:
        if self._paths is None:
            self._paths = [entry.path for entry in self._index]
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._index)


class Workspace:
    """A commit's files plus pending edits (None deletes a file), in an in-memory index."""

    def __init__(self, r: pygit2.Repository, commit: pygit2.Commit) -> None:
        self.r, self.commit = r, commit
        self.index = pygit2.Index()
        self.index.read_tree(commit.tree)
        base = pygit2.Index()  # the commit's files as they are: `index` takes the edits
        base.read_tree(commit.tree)
        self.entries = IndexEntries(base)
        self.edits: dict[str, str | None] = {}

    def mode(self, path: str) -> FileMode:
        """The file mode to write: an edited file keeps its own (executable stays executable)."""
        entry = self.entries.get(path)
        return FileMode(entry.mode) if entry is not None else FileMode.BLOB

    def exists(self, path: str) -> bool:
        if path in self.edits:
            return self.edits[path] is not None
        return path in self.entries

    def listing(self) -> list[str]:
        return sorted(p for p in self.entries.keys() | self.edits.keys() if self.exists(p))

    def read(self, path: str) -> str:
        if path in self.edits:
            text = self.edits[path]
            if text is None:
                raise ChangeRequestInvalid(f"{path} was deleted by an earlier instruction")
            return text
        entry = self.entries.get(path)
        if entry is None:
            raise ChangeRequestInvalid(f"the repository has no {path}")
        if entry.mode not in REGULAR_FILE_MODES:
            raise ChangeRequestInvalid(f"{path} is not a regular file")
        blob = self.r[entry.id]
        assert isinstance(blob, pygit2.Blob)
        try:
            return blob.data.decode()
        except UnicodeDecodeError:
            raise ChangeRequestInvalid(f"{path} is not a text file") from None

    def write(self, path: str, text: str | None) -> None:
        check_tree_path(path)
        self.edits[path] = text

    def write_tree(self) -> pygit2.Oid:
        """The edited tree, written as objects (blobs, then trees) of the repository."""
        for path, text in sorted(self.edits.items()):
            if text is None:
                if path in self.entries:
                    self.index.remove(path)
                continue
            blob = self.r.create_blob(text.encode())
            self.index.add(pygit2.IndexEntry(path, blob, self.mode(path)))
        return self.index.write_tree(self.r)


def tree_reader(r: pygit2.Repository, treeish: pygit2.Oid | str) -> Callable[[str], str | None]:
    """A reader of one tree's files by path: the text of a regular file (undecodable bytes
    replaced), None for a path that is no regular file there."""
    tree = r[treeish].peel(pygit2.Tree)

    def read(path: str) -> str | None:
        try:
            entry = tree[path]
        except (KeyError, ValueError):
            return None
        if entry.filemode not in REGULAR_FILE_MODES:
            return None
        blob = r[entry.id]
        return blob.data.decode(errors="replace") if isinstance(blob, pygit2.Blob) else None

    return read


@dataclass
class DiffStat:
    patch: str  # git's unified diff (`git diff --full-index --no-renames`)
    files: list[str]
    added: int
    removed: int


# git's default diff since 2.14 uses the indent heuristic; no rename detection (--no-renames).
DIFF_FLAGS = DiffOption.INDENT_HEURISTIC


def diff_trees(r: pygit2.Repository, old: pygit2.Oid | str, new: pygit2.Oid | str) -> DiffStat:
    """The unified diff from tree `old` to tree `new`, with its files and line counts."""
    old_tree, new_tree = r[old].peel(pygit2.Tree), r[new].peel(pygit2.Tree)
    return _diff_stat(old_tree.diff_to_tree(new_tree, flags=DIFF_FLAGS))


def diff_from_empty(r: pygit2.Repository, new: pygit2.Oid | str) -> DiffStat:
    """Everything in tree `new`, as added files (a root commit's diff)."""
    return _diff_stat(r[new].peel(pygit2.Tree).diff_to_tree(flags=DIFF_FLAGS, swap=True))


def _diff_stat(diff: pygit2.Diff) -> DiffStat:
    parts: list[str] = []
    files: list[str] = []
    added = removed = 0
    for patch in diff:
        if patch is None:
            continue
        parts.append(_full_index(patch))
        files.append(patch.delta.new_file.path)
        _, plus, minus = patch.line_stats
        added, removed = added + plus, removed + minus
    return DiffStat("".join(parts), files, added, removed)


def _full_index(patch: pygit2.Patch) -> str:
    """The patch with whole object ids on its `index` line, as `git diff --full-index` prints:
    libgit2 abbreviates them to core.abbrev and has no option to do otherwise."""
    text = patch.text or ""
    header, found, rest = text.partition("\nindex ")
    if not found:
        return text
    ids, _, tail = rest.partition("\n")
    _, space, mode = ids.partition(" ")
    delta = patch.delta
    return f"{header}\nindex {delta.old_file.id}..{delta.new_file.id}{space}{mode}\n{tail}"


def rebase_tree(r: pygit2.Repository, change: pygit2.Commit, head: pygit2.Commit, onto: str) -> str:
    """`change` replayed on `head`: git's 3-way merge of the two commits from their merge base,
    in memory (no index file, no work tree); the merged tree's id, or RebaseConflict naming the
    conflicted files."""
    merged = r.merge_commits(head, change)
    if merged.conflicts is not None:
        conflicted = sorted(
            {str(entry.path) for sides in merged.conflicts for entry in sides if entry is not None}
        )
        raise RebaseConflict(
            f"the approved change conflicts with {onto} at {str(head.id)[:12]} "
            f"in {', '.join(conflicted) or 'the repository'}"
        )
    return str(merged.write_tree(r))


# --- checkouts ---------------------------------------------------------------------------


def _objects_dir(r: pygit2.Repository) -> Path:
    git_dir = Path(r.path)
    common = git_dir / "commondir"  # a linked worktree keeps its objects in the main git dir
    if common.is_file():
        git_dir = (git_dir / common.read_text().strip()).resolve()
    return git_dir / "objects"


def _checkout(project: pygit2.Repository, commit: str, directory: Path) -> None:
    target = commit_at(project, commit)
    # Like `git clone --shared --no-checkout` and a detached checkout: a repository of its own
    # that borrows the project's objects (the project is only read), HEAD at the commit. Its
    # git dir is written directly: `init` would first probe the file system with test files.
    git_dir = directory / ".git"
    (git_dir / "objects" / "info").mkdir(parents=True)
    (git_dir / "refs" / "heads").mkdir(parents=True)
    (git_dir / "config").write_text("[core]\n\trepositoryformatversion = 0\n\tbare = false\n")
    (git_dir / "objects" / "info" / "alternates").write_text(f"{_objects_dir(project)}\n")
    (git_dir / "HEAD").write_text(f"{target.id}\n")
    checkout = pygit2.Repository(str(directory), RepositoryOpenFlag.NO_SEARCH)
    checkout.checkout_tree(checkout[target.id], strategy=pygit2.enums.CheckoutStrategy.FORCE)


async def checkout_commit(repo: Path, commit: str, directory: Path) -> None:
    """A fresh work tree of `commit` in `directory` (which must not exist or be empty)."""
    await in_repository(repo, lambda r: _checkout(r, commit, directory))


def _delete_branch(r: pygit2.Repository, branch: str) -> bool:
    ref = f"refs/heads/{branch}"
    for _ in range(CAS_ATTEMPTS):
        current = reference_target(r, ref)
        if current is None:
            return False
        if compare_and_swap(r, ref, None, current):
            return True
    raise RepositoryError(f"branch {branch} kept moving while it was deleted")


async def delete_branch(repo: Path, branch: str) -> bool:
    """Delete `branch` by compare-and-swap, whatever it holds; False when there is none."""
    return await in_repository(repo, lambda r: _delete_branch(r, branch))
