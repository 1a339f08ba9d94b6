"""What an operator reads in a worker's logs: an outage when a server is down (once, and once
when it is back), nothing for a server that is only slow or fails a probe now and then, and no
line every minute while nothing happens."""

import asyncio
import logging
import socket
import uuid
from datetime import timedelta

import pytest
from structlog.testing import capture_logs
from temporalio.client import Client

from activities.ledger import Ledger
from models.db import SessionFactory
from tests.factories import make_funded_account, make_tenant
from tests.workers import running_workers
from workers.outages import OutageLog, OutageRule, watch_outages
from workflows.billing import LedgerSweepWorkflow
from workflows.contracts.billing import SweepExpiredHolds

RULE = OutageRule()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def outage_lines(logs: list[dict]) -> list[str]:
    return [line["event"] for line in logs if line["log_level"] in {"info", "warning"}]


def test_failed_probes_between_answers_are_no_outage():
    clock = Clock()
    judge = OutageLog("postgresql", RULE, clock)
    with capture_logs() as logs:
        # Five minutes of a loaded machine: every other probe late or failed.
        for probe in range(150):
            clock.now += RULE.probe_every_s
            if probe % 2:
                judge.failed(TimeoutError())
            else:
                judge.answered()
    assert outage_lines(logs) == []


def test_a_server_is_down_after_failing_every_probe_for_the_span_and_back_once_it_answers():
    clock = Clock()
    judge = OutageLog("temporal", RULE, clock)
    with capture_logs() as logs:
        # Refused for a while, shorter than the span: not yet an outage.
        while clock.now < 1000.0 + RULE.down_after_s - RULE.probe_every_s:
            judge.failed(ConnectionRefusedError("refused"))
            clock.now += RULE.probe_every_s
        assert outage_lines(logs) == []
        # Then past it: one warning, however long it lasts.
        for _ in range(100):
            judge.failed(ConnectionRefusedError("refused"))
            clock.now += RULE.probe_every_s
        judge.answered()
        judge.answered()
    assert outage_lines(logs) == ["dependency_down", "dependency_back"]
    down = next(line for line in logs if line["event"] == "dependency_down")
    assert down["dependency"] == "temporal"
    assert down["error_type"] == "ConnectionRefusedError"
    assert down["failing_seconds"] >= RULE.down_after_s
    back = next(line for line in logs if line["event"] == "dependency_back")
    assert back["down_seconds"] >= down["failing_seconds"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_watcher_reports_a_refusing_server_once_and_a_slow_one_never():
    """Real probes on a fast rule: a server that answers, late every other time, and a port
    that refuses connections until a server starts listening on it."""
    rule = OutageRule(probe_every_s=0.02, probe_timeout_s=0.2, down_after_s=0.5, min_failures=3)
    port = closed_port()
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(rule.probe_timeout_s * 2 if calls % 2 else 0)

    async def refusing() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    stop = asyncio.Event()
    with capture_logs() as logs:
        watching = asyncio.create_task(watch_outages({"slow": slow, "down": refusing}, stop, rule))
        async with asyncio.timeout(30):
            while not any(line["event"] == "dependency_down" for line in logs):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            # The slow one, late every other probe, for several spans.
            while calls < 20:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
            while not any(line["event"] == "dependency_back" for line in logs):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        stop.set()
        await watching
        server.close()
    assert [
        (line["event"], line["dependency"]) for line in logs if line["log_level"] != "debug"
    ] == [
        ("dependency_down", "down"),
        ("dependency_back", "down"),
    ]


async def test_the_minutely_ledger_sweep_logs_nothing_when_nothing_expired(
    client: Client, sessions: SessionFactory, task_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    account = await make_funded_account(sessions, tenant=await make_tenant(sessions), balance=500)
    async with running_workers(client, sessions, task_queue=task_queue):
        with capture_logs() as quiet:
            await client.execute_workflow(
                LedgerSweepWorkflow.run,
                SweepExpiredHolds(),
                id=f"ledger-sweep-{uuid.uuid4()}",
                task_queue=task_queue,
            )
        quiet_records = [r for r in caplog.records if r.levelno >= logging.INFO]

        await Ledger(sessions).reserve(account.id, 400, key="short", ttl=timedelta(milliseconds=1))
        with capture_logs() as expired:
            await client.execute_workflow(
                LedgerSweepWorkflow.run,
                SweepExpiredHolds(),
                id=f"ledger-sweep-{uuid.uuid4()}",
                task_queue=task_queue,
            )

    assert [line for line in quiet if line["log_level"] != "debug"] == []
    assert [r.getMessage() for r in quiet_records if "temporalio.workflow" in r.name] == []
    assert [(line["event"], line["count"]) for line in expired if line["log_level"] == "info"] == [
        ("token_holds_expired", 1)
    ]
