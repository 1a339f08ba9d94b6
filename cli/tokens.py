"""`changeflow tokens ...`: a tenant's token account, through the ledger (activities/ledger.py)."""

import uuid
from typing import Annotated, Any

import typer
from rich.console import Console

from activities.ledger import current_period
from cli.common import Json, TenantRef, as_row, timestamp
from cli.runner import Outcome, listing, run
from cli.stack import Stack
from models import queries

tokens_app = typer.Typer(help="A tenant's token account, through the ledger.", no_args_is_help=True)


async def _account_id(stack: Stack, tenant: str) -> uuid.UUID:
    found = await stack.tenant(tenant)
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
            entries = (await session.exec(queries.newest_entries(account_id, limit=limit))).all()
        return listing(
            "Ledger",
            ["#", "at", "kind", "amount", "balance", "description"],
            entries,
            lambda e: [
                e.sequence,
                timestamp(e.created_at),
                e.kind.value,
                ("+" if e.direction.value == "credit" else "-") + f"{e.amount:,}",
                f"{e.balance_after:,}",
                e.description,
            ],
        )

    run(json_output, work)
