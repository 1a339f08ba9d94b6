"""The `remote` phase of `make bench-lifecycle`: projects whose repository is a git remote.

1. N auto-approved lifecycles at once on projects on a plain git remote served over smart HTTP
   on this machine (scripts/git_http_server.py: git's own `git http-backend`), against N on
   local-path projects in the same run; each project has had one lifecycle before, so both are
   measured in their steady state (a remote project's mirror made): `remote_vs_local_ratio`;
2. planning (the plan activity's repository work: the mirror fetched, then the rule engine's
   plan) on a remote repository of about 50 MB in 20,000 files with a warm mirror, against the
   sample repository on the same remote: `big_repo_plan_extra_s` (the median of a few plans each).
"""

import asyncio
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from activities.git_change_engine import GitChangeEngine
from activities.remote_repository import Repositories
from models import Project
from models.db import SessionFactory
from scripts.git_http_server import GitHttpServer, git_http_server
from scripts.sample_repo import SAFE_PROMPT, SAMPLE_CHECK_COMMAND, create_sample_repo

BIG_FILES = 20_000
FILE_BYTES = 2_500  # 50 MB in 20,000 files
PLANS = 5
SECOND_PROMPT = "set store_name to Bench Shop"
# Changes something on both repositories planned (the sample one has shipped the two above).
PLAN_PROMPT = "set store_name to Planned Shop"


def create_big_repo(path: Path, *, files: int = BIG_FILES) -> Path:
    """The sample storefront plus `files` files of random text (FILE_BYTES each) in one commit
    on main (git fast-import: seconds, not minutes)."""
    create_sample_repo(path)
    size = FILE_BYTES
    head = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "main"], check=True, capture_output=True, text=True
    ).stdout.strip()
    importer = subprocess.Popen(
        ["git", "-C", str(path), "fast-import", "--quiet"], stdin=subprocess.PIPE
    )
    assert importer.stdin is not None
    message = b"Assets\n"
    importer.stdin.write(
        b"commit refs/heads/main\ncommitter Bench <bench@localhost> 1700000000 +0000\n"
        + f"data {len(message)}\n".encode()
        + message
        + f"from {head}\n".encode()
    )
    for index in range(files):
        content = os.urandom(size // 2).hex().encode()
        importer.stdin.write(
            f"M 100644 inline assets/{index // 1000:02d}/file-{index:05d}.txt\n"
            f"data {len(content)}\n".encode()
            + content
            + b"\n"
        )
    importer.stdin.close()
    if importer.wait() != 0:
        raise RuntimeError("git fast-import failed")
    return path


def publish(server: GitHttpServer, source: Path, name: str) -> str:
    """`source`'s main pushed to a new repository of the server; its URL."""
    bare = server.create(name)
    subprocess.run(
        ["git", "-C", str(source), "push", "--quiet", str(bare), "main:main"],
        check=True,
        capture_output=True,
    )
    return server.url_of(name)


async def remote_projects(
    sessions: SessionFactory, tenant_id: uuid.UUID, work: Path, server: GitHttpServer, n: int
) -> list[Project]:
    projects = []
    for _ in range(n):
        suffix = uuid.uuid4().hex[:8]
        source = await asyncio.to_thread(create_sample_repo, work / f"source-{suffix}")
        url = await asyncio.to_thread(publish, server, source, f"storefront-{suffix}")
        projects.append(
            Project(
                tenant_id=tenant_id,
                name=f"Remote storefront {suffix}",
                slug=f"remote-storefront-{suffix}",
                repo_url=url,
                check_command=SAMPLE_CHECK_COMMAND,
            )
        )
    async with sessions() as session:
        session.add_all(projects)
        await session.commit()
    return projects


async def plan_seconds(repositories: Repositories, project: Project) -> float:
    """The median of PLANS plans: the mirror fetched, then planned, as plan_request does."""
    engine = GitChangeEngine()
    times = []
    for _ in range(PLANS):
        started = time.monotonic()
        repo = await repositories.local(project)
        await engine.plan(
            repo=repo, base_branch="main", prompt=PLAN_PROMPT, check_command=SAMPLE_CHECK_COMMAND
        )
        times.append(time.monotonic() - started)
    return statistics.median(times)


Completed = Callable[[list[Project], str], Awaitable[float]]


async def measure_remote(
    sessions: SessionFactory,
    tenant_id: uuid.UUID,
    local: list[Project],
    work: Path,
    completed: Completed,
    say: Callable[[str], None],
    *,
    big_files: int = BIG_FILES,
) -> dict[str, Any]:
    """`completed(projects, prompt)` runs one lifecycle per project at once and returns the
    seconds they took; `local` are as many local-path projects of the same tenant."""
    n = len(local)
    with git_http_server(work / "remotes") as server:
        remote = await remote_projects(sessions, tenant_id, work, server, n)
        await completed(local + remote, SAFE_PROMPT)  # steady state: every mirror made
        local_s = await completed(local, SECOND_PROMPT)
        remote_s = await completed(remote, SECOND_PROMPT)
        local_tps, remote_tps = n / local_s, n / remote_s
        say(
            f"{n} lifecycles at once on local-path projects {local_tps:.2f}/s, on smart HTTP "
            f"remotes {remote_tps:.2f}/s"
        )

        big_source = await asyncio.to_thread(create_big_repo, work / "big-source", files=big_files)
        big_mb = big_files * FILE_BYTES // 1_000_000
        started = time.monotonic()
        big_url = await asyncio.to_thread(publish, server, big_source, "big")
        push_s = time.monotonic() - started
        objects = (server.root / "big.git" / "objects").rglob("*")
        pack_mb = sum(f.stat().st_size for f in objects if f.is_file()) / 1e6
        repositories = Repositories(work / "plan-cache")
        big = Project(tenant_id=tenant_id, name="big", slug="big", repo_url=big_url)
        sample = Project(tenant_id=tenant_id, name="s", slug="s", repo_url=remote[0].repo_url)
        started = time.monotonic()
        await repositories.local(big)  # the mirror made: a cold start's cost
        mirror_s = time.monotonic() - started
        await repositories.local(sample)
        big_plan_s = await plan_seconds(repositories, big)
        sample_plan_s = await plan_seconds(repositories, sample)
        say(
            f"plan with a warm mirror: {big_files} files / {big_mb} MB "
            f"({pack_mb:.0f} MB packed) {big_plan_s:.3f}s, sample {sample_plan_s:.3f}s; "
            f"its mirror made in {mirror_s:.1f}s (pushed in {push_s:.1f}s)"
        )
    return {
        "remote_n": n,
        "local_path_throughput_per_s": round(local_tps, 3),
        "remote_throughput_per_s": round(remote_tps, 3),
        "remote_vs_local_ratio": round(remote_tps / local_tps, 3),
        "big_repo_files": big_files,
        "big_repo_content_mb": big_mb,
        "big_repo_packed_mb": round(pack_mb, 1),
        "big_repo_plan_warm_s": round(big_plan_s, 3),
        "sample_repo_plan_warm_s": round(sample_plan_s, 3),
        "big_repo_plan_extra_s": round(big_plan_s - sample_plan_s, 3),
        "big_repo_mirror_made_s": round(mirror_s, 1),
    }
