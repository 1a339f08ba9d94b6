"""The check a deployment runs: its verdict is kept once known, and a worker that dies does not
leave it running beside its retry (GitDeployTarget, real processes and git)."""

import asyncio
import json
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from activities.deploy_target import GitDeployTarget
from scripts.sample_repo import create_sample_repo

pytestmark = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[1]


def group_members(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(stat[2]) == group and stat[0] != "Z":
            members.append(int(entry.name))
    return members


async def test_a_check_run_to_its_end_is_not_run_again_by_a_retry(tmp_path: Path) -> None:
    repo = create_sample_repo(tmp_path / "repo")
    runs = tmp_path / "runs"
    target = GitDeployTarget(tmp_path / "workspace")
    check = f"echo ran >> {shlex.quote(str(runs))}"
    deployment_id = uuid.uuid4()

    verdicts = [
        await target.verify(
            repo=repo,
            environment="staging",
            commit_sha="main",
            check_command=check,
            deployment_id=deployment_id,
        )
        for _ in range(2)  # the second: a retry after the first's answer was lost
    ]

    assert [v.ok for v in verdicts] == [True, True]
    assert runs.read_text() == "ran\n"


async def test_a_retry_kills_the_check_its_dead_worker_left_running(tmp_path: Path) -> None:
    repo = create_sample_repo(tmp_path / "repo")
    workspace, slow = tmp_path / "workspace", tmp_path / "slow"
    slow.touch()
    # Slow while the marker exists; `; true` keeps the shell from exec-ing sleep, so the sleep
    # is a grandchild of the worker, the one PR_SET_PDEATHSIG alone would not reach.
    check = f"test -f {shlex.quote(str(slow))} && sleep 300; true"
    deployment_id = uuid.uuid4()
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import asyncio, sys, uuid; from pathlib import Path;"
        "from activities.deploy_target import GitDeployTarget as T;"
        "asyncio.run(T(Path(sys.argv[1])).verify(repo=Path(sys.argv[2]),"
        " environment='staging', commit_sha='main', check_command=sys.argv[3],"
        " deployment_id=uuid.UUID(sys.argv[4])))",
        str(workspace),
        str(repo),
        check,
        str(deployment_id),
        cwd=ROOT,
    )
    pidfile = (
        GitDeployTarget(workspace).project_dir(repo) / "checks" / f"{deployment_id}-staging.pid"
    )
    await asyncio.to_thread(
        wait_until, lambda: pidfile.exists() and len(group_members(_group(pidfile))) >= 2
    )
    group = _group(pidfile)
    worker.send_signal(signal.SIGKILL)  # the worker dies mid-check
    await worker.wait()
    await asyncio.sleep(0.5)
    assert group_members(group), "the dead worker's check should still run (the orphan)"

    slow.unlink()
    verdict = await GitDeployTarget(workspace).verify(
        repo=repo,
        environment="staging",
        commit_sha="main",
        check_command=check,
        deployment_id=deployment_id,
    )

    assert verdict.ok
    assert group_members(group) == []


def wait_until(condition: Callable[[], bool], within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _group(pidfile: Path) -> int:
    return int(json.loads(pidfile.read_text())["pid"])
