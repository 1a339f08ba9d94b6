"""Temporal's cancel, obeyed only while it is in time: once a run has gone past the point where
undoing it would leave a change behind (the default branch holds it, or may), a cancel is not
obeyed and the run goes on to its own end. The rule of what is too late is each workflow's: the
request's (PromptRequestWorkflow._cancel_too_late, the same as authorize_cancel's CancelTooLate)
and its production deployment's (DeploymentWorkflow._merge_went_ahead, the request's go).
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _nothing() -> None:
    return None


async def obeyed_while_in_time(
    too_late: Callable[[], bool], run: Awaitable[T], *, refused: Callable[[], None] = _nothing
) -> T:
    """Await `run` (a workflow's work) so that the workflow's cancel reaches it only while
    `too_late()` is false; one that comes after is not (`refused` is told) and `run` goes on."""
    running = asyncio.ensure_future(run)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        if too_late():
            refused()
        else:
            running.cancel()  # the run hears of it and compensates
    return await running
