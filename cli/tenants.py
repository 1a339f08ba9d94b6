"""`changeflow tenant ...`: tenants, the isolation and billing boundary, through the models
(cli/tenancy.py) and their token accounts through the ledger."""

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cli import tenancy
from cli.common import Json, as_row
from cli.runner import Outcome, listing, run
from cli.stack import Stack
from models import PlanTier

tenant_app = typer.Typer(help="Tenants: the isolation and billing boundary.", no_args_is_help=True)


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
        return listing(
            "Tenants",
            ["slug", "name", "tier", "id"],
            tenants,
            lambda t: [t.slug, t.name, t.plan_tier.value, t.id],
        )

    run(json_output, work)


@tenant_app.command("show")
def tenant_show(
    tenant: Annotated[str, typer.Argument(help="Tenant id or slug.")], json_output: Json = False
) -> None:
    """A tenant with its people, projects, policy and token balance."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with stack.in_tenant(tenant) as (session, found):
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
