"""Heartbeating around slow work, shared by the activities that wait on engines and targets."""

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")


async def heartbeating(work: Awaitable[T], *, every_s: float) -> T:
    """Await `work` while heartbeating every `every_s` seconds, so a dead worker's attempt is
    retried after the heartbeat timeout (not the whole start-to-close timeout) and a cancelled
    workflow reaches a long check."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every_s)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
