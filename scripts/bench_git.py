"""`make bench-git`: the change engine's and deploy target's git work in process (pygit2)
against the git CLI doing the same work, in one run, on the same sample repository.

Per round it times, alternating the two sides so a busy neighbour slows both alike:
- plan: the sample change (SAFE_PROMPT) planned on main: read the base commit's files, build
  the edited tree in a scratch index, diff it against the base;
- apply: the same change committed on a fresh branch: rebuild it, commit, create the branch by
  compare-and-swap;
- checkout: a fresh work tree of the commit for the project's check (a shared clone);
- release: an environment branch moved by compare-and-swap.

The CLI side is the subprocess sequence the engine ran before it used pygit2 (rev-parse,
ls-tree, cat-file, read-tree, hash-object, update-index, write-tree, diff, commit-tree,
update-ref, clone --shared, checkout). Both sides must produce the same diff and the same
commit, which the script checks. The last line is one JSON object: per-operation mean ms and
the CLI/in-process ratio (how many times faster in process). Tunable: BENCH_ROUNDS (default 30).
"""

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar, cast

from activities.git_change_engine import GitChangeEngine
from activities.git_store import (
    ENGINE_EMAIL,
    ENGINE_NAME,
    Workspace,
    checkout_commit,
    move_ref,
    resolve_commit,
)
from activities.rule_engine import carry_out, parse_prompt
from scripts.sample_repo import SAFE_PROMPT, create_sample_repo

T = TypeVar("T")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
OPERATIONS = ("plan", "apply", "checkout", "release")
DIFF = ("-c", "core.quotepath=off", "diff", "--no-color", "--no-ext-diff", "--no-textconv",
        "--no-renames", "--full-index", "--src-prefix=a/", "--dst-prefix=b/")  # fmt: skip


async def git(
    repo: Path,
    *args: str,
    stdin: bytes | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> str:
    process = await asyncio.create_subprocess_exec(
        "git", "-C", str(repo), *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", **(env or {})},
    )  # fmt: skip
    out, err = await process.communicate(stdin)
    if check and process.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {err.decode()}")
    return out.decode()


class CliWorkspace:
    """The rule engine's view of a commit's files, read by git subprocesses."""

    def __init__(self, repo: Path, commit: str, modes: dict[str, str], texts: dict[str, str]):
        self.repo, self.commit, self.modes, self.texts = repo, commit, modes, texts
        self.edits: dict[str, str | None] = {}

    @classmethod
    async def open(cls, repo: Path, commit: str) -> "CliWorkspace":
        modes = {}
        for entry in (await git(repo, "ls-tree", "-r", "-z", commit)).split("\0"):
            if entry:
                info, path = entry.split("\t", 1)
                modes[path] = info.split(" ", 1)[0]
        # The sample change reads config.json only: one cat-file, as before.
        texts = {"config.json": await git(repo, "cat-file", "blob", f"{commit}:config.json")}
        return cls(repo, commit, modes, texts)

    def exists(self, path: str) -> bool:
        return self.edits.get(path, "") is not None and (path in self.modes or path in self.edits)

    def listing(self) -> list[str]:
        return sorted(p for p in self.modes.keys() | self.edits.keys() if self.exists(p))

    def read(self, path: str) -> str:
        text = self.edits.get(path, self.texts.get(path))
        assert text is not None, path
        return text

    def write(self, path: str, text: str | None) -> None:
        self.edits[path] = text

    def mode(self, path: str) -> str:
        return self.modes.get(path, "100644")


async def cli_build(repo: Path, base: str) -> tuple[str, str, list[str]]:
    ws = await CliWorkspace.open(repo, base)
    summary = carry_out(cast(Workspace, ws), parse_prompt(SAFE_PROMPT))
    with tempfile.TemporaryDirectory(prefix="bench-index-") as scratch:
        index = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
        await git(repo, "read-tree", base, env=index)
        entries = []
        for path, text in sorted(ws.edits.items()):
            assert text is not None
            blob = await git(repo, "hash-object", "-w", "--no-filters", "--stdin",
                             stdin=text.encode())  # fmt: skip
            entries.append(f"{ws.mode(path)} {blob.strip()}\t{path}\0")
        await git(repo, "update-index", "-z", "--index-info",
                  stdin="".join(entries).encode(), env=index)  # fmt: skip
        tree = (await git(repo, "write-tree", env=index)).strip()
    numstat, _, diff = (await git(repo, *DIFF, "--numstat", "--patch", base, tree)).partition(
        "\n\n"
    )
    rows = [row.split("\t", 2) for row in numstat.splitlines()]
    summary.append(
        f"{len(rows)} file(s) changed, +{sum(int(r[0]) for r in rows)} "
        f"-{sum(int(r[1]) for r in rows)} lines."
    )
    return tree, diff, summary


async def cli_plan(repo: Path) -> str:
    base = (await git(repo, "rev-parse", "--verify", "--quiet", "main^{commit}")).strip()
    return (await cli_build(repo, base))[1]


async def cli_apply(repo: Path, base: str, branch: str) -> str:
    await git(repo, "check-ref-format", "--branch", branch)
    date = (await git(repo, "log", "-1", "--no-walk", "--format=%H %ct", base)).split()[1]
    tree, _, summary = await cli_build(repo, base)
    message = f"{summary[0][:72]}\n\n" + "\n".join(summary) + f"\n\nRequested:\n{SAFE_PROMPT}\n"
    identity = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
                for what, value in (("NAME", ENGINE_NAME), ("EMAIL", ENGINE_EMAIL),
                                    ("DATE", f"{date} +0000"))}  # fmt: skip
    commit = (await git(repo, "commit-tree", "--no-gpg-sign", tree, "-p", base,
                        stdin=message.encode(), env=identity)).strip()  # fmt: skip
    await git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    await git(repo, "update-ref", f"refs/heads/{branch}", commit, "0" * 40)
    return commit


async def cli_checkout(repo: Path, commit: str, directory: Path) -> None:
    await git(directory.parent, "clone", "--quiet", "--shared", "--no-checkout", str(repo),
              str(directory))  # fmt: skip
    await git(directory, "checkout", "--quiet", "--detach", commit)


async def cli_release(repo: Path, ref: str, new: str, old: str) -> None:
    await git(
        repo, "cat-file", "--batch-check", stdin=f"{new}^{{commit}}\n{ref}^{{commit}}\n".encode()
    )
    await git(repo, "update-ref", ref, new, old)


async def timed(work: Awaitable[T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = await work
    return (time.perf_counter() - started) * 1000, result


async def main() -> int:
    engine = GitChangeEngine()
    samples: dict[str, dict[str, list[float]]] = {
        side: {op: [] for op in OPERATIONS} for side in ("pygit2", "cli")
    }
    with tempfile.TemporaryDirectory(prefix="bench-git-") as folder:
        repo = create_sample_repo(Path(folder) / "storefront")
        checkouts = Path(folder) / "checkouts"
        checkouts.mkdir()
        base = await resolve_commit(repo, "main")
        assert base is not None
        for round_ in range(ROUNDS):
            # In process.
            ms, proposal = await timed(
                engine.plan(repo=repo, base_branch="main", prompt=SAFE_PROMPT)
            )
            samples["pygit2"]["plan"].append(ms)
            branch = f"bench/pygit2-{round_}"
            ms, applied = await timed(
                engine.apply(repo=repo, proposal=proposal, prompt=SAFE_PROMPT, branch=branch)
            )
            samples["pygit2"]["apply"].append(ms)
            directory = checkouts / uuid.uuid4().hex
            ms, _ = await timed(checkout_commit(repo, applied.commit_sha, directory))
            samples["pygit2"]["checkout"].append(ms)
            ref = "refs/heads/env/pygit2"
            old = None if round_ == 0 else (base if round_ % 2 == 0 else applied.commit_sha)
            new = applied.commit_sha if round_ % 2 == 0 else base
            ms, moved = await timed(move_ref(repo, ref, new, old))
            assert moved
            samples["pygit2"]["release"].append(ms)
            # The git CLI, same work.
            ms, diff = await timed(cli_plan(repo))
            samples["cli"]["plan"].append(ms)
            ms, commit = await timed(cli_apply(repo, base, f"bench/cli-{round_}"))
            samples["cli"]["apply"].append(ms)
            if diff != proposal.diff or commit != applied.commit_sha:
                print("the CLI and pygit2 disagree on the diff or the commit", file=sys.stderr)
                return 1
            directory = checkouts / uuid.uuid4().hex
            ms, _ = await timed(cli_checkout(repo, commit, directory))
            samples["cli"]["checkout"].append(ms)
            ref = "refs/heads/env/cli"
            if round_ == 0:
                await git(repo, "update-ref", ref, base)
            old, new = (base, commit) if round_ % 2 == 0 else (commit, base)
            ms, _ = await timed(cli_release(repo, ref, new, old))
            samples["cli"]["release"].append(ms)
            for done in checkouts.iterdir():
                shutil.rmtree(done)
    result: dict[str, Any] = {"rounds": ROUNDS}
    for op in OPERATIONS:
        fast = statistics.mean(samples["pygit2"][op])
        slow = statistics.mean(samples["cli"][op])
        result[f"{op}_pygit2_ms"] = round(fast, 2)
        result[f"{op}_cli_ms"] = round(slow, 2)
        result[f"{op}_cli_over_pygit2"] = round(slow / fast, 1)
        print(f"{op:9} pygit2 {fast:7.2f} ms   git CLI {slow:7.2f} ms   x{slow / fast:.1f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
