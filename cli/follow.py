"""`--wait`: follow a lifecycle until a person must act (a new plan awaits approval) or it ends,
printing each visible change (status, step, deployments) as it happens."""

import asyncio
import time
import uuid

from rich.console import Console
from rich.markup import escape
from temporalio.service import RPCError

from client.lifecycle import LifecycleClient
from models.lifecycle import PromptStatus
from models.transitions import is_terminal
from workflows.contracts.lifecycle import PromptRequestStatus

POLL_INTERVAL_S = 0.3


def visible_changes(status: PromptRequestStatus) -> list[str]:
    """The lines a person follows: the status and step, then each deployment and rollback."""
    step = f" - {status.step}" if status.step and status.step != status.status.value else ""
    lines = [f"{status.status.value}{step}"]
    # A restoring deployment is shown as the rollback of the one it undid, not on its own.
    rollbacks = {d.rollback_deployment_id for d in status.deployments}
    for d in status.deployments:
        if d.deployment_id in rollbacks:
            continue
        position = f" (queue position {d.queue_position})" if d.queue_position else ""
        lines.append(f"{d.environment.value} deployment: {d.status.value}{position}")
        if d.rollback_deployment_id is not None and d.rollback_status is not None:
            lines.append(f"{d.environment.value} rollback: {d.rollback_status.value}")
    return lines


def settled(status: PromptRequestStatus, past_plan: str | None, *, until_ended: bool) -> bool:
    """Nothing more happens without a person: ended, or a plan other than `past_plan` waits
    (unless `until_ended`)."""
    if is_terminal(status.status):
        return True
    return not until_ended and (
        status.status is PromptStatus.AWAITING_APPROVAL
        and status.plan is not None
        and status.plan.content_hash != past_plan
    )


async def follow(
    lifecycle: LifecycleClient,
    request_id: uuid.UUID,
    console: Console,
    *,
    past_plan: str | None = None,
    until_ended: bool = False,
    timeout_s: float,
) -> PromptRequestStatus | None:
    """The settled status, or None when `timeout_s` passed first."""
    started = time.monotonic()
    seen: set[str] = set()
    status: PromptRequestStatus | None = None
    with console.status("following the lifecycle", spinner="dots") as spinner:
        while time.monotonic() - started < timeout_s:
            try:
                status = await lifecycle.status(request_id)
            except RPCError:  # the workflow's first task has not run yet
                await asyncio.sleep(POLL_INTERVAL_S)
                continue
            for line in visible_changes(status):
                if line not in seen:
                    seen.add(line)
                    console.print(
                        f"  [dim]{time.monotonic() - started:6.1f}s[/] {escape(line)}",
                        highlight=False,
                    )
                    spinner.update(f"following the lifecycle: {escape(line)}")
            if settled(status, past_plan, until_ended=until_ended):
                return status
            await asyncio.sleep(POLL_INTERVAL_S)
    return None
