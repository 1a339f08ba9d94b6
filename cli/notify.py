"""`changeflow notify ...`: the tenant's notification webhook (activities/notifications.py):
its URL and signing secret (encrypted, shown once), a signed test ping, removal."""

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from cli.common import Json, TenantRef
from cli.runner import EXIT_NOT_COMPLETED, Outcome, run
from cli.stack import Stack

notify_app = typer.Typer(
    help="A tenant's notification webhook: what waits for approval, and how requests end.",
    no_args_is_help=True,
)


def _webhook_row(webhook: Any) -> dict[str, Any]:
    """What `notify` shows of a webhook: never its secret (stored encrypted, not readable)."""
    return {
        "connector_id": str(webhook.id),
        "tenant_id": str(webhook.tenant_id),
        "url": webhook.config.get("url"),
        "status": webhook.status.value,
        "last_error": webhook.last_error,
        "updated_at": webhook.updated_at.isoformat(),
    }


def _render_webhook(out: Console, row: dict[str, Any]) -> None:
    out.print(f"webhook     {escape(str(row['url']))}")
    out.print(f"status      {row['status']}")
    if row["last_error"]:
        out.print(f"last error  {escape(row['last_error'])}")
    out.print("secret      stored encrypted (shown once, when set)")


@notify_app.command("set")
def notify_set(
    tenant: TenantRef,
    url: Annotated[str, typer.Option(help="Where events are POSTed (http:// or https://).")],
    secret: Annotated[
        str | None,
        typer.Option(help="The signing secret; generated (and printed once) when not given."),
    ] = None,
    json_output: Json = False,
) -> None:
    """Set the tenant's webhook (or change its URL and secret). `notify test` pings it."""
    from activities.notifications import new_signing_secret

    async def work(stack: Stack, _: Console) -> Outcome:
        found = await stack.tenant(tenant)
        signing_secret = secret or new_signing_secret()
        webhook = await (await stack.webhooks()).set(found.id, url=url, secret=signing_secret)
        data = _webhook_row(webhook)
        if secret is None:
            data["signing_secret"] = signing_secret  # generated: this is the only time it shows

        def render(out: Console) -> None:
            out.print(f"webhook of tenant {found.slug} set: {escape(url)}")
            if secret is None:
                out.print(f"signing secret (shown once, keep it): {signing_secret}")

        return Outcome(data, render)

    run(json_output, work)


@notify_app.command("show")
def notify_show(tenant: TenantRef, json_output: Json = False) -> None:
    """The tenant's webhook: URL, status and the last delivery error of a test."""

    async def work(stack: Stack, _: Console) -> Outcome:
        found = await stack.tenant(tenant)
        webhook = await (await stack.webhooks()).find(found.id)
        if webhook is None:
            return Outcome(None, lambda out: out.print(f"tenant {found.slug} has no webhook"))
        row = _webhook_row(webhook)
        return Outcome(row, lambda out: _render_webhook(out, row))

    run(json_output, work)


@notify_app.command("test")
def notify_test(tenant: TenantRef, json_output: Json = False) -> None:
    """Send a signed `ping` event; the webhook becomes active, or in error with the reason."""

    async def work(stack: Stack, _: Console) -> Outcome:
        found = await stack.tenant(tenant)
        webhook = await (await stack.webhooks()).test(found.id)
        row = _webhook_row(webhook)
        code = 0 if webhook.status.value == "active" else EXIT_NOT_COMPLETED
        return Outcome(row, lambda out: _render_webhook(out, row), code)

    run(json_output, work)


@notify_app.command("remove")
def notify_remove(tenant: TenantRef, json_output: Json = False) -> None:
    """Stop notifications: the webhook is disabled (`notify set` brings it back)."""

    async def work(stack: Stack, _: Console) -> Outcome:
        found = await stack.tenant(tenant)
        webhook = await (await stack.webhooks()).remove(found.id)
        row = _webhook_row(webhook)
        return Outcome(
            row, lambda out: out.print(f"webhook of tenant {found.slug} removed (disabled)")
        )

    run(json_output, work)
