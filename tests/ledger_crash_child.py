"""A worker process for the crash tests: runs one ledger operation and stops dead at a chosen
point, announcing "PAUSED" so the test can SIGKILL it there:

- before_statement / after_statement: around the operation's write statement (its fast path
  is that one statement, a transaction of its own); during_statement announces it just as
  the statement goes out, without pausing;
- before_commit / after_commit: around the COMMIT of an explicit transaction (the slow path
  that records a refusal).

The pause is instrumented here, by wrapping asyncpg in this process only; the ledger code
runs unmodified against the real database.

    python -m tests.ledger_crash_child <database_url> <where> <operation> <json arguments>
"""

import asyncio
import json
import sys
import uuid
from typing import Any

from asyncpg.connection import Connection
from asyncpg.transaction import Transaction

from activities.ledger import Ledger
from models.db import create_engine, session_factory


async def pause() -> None:
    print("PAUSED", flush=True)
    await asyncio.sleep(3600)


def pause_at(where: str) -> None:
    if where in ("before_statement", "during_statement", "after_statement"):
        fetchrow = Connection.fetchrow

        async def paused_fetchrow(self: Connection, query: str, *args: Any, **kw: Any) -> Any:
            writes = query.lstrip().startswith("WITH")
            if writes and where == "before_statement":
                await pause()
            if writes and where == "during_statement":
                print("PAUSED", flush=True)
            row = await fetchrow(self, query, *args, **kw)
            if writes and where == "after_statement":
                await pause()
            return row

        Connection.fetchrow = paused_fetchrow  # type: ignore[method-assign]
    else:
        commit = Transaction._Transaction__commit  # type: ignore[attr-defined]

        async def paused_commit(self: Transaction) -> None:
            if where == "before_commit":
                await pause()
            await commit(self)
            if where == "after_commit":
                await pause()

        Transaction._Transaction__commit = paused_commit  # type: ignore[attr-defined]


async def run(url: str, operation: str, args: dict[str, Any]) -> None:
    ledger = Ledger(session_factory(create_engine(url, pool_size=1)))
    match operation:
        case "charge":
            await ledger.charge(uuid.UUID(args["account_id"]), args["amount"], key=args["key"])
        case "settle":
            await ledger.settle(uuid.UUID(args["hold_id"]), args["amount"], key=args["key"])
        case _:
            raise SystemExit(f"unknown operation {operation}")
    print("DONE", flush=True)


if __name__ == "__main__":
    database_url, where, op, payload = sys.argv[1:5]
    pause_at(where)
    asyncio.run(run(database_url, op, json.loads(payload)))
