"""Deploy targets release a commit of a project to an environment and verify it there.

`GitDeployTarget` is the built-in default. An environment is a branch of the project's own
repository, `env/<environment>`: releasing points that branch at the commit, rolling back
releases an earlier one. Every release also creates `refs/changeflow/releases/<deployment id>`
at its commit (never moved afterwards), so whatever any deployment released stays reachable
and survives `git gc` as a rollback target, after its request's branch is gone and the
environment moved on; rollbacks name their target by commit id, found through these refs.
Before the branch moves, a release is recorded under the workspace by deployment id (and
appended, as one JSON line, to the project's release log), so a retried release finds its first
attempt and finishes it instead of releasing twice. Verification runs the project's check
command in a fresh checkout of the commit with CHANGEFLOW_ENVIRONMENT set and a timeout; its
output goes to a log file per deployment and environment. Its verdict is written beside the log
once known, so a retry of the same deployment's check on this worker (it died before the verdict
was reported) returns it instead of running the check again; the release activities keep it on
the Deployment row too, for a retry on another host.

A check runs in a process group of its own, recorded in a pidfile while it runs: a cancelled or
timed-out check is killed with its whole group, a worker that dies takes its direct child with
it (PR_SET_PDEATHSIG), and the retry kills whatever a dead attempt's check left running.

The check command runs with a minimal environment (PATH, HOME, locale, TMPDIR and the
CHANGEFLOW_ENVIRONMENT/COMMIT/DEPLOYMENT_ID variables): the worker's own secrets stay with it.
"""

import asyncio
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pygit2
from pydantic import BaseModel

from activities.change_engine import RepositoryError
from activities.git_store import (
    checkout_commit,
    compare_and_swap,
    diff_from_empty,
    diff_trees,
    ensure_repository,
    in_repository,
    keep_release,
    move_ref,
    peel_commit,
    reference_target,
    release_ref,
    resolve_commit,
)
from models.base import utcnow

# Variables a check command may see from the worker's environment; nothing else leaks.
CHECK_ENV_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "USER")


class ReleaseResult(BaseModel):
    environment: str
    commit_sha: str
    previous_commit_sha: str | None
    log_path: str  # the project's release log
    diff_path: str | None = None  # what this release changed in the environment


class VerificationResult(BaseModel):
    ok: bool
    output: str  # the end of the check's output
    log_path: str
    duration_s: float


class DeployTarget(Protocol):
    async def current_release(self, *, repo: Path, environment: str) -> str | None: ...

    async def release(
        self, *, repo: Path, environment: str, commit_sha: str, deployment_id: uuid.UUID
    ) -> ReleaseResult: ...

    async def verify(
        self,
        *,
        repo: Path,
        environment: str,
        commit_sha: str,
        check_command: str,
        deployment_id: uuid.UUID,
    ) -> VerificationResult: ...

    async def rollback(
        self, *, repo: Path, environment: str, to_commit_sha: str, deployment_id: uuid.UUID
    ) -> ReleaseResult: ...

    async def withdraw(self, *, repo: Path, environment: str, commit_sha: str) -> None: ...


class DeployTargetError(Exception):
    """Base of the target's errors; none of them gets better by retrying."""


class UnknownCommit(DeployTargetError):
    """The commit to release or verify is not in the repository."""


class InvalidEnvironment(DeployTargetError):
    """The environment name cannot be a branch name."""


class ReleaseConflict(DeployTargetError):
    """The deployment already released another commit, or the branch moved underneath it."""


ENVIRONMENT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")


def environment_ref(environment: str) -> str:
    if not ENVIRONMENT_NAME.fullmatch(environment):
        raise InvalidEnvironment(f"{environment!r} is not an environment name (a-z, 0-9, _, -)")
    return f"refs/heads/env/{environment}"


class GitDeployTarget:
    """Environments as branches `env/<environment>` of the project's repository."""

    def __init__(
        self, workspace_dir: Path, *, check_timeout_s: float = 300.0, output_limit: int = 8000
    ) -> None:
        # Absolute: git runs in other folders (-C) and must find the same places.
        self.workspace_dir = Path(workspace_dir).resolve()
        self.check_timeout_s = check_timeout_s
        self.output_limit = output_limit

    def project_dir(self, repo: Path) -> Path:
        """This repository's folder in the workspace: release log, diffs, logs, checkouts."""
        resolved = Path(repo).resolve()
        digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", resolved.name) or "repo"
        return self.workspace_dir / f"{name}-{digest}"

    def release_log(self, repo: Path) -> Path:
        """Every release and rollback of the repository, one JSON line each, in order."""
        return self.project_dir(repo) / "releases.log"

    def release_record(self, repo: Path, deployment_id: uuid.UUID, environment: str) -> Path:
        """What one deployment released: found again by its retries without reading the log."""
        return self.project_dir(repo) / "releases" / f"{deployment_id}-{environment}.json"

    async def current_release(self, *, repo: Path, environment: str) -> str | None:
        ref = environment_ref(environment)
        current = await resolve_commit(repo, ref)
        if current is None:  # never released, or no repository at all: find out which
            await _ensure_repository(repo)
        return current

    async def release(
        self, *, repo: Path, environment: str, commit_sha: str, deployment_id: uuid.UUID
    ) -> ReleaseResult:
        return await self._release(repo, environment, commit_sha, deployment_id, "release")

    async def rollback(
        self, *, repo: Path, environment: str, to_commit_sha: str, deployment_id: uuid.UUID
    ) -> ReleaseResult:
        return await self._release(repo, environment, to_commit_sha, deployment_id, "rollback")

    async def withdraw(self, *, repo: Path, environment: str, commit_sha: str) -> None:
        """Undo an environment's first release: its branch is removed while it still points at
        `commit_sha` (before that release the environment ran nothing)."""
        ref = environment_ref(environment)

        def remove(r: pygit2.Repository) -> None:
            current = reference_target(r, ref)
            if current is not None and current.startswith(commit_sha):
                compare_and_swap(r, ref, None, current)  # a remote's too, by compare-and-swap

        async with self._project_lock(repo):
            try:
                await in_repository(repo, remove)
            except RepositoryError as exc:
                raise DeployTargetError(str(exc)) from None
            await asyncio.to_thread(
                _append_json_line,
                self.release_log(repo),
                {
                    "at": utcnow().isoformat(),
                    "environment": environment,
                    "action": "withdraw",
                    "commit_sha": commit_sha,
                    "previous_commit_sha": None,
                },
            )

    async def _release(
        self,
        repo: Path,
        environment: str,
        commit_sha: str,
        deployment_id: uuid.UUID,
        action: str,
    ) -> ReleaseResult:
        ref = environment_ref(environment)
        log_path = self.release_log(repo)
        record_path = self.release_record(repo, deployment_id, environment)
        async with self._project_lock(repo):
            # The commit and the environment's release, read in one visit to the repository.
            commit, current = await _resolve_with(repo, commit_sha, ref)
            # Kept before the environment moves, on the remote too: any worker's retry finds it.
            kept = await _keep_release(repo, deployment_id, commit)
            if kept != commit:
                raise ReleaseConflict(
                    f"deployment {deployment_id} already released {kept[:12]} to {environment}, "
                    f"not {commit[:12]}"
                )
            earlier = await asyncio.to_thread(_read_json, record_path)
            if earlier is not None:
                entry = earlier
                if entry["commit_sha"] != commit:
                    raise ReleaseConflict(
                        f"deployment {deployment_id} already released {entry['commit_sha'][:12]} "
                        f"to {environment}, not {commit[:12]}"
                    )
                previous = entry["previous_commit_sha"]
                if current != commit:
                    # An attempt that recorded the release but died before moving the branch.
                    if current != previous or not await move_ref(repo, ref, commit, current):
                        raise ReleaseConflict(
                            f"{environment} moved to {(current or 'nothing')[:12]} since "
                            f"deployment {deployment_id} released {commit[:12]}"
                        )
                    if not await asyncio.to_thread(_log_ends_with, log_path, entry):
                        await asyncio.to_thread(_append_json_line, log_path, entry)
            else:
                previous = current
                entry = {
                    "at": utcnow().isoformat(),
                    "deployment_id": str(deployment_id),
                    "environment": environment,
                    "action": action,
                    "commit_sha": commit,
                    "previous_commit_sha": previous,
                }
                # Recorded first: a retry after a crash knows the true previous release.
                await asyncio.to_thread(_write_json, record_path, entry)
                await asyncio.to_thread(_append_json_line, log_path, entry)
                if previous != commit and not await move_ref(repo, ref, commit, previous):
                    raise ReleaseConflict(f"{environment} moved while releasing {commit[:12]}")
        diff_path = await self._write_diff(repo, deployment_id, environment, previous, commit)
        return ReleaseResult(
            environment=environment,
            commit_sha=commit,
            previous_commit_sha=previous,
            log_path=str(log_path),
            diff_path=str(diff_path),
        )

    async def _write_diff(
        self,
        repo: Path,
        deployment_id: uuid.UUID,
        environment: str,
        previous: str | None,
        commit: str,
    ) -> Path:
        diff = await _release_diff(repo, previous, commit)
        path = self.project_dir(repo) / "diffs" / f"{deployment_id}-{environment}.diff"
        await asyncio.to_thread(_write_bytes, path, diff.encode())
        return path

    async def verify(
        self,
        *,
        repo: Path,
        environment: str,
        commit_sha: str,
        check_command: str,
        deployment_id: uuid.UUID,
    ) -> VerificationResult:
        environment_ref(environment)
        commit = await _resolve(repo, commit_sha)
        project_dir = self.project_dir(repo)
        name = f"{deployment_id}-{environment}"
        log_path = project_dir / "logs" / f"{name}-verify.log"
        started = time.monotonic()
        if not check_command.strip():
            output = "no check command is configured; nothing to verify\n"
            await asyncio.to_thread(_write_bytes, log_path, output.encode())
            return VerificationResult(ok=True, output=output, log_path=str(log_path), duration_s=0)
        verdict_path = project_dir / "verdicts" / f"{name}-{commit}.json"
        known = await asyncio.to_thread(_read_json, verdict_path)
        if known is not None:  # an earlier attempt ran the check to its end: never run it twice
            return VerificationResult.model_validate(known)
        checkout = project_dir / "checkouts" / name
        pidfile = project_dir / "checks" / f"{name}.pid"
        # A dead attempt's check may still run in the checkout this attempt recreates.
        await asyncio.to_thread(_kill_leftover, pidfile)
        try:
            await self._checkout(repo, commit, checkout)
            ok = await self._run_check(
                check_command, checkout, log_path, environment, commit, deployment_id, pidfile
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, checkout, True)
        output = await asyncio.to_thread(_tail, log_path, self.output_limit)
        result = VerificationResult(
            ok=ok,
            output=output,
            log_path=str(log_path),
            duration_s=round(time.monotonic() - started, 3),
        )
        await asyncio.to_thread(_write_json, verdict_path, result.model_dump())
        return result

    async def _checkout(self, repo: Path, commit: str, directory: Path) -> None:
        await asyncio.to_thread(shutil.rmtree, directory, True)  # a previous attempt's leftovers
        try:
            await checkout_commit(repo, commit, directory)
        except RepositoryError as exc:
            raise DeployTargetError(str(exc)) from None

    async def _run_check(
        self,
        command: str,
        checkout: Path,
        log_path: Path,
        environment: str,
        commit: str,
        deployment_id: uuid.UUID,
        pidfile: Path,
    ) -> bool:
        env = {k: os.environ[k] for k in CHECK_ENV_PASSTHROUGH if k in os.environ}
        env |= {
            "CHANGEFLOW_ENVIRONMENT": environment,
            "CHANGEFLOW_COMMIT": commit,
            "CHANGEFLOW_DEPLOYMENT_ID": str(deployment_id),
        }
        header = f"$ {command}\n# environment={environment} commit={commit}\n"
        log = await asyncio.to_thread(_open_log, log_path, header)
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_shell(
                command,
                cwd=checkout,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                # Its own process group: a timeout or cancellation kills the whole check.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            await asyncio.to_thread(_write_pidfile, pidfile, process.pid)
            try:
                code = await asyncio.wait_for(process.wait(), self.check_timeout_s)
                footer = f"# exit code {code} after {time.monotonic() - started:.2f}s\n"
                _kill_group(process)  # whatever the check left running in the background
            except TimeoutError:
                _kill_group(process)
                await process.wait()
                code = None
                footer = f"# timed out after {self.check_timeout_s:g}s; the check was killed\n"
            except asyncio.CancelledError:
                _kill_group(process)
                await process.wait()
                raise
            log.write(footer.encode())
        finally:
            log.close()
            await asyncio.to_thread(pidfile.unlink, True)
        return code == 0

    @contextlib.asynccontextmanager
    async def _project_lock(self, repo: Path) -> AsyncIterator[None]:
        """Serialises releases of one repository across coroutines and worker processes."""
        lock_path = self.project_dir(repo) / "releases.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Polled rather than blocking in a thread, so a cancelled activity stops waiting.
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            yield
        finally:
            os.close(fd)  # closing releases the lock


async def _ensure_repository(repo: Path) -> None:
    try:
        await ensure_repository(repo)
    except RepositoryError as exc:
        raise DeployTargetError(str(exc)) from None


async def _resolve(repo: Path, commit_sha: str) -> str:
    """The full commit id; only a failure pays for checking the repository itself."""
    commit = await resolve_commit(repo, commit_sha) if commit_sha.strip() else None
    if commit is None:
        await _ensure_repository(repo)
        raise UnknownCommit(f"{repo} has no commit {commit_sha!r}")
    return commit


async def _resolve_with(repo: Path, commit_sha: str, ref: str) -> tuple[str, str | None]:
    """The full commit id of `commit_sha` and what `ref` points at (None: nothing), in one
    visit to the repository."""
    if not commit_sha.strip():
        return await _resolve(repo, commit_sha), None  # refused there

    def read(r: pygit2.Repository) -> tuple[str | None, str | None]:
        commit = peel_commit(r, commit_sha)
        return (str(commit.id) if commit is not None else None), reference_target(r, ref)

    try:
        commit, current = await in_repository(repo, read)
    except RepositoryError as exc:
        raise DeployTargetError(str(exc)) from None
    if commit is None:
        raise UnknownCommit(f"{repo} has no commit {commit_sha!r}")
    return commit, current


async def _keep_release(repo: Path, deployment_id: uuid.UUID, commit: str) -> str:
    """The commit `refs/changeflow/releases/<deployment id>` keeps: made at `commit` if new."""
    return await in_repository(repo, lambda r: keep_release(r, release_ref(deployment_id), commit))


async def _release_diff(repo: Path, previous: str | None, commit: str) -> str:
    """What a release changes in its environment: the diff from the previous release, or for a
    first release the commit itself (`git show`: its message, then its own diff)."""

    def describe(r: pygit2.Repository) -> str:
        target = r[commit]
        assert isinstance(target, pygit2.Commit)
        if previous is not None:
            return diff_trees(r, previous, commit).patch
        if target.parents:
            own = diff_trees(r, target.parents[0].tree_id, target.tree_id)
        else:
            own = diff_from_empty(r, target.tree_id)
        return f"commit {commit}\n\n{target.message}\n\n{own.patch}"

    return await in_repository(repo, describe)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the forked check, before exec: the kernel kills it when the worker dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat from field 3 on (after the command name), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> int | None:
    """The process's start in clock ticks since boot (field 22): with the pid it names one
    process, never a later one that reused the pid."""
    stat = _stat(pid)
    return int(stat[19]) if stat else None


def _write_pidfile(path: Path, pid: int) -> None:
    _write_json(path, {"pid": pid, "start": _process_start(pid)})


def _kill_leftover(pidfile: Path) -> None:
    """Kill what a dead attempt's check left running: the processes of its process group
    (group id = the check's pid) that started no earlier than the check itself."""
    leftover = _read_json(pidfile)
    if leftover is None:
        return
    group, started = int(leftover["pid"]), leftover.get("start")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or started is None:
            continue
        stat = _stat(entry.name)
        if stat and int(stat[2]) == group and int(stat[19]) >= int(started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def _write_json(path: Path, entry: dict[str, Any]) -> None:
    """Atomically: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("w") as file:
        json.dump(entry, file, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    partial.replace(path)


def _append_json_line(path: Path, entry: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.write(json.dumps(entry, sort_keys=True) + "\n")
        log.flush()
        os.fsync(log.fileno())


def _log_ends_with(path: Path, entry: dict[str, Any]) -> bool:
    """Whether the log's recent lines hold `entry` (logged just before a crash)."""
    if not path.exists():
        return False
    with path.open("rb") as log:
        log.seek(max(0, log.seek(0, os.SEEK_END) - 65536))
        tail = log.read().decode(errors="replace")
    return json.dumps(entry, sort_keys=True) in tail.splitlines()


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _open_log(path: Path, header: str) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode())
    # Appending: the check and this process share the file; each write lands at the end.
    return path.open("ab", buffering=0)


def _tail(path: Path, limit: int) -> str:
    data = path.read_bytes()
    text = data[-limit:].decode(errors="replace")
    return text if len(data) <= limit else "...\n" + text
