"""A worker process killed mid-operation (SIGKILL, no cleanup): killed after its commit but
before the caller heard back, the retry returns the stored result; killed before its commit,
nothing was persisted and the retry does the work once."""

import asyncio
import json
import signal
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from activities.ledger import Ledger
from activities.reconciliation import reconcile
from models.db import SessionFactory, asyncpg_dsn
from tests.factories import make_funded_account, make_tenant

ROOT = Path(__file__).resolve().parents[1]


async def kill_when_paused(database_url: str, where: str, operation: str, **args: Any) -> None:
    """Run the operation in a child process and SIGKILL it where it pauses."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.ledger_crash_child",
        database_url,
        where,
        operation,
        json.dumps({k: str(v) if isinstance(v, uuid.UUID) else v for k, v in args.items()}),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
    assert line.strip() == b"PAUSED", line
    child.send_signal(signal.SIGKILL)
    await child.wait()
    assert child.returncode == -signal.SIGKILL


async def entries_with_key(database_url: str, key: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return await conn.fetchval(
            "SELECT (SELECT count(*) FROM token_transactions WHERE idempotency_key = $1)"
            " + (SELECT count(*) FROM token_holds WHERE idempotency_key = $1)"
            " + (SELECT count(*) FROM token_ledger_requests WHERE idempotency_key = $1)",
            key,
        )
    finally:
        await conn.close()


async def wait_until_unlocked(database_url: str, account_id: uuid.UUID) -> None:
    """The killed backend's transaction is gone once its row lock is."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '30s'")
            await conn.execute("SELECT 1 FROM token_accounts WHERE id = $1 FOR UPDATE", account_id)
    finally:
        await conn.close()


async def test_a_charge_killed_after_commit_is_returned_by_the_retry_not_repeated(
    sessions: SessionFactory, database_url: str
) -> None:
    account = await make_funded_account(sessions, tenant=await make_tenant(sessions), balance=1_000)

    await kill_when_paused(
        database_url, "after_commit", "charge", account_id=account.id, amount=300, key="wf:apply"
    )

    ledger = Ledger(sessions)
    assert (await ledger.balance(account.id)).balance == 700  # it did commit
    retry = await ledger.charge(account.id, 300, key="wf:apply")
    assert retry.balance_after == 700
    assert (await ledger.balance(account.id)).balance == 700
    assert await entries_with_key(database_url, "wf:apply") == 2  # the entry and its record
    assert all(r.clean for r in await reconcile(sessions))


async def test_a_charge_killed_before_commit_left_nothing_and_the_retry_charges_once(
    sessions: SessionFactory, database_url: str
) -> None:
    account = await make_funded_account(sessions, tenant=await make_tenant(sessions), balance=1_000)

    await kill_when_paused(
        database_url, "before_commit", "charge", account_id=account.id, amount=300, key="wf:apply"
    )
    await wait_until_unlocked(database_url, account.id)

    ledger = Ledger(sessions)
    assert (await ledger.balance(account.id)).balance == 1_000
    assert await entries_with_key(database_url, "wf:apply") == 0
    retry = await ledger.charge(account.id, 300, key="wf:apply")
    assert retry.balance_after == 700
    assert await entries_with_key(database_url, "wf:apply") == 2
    assert all(r.clean for r in await reconcile(sessions))


@pytest.mark.parametrize("where", ["before_commit", "after_commit"])
async def test_a_settle_killed_around_its_commit_settles_exactly_once(
    sessions: SessionFactory, database_url: str, where: str
) -> None:
    account = await make_funded_account(sessions, tenant=await make_tenant(sessions), balance=5_000)
    ledger = Ledger(sessions)
    hold = await ledger.reserve(account.id, 2_000, key="wf:reserve", ttl=timedelta(hours=1))

    await kill_when_paused(
        database_url, where, "settle", hold_id=hold.hold_id, amount=1_200, key="wf:settle"
    )
    await wait_until_unlocked(database_url, account.id)
    committed = where == "after_commit"
    assert (await ledger.hold(hold.hold_id)).status == ("settled" if committed else "active")

    settlement = await ledger.settle(hold.hold_id, 1_200, key="wf:settle")

    assert (settlement.settled, settlement.released) == (1_200, 800)
    state = await ledger.balance(account.id)
    assert (state.balance, state.held) == (3_800, 0)
    assert all(r.clean for r in await reconcile(sessions))
