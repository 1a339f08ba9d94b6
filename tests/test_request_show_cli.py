"""Approvers see what they approve: `changeflow request show`, run as a person runs it (a process
of its own, on a pipe and on a terminal), shows the plan's diff, its files and line counts, the
risk reasons and the estimate; coloured and paged on a terminal, whole under --json."""

import subprocess
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client

from models import DeploymentPlan
from models.db import SessionFactory
from scripts.sample_repo import OVERSPEND_PROMPT
from tests.cli_support import changeflow_on_terminal, ok, without_colours
from tests.test_cli import corner_shop, signed_decisions
from tests.workers import running_workers

pytestmark = pytest.mark.asyncio(loop_scope="session")

GREEN, RED = "\x1b[32m", "\x1b[31m"


async def plan_row(sessions: SessionFactory, plan_id: str) -> DeploymentPlan:
    async with sessions() as session:
        plan = await session.get(DeploymentPlan, uuid.UUID(plan_id))
        assert plan is not None
        return plan


def numstat(diff: str) -> list[dict[str, object]]:
    """git's own count of a patch's lines per file (`git apply --numstat`, nothing applied)."""
    counted = subprocess.run(
        ["git", "apply", "--numstat", "-"], input=diff, capture_output=True, text=True, check=True
    ).stdout
    return [
        {"path": path, "added": int(added), "removed": int(removed)}
        for added, removed, path in (line.split("\t") for line in counted.splitlines())
    ]


async def test_request_show_prints_the_diff_coloured_and_paged_on_a_terminal_and_whole_in_json(
    client: Client, sessions: SessionFactory, env: dict[str, str], tmp_path: Path
) -> None:
    slug = await corner_shop(env, tmp_path)
    async with running_workers(client, sessions, signed_decisions(env)):
        submitted = await ok(env, "request", "submit", OVERSPEND_PROMPT, "-t", slug,
                             "--project", "storefront", "-u", "alice@corner.example",
                             "--wait", "--json")  # fmt: skip
        assert submitted.json["status"] == "awaiting_approval"
        request_id = submitted.json["prompt_request_id"]
        plan = await plan_row(sessions, submitted.json["plan"]["plan_id"])
        diff_lines = plan.diff.splitlines()
        assert len(diff_lines) > 60  # longer than the terminal below

        # --json: the whole diff as stored, and every file with git's own line counts.
        shown = (await ok(env, "request", "show", request_id, "--json")).json
        assert shown["plan"]["diff"] == plan.diff
        files = shown["plan"]["files"]
        assert [{k: f[k] for k in ("path", "added", "removed")} for f in files] == numstat(
            plan.diff
        )
        assert [f["status"] for f in files] == ["modified", "added"]
        assert shown["plan"]["changes_verification"] == []

        # On a pipe: every line of the diff, the files, the reasons and the estimate; no colour.
        piped = (await ok(env, "request", "show", request_id)).out
        assert "\x1b[" not in piped
        for line in diff_lines:
            assert line in piped
        assert f"risk      low: {plan.risk_reasons[0]}" in piped
        assert f"estimate  {plan.token_estimate:,} tokens" in piped
        added = sum(f["added"] for f in files)
        removed = sum(f["removed"] for f in files)
        assert f"diff of r1: 2 file(s), +{added} -{removed} lines" in piped
        assert f"pages/catalog.md  added     +{files[1]['added']} -0" in piped

        # On a terminal shorter than the diff: through the pager, coloured.
        paged_file = tmp_path / "paged.txt"
        env["PAGER"] = f"cat > {paged_file}"
        on_terminal = await changeflow_on_terminal(env, "request", "show", request_id, rows=30)
        assert on_terminal.code == 0, on_terminal.out
        paged = paged_file.read_text()
        # Removed lines in red (the rule engine adds a page without removing a line since it
        # places its entry in sorted position, so there may be none).
        assert f"{GREEN}+# Catalog" in paged and (removed == 0 or f"{RED}-" in paged)
        for line in diff_lines:
            assert line in without_colours(paged)
        assert "+# Catalog" not in without_colours(on_terminal.out)  # not past the pager

        # On a terminal taller than it: printed at once, coloured, no pager.
        paged_file.unlink()
        tall = await changeflow_on_terminal(env, "request", "show", request_id, rows=400)
        assert tall.code == 0, tall.out
        assert not paged_file.exists()
        assert f"{GREEN}+# Catalog" in tall.out
        assert all(line in without_colours(tall.out) for line in diff_lines)
