"""`changeflow deployment ...`: a tenant's deployments, and operators' rollbacks through the
lifecycle's typed client (client/lifecycle.py)."""

from typing import Annotated, Any

import typer
from rich.console import Console

from cli import people, tenancy
from cli.common import Json, Refused, TenantRef, Token, Wait, as_row, parse_id, timestamp
from cli.runner import EXIT_NOT_COMPLETED, Outcome, listing, run
from cli.stack import Stack
from models import Deployment, queries
from workflows.contracts.errors import ErrorType

deployment_app = typer.Typer(help="Deployments and operators' rollbacks.", no_args_is_help=True)


@deployment_app.command("list")
def deployment_list(
    tenant: TenantRef,
    project: Annotated[str | None, typer.Option(help="Project id or slug.")] = None,
    limit: Annotated[int, typer.Option(help="Newest deployments shown.")] = 20,
    json_output: Json = False,
) -> None:
    """A tenant's newest deployments (rollbacks included)."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with stack.in_tenant(tenant) as (session, found):
            project_id = (
                (await tenancy.find_project(session, found, project)).id
                if project is not None
                else None
            )
            statement = queries.newest_deployments(found.id, project_id=project_id, limit=limit)
            deployments = (await session.exec(statement)).all()
        return listing(
            "Deployments",
            ["id", "queued", "environment", "status", "commit", ""],
            deployments,
            lambda d: [
                d.id,
                timestamp(d.queued_at),
                d.environment.value,
                d.status.value,
                (d.commit_sha or "")[:12],
                f"rollback of {d.rollback_of_id}" if d.rollback_of_id else "",
            ],
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
        target_id = parse_id(deployment)
        async with (await stack.sessions())() as session:
            target = await session.get(Deployment, target_id)
        if target is None:
            raise Refused(ErrorType.DEPLOYMENT_NOT_FOUND, f"no deployment {target_id}")
        requested_by = await people.user_id(stack, target.tenant_id, user) if user else None
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
