"""`make bench-ledger`: what exactly-once bookkeeping costs over the bare writes.

With 8 concurrent clients, for (a) many accounts and (b) one hot account, it measures direct
charges per second and reserve+settle pairs per second through the public Ledger operations
(fresh idempotency keys each time), and, in the same run and database, a raw-SQL baseline:
transactions per second of one conditional UPDATE of the balance plus one INSERT of an entry,
through asyncpg. The last line is one JSON object with the rates and the ratios
(charges/s over baseline tx/s; pairs/s over half the baseline tx/s).

Runs on TEST_DATABASE_URL's server (a scratch database, dropped afterwards) when it is set,
otherwise on an embedded pgserver in a temporary folder. Tunables: BENCH_SECONDS (per
measurement, default 3, split into BENCH_SLICES=8 slices alternating with the baseline's, so
a busy neighbour slows both alike), BENCH_ROUNDS (default 3; rates and per-round ratios are
the medians), BENCH_CLIENTS (default 8), BENCH_ACCOUNTS (default 1000).
"""

import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from activities.ledger import Ledger, no_session_state
from models.db import asyncpg_dsn, create_engine, session_factory
from models.migrate import upgrade
from scripts.databases import create_database, drop_database
from workers.devstack import start_postgres

SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SLICES = int(os.environ.get("BENCH_SLICES", "8"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "8"))
ACCOUNTS = int(os.environ.get("BENCH_ACCOUNTS", "1000"))
FUNDS = 10**14

_BASELINE_UPDATE = """
UPDATE token_accounts
SET balance = balance - $1, last_sequence = last_sequence + 1
WHERE id = $2 AND balance - held - $1 >= floor
RETURNING tenant_id, balance, last_sequence
"""
_BASELINE_INSERT = """
INSERT INTO token_transactions
    (id, account_id, tenant_id, direction, kind, amount, balance_after, sequence,
     idempotency_key, description, meta, created_at)
VALUES ($1, $2, $3, 'debit', 'charge', $4, $5, $6, $7, '', '{}', now())
"""

Operation = Callable[[int], Awaitable[Any]]


async def _open_accounts(dsn: str, count: int) -> list[uuid.UUID]:
    """Tenants with funded accounts, written in bulk (setup is not what is measured)."""
    conn = await asyncpg.connect(dsn)
    try:
        tenants = [(uuid.uuid4(), f"bench-{uuid.uuid4().hex}") for _ in range(count)]
        accounts = [uuid.uuid4() for _ in range(count)]
        await conn.executemany(
            "INSERT INTO tenants (id, name, slug, plan_tier, created_at, updated_at) "
            "VALUES ($1, 'Bench', $2, 'scale', now(), now())",
            tenants,
        )
        await conn.executemany(
            "INSERT INTO token_accounts (id, tenant_id, plan_tier, balance, floor, held, "
            "last_sequence, created_at, updated_at) "
            "VALUES ($1, $2, 'scale', $3, 0, 0, 1, now(), now())",
            [(a, t[0], FUNDS) for a, t in zip(accounts, tenants, strict=True)],
        )
        await conn.executemany(
            "INSERT INTO token_transactions (id, account_id, tenant_id, direction, kind, amount, "
            "balance_after, sequence, idempotency_key, description, meta, created_at) "
            "VALUES ($1, $2, $3, 'credit', 'top_up', $4, $4, 1, 'bench-funding', '', '{}', now())",
            [(uuid.uuid4(), a, t[0], FUNDS) for a, t in zip(accounts, tenants, strict=True)],
        )
    finally:
        await conn.close()
    return accounts


async def _measure(operation: Operation, seconds: float) -> tuple[int, float]:
    """Operations done and time taken by CLIENTS concurrent clients over `seconds`."""
    done = 0
    stop = False

    async def client(n: int) -> None:
        nonlocal done
        i = n
        while not stop:
            await operation(i)
            i += CLIENTS
            done += 1

    started = time.perf_counter()
    tasks = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*tasks)
    return done, time.perf_counter() - started


async def _compare(cases: dict[str, Operation]) -> dict[str, float]:
    """Rates of several operations measured in alternating slices, so that load from
    neighbours on a shared machine falls on all of them alike."""
    for operation in cases.values():  # warm-up: connections, prepared statements
        await _measure(operation, 0.3)
    totals = {name: [0, 0.0] for name in cases}
    slice_s = SECONDS / SLICES
    for _ in range(SLICES):
        for name, operation in cases.items():
            done, took = await _measure(operation, slice_s)
            totals[name][0] += done
            totals[name][1] += took
    return {name: done / took for name, (done, took) in totals.items()}


async def _server_description(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        sync = await conn.fetchval("SHOW synchronous_commit")
    finally:
        await conn.close()
    return f"PostgreSQL {version}, synchronous_commit={sync}"


async def bench(url: str, *, database: str) -> dict[str, Any]:
    dsn = asyncpg_dsn(url)
    many = await _open_accounts(dsn, ACCOUNTS)
    hot = (await _open_accounts(dsn, 1))[0]
    baseline_many = await _open_accounts(dsn, ACCOUNTS)
    baseline_hot = (await _open_accounts(dsn, 1))[0]

    engine = create_engine(url, pool_size=CLIENTS)
    ledger = Ledger(session_factory(engine), pool_size=CLIENTS)
    # The baseline's pool is tuned like the ledger's: no reset query on release.
    pool = await asyncpg.create_pool(
        dsn, min_size=CLIENTS, max_size=CLIENTS, reset=no_session_state
    )
    assert pool is not None
    run = uuid.uuid4().hex[:8]
    rng = random.Random(7)

    async def baseline(account_id: uuid.UUID) -> None:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_BASELINE_UPDATE, 1, account_id)
            await conn.execute(
                _BASELINE_INSERT,
                uuid.uuid4(),
                account_id,
                row["tenant_id"],
                1,
                row["balance"],
                row["last_sequence"],
                uuid.uuid4().hex,
            )

    def charges(pick: Callable[[], uuid.UUID]) -> Operation:
        async def charge(i: int) -> None:
            await ledger.charge(pick(), 1, key=f"bench-{run}-{uuid.uuid4().hex}")

        return charge

    def reserve_settle(pick: Callable[[], uuid.UUID]) -> Operation:
        async def pair(i: int) -> None:
            key = f"bench-{run}-{uuid.uuid4().hex}"
            hold = await ledger.reserve(pick(), 2, key=key, ttl=timedelta(hours=1))
            await ledger.settle(hold.hold_id, 1, key=f"{key}:settle")

        return pair

    groups: list[dict[str, Operation]] = [
        {
            "baseline_many_tps": lambda i: baseline(rng.choice(baseline_many)),
            "charge_many_per_s": charges(lambda: rng.choice(many)),
            "reserve_settle_many_per_s": reserve_settle(lambda: rng.choice(many)),
        },
        {
            "baseline_hot_tps": lambda i: baseline(baseline_hot),
            "charge_hot_per_s": charges(lambda: hot),
            "reserve_settle_hot_per_s": reserve_settle(lambda: hot),
        },
    ]
    samples: dict[str, list[float]] = {name: [] for group in groups for name in group}
    try:
        for round_ in range(1, ROUNDS + 1):
            for group in groups:
                for name, rate in (await _compare(group)).items():
                    samples[name].append(rate)
                    print(f"round {round_}: {name:<28} {rate:9.1f}/s", flush=True)
    finally:
        await pool.close()
        await ledger.close()
        await engine.dispose()

    # Ratios within each round (same conditions), then the median over rounds.
    ratios = {
        "charge_many_ratio": ("charge_many_per_s", "baseline_many_tps", 1),
        "charge_hot_ratio": ("charge_hot_per_s", "baseline_hot_tps", 1),
        "reserve_settle_many_ratio": ("reserve_settle_many_per_s", "baseline_many_tps", 2),
        "reserve_settle_hot_ratio": ("reserve_settle_hot_per_s", "baseline_hot_tps", 2),
    }
    result: dict[str, Any] = {
        name: round(statistics.median(values), 1) for name, values in samples.items()
    }
    for ratio, (measured, base, per) in ratios.items():
        pairs = zip(samples[measured], samples[base], strict=True)
        per_round = [r / (b / per) for r, b in pairs]
        result[ratio] = round(statistics.median(per_round), 3)
    result |= {
        "database": database,
        "server": await _server_description(dsn),
        "clients": CLIENTS,
        "accounts": ACCOUNTS,
        "seconds_per_measurement": SECONDS,
        "rounds": ROUNDS,
        "slices": SLICES,
    }
    return result


async def main_async() -> dict[str, Any]:
    admin_url = os.environ.get("TEST_DATABASE_URL")
    if admin_url:
        name = f"changeflow_bench_{uuid.uuid4().hex[:8]}"
        url = await create_database(admin_url, name)
        where = make_url(admin_url)
        print(f"database: TEST_DATABASE_URL server {where.host}:{where.port or 5432}, db {name}")
        try:
            await asyncio.to_thread(upgrade, url)
            print(f"server: {await _server_description(asyncpg_dsn(url))}", flush=True)
            return await bench(url, database="TEST_DATABASE_URL server")
        finally:
            await drop_database(admin_url, name)
    with tempfile.TemporaryDirectory(prefix="changeflow-bench-") as folder:
        server, url = await asyncio.to_thread(start_postgres, Path(folder), "changeflow_bench")
        print(f"database: embedded pgserver in {folder}")
        try:
            await asyncio.to_thread(upgrade, url)
            print(f"server: {await _server_description(asyncpg_dsn(url))}", flush=True)
            return await bench(url, database="embedded pgserver")
        finally:
            await asyncio.to_thread(server.cleanup)


def main() -> None:
    result = asyncio.run(main_async())
    print(json.dumps(result, sort_keys=True), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
