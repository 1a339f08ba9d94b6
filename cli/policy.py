"""`changeflow policy ...`: how a tenant approves plans (cli/tenancy.py keeps the rules)."""

from typing import Annotated, Any

import typer
from rich.console import Console

from cli import tenancy
from cli.common import Json, Refused, TenantRef, as_row
from cli.runner import Outcome, run
from cli.stack import Stack
from workflows.contracts.errors import ErrorType

policy_app = typer.Typer(help="How a tenant approves plans.", no_args_is_help=True)


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
        async with stack.in_tenant(tenant) as (session, found):
            policy = await tenancy.set_policy(session=session, tenant=found, change=change)
        return Outcome(as_row(policy), lambda out: _render_policy(out, policy))

    run(json_output, work)
