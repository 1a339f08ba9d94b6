"""`changeflow` loads what the command it runs needs and nothing of the other groups': `--help`
loads typer alone (no database, Temporal or product code), a tenancy command never the commerce
code, git, the migrations or Temporal. Each probe runs `changeflow` in a process of its
own, as a person's shell does, and reads what that process had imported when it ended."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from cli.app import GROUPS, LazyGroup

ROOT = Path(__file__).resolve().parent.parent

# Runs `changeflow <args>` (cli.app:main without its os._exit) and writes the names of the
# modules the process imported to the file named last.
PROBE = """
import json, sys
from cli.app import app
*args, modules = sys.argv[1:]
try:
    app(args, prog_name="changeflow")
except SystemExit as exc:
    code = exc.code
with open(modules, "w") as out:
    json.dump(sorted(sys.modules), out)
sys.exit(code)
"""

# What a command of each group may never load, beside the other groups' modules.
GIT = {"pygit2"}
COMMERCE_CODE = {
    "activities.shopify",
    "activities.order_file",
    "activities.order_import",
    "activities.commerce_sync",
    "workflows.commerce",
    "workflows.order_import",
}
TEMPORAL = {"temporalio"}
MIGRATIONS = {"alembic", "models.migrate"}
OTHER_GROUPS_HEAVY = GIT | COMMERCE_CODE | TEMPORAL | MIGRATIONS
NEVER_LOADED_BY: dict[str, set[str]] = {
    "tenant": OTHER_GROUPS_HEAVY,
    "user": OTHER_GROUPS_HEAVY,
    "policy": OTHER_GROUPS_HEAVY,
    "project": OTHER_GROUPS_HEAVY,
    "tokens": OTHER_GROUPS_HEAVY,
    # Temporal only once a rollback runs.
    "deployment": OTHER_GROUPS_HEAVY,
    "notify": OTHER_GROUPS_HEAVY,
    "request": GIT | COMMERCE_CODE | MIGRATIONS,
    "connector": GIT | MIGRATIONS | {"activities.order_file", "workflows.order_import"},
    "commerce": GIT | MIGRATIONS,
}


def person_env(tmp_path: Path, database_url: str | None = None) -> dict[str, str]:
    """A person's shell: none of this process's changeflow settings, no Temporal."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CHANGEFLOW_", "TEMPORAL_", "DATABASE_URL"))
    }
    env.update(PYTHONPATH=str(ROOT), CHANGEFLOW_DATA_DIR=str(tmp_path / "data"))
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


def changeflow(
    env: dict[str, str], tmp_path: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    modules = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    ran = subprocess.run(
        [sys.executable, "-c", PROBE, *args, str(modules)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return ran, set(json.loads(modules.read_text()))


def loaded(modules: set[str], names: set[str]) -> set[str]:
    """Which of `names` (packages or modules) are among `modules`."""
    return {m for m in modules if m in names or m.split(".")[0] in names}


def group_modules(but: str | None = None) -> set[str]:
    return {group.module for name, group in GROUPS.items() if name != but}


def test_help_lists_every_group_and_loads_none_of_them(tmp_path: Path) -> None:
    ran, modules = changeflow(person_env(tmp_path), tmp_path, "--help")
    assert ran.returncode == 0, ran.stderr
    for name, group in GROUPS.items():
        assert name in ran.stdout
        assert group.help[:40] in ran.stdout
    heavy = {"sqlalchemy", "sqlmodel", "temporalio", "pygit2", "alembic", "asyncpg", "pydantic"}
    assert not loaded(modules, heavy)
    assert not loaded(modules, {"activities", "models", "workflows"})
    assert not modules & group_modules()
    assert not {m for m in modules if m.startswith("workers.") and m != "infra.entry_points"}


@pytest.mark.parametrize("name", list(GROUPS))
def test_a_groups_help_loads_that_group_alone(name: str, tmp_path: Path) -> None:
    ran, modules = changeflow(person_env(tmp_path), tmp_path, name, "--help")
    assert ran.returncode == 0, ran.stderr
    assert f"Usage: changeflow {name} [OPTIONS] COMMAND" in " ".join(ran.stdout.split())
    assert GROUPS[name].module in modules
    assert not modules & group_modules(but=name)
    assert not loaded(modules, NEVER_LOADED_BY[name])


def test_tenant_commands_load_no_other_groups_code(tmp_path: Path, database_url: str) -> None:
    env = person_env(tmp_path, database_url)
    slug = f"imports-{uuid.uuid4().hex[:8]}"
    created, _ = changeflow(env, tmp_path, "tenant", "create", "Imports", "--slug", slug)
    assert created.returncode == 0, created.stderr
    listed, modules = changeflow(env, tmp_path, "tenant", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert slug in {row["slug"] for row in json.loads(listed.stdout)}
    assert not modules & group_modules(but="tenant")
    # The list reads the database alone: no ledger, no Temporal, no commerce, no git.
    assert not loaded(modules, NEVER_LOADED_BY["tenant"] | {"activities"})


def test_the_root_lists_each_group_with_the_groups_own_help() -> None:
    for name, group in GROUPS.items():
        loaded_group: Any = LazyGroup(name, group).load()
        assert loaded_group.help == group.help, f"GROUPS[{name!r}].help differs from its module's"
