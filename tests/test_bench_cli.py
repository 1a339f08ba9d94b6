"""`make bench-cli` (scripts/bench_cli.py), one round: its last line is one JSON object with
each case's wall and CPU time and its ratio to the baseline measured in the same run."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_cli_benchmark_prints_each_case_against_its_baseline() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "scripts.bench_cli"],
        env={**os.environ, "BENCH_ROUNDS": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    result = json.loads(ran.stdout.splitlines()[-1])
    cases = result["cases"]
    assert set(cases) == {
        "python -c pass",
        "python -c 'import typer'",
        "changeflow --help",
        "changeflow tenant list --json",
    }
    assert cases[result["baseline"]]["wall_ratio"] == cases[result["baseline"]]["cpu_ratio"] == 1
    for figures in cases.values():
        assert figures["wall_s"] > 0 and figures["cpu_s"] > 0
    assert "changeflow tenant list --json" in ran.stdout.splitlines()[-2]
