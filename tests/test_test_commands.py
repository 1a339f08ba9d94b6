"""The README's test commands, as `make` would run them (a dry run: `make -n` prints the
commands without running them): each tier, every test-fast and test run on pytest-xdist workers,
TEST_WORKERS and PYTEST_ARGS passed through."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def pytest_line(*make_args: str) -> list[str]:
    """The arguments `make` would give pytest for these arguments of its own."""
    dry = subprocess.run(
        ["make", "-n", *make_args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    (line,) = [line for line in dry.stdout.splitlines() if " -m pytest " in line]
    argv = shlex.split(line)
    return argv[argv.index("pytest") + 1 :]


def test_every_make_command_in_the_readmes_test_block_is_a_target() -> None:
    block = README[README.index("`make test-fast` runs unit and workflow") :]
    block = block[block.index("```sh") : block.index("```", block.index("```sh") + 5)]
    targets = re.findall(r"^make ([\w-]+)", block, re.M)
    assert {"test", "test-fast", "test-system"} <= set(targets)
    makefile = (ROOT / "Makefile").read_text()
    for target in targets:
        assert re.search(rf"^(\S+ )*{target}[ :]", makefile, re.M), target


@pytest.mark.parametrize(
    ("target", "marker"),
    [
        ("test", None),
        ("test-fast", "not system"),
        ("test-unit", "unit"),
        ("test-workflow", "workflow"),
        ("test-system", "system"),
    ],
)
def test_each_target_runs_its_tier_on_xdist_workers(target: str, marker: str | None) -> None:
    argv = pytest_line(target)
    assert argv[argv.index("-n") + 1] == "4"
    assert ("-m" in argv) == (marker is not None)
    if marker is not None:
        assert argv[argv.index("-m") + 1] == marker


def test_workers_and_pytest_arguments_can_be_given() -> None:
    argv = pytest_line("test-fast", "TEST_WORKERS=0", "PYTEST_ARGS=-x -k lane")
    assert argv[argv.index("-n") + 1] == "0"
    assert argv[-3:] == ["-x", "-k", "lane"]
