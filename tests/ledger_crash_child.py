"""A worker process for the crash tests: runs one ledger operation and stops dead just before
or just after its transaction commits, announcing "PAUSED" so the test can SIGKILL it there.

The pause is instrumented here, by wrapping asyncpg's commit in this process only; the ledger
code runs unmodified against the real database.

    python -m tests.ledger_crash_child <database_url> <before_commit|after_commit> <op> <json>
"""

import asyncio
import json
import sys
import uuid
from datetime import timedelta
from typing import Any

from asyncpg.transaction import Transaction

from activities.ledger import Ledger
from models.db import create_engine, session_factory


def pause_around_commit(where: str) -> None:
    commit = Transaction._Transaction__commit  # type: ignore[attr-defined]

    async def paused_commit(self: Transaction) -> None:
        if where == "before_commit":
            print("PAUSED", flush=True)
            await asyncio.sleep(3600)
        await commit(self)
        if where == "after_commit":
            print("PAUSED", flush=True)
            await asyncio.sleep(3600)

    Transaction._Transaction__commit = paused_commit  # type: ignore[attr-defined]


async def run(url: str, operation: str, args: dict[str, Any]) -> None:
    ledger = Ledger(session_factory(create_engine(url, pool_size=1)))
    match operation:
        case "charge":
            await ledger.charge(uuid.UUID(args["account_id"]), args["amount"], key=args["key"])
        case "reserve":
            await ledger.reserve(
                uuid.UUID(args["account_id"]),
                args["amount"],
                key=args["key"],
                ttl=timedelta(hours=1),
            )
        case "settle":
            await ledger.settle(uuid.UUID(args["hold_id"]), args["amount"], key=args["key"])
        case _:
            raise SystemExit(f"unknown operation {operation}")
    print("DONE", flush=True)


if __name__ == "__main__":
    database_url, where, op, payload = sys.argv[1:5]
    pause_around_commit(where)
    asyncio.run(run(database_url, op, json.loads(payload)))
