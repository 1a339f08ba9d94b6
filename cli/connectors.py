"""`changeflow connector ...` and `changeflow report`: a tenant's shop connected, tested,
enabled, disabled, its credentials rotated and its sync run, through ConnectorService and the
connector's Schedule (workers/schedules.py); a report through ReportWorkflow.

Secrets never go on the command line (a process list shows it): they come from the
environment (SHOPIFY_ACCESS_TOKEN, or SHOPIFY_CLIENT_ID and SHOPIFY_CLIENT_SECRET; and
SHOPIFY_WEBHOOK_SECRET for webhooks) or, at a terminal, a hidden prompt.
"""

import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from sqlmodel import col, select
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import (
    ApplicationError,
    CancelledError,
    TerminatedError,
    WorkflowAlreadyStartedError,
)
from temporalio.exceptions import (
    TimeoutError as TimedOutError,
)

from activities.commerce_sync import close_ended_runs
from activities.connectors import ConnectorError, ConnectorService
from activities.github_client import GITHUB_API_URL
from activities.shopify import ShopifyError
from activities.shopify_webhooks import register_webhooks
from cli import tenancy
from cli.common import Json, TenantRef, as_row, rich_table, timestamp
from cli.runner import EXIT_NOT_COMPLETED, Outcome, run
from cli.stack import Stack
from cli.tenancy import Refused
from models.commerce import ModuleExecution, ModuleKind
from models.projects import Connector, ConnectorKind, ConnectorStatus
from workers.registry import connector_clients
from workers.schedules import apply_connector_schedule
from workflows.commerce import OrderSyncWorkflow
from workflows.contracts.commerce import (
    OrderSyncInput,
    total,
)
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import order_sync_workflow_id

connector_app = typer.Typer(
    help="A tenant's connections to outside systems (Shopify, GitHub, git remotes).",
    no_args_is_help=True,
)

ConnectorId = Annotated[uuid.UUID, typer.Argument(help="The connector's id.")]


async def _service(stack: Stack) -> ConnectorService:
    sessions = await stack.sessions()
    store, connections = connector_clients(stack.settings, sessions)
    return ConnectorService(sessions, store, connections)


def shopify_credentials(env: dict[str, str], at_terminal: bool) -> dict[str, str]:
    """The secret fields from the environment, else (at a terminal) a hidden prompt; the
    webhooks' signing secret (SHOPIFY_WEBHOOK_SECRET) rides along when given."""
    if env.get("SHOPIFY_ACCESS_TOKEN"):
        credentials = {"access_token": env["SHOPIFY_ACCESS_TOKEN"]}
    elif env.get("SHOPIFY_CLIENT_ID") and env.get("SHOPIFY_CLIENT_SECRET"):
        credentials = {
            "client_id": env["SHOPIFY_CLIENT_ID"],
            "client_secret": env["SHOPIFY_CLIENT_SECRET"],
        }
    elif at_terminal:
        credentials = {"access_token": typer.prompt("Admin API access token", hide_input=True)}
    else:
        raise Refused(
            ErrorType.INVALID_CONNECTOR_CONFIG,
            "set SHOPIFY_ACCESS_TOKEN, or SHOPIFY_CLIENT_ID and SHOPIFY_CLIENT_SECRET",
        )
    if env.get("SHOPIFY_WEBHOOK_SECRET"):
        credentials["webhook_secret"] = env["SHOPIFY_WEBHOOK_SECRET"]
    return credentials


def github_credentials(
    env: dict[str, str],
    at_terminal: bool,
    *,
    app_id: str | None,
    installation_id: str | None,
    private_key_file: Path | None,
) -> dict[str, str]:
    """A GitHub App's (its id and installation id as options, its private key from a PEM
    file) or else a fine-grained personal access token from GITHUB_TOKEN (at a terminal, a
    hidden prompt); the App's webhook secret (GITHUB_WEBHOOK_SECRET) rides along when given.
    The connector's own rules (activities/github_client.check_connector) judge the values."""
    if app_id or installation_id or private_key_file:
        if private_key_file is None:
            raise Refused(
                ErrorType.INVALID_CONNECTOR_CONFIG,
                "a GitHub App needs --private-key-file (the App's .pem private key)",
            )
        try:
            private_key = private_key_file.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise Refused(
                ErrorType.INVALID_CONNECTOR_CONFIG,
                f"cannot read --private-key-file {private_key_file}: {type(err).__name__}",
            ) from None
        credentials = {
            "app_id": app_id or "",
            "installation_id": installation_id or "",
            "private_key": private_key,
        }
    elif env.get("GITHUB_TOKEN"):
        credentials = {"token": env["GITHUB_TOKEN"]}
    elif at_terminal:
        credentials = {"token": typer.prompt("Fine-grained personal access token", hide_input=True)}
    else:
        raise Refused(
            ErrorType.INVALID_CONNECTOR_CONFIG,
            "give --app-id, --installation-id and --private-key-file, or set GITHUB_TOKEN",
        )
    if env.get("GITHUB_WEBHOOK_SECRET"):
        credentials["webhook_secret"] = env["GITHUB_WEBHOOK_SECRET"]
    return credentials


def _secrets() -> dict[str, str]:
    return shopify_credentials(dict(os.environ), sys.stdin.isatty())


async def _schedule(stack: Stack, connector: Connector) -> str:
    """The connector's sync Schedule made to match its status."""
    return await apply_connector_schedule(
        await stack.client(), connector, stack.settings.task_queue
    )


def _connector_data(connector: Connector, schedule: str | None = None) -> dict[str, Any]:
    data = as_row(connector)
    if schedule is not None:
        data["schedule"] = schedule
    return data


def _say(
    connector: Connector, schedule: str | None = None, facts: dict[str, Any] | None = None
) -> Any:
    def render(out: Console) -> None:
        out.print(
            f"connector [bold]{escape(connector.name)}[/] {connector.id}: "
            f"{connector.status.value}"
            + (f" ({escape(connector.last_error)})" if connector.last_error else "")
        )
        if schedule and schedule != "none":
            out.print(f"sync schedule {schedule} (every {connector.sync_interval_seconds} s)")
        for line in _warnings(facts or {}):
            out.print(f"[yellow]{escape(line)}[/]")
        for topic, uri in sorted(((facts or {}).get("webhook_subscriptions") or {}).items()):
            out.print(f"webhook {topic} -> {escape(uri)}")
        webhook_url = (facts or {}).get("webhook_url")
        if webhook_url:
            out.print(f"set the GitHub App's webhook URL to {escape(webhook_url)}")

    return render


def _warnings(facts: dict[str, Any]) -> list[str]:
    """What the last sync learnt that people must act on."""
    lines = []
    sync = facts.get("last_sync") or {}
    version = sync.get("api_version") or {}
    if version and version.get("served") != version.get("asked"):
        lines.append(
            f"Shopify served API version {version.get('served')}, not {version.get('asked')} "
            "(out of support): set CHANGEFLOW_SHOPIFY_API_VERSION to a supported version"
        )
    if sync.get("withheld"):
        lines.append(
            "withheld by the shop (protected customer data, no access): "
            + ", ".join(sync["withheld"])
            + "; request access in the app's settings (Protected customer data access)"
        )
    return lines


async def _last_sync(stack: Stack, connector_id: uuid.UUID) -> dict[str, Any]:
    """The connector's last sync run as `connector show` reports it."""
    async with (await stack.sessions())() as session:
        execution = (
            await session.exec(
                select(ModuleExecution)
                .where(
                    ModuleExecution.connector_id == connector_id,
                    ModuleExecution.module == ModuleKind.ORDER_SYNC,
                )
                .order_by(col(ModuleExecution.created_at).desc())
            )
        ).first()
    if execution is None:
        return {}
    return {
        "last_sync": {
            "status": execution.status.value,
            "error": execution.error,
            "finished_at": timestamp(execution.finished_at),
            "api_version": execution.meta.get("api_version"),
            "withheld": execution.meta.get("withheld") or [],
        }
    }


CREATABLE_KINDS = (ConnectorKind.SHOPIFY, ConnectorKind.GITHUB)


@connector_app.command("create")
def connector_create(
    tenant: TenantRef,
    shop_url: Annotated[
        str | None, typer.Option(help="Shopify: https://<shop>.myshopify.com")
    ] = None,
    kind: Annotated[
        str, typer.Option(help="shopify, or github (a repository on GitHub).")
    ] = ConnectorKind.SHOPIFY.value,
    repository: Annotated[str | None, typer.Option(help="GitHub: owner/name.")] = None,
    api_url: Annotated[
        str, typer.Option(help="GitHub: the REST API's base URL.", envvar="GITHUB_API_URL")
    ] = GITHUB_API_URL,
    app_id: Annotated[str | None, typer.Option(help="GitHub App: its App ID.")] = None,
    installation_id: Annotated[
        str | None, typer.Option(help="GitHub App: its installation's id.")
    ] = None,
    private_key_file: Annotated[
        Path | None, typer.Option(help="GitHub App: its private key (.pem file).")
    ] = None,
    checks_time_limit: Annotated[
        float | None,
        typer.Option(help="GitHub: seconds each environment waits for its checks (1800)."),
    ] = None,
    on_silence: Annotated[
        str | None,
        typer.Option(help="GitHub: when no check reports, pass_after_grace (default) or fail."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name people recognise.")] = None,
    project: Annotated[str | None, typer.Option(help="Scope to a project (id or slug).")] = None,
    interval: Annotated[int, typer.Option(help="Seconds between scheduled syncs.")] = 900,
    json_output: Json = False,
) -> None:
    """Connect a Shopify shop (a sync Schedule once it is active) or, with --kind github, a
    repository on GitHub through a GitHub App or a fine-grained token (GITHUB_TOKEN): the
    credentials stored encrypted and tested against the outside system."""

    async def work(stack: Stack, _: Console) -> Outcome:
        chosen = _kind(kind)
        if chosen is ConnectorKind.GITHUB:
            credentials = github_credentials(
                dict(os.environ),
                sys.stdin.isatty(),
                app_id=app_id,
                installation_id=installation_id,
                private_key_file=private_key_file,
            )
            config: dict[str, Any] = {"repository": repository or "", "api_url": api_url}
            policy: dict[str, Any] = {}
            if checks_time_limit is not None:
                policy["time_limit_s"] = checks_time_limit
            if on_silence is not None:
                policy["on_silence"] = on_silence
            if policy:
                config["verification"] = {env: dict(policy) for env in ("staging", "production")}
        else:
            credentials = _secrets()
            config = {"shop_url": shop_url or ""}
        await stack.client()  # Temporal is needed for the Schedule: fail before writing.
        async with (await stack.sessions())() as session:
            found = await tenancy.find_tenant(session, tenant)
            project_id = (
                (await tenancy.find_project(session, found, project)).id if project else None
            )
        service = await _service(stack)
        created = await service.create(
            tenant_id=found.id,
            kind=chosen,
            name=name or ("GitHub" if chosen is ConnectorKind.GITHUB else "Shopify"),
            config=config,
            credentials=credentials,
            project_id=project_id,
            sync_interval_seconds=interval,
        )
        tested = await service.test(created.id)
        schedule = await _schedule(stack, tested)
        facts = await _subscribe(stack, tested)
        code = 0 if tested.status is ConnectorStatus.ACTIVE else EXIT_NOT_COMPLETED
        return Outcome(
            {**_connector_data(tested, schedule), **facts}, _say(tested, schedule, facts), code
        )

    run(json_output, work)


def _kind(value: str) -> ConnectorKind:
    try:
        chosen = ConnectorKind(value)
    except ValueError:
        chosen = None
    if chosen not in CREATABLE_KINDS:
        names = ", ".join(k.value for k in CREATABLE_KINDS)
        raise Refused(
            ErrorType.INVALID_CONNECTOR_CONFIG, f"--kind must be one of {names}, not {value!r}"
        )
    assert chosen is not None
    return chosen


def git_credentials(env: dict[str, str], at_terminal: bool) -> dict[str, str]:
    """A git remote's secret from the environment (GIT_TOKEN; GIT_USERNAME and GIT_PASSWORD;
    or GIT_SSH_KEY_FILE, a deploy key's private key file, with GIT_SSH_PASSPHRASE), else (at a
    terminal) a hidden prompt for a token."""
    if env.get("GIT_TOKEN"):
        return {"token": env["GIT_TOKEN"]}
    if env.get("GIT_USERNAME") and env.get("GIT_PASSWORD"):
        return {"username": env["GIT_USERNAME"], "password": env["GIT_PASSWORD"]}
    if env.get("GIT_SSH_KEY_FILE"):
        try:
            key = Path(env["GIT_SSH_KEY_FILE"]).read_text()
        except OSError as exc:
            raise Refused(
                ErrorType.INVALID_CONNECTOR_CONFIG, f"GIT_SSH_KEY_FILE: {exc.strerror}"
            ) from None
        return {"ssh_private_key": key} | (
            {"ssh_passphrase": env["GIT_SSH_PASSPHRASE"]} if env.get("GIT_SSH_PASSPHRASE") else {}
        )
    if at_terminal:
        return {"token": typer.prompt("Access token", hide_input=True)}
    raise Refused(
        ErrorType.INVALID_CONNECTOR_CONFIG,
        "set GIT_TOKEN, GIT_USERNAME and GIT_PASSWORD, or GIT_SSH_KEY_FILE",
    )


@connector_app.command("git")
def connector_git(
    project: Annotated[str, typer.Argument(help="The project (id or slug) on a git remote.")],
    tenant: TenantRef,
    name: Annotated[str, typer.Option(help="A name people recognise.")] = "git",
    json_output: Json = False,
) -> None:
    """Give a project's git remote its credentials (https token or ssh deploy key), stored
    encrypted and tested by listing the remote's branches."""

    async def work(stack: Stack, _: Console) -> Outcome:
        credentials = git_credentials(dict(os.environ), sys.stdin.isatty())
        async with (await stack.sessions())() as session:
            found = await tenancy.find_project(
                session, await tenancy.find_tenant(session, tenant), project
            )
        service = await _service(stack)
        created = await service.create(
            tenant_id=found.tenant_id,
            kind=ConnectorKind.GIT,
            name=name,
            config={},
            credentials=credentials,
            project_id=found.id,
        )
        tested = await service.test(created.id)
        return Outcome(_connector_data(tested), _say(tested))

    run(json_output, work)


@connector_app.command("list")
def connector_list(tenant: TenantRef, json_output: Json = False) -> None:
    """A tenant's connectors and when each last synced."""

    async def work(stack: Stack, _: Console) -> Outcome:
        async with (await stack.sessions())() as session:
            found = await tenancy.find_tenant(session, tenant)
            connectors = (
                await session.exec(
                    select(Connector)
                    .where(Connector.tenant_id == found.id)
                    .order_by(col(Connector.created_at))
                )
            ).all()
        rows = [
            [c.id, c.name, c.kind.value, c.status.value, timestamp(c.last_synced_at), c.last_error]
            for c in connectors
        ]
        columns = ["id", "name", "kind", "status", "last synced", "last error"]
        return Outcome(
            [as_row(c) for c in connectors],
            lambda out: out.print(rich_table(f"Connectors of {found.slug}", columns, rows)),
        )

    run(json_output, work)


Operation = Callable[[ConnectorService, uuid.UUID], Awaitable[Connector]]


def _connector_command(name: str, help_text: str, operation: Operation, schedule: bool) -> None:
    """A command that runs one ConnectorService operation and, when it may change the status,
    makes the connector's Schedule match it."""

    @connector_app.command(name, help=help_text)
    def command(connector_id: ConnectorId, json_output: Json = False) -> None:
        async def work(stack: Stack, _: Console) -> Outcome:
            connector = await operation(await _service(stack), connector_id)
            applied = await _schedule(stack, connector) if schedule else None
            return Outcome(_connector_data(connector, applied), _say(connector, applied))

        run(json_output, work)


@connector_app.command("show")
def connector_show(connector_id: ConnectorId, json_output: Json = False) -> None:
    """A connector's status, settings and last error, and what its last sync learnt: the API
    version the shop served and the fields it withheld."""

    async def work(stack: Stack, _: Console) -> Outcome:
        connector = await (await _service(stack)).get(connector_id)
        facts = await _last_sync(stack, connector_id)
        return Outcome({**_connector_data(connector), **facts}, _say(connector, None, facts))

    run(json_output, work)


@connector_app.command("test")
def connector_test(connector_id: ConnectorId, json_output: Json = False) -> None:
    """Call the shop with the stored credentials: active, or error. With
    CHANGEFLOW_WEBHOOKS_PUBLIC_URL set, an active shop's webhook subscriptions are made too."""

    async def work(stack: Stack, _: Console) -> Outcome:
        connector = await (await _service(stack)).test(connector_id)
        applied = await _schedule(stack, connector)
        facts = await _subscribe(stack, connector)
        return Outcome(
            {**_connector_data(connector, applied), **facts}, _say(connector, applied, facts)
        )

    run(json_output, work)


async def _subscribe(stack: Stack, connector: Connector) -> dict[str, Any]:
    public_url = stack.settings.webhooks_public_url
    if not public_url or connector.status is not ConnectorStatus.ACTIVE:
        return {}
    if connector.kind is ConnectorKind.GITHUB:
        # A GitHub App's webhook is set once in the App's settings, not per connector.
        return {"webhook_url": f"{public_url.rstrip('/')}/webhooks/github/{connector.id}"}
    _, connections = connector_clients(stack.settings, await stack.sessions())
    try:
        subscriptions = await register_webhooks(connections, connector, public_url)
    except (ShopifyError, ConnectorError) as err:
        raise Refused(err.error_type, f"webhook subscriptions not made: {err}") from None
    return {"webhook_subscriptions": subscriptions}


_connector_command(
    "enable",
    "A disabled connector back on, tested, its Schedule restored.",
    ConnectorService.enable,
    True,
)
_connector_command(
    "disable", "Stop syncing: disabled, and its Schedule removed.", ConnectorService.disable, True
)


@connector_app.command("rotate")
def connector_rotate(
    connector_id: ConnectorId,
    app_id: Annotated[str | None, typer.Option(help="GitHub App: its App ID.")] = None,
    installation_id: Annotated[
        str | None, typer.Option(help="GitHub App: its installation's id.")
    ] = None,
    private_key_file: Annotated[
        Path | None, typer.Option(help="GitHub App: its new private key (.pem file).")
    ] = None,
    json_output: Json = False,
) -> None:
    """Replace the credentials (from the environment, a prompt or, for a GitHub App, the
    options), encrypted, and test them."""

    async def work(stack: Stack, _: Console) -> Outcome:
        service = await _service(stack)
        current = await service.get(connector_id)
        if current.kind is ConnectorKind.GITHUB:
            secrets = github_credentials(
                dict(os.environ),
                sys.stdin.isatty(),
                app_id=app_id,
                installation_id=installation_id,
                private_key_file=private_key_file,
            )
        else:
            secrets = _secrets()
        connector = await service.rotate(connector_id, secrets)
        schedule = await _schedule(stack, connector)
        return Outcome(_connector_data(connector, schedule), _say(connector, schedule))

    run(json_output, work)


async def _sync_ended(stack: Stack, connector_id: uuid.UUID, err: WorkflowFailureError) -> Outcome:
    """A sync that did not succeed, named by its real cause: the shop's or the connector's
    refusal by its type; a termination, a timeout or a cancellation as such (its record
    closed with the counts its windows committed)."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type:
        raise Refused(cause.type, f"the sync failed: {cause.message}")
    if isinstance(cause, TerminatedError | TimedOutError | CancelledError):
        kind = {
            TerminatedError: "terminated",
            TimedOutError: "timed out",
            CancelledError: "cancelled",
        }[type(cause)]
        reason = f"the sync was {kind}" + (f": {cause.message}" if cause.message else "")
        async with (await stack.sessions())() as session, session.begin():
            await close_ended_runs(session, connector_id, reason)
        return Outcome(
            {"status": "failed", "error": reason},
            lambda out: out.print(f"[red]{escape(reason)}[/]"),
            EXIT_NOT_COMPLETED,
        )
    raise Refused(ErrorType.CONNECTOR_NOT_ACTIVE, f"the sync failed: {cause or err}")


@connector_app.command("sync")
def connector_sync(connector_id: ConnectorId, json_output: Json = False) -> None:
    """Run the connector's sync now and wait for it: counts per stream and the new cursors.
    A sync already running (scheduled, or started by a webhook) is followed instead."""

    async def work(stack: Stack, progress: Console) -> Outcome:
        client = await stack.client()
        workflow_id = order_sync_workflow_id(connector_id)
        try:
            # No execution timeout: a first sync of a big shop takes as long as it takes; its
            # windows are checkpointed, and it can be cancelled.
            handle = await client.start_workflow(
                OrderSyncWorkflow.run,
                OrderSyncInput(connector_id=connector_id),
                id=workflow_id,
                task_queue=stack.settings.task_queue,
            )
        except WorkflowAlreadyStartedError:
            progress.print(f"a sync of {connector_id} is running already; following it")
            handle = client.get_workflow_handle_for(OrderSyncWorkflow.run, workflow_id)
        try:
            result = await handle.result()
        except WorkflowFailureError as err:
            return await _sync_ended(stack, connector_id, err)

        def render(out: Console) -> None:
            for stream, c in sorted(result.counts.items()):
                out.print(
                    f"{stream.value}: {c.fetched} fetched, {c.inserted} inserted, "
                    f"{c.updated} updated, {c.unchanged} unchanged"
                )
            whole = total(result.counts)
            out.print(
                f"sync {result.status.value}: {whole.fetched} read in {result.windows} windows"
            )

        return Outcome(as_row(result), render)

    run(json_output, work)
