"""What an approver reads in `changeflow request show`: the plan's diff (its files with their
changed line counts, then every line, coloured on a terminal and paged when longer than the
screen), and a plain warning when the change touches what verifies it."""

import os
import re
import uuid
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.text import Text
from sqlmodel import select

from activities.diffs import parse_unified_diff
from models import DeploymentPlan
from models.db import SessionFactory
from workflows.contracts.lifecycle import PromptRequestStatus

# Lines `render_status` prints besides the diff, about: enough to tell a diff that fits.
STATUS_LINES = 16
# Shown as \x1b, never sent to the terminal: a diff is tenant and model text.
CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
HUNK_STYLES = {"@": "cyan", "+": "green", "-": "red"}


async def plan_diff(sessions: SessionFactory, status: PromptRequestStatus) -> str | None:
    """The diff of the request's current plan, from its row (the tenant's own only)."""
    if status.plan is None or status.plan.plan_id == uuid.UUID(int=0):
        return None
    async with sessions() as session:
        plan = (
            await session.exec(
                select(DeploymentPlan).where(
                    DeploymentPlan.id == status.plan.plan_id,
                    DeploymentPlan.tenant_id == status.tenant_id,
                )
            )
        ).one_or_none()
    return plan.diff if plan is not None else None


def file_changes(diff: str) -> list[dict[str, Any]]:
    """Each changed file with its status and counts of added and removed lines."""
    return [
        {"path": f.path, "status": f.status, "added": len(f.added), "removed": len(f.removed)}
        for f in parse_unified_diff(diff)
    ]


def review_data(status: PromptRequestStatus, diff: str | None) -> dict[str, Any]:
    """`request show --json`: the status, its plan with the whole diff and the files."""
    data: dict[str, Any] = status.model_dump(mode="json")
    if data.get("plan") is not None and diff is not None:
        data["plan"]["diff"] = diff
        data["plan"]["files"] = file_changes(diff)
    return data


def render_review(
    out: Console, status: PromptRequestStatus, diff: str | None, render_status: Callable[[], None]
) -> None:
    """The warning, the status, then the diff; through the pager when it is longer than the
    terminal (less keeps the colours: -R, as git sets it when LESS is unset)."""
    lines = len(diff.splitlines()) if diff else 0
    if out.is_terminal and lines + STATUS_LINES > out.height:
        os.environ.setdefault("LESS", "FRX")
        with out.pager(styles=True):
            _render(out, status, diff, render_status)
    else:
        _render(out, status, diff, render_status)


def _render(
    out: Console, status: PromptRequestStatus, diff: str | None, render_status: Callable[[], None]
) -> None:
    plan = status.plan
    if plan is not None and plan.changes_verification:
        out.print(
            Text(
                "This change edits what verifies it: "
                f"{'; '.join(plan.changes_verification)}. Its own check could pass anything, "
                "so the system never approves it by itself: it needs "
                f"{plan.approvals_required} approval(s), as the policy asks for "
                f"{plan.risk_level.value} risk. Read the diff below.",
                style="bold yellow",
            )
        )
    render_status()
    if plan is None or diff is None:
        return
    files = file_changes(diff)
    added = sum(f["added"] for f in files)
    removed = sum(f["removed"] for f in files)
    out.print(f"diff of r{plan.revision}: {len(files)} file(s), +{added} -{removed} lines")
    width = max((len(f["path"]) for f in files), default=0)
    for f in files:
        counts = f"+{f['added']} -{f['removed']}"
        out.print(Text(f"  {_printable(f['path']):<{width}}  {f['status']:<8}  {counts}"))
    in_hunk = False
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            in_hunk = False
        elif line.startswith("@@"):
            in_hunk = True
        # A file's header is bold; in a hunk, "--- x" is a removed line like any other.
        style = HUNK_STYLES.get(line[:1], "") if in_hunk else "bold"
        out.print(Text(_printable(line), style=style), highlight=False)


def _printable(text: str) -> str:
    return CONTROL_CHARACTER.sub(lambda found: f"\\x{ord(found.group()):02x}", text)
