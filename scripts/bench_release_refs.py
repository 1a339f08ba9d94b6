"""What pruning release refs saves: a remote served over smart HTTP (git's own
`git http-backend`, scripts/git_http_server.py) holding `refs/changeflow/releases/<id>` for
DEPLOYMENTS deployments (a staging and a production release of each of DEPLOYMENTS / 2 commits),
measured before and after the retention rule (models/release_retention.py) prunes it to
RETENTION: refs advertised, the bytes of the advertisement every fetch receives (protocol v0, as
libgit2 speaks it) and of `git ls-remote`, and the time of a fetch that finds nothing new (the
median of a few). Printed, never asserted; the last line is one JSON object.

    .venv/bin/python -m scripts.bench_release_refs        # BENCH_DEPLOYMENTS=500 BENCH_RETENTION=10
"""

import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pygit2

from activities.git_store import RELEASE_REFS, delete_refs, in_repository, release_refs
from activities.remote_repository import Repositories
from models import DeploymentStatus, Project
from models.release_retention import ReleaseFacts, refs_to_prune
from scripts.git_http_server import git_http_server

DEPLOYMENTS = int(os.environ.get("BENCH_DEPLOYMENTS", "500"))
RETENTION = int(os.environ.get("BENCH_RETENTION", "10"))
FETCHES = 5
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _git(repo: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], input=stdin, check=True, capture_output=True, text=True
    )
    return done.stdout


def _seed(bare: Path) -> list[ReleaseFacts]:
    """DEPLOYMENTS / 2 commits on main, each released to staging then production, every release
    kept by its ref; the deployments as the retention rule reads them."""
    stream = []
    for n in range(DEPLOYMENTS // 2):
        content = f'{{"release": {n}}}\n'
        message = f"release {n}\n"
        stream.append(
            "commit refs/heads/main\n"
            f"mark :{n + 1}\n"
            f"committer changeflow <changeflow@localhost> {1767225600 + n} +0000\n"
            f"data {len(message)}\n{message}"
            + (f"from :{n}\n" if n else "")
            + f"M 100644 inline config.json\ndata {len(content)}\n{content}\n"
        )
    _git(bare, "fast-import", "--quiet", stdin="".join(stream))
    commits = _git(bare, "rev-list", "--reverse", "main").split()
    facts, updates = [], []
    for n, commit in enumerate(commits):
        for offset, environment in enumerate(("staging", "production")):
            at = T0 + timedelta(minutes=2 * n + offset)
            d = ReleaseFacts(
                uuid.uuid4(), environment, DeploymentStatus.SUCCEEDED, commit, None, at, at
            )
            facts.append(d)
            updates.append(f"create {RELEASE_REFS}/{d.id} {commit}\n")
    _git(bare, "update-ref", "--stdin", stdin="".join(updates))
    return facts


def _advertisement_bytes(url: str) -> int:
    with urllib.request.urlopen(f"{url}/info/refs?service=git-upload-pack") as answer:
        return len(answer.read())


def _ls_remote_bytes(url: str) -> int:
    done = subprocess.run(["git", "ls-remote", url], check=True, capture_output=True)
    return len(done.stdout)


def _fetch_s(mirror: Path) -> float:
    """The median time of a fetch that brings nothing new."""
    r = pygit2.Repository(str(mirror))
    times = []
    for _ in range(FETCHES):
        started = time.perf_counter()
        r.remotes["origin"].fetch(prune=pygit2.enums.FetchPrune.PRUNE)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _measure(url: str, mirror: Path) -> dict[str, float]:
    return {
        "refs": len(_git(mirror, "for-each-ref", RELEASE_REFS).splitlines()),
        "advertisement_bytes": _advertisement_bytes(url),
        "ls_remote_bytes": _ls_remote_bytes(url),
        "noop_fetch_s": _fetch_s(mirror),
    }


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-release-refs-") as scratch:
        root = Path(scratch)
        with git_http_server(root / "remotes") as server:
            bare = server.create("shop")
            facts = _seed(bare)
            url = server.url_of("shop")
            project = Project(id=uuid.uuid4(), name="shop", slug="shop", repo_url=url)
            mirror = await Repositories(root / "cache").local(project)
            before = _measure(url, mirror)
            prunable = refs_to_prune(await in_repository(mirror, release_refs), facts, RETENTION)
            expected = {f"{RELEASE_REFS}/{name}": commit for name, commit in prunable.items()}
            started = time.perf_counter()
            deleted = await in_repository(mirror, lambda r: delete_refs(r, expected))
            prune_s = time.perf_counter() - started
            after = _measure(url, mirror)
    print(f"{DEPLOYMENTS} deployments, retention {RETENTION}: pruned {len(deleted)} refs "
          f"in {prune_s:.2f}s (one push per 500)")  # fmt: skip
    summary: dict[str, object] = {
        "deployments": DEPLOYMENTS,
        "retention": RETENTION,
        "pruned": len(deleted),
        "prune_s": round(prune_s, 3),
    }
    for name in before:
        ratio = before[name] / after[name] if after[name] else float("inf")
        print(f"  {name:20} before {before[name]:>10.4g}  after {after[name]:>10.4g}  "
              f"ratio {ratio:.1f}x")  # fmt: skip
        summary |= {
            f"{name}_before": round(before[name], 4),
            f"{name}_after": round(after[name], 4),
        }
        summary[f"{name}_ratio"] = round(ratio, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
