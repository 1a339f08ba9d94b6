"""Reconciliation: a clean ledger reconciles; each kind of drift is reported on its account,
and the command exits non-zero on drift."""

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from activities.ledger import Ledger
from activities.reconciliation import reconcile
from models import TokenAccount
from models.db import SessionFactory, asyncpg_dsn
from tests.factories import make_funded_account, make_tenant

ROOT = Path(__file__).resolve().parents[1]
HOUR = timedelta(hours=1)


async def busy_ledger(sessions: SessionFactory) -> tuple[Ledger, list[TokenAccount]]:
    """A few accounts with every kind of entry and hold."""
    ledger = Ledger(sessions)
    accounts = [
        await make_funded_account(sessions, tenant=await make_tenant(sessions), balance=10_000)
        for _ in range(3)
    ]
    for n, account in enumerate(accounts):
        charge = await ledger.charge(account.id, 100 + n, key="charge")
        await ledger.refund(charge.transaction_id, key="refund")
        settled = await ledger.reserve(account.id, 1_000, key="reserve-1", ttl=HOUR)
        await ledger.settle(settled.hold_id, 600, key="settle")
        released = await ledger.reserve(account.id, 500, key="reserve-2", ttl=HOUR)
        await ledger.release(released.hold_id, key="release")
        await ledger.reserve(account.id, 300, key="reserve-3", ttl=HOUR)  # still active
        await ledger.adjust(account.id, -25, key="adjust")
        await ledger.grant(account.id, period="2026-11")
    return ledger, accounts


async def tamper(database_url: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def test_a_busy_ledger_reconciles_clean(sessions: SessionFactory) -> None:
    _, accounts = await busy_ledger(sessions)
    reports = await reconcile(sessions)
    assert {r.account_id for r in reports} == {a.id for a in accounts}
    assert all(r.clean for r in reports), [r.drift for r in reports]
    assert all(r.entries == 6 and r.held == 300 for r in reports)


@pytest.mark.parametrize(
    ("check", "sql"),
    [
        ("balance", "UPDATE token_accounts SET balance = balance + 1 WHERE id = $1"),
        (
            "chain",
            "UPDATE token_transactions SET balance_after = balance_after + 5"
            " WHERE account_id = $1 AND sequence = 3",
        ),
        ("held", "UPDATE token_accounts SET held = held + 7 WHERE id = $1"),
        (
            "hold_settlement",
            "UPDATE token_holds SET settled_amount = 10"
            " WHERE account_id = $1 AND status = 'settled'",
        ),
        (
            "hold_expiry",
            "UPDATE token_holds SET expires_at = now() - interval '1 hour'"
            " WHERE account_id = $1 AND status = 'active'",
        ),
        (
            "sequence",
            "DELETE FROM token_ledger_requests"
            " WHERE account_id = $1 AND idempotency_key = 'adjust';"
            " DELETE FROM token_transactions"
            " WHERE account_id = $1 AND idempotency_key = 'adjust'",
        ),
    ],
)
async def test_drift_is_reported_on_the_account_it_happened_to(
    sessions: SessionFactory, database_url: str, check: str, sql: str
) -> None:
    _, accounts = await busy_ledger(sessions)
    victim = accounts[1]
    if ";" in sql:
        for statement in sql.split(";"):
            await tamper(database_url, statement, victim.id)
    else:
        await tamper(database_url, sql, victim.id)

    reports = {r.account_id: r for r in await reconcile(sessions)}

    assert any(d.startswith(f"{check}:") for d in reports[victim.id].drift), reports[victim.id]
    assert all(reports[a.id].clean for a in accounts if a.id != victim.id)


async def test_an_expired_hold_is_drift_only_once_the_grace_is_over(
    sessions: SessionFactory,
) -> None:
    clock = [datetime.now(UTC)]
    account = await make_funded_account(sessions, tenant=await make_tenant(sessions), balance=100)
    ledger = Ledger(sessions, clock=lambda: clock[0])
    await ledger.reserve(account.id, 50, key="hold", ttl=timedelta(minutes=1))
    later = clock[0] + timedelta(minutes=3)

    assert (await reconcile(sessions, now=later, expiry_grace=timedelta(minutes=5)))[0].clean
    assert not (await reconcile(sessions, now=later))[0].clean
    clock[0] = later
    await ledger.expire_holds()
    assert (await reconcile(sessions, now=later))[0].clean


async def run_command(database_url: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers.reconcile",
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url, "CHANGEFLOW_LOG_FORMAT": "json"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode or 0, out.decode()


@pytest.mark.system
async def test_the_reconcile_command_exits_non_zero_on_drift_and_names_the_account(
    sessions: SessionFactory, database_url: str
) -> None:
    _, accounts = await busy_ledger(sessions)

    code, out = await run_command(database_url)
    assert code == 0, out
    assert "reconciled 3 accounts: no drift" in out
    assert all(f"OK    account {a.id}" in out for a in accounts)

    await tamper(
        database_url,
        "UPDATE token_accounts SET balance = balance + 1 WHERE id = $1",
        accounts[2].id,
    )
    code, out = await run_command(database_url)
    assert code == 1, out
    assert f"DRIFT account {accounts[2].id}" in out
    assert "balance: cached balance" in out
    assert "1 with drift" in out
