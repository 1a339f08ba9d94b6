"""`make bench-cli`: how long a `changeflow` call takes before and while doing its work.

It runs, each in a process of its own as a person's shell does, `changeflow --help` and
`changeflow tenant list --json` (against a migrated database holding three tenants), and in the
same run the baseline every typer command pays: `python -c "import typer"` (and, for scale,
`python -c pass`). Rounds alternate the cases so a busy neighbour slows them alike. It prints
per case the median wall time and CPU time (user + system of the process) and the ratio of each
command to the baseline; the last line is one JSON object with the same figures.

Imports dominate the start: whether the environment's packages carry compiled bytecode (`make
install` compiles it; PYTHONDONTWRITEBYTECODE=1 keeps Python from caching what it compiles
itself) changes the figures severalfold, so the script says which holds.

Runs on TEST_DATABASE_URL's server (a scratch database, dropped afterwards) when it is set,
otherwise on an embedded pgserver in a temporary folder. Tunable: BENCH_ROUNDS (default 7).
"""

import asyncio
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
ROOT = Path(__file__).resolve().parent.parent
BASELINE = "python -c 'import typer'"
TENANTS = ("Bench One", "Bench Two", "Bench Three")


def changeflow_command() -> list[str]:
    """The console script people run, or `python -m cli` where it is not installed."""
    script = Path(sys.executable).parent / "changeflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def cases() -> dict[str, list[str]]:
    command = changeflow_command()
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        BASELINE: [sys.executable, "-c", "import typer"],
        "changeflow --help": [*command, "--help"],
        "changeflow tenant list --json": [*command, "tenant", "list", "--json"],
    }


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system of the process) of one run of argv, which must
    succeed. Runs are one at a time, so the children's CPU grows by exactly this one's."""
    before = _children_cpu()
    started = time.perf_counter()
    ran = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, check=False)
    wall = time.perf_counter() - started
    if ran.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {ran.returncode}: {ran.stdout!r} {ran.stderr!r}")
    return wall, _children_cpu() - before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def command_env(database_url: str, data_dir: Path) -> dict[str, str]:
    """A person's shell: this database, no Temporal, none of this process's changeflow settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CHANGEFLOW_", "TEMPORAL_", "DATABASE_URL"))
    }
    env.update(DATABASE_URL=database_url, CHANGEFLOW_DATA_DIR=str(data_dir))
    return env


def bytecode_state() -> str:
    import sqlalchemy

    cached = Path(importlib.util.cache_from_source(sqlalchemy.__file__ or "")).exists()
    writes = not os.environ.get("PYTHONDONTWRITEBYTECODE")
    return (
        f"dependencies' bytecode {'compiled' if cached else 'NOT compiled'}; "
        f"Python {'caches' if writes else 'does not cache (PYTHONDONTWRITEBYTECODE)'} "
        "what it compiles"
    )


def measure(env: dict[str, str]) -> dict[str, dict[str, float]]:
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cases()}
    for argv in cases().values():  # one warm-up each: the page cache, not the figures
        timed(argv, env)
    for _ in range(ROUNDS):
        for name, argv in cases().items():
            runs[name].append(timed(argv, env))
    baseline = runs[BASELINE]
    base_wall = statistics.median(w for w, _ in baseline)
    base_cpu = statistics.median(c for _, c in baseline)
    figures: dict[str, dict[str, float]] = {}
    for name, samples in runs.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        figures[name] = {
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "wall_ratio": round(wall / base_wall, 2),
            "cpu_ratio": round(cpu / base_cpu, 2),
        }
    return figures


def report(figures: dict[str, dict[str, float]]) -> None:
    print(f"{'case':34} {'wall s':>8} {'cpu s':>8} {'x baseline (wall, cpu)':>24}")
    for name, f in figures.items():
        ratio = f"{f['wall_ratio']:.2f}, {f['cpu_ratio']:.2f}"
        print(f"{name:34} {f['wall_s']:8.3f} {f['cpu_s']:8.3f} {ratio:>24}")


@contextmanager
def scratch_database() -> Iterator[str]:
    """A migrated scratch database: on TEST_DATABASE_URL's server, or an embedded pgserver."""
    from models.migrate import upgrade
    from scripts.databases import create_database, drop_database
    from workers.devstack import start_postgres

    admin_url = os.environ.get("TEST_DATABASE_URL")
    if admin_url:
        name = f"changeflow_bench_cli_{uuid.uuid4().hex[:8]}"
        url = asyncio.run(create_database(admin_url, name))
        print(f"database: TEST_DATABASE_URL's server, database {name}")
        try:
            upgrade(url)
            yield url
        finally:
            asyncio.run(drop_database(admin_url, name))
        return
    with tempfile.TemporaryDirectory(prefix="changeflow-bench-cli-") as folder:
        server, url = start_postgres(Path(folder), "changeflow_bench_cli")
        print(f"database: embedded pgserver in {folder}")
        try:
            upgrade(url)
            yield url
        finally:
            server.cleanup()


def main() -> None:
    print(bytecode_state())
    print(f"rounds: {ROUNDS}, medians; baseline: {BASELINE}")
    with scratch_database() as url, tempfile.TemporaryDirectory() as data_dir:
        env = command_env(url, Path(data_dir))
        for name in TENANTS:
            timed([*changeflow_command(), "tenant", "create", name], env)
        figures = measure(env)
    report(figures)
    result: dict[str, Any] = {"rounds": ROUNDS, "baseline": BASELINE, "cases": figures}
    print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
