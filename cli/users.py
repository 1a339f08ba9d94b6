"""`changeflow user ...`: a tenant's people and their roles (cli/tenancy.py)."""

from typing import Annotated

import typer
from rich.console import Console

from cli import tenancy
from cli.common import Json, TenantRef, as_row
from cli.runner import Outcome, listing, run
from cli.stack import Stack

user_app = typer.Typer(help="A tenant's people and their roles.", no_args_is_help=True)


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
        async with stack.in_tenant(tenant) as (session, found):
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
        async with stack.in_tenant(tenant) as (session, found):
            users = await tenancy.list_users(session=session, tenant=found)
        return listing(
            "Users",
            ["email", "name", "role", "id"],
            users,
            lambda u: [u.email, u.display_name, u.role.value, u.id],
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
        async with stack.in_tenant(tenant) as (session, found):
            changed = await tenancy.set_role(
                session=session, tenant=found, reference=user, role=role
            )
        return Outcome(
            as_row(changed), lambda out: out.print(f"{changed.email} is now {changed.role.value}")
        )

    run(json_output, work)
