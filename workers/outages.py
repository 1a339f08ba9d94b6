"""One log line per outage of the worker's servers, not one per failed call, and none for a
server that is only slow.

While PostgreSQL or Temporal is down a worker keeps running: Temporal's pollers retry by
themselves and failed activities are retried by Temporal. What an operator needs is the outage
itself: `dependency_down` (a warning) when a server has stopped answering and `dependency_back`
(info) when it answers again, from a probe every few seconds; nothing in between.

A busy machine (CPU load, a long garbage collection, a starved event loop) makes answers late,
not absent: one late or failed probe is not an outage. A server is down only after every probe
failed (refused, reset, or no answer within PROBE_TIMEOUT_S) for at least DOWN_AFTER_S and
MIN_FAILURES probes in a row; any answer in between, however slow, starts the count again.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

log = structlog.get_logger(__name__)

Probe = Callable[[], Awaitable[object]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class OutageRule:
    """How often to probe, how long an answer may take, and what makes an outage."""

    probe_every_s: float = 2.0
    # Generous: a loaded two-core host answers a trivial query late, but it answers.
    probe_timeout_s: float = 10.0
    down_after_s: float = 30.0
    min_failures: int = 3


DEFAULT_RULE = OutageRule()


def database_probe(engine: AsyncEngine) -> Probe:
    async def probe() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return probe


def temporal_probe(client: Client, rule: OutageRule = DEFAULT_RULE) -> Probe:
    async def probe() -> object:
        # No retries: the probe asks once; its schedule is the retry.
        return await client.workflow_service.get_system_info(
            GetSystemInfoRequest(), retry=False, timeout=timedelta(seconds=rule.probe_timeout_s)
        )

    return probe


class OutageLog:
    """Turns probe results into outages: a line when a server is judged down (consecutive
    failures over the rule's span), one when it answers again."""

    def __init__(
        self, name: str, rule: OutageRule = DEFAULT_RULE, clock: Clock = time.monotonic
    ) -> None:
        self.name = name
        self.rule = rule
        self.clock = clock
        self.failing_since: float | None = None
        self.failures = 0
        self.down = False

    def answered(self) -> None:
        if self.down and self.failing_since is not None:
            log.info(
                "dependency_back",
                dependency=self.name,
                down_seconds=round(self.clock() - self.failing_since, 1),
            )
        self.failing_since, self.failures, self.down = None, 0, False

    def failed(self, error: BaseException) -> None:
        now = self.clock()
        if self.failing_since is None:
            self.failing_since = now
        self.failures += 1
        log.debug(
            "dependency_probe_failed",
            dependency=self.name,
            failures=self.failures,
            error_type=type(error).__name__,
        )
        if self.down:
            return
        if self.failures >= self.rule.min_failures and (
            now - self.failing_since >= self.rule.down_after_s
        ):
            self.down = True
            log.warning(
                "dependency_down",
                dependency=self.name,
                failing_seconds=round(now - self.failing_since, 1),
                failed_probes=self.failures,
                error_type=type(error).__name__,
                error=str(error)[:200],
            )


async def watch_outages(
    probes: dict[str, Probe], stop: asyncio.Event, rule: OutageRule = DEFAULT_RULE
) -> None:
    """Probe each server until `stop` is set, logging each outage's start and end once."""
    outages = {name: OutageLog(name, rule) for name in probes}
    while not stop.is_set():
        for name, probe in probes.items():
            try:
                async with asyncio.timeout(rule.probe_timeout_s):
                    await probe()
            except Exception as exc:  # refused, reset, timed out: counted towards an outage
                outages[name].failed(exc)
            else:
                outages[name].answered()
        try:
            await asyncio.wait_for(stop.wait(), rule.probe_every_s)
        except TimeoutError:
            pass
