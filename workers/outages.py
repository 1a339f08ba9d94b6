"""One log line per outage of the worker's servers, not one per failed call.

While PostgreSQL or Temporal is down a worker keeps running: Temporal's pollers retry by
themselves and failed activities are retried by Temporal. What an operator needs is the outage
itself: `dependency_down` (a warning) when a server stops answering and `dependency_back`
(info) when it answers again, from a probe every few seconds; nothing in between.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

log = structlog.get_logger(__name__)

PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 3.0

Probe = Callable[[], Awaitable[object]]


def database_probe(engine: AsyncEngine) -> Probe:
    async def probe() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return probe


def temporal_probe(client: Client) -> Probe:
    async def probe() -> object:
        # No retries: the probe asks once; its schedule is the retry.
        return await client.workflow_service.get_system_info(
            GetSystemInfoRequest(), retry=False, timeout=timedelta(seconds=PROBE_TIMEOUT_S)
        )

    return probe


class OutageLog:
    """Turns probe results into transitions: a line when a server goes down, one when back."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.down_since: float | None = None

    def answered(self) -> None:
        if self.down_since is not None:
            log.info(
                "dependency_back",
                dependency=self.name,
                down_seconds=round(time.monotonic() - self.down_since, 1),
            )
            self.down_since = None

    def failed(self, error: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning(
                "dependency_down",
                dependency=self.name,
                error_type=type(error).__name__,
                error=str(error)[:200],
            )


async def watch_outages(probes: dict[str, Probe], stop: asyncio.Event) -> None:
    """Probe each server until `stop` is set, logging each outage's start and end once."""
    outages = {name: OutageLog(name) for name in probes}
    while not stop.is_set():
        for name, probe in probes.items():
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    await probe()
            except Exception as exc:  # any failure to answer is the outage being logged
                outages[name].failed(exc)
            else:
                outages[name].answered()
        try:
            await asyncio.wait_for(stop.wait(), PROBE_EVERY_S)
        except TimeoutError:
            pass
