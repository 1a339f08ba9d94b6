"""The stand-in's repositories: bare git repositories on disk, changed only with git itself.

Everything GitHub does to a repository's content (a merge commit, a squash, moving or deleting a
ref with a compare-and-swap) is a git command here, so the refs a client sees over smart HTTP
and over REST are the same refs.
"""

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ZERO_SHA = "0" * 40

# GitHub refuses a push to a protected branch in its pre-receive step; the stand-in does the
# same with a pre-receive hook that reads the refs the stand-in wrote into protected-refs.
PRE_RECEIVE_HOOK = """#!/bin/sh
# Written by the GitHub stand-in: pushes to the refs in protected-refs are refused as GitHub does.
while read old new ref; do
  if grep -qxF "$ref" "$GIT_DIR/protected-refs" 2>/dev/null; then
    echo "error: GH006: Protected branch update failed for $ref." >&2
    echo "error: Changes must be made through a pull request." >&2
    exit 1
  fi
done
exit 0
"""

# GitHub's web-flow identity writes merge commits.
GITHUB_IDENTITY = {
    "GIT_AUTHOR_NAME": "GitHub",
    "GIT_AUTHOR_EMAIL": "noreply@github.com",
    "GIT_COMMITTER_NAME": "GitHub",
    "GIT_COMMITTER_EMAIL": "noreply@github.com",
}


class GitRefusal(Exception):
    """A git command refused (a compare-and-swap that lost, a conflict, a missing object)."""


@dataclass(frozen=True)
class BareRepository:
    path: Path

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, **GITHUB_IDENTITY, "GIT_DIR": str(self.path)}
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, env=environment, input=input
        )

    def git(self, *args: str, input: str | None = None) -> str:
        done = self.run(*args, input=input)
        if done.returncode != 0:
            raise GitRefusal(done.stderr.strip() or done.stdout.strip())
        return done.stdout.strip()

    @classmethod
    def create(cls, path: Path, *, default_branch: str) -> "BareRepository":
        subprocess.run(
            ["git", "init", "--quiet", "--bare", f"--initial-branch={default_branch}", str(path)],
            check=True,
        )
        repository = cls(path)
        # Served over smart HTTP with push enabled, as GitHub serves it.
        repository.git("config", "http.receivepack", "true")
        hook = path / "hooks" / "pre-receive"
        hook.write_text(PRE_RECEIVE_HOOK)
        hook.chmod(0o755)
        return repository

    def refs(self) -> dict[str, str]:
        """Every ref name (refs/heads/..., refs/tags/...) and the commit it points at."""
        listing = self.git("for-each-ref", "--format=%(refname) %(objectname)")
        return dict(line.split(" ", 1) for line in listing.splitlines() if line)

    def resolve(self, name: str) -> str | None:
        """A sha, a branch, a tag or a full ref name to a commit sha (None when unknown)."""
        for candidate in (name, f"refs/heads/{name}", f"refs/tags/{name}"):
            done = self.run("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}")
            if done.returncode == 0:
                return done.stdout.strip()
        return None

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.run("merge-base", "--is-ancestor", older, newer).returncode == 0

    def move_ref(self, ref: str, new: str, *, expected: str) -> None:
        """Compare-and-swap: `ref` moves to `new` only if it is still at `expected`
        (ZERO_SHA: only if it does not exist yet)."""
        self.git("update-ref", ref, new, expected)

    def delete_ref(self, ref: str, *, expected: str) -> None:
        self.git("update-ref", "-d", ref, expected)

    def merge_tree(self, base: str, head: str) -> str | None:
        """The tree of merging head into base, None when they conflict."""
        done = self.run("merge-tree", "--write-tree", "--no-messages", base, head)
        if done.returncode == 1:
            return None
        if done.returncode != 0:
            raise GitRefusal(done.stderr.strip())
        return done.stdout.splitlines()[0].strip()

    def commit_tree(self, tree: str, parents: list[str], message: str) -> str:
        parent_args = [arg for parent in parents for arg in ("-p", parent)]
        return self.git("commit-tree", tree, *parent_args, input=message)

    def commit_message(self, sha: str) -> str:
        return self.git("log", "-1", "--format=%B", sha)

    def commit_facts(self, sha: str) -> dict[str, str]:
        """Author and committer of a commit, for push payloads."""
        fields = self.git("log", "-1", "--format=%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%s", sha)
        an, ae, ad, cn, ce, subject = fields.split("\x00")
        return {
            "author_name": an,
            "author_email": ae,
            "timestamp": ad,
            "committer_name": cn,
            "committer_email": ce,
            "message": subject,
        }

    def tree_with(self, parent: str | None, files: dict[str, str]) -> str:
        """The tree of `parent` (None: empty) with `files` written over it, nested paths too."""
        entries: dict[str, str] = {}
        if parent:
            for line in self.git("ls-tree", "-r", "--full-tree", parent).splitlines():
                meta, path = line.split("\t", 1)
                entries[path] = meta
        for path, text in files.items():
            entries[path] = f"100644 blob {self.git('hash-object', '-w', '--stdin', input=text)}"
        return self._write_tree(entries)

    def _write_tree(self, entries: dict[str, str]) -> str:
        here: list[str] = []
        below: dict[str, dict[str, str]] = {}
        for path, meta in entries.items():
            if "/" in path:
                top, rest = path.split("/", 1)
                below.setdefault(top, {})[rest] = meta
            else:
                here.append(f"{meta}\t{path}")
        for directory, children in below.items():
            here.append(f"040000 tree {self._write_tree(children)}\t{directory}")
        listing = "\n".join(sorted(here, key=lambda entry: entry.split("\t")[1]))
        return self.git("mktree", input=listing + "\n")

    def protect_refs(self, refs: set[str]) -> None:
        (self.path / "protected-refs").write_text("".join(f"{ref}\n" for ref in sorted(refs)))

    def size_kb(self) -> int:
        """The repository's size in KiB as `git count-objects` sees it (loose plus packed)."""
        counts = dict(line.split(": ", 1) for line in self.git("count-objects", "-v").splitlines())
        return int(counts.get("size", "0")) + int(counts.get("size-pack", "0"))
