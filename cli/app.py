"""`changeflow`: the command for people. Tenancy through the models, tokens through the Ledger,
requests and deployments through the lifecycle's typed client (client/lifecycle.py).

Configuration is the workers' (infra/settings.py): DATABASE_URL and TEMPORAL_ADDRESS, or the
embedded stack `make dev` runs under CHANGEFLOW_DATA_DIR. Every command takes --json; the exit
codes are in cli/runner.py.
"""

import os
import traceback
import uuid
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from sqlmodel import col, select
from temporalio.service import RPCError, RPCStatusCode

from activities.ledger import current_period
from cli import tenancy
from cli.commerce import commerce_app
from cli.common import (
    DEFAULT_WAIT_S,
    Json,
    TenantRef,
    Timeout,
    Wait,
    as_row,
    rich_table,
    timestamp,
)
from cli.connectors import connector_app
from cli.follow import follow
from cli.notify import notify_app
from cli.review import plan_diff, render_review, review_data
from cli.runner import EXIT_NOT_COMPLETED, Outcome, run
from cli.stack import Stack
from cli.tenancy import Refused
from infra.entry_points import exit_process
from infra.tracing import flush_traces
from models import (
    Deployment,
    PlanTier,
    PromptRequest,
    PromptStatus,
    TokenTransaction,
)
from workflows.contracts.errors import ErrorType
from workflows.contracts.lifecycle import PromptRequestStatus

app = typer.Typer(
    name="changeflow",
    help="Tenants, people, policy, projects, tokens, change requests, deployments, connectors "
    "and reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tenant_app = typer.Typer(help="Tenants: the isolation and billing boundary.", no_args_is_help=True)
user_app = typer.Typer(help="A tenant's people and their roles.", no_args_is_help=True)
policy_app = typer.Typer(help="How a tenant approves plans.", no_args_is_help=True)
project_app = typer.Typer(help="A tenant's repositories.", no_args_is_help=True)
tokens_app = typer.Typer(help="A tenant's token account, through the ledger.", no_args_is_help=True)
request_app = typer.Typer(help="Change requests: the prompt lifecycle.", no_args_is_help=True)
deployment_app = typer.Typer(help="Deployments and operators' rollbacks.", no_args_is_help=True)
for sub, name in [
    (tenant_app, "tenant"),
    (user_app, "user"),
    (policy_app, "policy"),
    (project_app, "project"),
    (tokens_app, "tokens"),
    (request_app, "request"),
    (deployment_app, "deployment"),
    (connector_app, "connector"),
    (commerce_app, "commerce"),
    (notify_app, "notify"),
]:
    app.add_typer(sub, name=name)


# --- tenants ------------------------------------------------------------------------------


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="The tenant's name, e.g. 'Corner Shop'.")],
    slug: Annotated[str | None, typer.Option(help="URL-safe; from the name by default.")] = None,
    plan_tier: Annotated[PlanTier, typer.Option(help="Plan tier.")] = PlanTier.FREE,
    json_output: Json = False,
) -> None:
    """Create a tenant with the default approval policy and an (empty) token account."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with (await stack.sessions())() as session:
            tenant = await tenancy.create_tenant(
                session=session, name=name, slug=slug, plan_tier=plan_tier
            )
        account = await (await stack.ledger()).open_account(tenant.id)
        data = {**as_row(tenant), "token_account_id": str(account.id)}
        return Outcome(
            data,
            lambda out: out.print(
                f"tenant [bold]{escape(tenant.name)}[/] created: slug {tenant.slug}, id {tenant.id}"
            ),
        )

    run(json_output, work)


@tenant_app.command("list")
def tenant_list(json_output: Json = False) -> None:
    """Every tenant."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with (await stack.sessions())() as session:
            tenants = await tenancy.list_tenants(session=session)
        rows = [[t.slug, t.name, t.plan_tier.value, t.id] for t in tenants]
        return Outcome(
            [as_row(t) for t in tenants],
            lambda out: out.print(rich_table("Tenants", ["slug", "name", "tier", "id"], rows)),
        )

    run(json_output, work)


@tenant_app.command("show")
def tenant_show(
    tenant: Annotated[str, typer.Argument(help="Tenant id or slug.")], json_output: Json = False
) -> None:
    """A tenant with its people, projects, policy and token balance."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with (await stack.sessions())() as session:
            found = await tenancy.find_tenant(session, tenant)
            users = await tenancy.list_users(session=session, tenant=found)
            projects = await tenancy.list_projects(session=session, tenant=found)
            policy = await tenancy.policy_of(session, found)
        ledger = await stack.ledger()
        balance = await ledger.balance((await ledger.account_for_tenant(found.id)).id)
        data = {
            **as_row(found),
            "users": [as_row(u) for u in users],
            "projects": [as_row(p) for p in projects],
            "policy": as_row(policy),
            "balance": as_row(balance),
        }

        def render(out: Console) -> None:
            out.print(f"[bold]{escape(found.name)}[/] ({found.slug}, {found.plan_tier.value})")
            out.print(f"  id {found.id}")
            out.print(f"  tokens: {balance.balance:,} ({balance.available:,} available)")
            out.print(f"  people: {', '.join(f'{u.email} ({u.role.value})' for u in users)}")
            out.print(f"  projects: {', '.join(p.slug for p in projects) or '-'}")

        return Outcome(data, render)

    run(json_output, work)


# --- users --------------------------------------------------------------------------------


@user_app.command("add")
def user_add(
    email: Annotated[str, typer.Argument(help="The person's email, unique in the tenant.")],
    tenant: TenantRef,
    role: Annotated[
        str, typer.Option(help="client_admin, client_operator or client_viewer.")
    ] = "client_operator",
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    json_output: Json = False,
) -> None:
    """Add a person to a tenant."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with (await stack.sessions())() as session:
            found = await tenancy.find_tenant(session, tenant)
            user = await tenancy.add_user(
                session=session, tenant=found, email=email, display_name=name, role=role
            )
        return Outcome(
            as_row(user),
            lambda out: out.print(f"user {user.email} ({user.role.value}) added: id {user.id}"),
        )

    run(json_output, work)


@user_app.command("list")
def user_list(tenant: TenantRef, json_output: Json = False) -> None:
    """A tenant's people."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with (await stack.sessions())() as session:
            found = await tenancy.find_tenant(session, tenant)
            users = await tenancy.list_users(session=session, tenant=found)
        rows = [[u.email, u.display_name, u.role.value, u.id] for u in users]
        return Outcome(
            [as_row(u) for u in users],
            lambda out: out.print(rich_table("Users", ["email", "name", "role", "id"], rows)),
        )

    run(json_output, work)


@user_app.command("set-role")
def user_set_role(
    user: Annotated[str, typer.Argument(help="User id or email.")],
    role: Annotated[str, typer.Argument(help="client_admin, client_operator or client_viewer.")],
    tenant: TenantRef,
    json_output: Json = False,
) -> None:
    """Change a person's role."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with (await stack.sessions())() as session:
            found = await tenancy.find_tenant(session, tenant)
            changed = await tenancy.set_role(
                session=session, tenant=found, reference=user, role=role
            )
        return Outcome(
            as_row(changed), lambda out: out.print(f"{changed.email} is now {changed.role.value}")
        )

    run(json_output, work)


# --- policy -------------------------------------------------------------------------------


def _render_policy(out: Console, policy: Any) -> None:
    auto = policy.auto_approve_max_risk.value if policy.auto_approve_max_risk else "never"
    required = ", ".join(f"{risk} {n}" for risk, n in policy.approvals_required.items())
    out.print(f"approver roles      {', '.join(policy.approver_roles)}")
    out.print(f"approvals per risk  {required}")
    out.print(f"auto-approve up to  {auto}")
    out.print(f"plan TTL            {policy.plan_ttl_seconds} s")
    out.print(f"overspend tolerance {policy.overspend_tolerance_pct} %")
    reminder = policy.reminder_before_seconds
    out.print(f"approval reminder   {f'{reminder} s before expiry' if reminder else 'none'}")


@policy_app.command("show")
def policy_show(tenant: TenantRef, json_output: Json = False) -> None:
    """The tenant's approval policy."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with (await stack.sessions())() as session:
            policy = await tenancy.policy_of(session, await tenancy.find_tenant(session, tenant))
        return Outcome(as_row(policy), lambda out: _render_policy(out, policy))

    run(json_output, work)


def _approvals(values: list[str]) -> dict[str, int]:
    required: dict[str, int] = {}
    for value in values:
        risk, _, count = value.partition("=")
        if not count.strip().isdigit():
            raise Refused(ErrorType.INVALID_POLICY, f"--approvals takes RISK=COUNT, not {value!r}")
        required[risk.strip()] = int(count)
    return required


@policy_app.command("set")
def policy_set(
    tenant: TenantRef,
    approver_role: Annotated[
        list[str] | None, typer.Option(help="A role whose holders approve (repeatable).")
    ] = None,
    approvals: Annotated[
        list[str] | None, typer.Option(help="Approvals per risk, e.g. high=2 (repeatable).")
    ] = None,
    auto_approve_max_risk: Annotated[
        str | None, typer.Option(help="low, medium, high, critical, or 'never'.")
    ] = None,
    plan_ttl_seconds: Annotated[int | None, typer.Option(help="How long a plan waits.")] = None,
    overspend_tolerance_pct: Annotated[
        int | None, typer.Option(help="Percent above the estimate the work may use.")
    ] = None,
    reminder_before_seconds: Annotated[
        str | None,
        typer.Option(help="Remind the webhook this long before a plan expires, or 'none'."),
    ] = None,
    json_output: Json = False,
) -> None:
    """Change the approval policy; options not given keep their value."""

    async def work(stack: Stack, _: Console) -> Outcome:
        change: dict[str, object] = {}
        if approver_role:
            change["approver_roles"] = approver_role
        if approvals:
            change["approvals_required"] = _approvals(approvals)
        if auto_approve_max_risk == "never":
            change["never_auto_approve"] = True
        elif auto_approve_max_risk is not None:
            change["auto_approve_max_risk"] = auto_approve_max_risk
        if plan_ttl_seconds is not None:
            change["plan_ttl_seconds"] = plan_ttl_seconds
        if overspend_tolerance_pct is not None:
            change["overspend_tolerance_pct"] = overspend_tolerance_pct
        if reminder_before_seconds == "none":
            change["no_reminder"] = True
        elif reminder_before_seconds is not None:
            change["reminder_before_seconds"] = reminder_before_seconds
        async with (await stack.sessions())() as session:
            found = await tenancy.find_tenant(session, tenant)
            policy = await tenancy.set_policy(session=session, tenant=found, change=change)
        return Outcome(as_row(policy), lambda out: _render_policy(out, policy))

    run(json_output, work)


# --- projects -----------------------------------------------------------------------------


@project_app.command("create")
def project_create(
    name: Annotated[str, typer.Argument(help="The project's name.")],
    tenant: TenantRef,
    repo: Annotated[str, typer.Option(help="Path or URL of its git repository.")],
    slug: Annotated[str | None, typer.Option(help="URL-safe; from the name by default.")] = None,
    default_branch: Annotated[str, typer.Option(help="The branch changes land on.")] = "main",
    check_command: Annotated[
        str, typer.Option(help="Run in a checkout to verify a deployment; exit 0 is healthy.")
    ] = "",
    json_output: Json = False,
) -> None:
    """Add a project (a repository and how to check it) to a tenant."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with (await stack.sessions())() as session:
            found = await tenancy.find_tenant(session, tenant)
            project = await tenancy.create_project(
                session=session,
                tenant=found,
                name=name,
                repo_url=repo,
                slug=slug,
                default_branch=default_branch,
                check_command=check_command,
            )
        return Outcome(
            as_row(project),
            lambda out: out.print(f"project {project.slug} created: id {project.id}"),
        )

    run(json_output, work)


@project_app.command("list")
def project_list(tenant: TenantRef, json_output: Json = False) -> None:
    """A tenant's projects."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with (await stack.sessions())() as session:
            found = await tenancy.find_tenant(session, tenant)
            projects = await tenancy.list_projects(session=session, tenant=found)
        rows = [[p.slug, p.name, p.repo_url, p.default_branch, p.id] for p in projects]
        return Outcome(
            [as_row(p) for p in projects],
            lambda out: out.print(
                rich_table("Projects", ["slug", "name", "repository", "branch", "id"], rows)
            ),
        )

    run(json_output, work)


@project_app.command("show")
def project_show(
    project: Annotated[str, typer.Argument(help="Project id or slug.")],
    tenant: TenantRef,
    json_output: Json = False,
) -> None:
    """One project."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with (await stack.sessions())() as session:
            found = await tenancy.find_project(
                session, await tenancy.find_tenant(session, tenant), project
            )

        def render(out: Console) -> None:
            out.print(f"[bold]{escape(found.name)}[/] ({found.slug}), id {found.id}")
            out.print(f"  repository     {escape(found.repo_url)} ({found.default_branch})")
            out.print(f"  check command  {escape(found.check_command or '-')}")

        return Outcome(as_row(found), render)

    run(json_output, work)


# --- tokens -------------------------------------------------------------------------------


async def _account_id(stack: Stack, tenant: str) -> uuid.UUID:
    async with (await stack.sessions())() as session:
        found = await tenancy.find_tenant(session, tenant)
    return (await (await stack.ledger()).account_for_tenant(found.id)).id


def _entry_line(entry: Any, key: str) -> str:
    return (
        f"{entry.kind} of {entry.amount:,} tokens (key {key}): "
        f"balance {entry.balance_after:,}, entry {entry.transaction_id}"
    )


@tokens_app.command("grant")
def tokens_grant(
    tenant: TenantRef,
    period: Annotated[
        str | None, typer.Option(help="Calendar month YYYY-MM; the current one by default.")
    ] = None,
    json_output: Json = False,
) -> None:
    """The plan tier's grant for a period, at most once per period (a repeat replays it)."""

    async def work(stack: Stack, _: Console) -> Outcome:
        entry = await (await stack.ledger()).grant(await _account_id(stack, tenant), period=period)
        key = f"grant:{period or current_period()}"
        return Outcome(as_row(entry), lambda out: out.print(_entry_line(entry, key)))

    run(json_output, work)


@tokens_app.command("top-up")
def tokens_top_up(
    amount: Annotated[int, typer.Argument(help="Whole tokens to add.")],
    tenant: TenantRef,
    key: Annotated[
        str | None,
        typer.Option(help="Idempotency key: the same key tops up once. A new one by default."),
    ] = None,
    description: Annotated[str, typer.Option(help="Why, for the history.")] = "",
    json_output: Json = False,
) -> None:
    """Add tokens to the tenant's account."""
    idempotency_key = key or f"cli-top-up:{uuid.uuid4()}"

    async def work(stack: Stack, _: Console) -> Outcome:
        entry = await (await stack.ledger()).top_up(
            await _account_id(stack, tenant),
            amount,
            key=idempotency_key,
            description=description,
        )
        return Outcome(
            {**as_row(entry), "idempotency_key": idempotency_key},
            lambda out: out.print(_entry_line(entry, idempotency_key)),
        )

    run(json_output, work)


@tokens_app.command("balance")
def tokens_balance(tenant: TenantRef, json_output: Json = False) -> None:
    """Balance, tokens held by running work, and what is available."""

    async def work(stack: Stack, _: Console) -> Outcome:
        balance = await (await stack.ledger()).balance(await _account_id(stack, tenant))
        return Outcome(
            as_row(balance),
            lambda out: out.print(
                f"balance {balance.balance:,}, held {balance.held:,}, "
                f"available {balance.available:,} ({balance.plan_tier})"
            ),
        )

    run(json_output, work)


@tokens_app.command("history")
def tokens_history(
    tenant: TenantRef,
    limit: Annotated[int, typer.Option(help="Newest entries shown.")] = 20,
    json_output: Json = False,
) -> None:
    """The account's newest ledger entries."""

    async def work(stack: Stack, _: Console) -> Outcome:
        account_id = await _account_id(stack, tenant)
        async with (await stack.sessions())() as session:
            entries = (
                await session.exec(
                    select(TokenTransaction)
                    .where(TokenTransaction.account_id == account_id)
                    .order_by(col(TokenTransaction.sequence).desc())
                    .limit(limit)
                )
            ).all()
        rows = [
            [
                e.sequence,
                timestamp(e.created_at),
                e.kind.value,
                ("+" if e.direction.value == "credit" else "-") + f"{e.amount:,}",
                f"{e.balance_after:,}",
                e.description,
            ]
            for e in entries
        ]
        return Outcome(
            [as_row(e) for e in entries],
            lambda out: out.print(
                rich_table("Ledger", ["#", "at", "kind", "amount", "balance", "description"], rows)
            ),
        )

    run(json_output, work)


# --- requests -----------------------------------------------------------------------------


def _request_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Refused(ErrorType.INVALID_REQUEST, f"{value!r} is not a request id") from None


async def _status(stack: Stack, request_id: uuid.UUID) -> PromptRequestStatus:
    try:
        return await (await stack.lifecycle()).status(request_id)
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            raise Refused(ErrorType.UNKNOWN_REQUEST, f"no prompt request {request_id}") from None
        raise


async def _user_id(stack: Stack, tenant_id: uuid.UUID, reference: str) -> uuid.UUID:
    async with (await stack.sessions())() as session:
        found = await tenancy.find_tenant(session, str(tenant_id))
        return (await tenancy.find_user(session, found, reference)).id


async def _people(stack: Stack, tenant_id: uuid.UUID) -> dict[uuid.UUID, str]:
    """Who is who in a status: user id -> email."""
    async with (await stack.sessions())() as session:
        found = await tenancy.find_tenant(session, str(tenant_id))
        return {u.id: u.email for u in await tenancy.list_users(session=session, tenant=found)}


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
    final = status
    people = await _people(stack, final.tenant_id)
    return Outcome(final, lambda out: render_status(out, final, people), code)


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
        async with (await stack.sessions())() as session:
            found = await tenancy.find_tenant(session, tenant)
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
        async with (await stack.sessions())() as session:
            found = await tenancy.find_tenant(session, tenant)
            statement = select(PromptRequest).where(PromptRequest.tenant_id == found.id)
            if status is not None:
                statement = statement.where(PromptRequest.status == status)
            requests = (
                await session.exec(
                    statement.order_by(col(PromptRequest.created_at).desc()).limit(limit)
                )
            ).all()
        rows = [
            [r.id, timestamp(r.created_at), r.status.value, r.prompt.splitlines()[0][:60]]
            for r in requests
        ]
        return Outcome(
            [as_row(r) for r in requests],
            lambda out: out.print(rich_table("Requests", ["id", "at", "status", "prompt"], rows)),
        )

    run(json_output, work)


@request_app.command("show")
def request_show(
    request: Annotated[str, typer.Argument(help="Request id.")],
    wait: Wait = False,
    timeout: Timeout = DEFAULT_WAIT_S,
    json_output: Json = False,
) -> None:
    """The request and its plan: risk and reasons, estimate, approvals, and the diff (its files
    and changed lines; coloured and paged on a terminal, whole under --json)."""

    async def work(stack: Stack, progress: Console) -> Outcome:
        status = await _status(stack, _request_id(request))
        shown = await _after(stack, progress, status, wait=wait, timeout=timeout)
        final: PromptRequestStatus = shown.data
        diff = await plan_diff(await stack.sessions(), final)
        return Outcome(
            review_data(final, diff),
            lambda out: render_review(out, final, diff, lambda: shown.render(out)),
            shown.code,
        )

    run(json_output, work)


def _full_hash(status: PromptRequestStatus, given: str | None) -> str:
    """The plan hash the person approves: the one shown, or the current plan's. A prefix that
    is not the current plan's is sent as given, so the lifecycle refuses it as stale."""
    current = status.plan.content_hash if status.plan else ""
    if given is None:
        if not current:
            raise Refused(ErrorType.NOT_AWAITING_APPROVAL, "the request has no plan yet")
        return current
    return current if current and current.startswith(given) else given


PlanHash = Annotated[
    str | None,
    typer.Option(
        "--plan", help="Hash (or its first characters) of the plan you read; the current one."
    ),
]
Person = Annotated[str, typer.Option("--user", "-u", help="Who decides: id or email.")]
# Without --token, the development signer signs when the workers trust it (no
# CHANGEFLOW_DECISION_JWKS); in production the identity service's token is passed here.
Token = Annotated[str | None, typer.Option("--token", help="The decision's signed token (a JWT).")]


@request_app.command("approve")
def request_approve(
    request: Annotated[str, typer.Argument(help="Request id.")],
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
        request_id = _request_id(request)
        status = await _status(stack, request_id)
        approver = await _user_id(stack, status.tenant_id, user)
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
    request: Annotated[str, typer.Argument(help="Request id.")],
    user: Person,
    reason: Annotated[str, typer.Option(help="Why; the requester reads it.")],
    plan: PlanHash = None,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Reject the plan waiting for approval; the request ends."""

    async def work(stack: Stack, _: Console) -> Outcome:
        request_id = _request_id(request)
        status = await _status(stack, request_id)
        rejecter = await _user_id(stack, status.tenant_id, user)
        status = await (await stack.lifecycle()).reject(
            request_id,
            user_id=rejecter,
            content_hash=_full_hash(status, plan),
            reason=reason,
            token=token,
        )
        final = status
        people = await _people(stack, final.tenant_id)
        return Outcome(final, lambda out: render_status(out, final, people))

    run(json_output, work)


@request_app.command("revise")
def request_revise(
    request: Annotated[str, typer.Argument(help="Request id.")],
    prompt: Annotated[str, typer.Argument(help="The revised change, in plain words.")],
    user: Person,
    token: Token = None,
    wait: Wait = False,
    timeout: Timeout = DEFAULT_WAIT_S,
    json_output: Json = False,
) -> None:
    """Replace the prompt of a request waiting for approval; it is planned again."""

    async def work(stack: Stack, progress: Console) -> Outcome:
        request_id = _request_id(request)
        before = await _status(stack, request_id)
        reviser = await _user_id(stack, before.tenant_id, user)
        status = await (await stack.lifecycle()).revise(
            request_id, user_id=reviser, prompt=prompt, token=token
        )
        past = before.plan.content_hash if before.plan else None
        return await _after(stack, progress, status, wait=wait, timeout=timeout, past_plan=past)

    run(json_output, work)


@request_app.command("cancel")
def request_cancel(
    request: Annotated[str, typer.Argument(help="Request id.")],
    reason: Annotated[str, typer.Option(help="Why, kept with the request.")] = "",
    user: Annotated[str | None, typer.Option("--user", "-u", help="Who cancels.")] = None,
    token: Token = None,
    wait: Wait = False,
    timeout: Timeout = DEFAULT_WAIT_S,
    json_output: Json = False,
) -> None:
    """Stop a request: its hold is released and a half-done deploy rolled back."""

    async def work(stack: Stack, progress: Console) -> Outcome:
        request_id = _request_id(request)
        status = await _status(stack, request_id)
        canceller = await _user_id(stack, status.tenant_id, user) if user else None
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


# --- deployments --------------------------------------------------------------------------


@deployment_app.command("list")
def deployment_list(
    tenant: TenantRef,
    project: Annotated[str | None, typer.Option(help="Project id or slug.")] = None,
    limit: Annotated[int, typer.Option(help="Newest deployments shown.")] = 20,
    json_output: Json = False,
) -> None:
    """A tenant's newest deployments (rollbacks included)."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with (await stack.sessions())() as session:
            found = await tenancy.find_tenant(session, tenant)
            statement = select(Deployment).where(Deployment.tenant_id == found.id)
            if project is not None:
                found_project = await tenancy.find_project(session, found, project)
                statement = statement.where(Deployment.project_id == found_project.id)
            deployments = (
                await session.exec(
                    statement.order_by(col(Deployment.queued_at).desc()).limit(limit)
                )
            ).all()
        rows = [
            [
                d.id,
                timestamp(d.queued_at),
                d.environment.value,
                d.status.value,
                (d.commit_sha or "")[:12],
                f"rollback of {d.rollback_of_id}" if d.rollback_of_id else "",
            ]
            for d in deployments
        ]
        return Outcome(
            [as_row(d) for d in deployments],
            lambda out: out.print(
                rich_table(
                    "Deployments", ["id", "queued", "environment", "status", "commit", ""], rows
                )
            ),
        )

    run(json_output, work)


@deployment_app.command("rollback")
def deployment_rollback(
    deployment: Annotated[str, typer.Argument(help="The earlier deployment to restore.")],
    user: Annotated[str | None, typer.Option("--user", "-u", help="Who asks: id or email.")] = None,
    reason: Annotated[str, typer.Option(help="Why, kept with the rollback.")] = "",
    token: Token = None,
    wait: Wait = False,
    json_output: Json = False,
) -> None:
    """Roll an environment back to an earlier successful deployment."""

    async def work(stack: Stack, progress: Console) -> Outcome:
        target_id = _request_id(deployment)
        async with (await stack.sessions())() as session:
            target = await session.get(Deployment, target_id)
        if target is None:
            raise Refused(ErrorType.DEPLOYMENT_NOT_FOUND, f"no deployment {target_id}")
        requested_by = await _user_id(stack, target.tenant_id, user) if user else None
        lifecycle = await stack.lifecycle()
        rollback_id = await lifecycle.roll_back(
            tenant_id=target.tenant_id,
            target_deployment_id=target_id,
            requested_by=requested_by,
            reason=reason,
            token=token,
        )
        data: dict[str, Any] = {"rollback_deployment_id": str(rollback_id)}
        if not wait:
            return Outcome(data, lambda out: out.print(f"rollback {rollback_id} started"))
        progress.print(f"rollback {rollback_id} started; waiting for it")
        result = await lifecycle.rollback_result(rollback_id)
        data["result"] = as_row(result)
        code = 0 if result.status.value == "succeeded" else EXIT_NOT_COMPLETED
        return Outcome(
            data,
            lambda out: out.print(
                f"rollback {rollback_id}: {result.status.value} ({result.environment.value}, "
                f"commit {result.commit_sha[:12]})"
            ),
            code,
        )

    run(json_output, work)


def main() -> None:
    """The console script: quiet worker logs, and os._exit (see infra/entry_points.py)."""
    os.environ.setdefault("CHANGEFLOW_LOG_LEVEL", "WARNING")
    code = 1
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        flush_traces()
        exit_process(code)
