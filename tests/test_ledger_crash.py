"""A worker process killed mid-operation (SIGKILL, no cleanup). Killed after its commit but
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

from activities.ledger import InsufficientTokens, Ledger
from activities.reconciliation import reconcile
from models.db import SessionFactory, asyncpg_dsn
from tests.factories import make_funded_account, make_tenant

ROOT = Path(__file__).resolve().parents[1]


async def start_child(database_url: str, where: str, operation: str, **args: Any) -> Any:
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
    return child


async def kill(child: Any) -> None:
    child.send_signal(signal.SIGKILL)
    await child.wait()
    assert child.returncode == -signal.SIGKILL


async def kill_when_paused(database_url: str, where: str, operation: str, **args: Any) -> None:
    """Run the operation in a child process and SIGKILL it where it pauses."""
    await kill(await start_child(database_url, where, operation, **args))


async def rows_with_key(database_url: str, key: str) -> int:
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
    """A killed backend's transaction is over once its row lock is gone."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '30s'")
            await conn.execute("SELECT 1 FROM token_accounts WHERE id = $1 FOR UPDATE", account_id)
    finally:
        await conn.close()


async def funded(sessions: SessionFactory, balance: int) -> Any:
    return await make_funded_account(sessions, tenant=await make_tenant(sessions), balance=balance)


async def clean(sessions: SessionFactory) -> bool:
    return all(r.clean for r in await reconcile(sessions))


async def test_a_charge_killed_after_commit_is_returned_by_the_retry_not_repeated(
    sessions: SessionFactory, database_url: str
) -> None:
    account = await funded(sessions, 1_000)

    await kill_when_paused(
        database_url, "after_statement", "charge", account_id=account.id, amount=300, key="wf:a"
    )

    ledger = Ledger(sessions)
    assert (await ledger.balance(account.id)).balance == 700  # it did commit
    retry = await ledger.charge(account.id, 300, key="wf:a")
    assert retry.balance_after == 700
    assert (await ledger.balance(account.id)).balance == 700
    assert await rows_with_key(database_url, "wf:a") == 2  # the entry and its record
    assert await clean(sessions)


async def test_a_charge_killed_before_commit_left_nothing_and_the_retry_charges_once(
    sessions: SessionFactory, database_url: str
) -> None:
    account = await funded(sessions, 1_000)

    await kill_when_paused(
        database_url, "before_statement", "charge", account_id=account.id, amount=300, key="wf:a"
    )

    ledger = Ledger(sessions)
    assert (await ledger.balance(account.id)).balance == 1_000
    assert await rows_with_key(database_url, "wf:a") == 0
    assert (await ledger.charge(account.id, 300, key="wf:a")).balance_after == 700
    assert await rows_with_key(database_url, "wf:a") == 2
    assert await clean(sessions)


async def test_a_charge_killed_while_its_statement_waits_on_the_server_lands_once(
    sessions: SessionFactory, database_url: str
) -> None:
    """The statement was sent but blocked on a row lock when the worker died: whether the
    server then finished it or not, the retry leaves exactly one charge."""
    account = await funded(sessions, 1_000)
    blocker = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute("SELECT 1 FROM token_accounts WHERE id = $1 FOR UPDATE", account.id)
        child = await start_child(
            database_url, "during_statement", "charge", account_id=account.id, amount=300, key="k"
        )
        # Kill it only once its statement is on the server, waiting for the lock.
        for _ in range(200):
            waiting = await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting == 1
        await kill(child)
        await locked.rollback()
    finally:
        await blocker.close()
    await wait_until_unlocked(database_url, account.id)

    retry = await Ledger(sessions).charge(account.id, 300, key="k")

    assert retry.balance_after == 700
    assert (await Ledger(sessions).balance(account.id)).balance == 700
    assert await clean(sessions)


@pytest.mark.parametrize("where", ["before_statement", "after_statement"])
async def test_a_settle_killed_around_its_commit_settles_exactly_once(
    sessions: SessionFactory, database_url: str, where: str
) -> None:
    account = await funded(sessions, 5_000)
    ledger = Ledger(sessions)
    hold = await ledger.reserve(account.id, 2_000, key="wf:reserve", ttl=timedelta(hours=1))

    await kill_when_paused(
        database_url, where, "settle", hold_id=hold.hold_id, amount=1_200, key="wf:settle"
    )
    committed = where == "after_statement"
    assert (await ledger.hold(hold.hold_id)).status == ("settled" if committed else "active")

    settlement = await ledger.settle(hold.hold_id, 1_200, key="wf:settle")

    assert (settlement.settled, settlement.released) == (1_200, 800)
    state = await ledger.balance(account.id)
    assert (state.balance, state.held) == (3_800, 0)
    assert await clean(sessions)


async def test_a_refusal_killed_before_its_record_committed_does_not_stick_to_the_key(
    sessions: SessionFactory, database_url: str
) -> None:
    account = await funded(sessions, 100)

    await kill_when_paused(
        database_url, "before_commit", "charge", account_id=account.id, amount=500, key="wf:a"
    )
    await wait_until_unlocked(database_url, account.id)

    ledger = Ledger(sessions)
    assert await rows_with_key(database_url, "wf:a") == 0
    await ledger.top_up(account.id, 1_000, key="top-up")
    assert (await ledger.charge(account.id, 500, key="wf:a")).balance_after == 600
    assert await clean(sessions)


async def test_a_refusal_killed_after_its_record_committed_keeps_failing_on_retry(
    sessions: SessionFactory, database_url: str
) -> None:
    account = await funded(sessions, 100)

    await kill_when_paused(
        database_url, "after_commit", "charge", account_id=account.id, amount=500, key="wf:a"
    )

    ledger = Ledger(sessions)
    await ledger.top_up(account.id, 1_000, key="top-up")
    with pytest.raises(InsufficientTokens):
        await ledger.charge(account.id, 500, key="wf:a")
    assert (await ledger.balance(account.id)).balance == 1_100
    assert await clean(sessions)
