"""`changeflow project ...`: a tenant's repositories and how each is checked (cli/tenancy.py)."""

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cli import tenancy
from cli.common import Json, TenantRef, as_row
from cli.runner import Outcome, listing, run
from cli.stack import Stack

project_app = typer.Typer(help="A tenant's repositories.", no_args_is_help=True)


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
        async with stack.in_tenant(tenant) as (session, found):
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
        async with stack.in_tenant(tenant) as (session, found):
            projects = await tenancy.list_projects(session=session, tenant=found)
        return listing(
            "Projects",
            ["slug", "name", "repository", "branch", "id"],
            projects,
            lambda p: [p.slug, p.name, p.repo_url, p.default_branch, p.id],
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
