"""`changeflow request ...`: change requests, the prompt lifecycle, through the lifecycle's typed
client (client/lifecycle.py): submit, follow (--wait, cli/follow.py), read (the plan's
diff, cli/review.py), approve, reject, revise and cancel."""

import uuid
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from temporalio.service import RPCError, RPCStatusCode

from cli import tenancy
from cli.common import (
    DEFAULT_WAIT_S,
    Json,
    Refused,
    TenantRef,
    Timeout,
    Token,
    Wait,
    parse_id,
    timestamp,
)
from cli.follow import follow
from cli.people import emails, user_id
from cli.review import plan_diff, render_review, review_data
from cli.runner import EXIT_NOT_COMPLETED, Outcome, listing, run
from cli.stack import Stack
from models import PromptStatus, queries
from workflows.contracts.errors import ErrorType
from workflows.contracts.lifecycle import PromptRequestStatus

request_app = typer.Typer(help="Change requests: the prompt lifecycle.", no_args_is_help=True)

PlanHash = Annotated[
    str | None,
    typer.Option(
        "--plan", help="Hash (or its first characters) of the plan you read; the current one."
    ),
]
RequestRef = Annotated[str, typer.Argument(help="Request id.")]
Person = Annotated[str, typer.Option("--user", "-u", help="Who decides: id or email.")]


async def _status(stack: Stack, request_id: uuid.UUID) -> PromptRequestStatus:
    try:
        return await (await stack.lifecycle()).status(request_id)
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            raise Refused(ErrorType.UNKNOWN_REQUEST, f"no prompt request {request_id}") from None
        raise


def render_status(
    out: Console, status: PromptRequestStatus, people: dict[uuid.UUID, str] | None = None
) -> None:
    """The request and its plan: risk and reasons, estimate, diff summary, approvals so far."""
    people = people or {}
    out.print(f"request {status.prompt_request_id}: [bold]{status.status.value}[/]", end="")
    out.print(f" - {escape(status.reason)}" if status.reason else "")
    plan = status.plan
    if plan is not None:
        reasons = "; ".join(plan.risk_reasons) or "no reasons given"
        out.print(f"plan r{plan.revision} {plan.content_hash[:12]} ({plan.approval_status.value})")
        out.print(f"  risk      {plan.risk_level.value}: {escape(reasons)}")
        out.print(f"  estimate  {plan.token_estimate:,} tokens")
        if plan.expires_at:
            out.print(f"  expires   {timestamp(plan.expires_at)} UTC")
        out.print(f"  files     {escape(', '.join(plan.files_changed) or '-')}")
        for line in plan.diff_summary.splitlines():
            out.print(f"    {escape(line)}", highlight=False)
        approvals = [a for a in status.approvals if a.content_hash == plan.content_hash]
        given = sum(a.decision.value == "approve" for a in approvals)
        out.print(f"  approvals {given} of {plan.approvals_required}")
        for a in approvals:
            reason = f": {escape(a.reason)}" if a.reason else ""
            who = people.get(a.user_id, str(a.user_id))
            out.print(f"    {a.decision.value} by {who} at {timestamp(a.at)}{reason}")
    for d in status.deployments:
        rollback = f", rollback {d.rollback_status.value}" if d.rollback_status else ""
        out.print(f"  {d.environment.value}: {d.status.value}{rollback} ({d.deployment_id})")
    out.print(
        f"  tokens    {status.tokens_used:,} used, {status.tokens_settled:,} charged"
        + (f", commit {status.commit_sha[:12]}" if status.commit_sha else "")
    )


async def _after(
    stack: Stack,
    progress: Console,
    status: PromptRequestStatus,
    *,
    wait: bool,
    timeout: float,  # noqa: ASYNC109 - the --timeout the person gave, passed on to follow()
    past_plan: str | None = None,
    until_ended: bool = False,
) -> Outcome:
    """The status now, or (with --wait) once a person must act or the lifecycle ended."""
    code = 0
    if wait:
        followed = await follow(
            await stack.lifecycle(),
            status.prompt_request_id,
            progress,
            past_plan=past_plan,
            until_ended=until_ended,
            timeout_s=timeout,
        )
        if followed is None:
            progress.print(f"[yellow]still running after {timeout:.0f} s[/]")
            code = EXIT_NOT_COMPLETED
            followed = await _status(stack, status.prompt_request_id)
        elif followed.status not in (PromptStatus.COMPLETED, PromptStatus.AWAITING_APPROVAL):
            code = EXIT_NOT_COMPLETED
        status = followed
    return await _shown(stack, status, code)


async def _shown(stack: Stack, status: PromptRequestStatus, code: int = 0) -> Outcome:
    """The status as a command's outcome, its approvers named by email."""
    people = await emails(stack, status.tenant_id)
    return Outcome(status, lambda out: render_status(out, status, people), code)


@request_app.command("submit")
def request_submit(
    prompt: Annotated[str, typer.Argument(help="The change, in plain words.")],
    tenant: TenantRef,
    project: Annotated[str, typer.Option(help="Project id or slug.")],
    user: Annotated[str, typer.Option("--user", "-u", help="Requester: id or email.")],
    wait: Wait = False,
    timeout: Timeout = DEFAULT_WAIT_S,
    json_output: Json = False,
) -> None:
    """Start a lifecycle: plan, price, approve, deploy, verify."""

    async def work(stack: Stack, progress: Console) -> Outcome:
        async with stack.in_tenant(tenant) as (session, found):
            found_project = await tenancy.find_project(session, found, project)
            requester = await tenancy.find_user(session, found, user)
        lifecycle = await stack.lifecycle()
        request_id = await lifecycle.submit(
            tenant_id=found.id, project_id=found_project.id, user_id=requester.id, prompt=prompt
        )
        progress.print(f"request {request_id} submitted")
        status = PromptRequestStatus(
            prompt_request_id=request_id,
            tenant_id=found.id,
            project_id=found_project.id,
            requested_by=requester.id,
            status=PromptStatus.RECEIVED,
        )
        return await _after(stack, progress, status, wait=wait, timeout=timeout)

    run(json_output, work)


@request_app.command("list")
def request_list(
    tenant: TenantRef,
    status: Annotated[PromptStatus | None, typer.Option(help="Only this status.")] = None,
    limit: Annotated[int, typer.Option(help="Newest requests shown.")] = 20,
    json_output: Json = False,
) -> None:
    """A tenant's newest requests."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with stack.in_tenant(tenant) as (session, found):
            statement = queries.newest_requests(found.id, status=status, limit=limit)
            requests = (await session.exec(statement)).all()
        return listing(
            "Requests",
            ["id", "at", "status", "prompt"],
            requests,
            lambda r: [
                r.id,
                timestamp(r.created_at),
                r.status.value,
                r.prompt.splitlines()[0][:60],
            ],
        )

    run(json_output, work)


@request_app.command("show")
def request_show(
    request: RequestRef,
    wait: Wait = False,
    timeout: Timeout = DEFAULT_WAIT_S,
    json_output: Json = False,
) -> None:
    """The request and its plan: risk and reasons, estimate, approvals, and the diff (its files
    and changed lines; coloured and paged on a terminal, whole under --json)."""

    async def work(stack: Stack, progress: Console) -> Outcome:
        status = await _status(stack, parse_id(request))
        shown = await _after(stack, progress, status, wait=wait, timeout=timeout)
        final: PromptRequestStatus = shown.data
        diff = await plan_diff(await stack.sessions(), final)
        return Outcome(
            review_data(final, diff),
            lambda out: render_review(out, final, diff, lambda: shown.render(out)),
            shown.code,
        )

    run(json_output, work)


async def _decision(
    stack: Stack, request: str, user: str
) -> tuple[uuid.UUID, PromptRequestStatus, uuid.UUID]:
    """What a person decides on: the request's id and status now, and who decides (their id)."""
    request_id = parse_id(request)
    status = await _status(stack, request_id)
    return request_id, status, await user_id(stack, status.tenant_id, user)


def _full_hash(status: PromptRequestStatus, given: str | None) -> str:
    """The plan hash the person approves: the one shown, or the current plan's. A prefix that
    is not the current plan's is sent as given, so the lifecycle refuses it as stale."""
    current = status.plan.content_hash if status.plan else ""
    if given is None:
        if not current:
            raise Refused(ErrorType.NOT_AWAITING_APPROVAL, "the request has no plan yet")
        return current
    return current if current and current.startswith(given) else given


@request_app.command("approve")
def request_approve(
    request: RequestRef,
    user: Person,
    plan: PlanHash = None,
    comment: Annotated[str, typer.Option(help="A note kept with the approval.")] = "",
    token: Token = None,
    wait: Wait = False,
    timeout: Timeout = DEFAULT_WAIT_S,
    json_output: Json = False,
) -> None:
    """Approve the plan waiting for approval."""

    async def work(stack: Stack, progress: Console) -> Outcome:
        request_id, status, approver = await _decision(stack, request, user)
        status = await (await stack.lifecycle()).approve(
            request_id,
            user_id=approver,
            content_hash=_full_hash(status, plan),
            comment=comment,
            token=token,
        )
        return await _after(stack, progress, status, wait=wait, timeout=timeout)

    run(json_output, work)


@request_app.command("reject")
def request_reject(
    request: RequestRef,
    user: Person,
    reason: Annotated[str, typer.Option(help="Why; the requester reads it.")],
    plan: PlanHash = None,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Reject the plan waiting for approval; the request ends."""

    async def work(stack: Stack, _: Console) -> Outcome:
        request_id, status, rejecter = await _decision(stack, request, user)
        status = await (await stack.lifecycle()).reject(
            request_id,
            user_id=rejecter,
            content_hash=_full_hash(status, plan),
            reason=reason,
            token=token,
        )
        return await _shown(stack, status)

    run(json_output, work)


@request_app.command("revise")
def request_revise(
    request: RequestRef,
    prompt: Annotated[str, typer.Argument(help="The revised change, in plain words.")],
    user: Person,
    token: Token = None,
    wait: Wait = False,
    timeout: Timeout = DEFAULT_WAIT_S,
    json_output: Json = False,
) -> None:
    """Replace the prompt of a request waiting for approval; it is planned again."""

    async def work(stack: Stack, progress: Console) -> Outcome:
        request_id, before, reviser = await _decision(stack, request, user)
        status = await (await stack.lifecycle()).revise(
            request_id, user_id=reviser, prompt=prompt, token=token
        )
        past = before.plan.content_hash if before.plan else None
        return await _after(stack, progress, status, wait=wait, timeout=timeout, past_plan=past)

    run(json_output, work)


@request_app.command("cancel")
def request_cancel(
    request: RequestRef,
    reason: Annotated[str, typer.Option(help="Why, kept with the request.")] = "",
    user: Annotated[str | None, typer.Option("--user", "-u", help="Who cancels.")] = None,
    token: Token = None,
    wait: Wait = False,
    timeout: Timeout = DEFAULT_WAIT_S,
    json_output: Json = False,
) -> None:
    """Stop a request: its hold is released and a half-done deploy rolled back."""

    async def work(stack: Stack, progress: Console) -> Outcome:
        request_id = parse_id(request)
        status = await _status(stack, request_id)
        canceller = await user_id(stack, status.tenant_id, user) if user else None
        await (await stack.lifecycle()).cancel(
            request_id, reason=reason, user_id=canceller, token=token
        )
        progress.print(f"cancellation of {request_id} requested")
        outcome = await _after(
            stack, progress, status, wait=wait, timeout=timeout, until_ended=True
        )
        # Cancelling is what was asked: a lifecycle that ends cancelled is done.
        if wait and outcome.data.status is PromptStatus.CANCELLED:
            outcome.code = 0
        return outcome

    run(json_output, work)
