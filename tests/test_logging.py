"""Logging: JSON off a terminal, console on one, stdlib and temporalio records through the same
chain, context bound rather than formatted in, and secrets never written."""

import asyncio
import io
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import structlog
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from infra.logging import SLOW_WORKFLOW_TASK, SlowTaskWarnings, configure_logging
from infra.settings import LogFormat, Settings
from tests.process_support import ROOT, clean_environment
from workers.interceptors import LogContextInterceptor

DB_PASSWORD = "pg-Pa55-word"
API_KEY = "tmprl-api-key-0123456789"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)  # the session's (tests/conftest.py)


def configured(stream: io.StringIO, **settings: object) -> io.StringIO:
    configure_logging(Settings(**settings), stream=stream)  # type: ignore[arg-type]
    return stream


def records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.mark.usefixtures("restore_logging")
def test_off_a_terminal_every_line_is_json_with_level_time_and_logger():
    out = configured(io.StringIO())

    structlog.get_logger("changeflow.ledger").info("hold_reserved", amount=120)

    (record,) = records(out)
    assert record["event"] == "hold_reserved"
    assert record["amount"] == 120
    assert record["level"] == "info"
    assert record["logger"] == "changeflow.ledger"
    assert record["timestamp"].endswith("Z")


@pytest.mark.usefixtures("restore_logging")
def test_on_a_terminal_lines_are_for_people():
    out = configured(Terminal())

    structlog.get_logger("changeflow").info("hold_reserved", amount=120)

    line = out.getvalue()
    assert "hold_reserved" in line and "amount" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


@pytest.mark.usefixtures("restore_logging")
def test_the_format_can_be_forced_whatever_the_stream():
    out = configured(Terminal(), log_format=LogFormat.JSON)
    structlog.get_logger().warning("forced")
    assert records(out)[0]["event"] == "forced"


@pytest.mark.usefixtures("restore_logging")
def test_stdlib_and_temporalio_records_go_through_the_same_chain():
    out = configured(io.StringIO())

    with structlog.contextvars.bound_contextvars(tenant_id="t-1"):
        logging.getLogger("temporalio.worker._worker").warning("Worker %s stopping", "w-1")

    (record,) = records(out)
    assert record["event"] == "Worker w-1 stopping"
    assert record["logger"] == "temporalio.worker._worker"
    assert record["level"] == "warning"
    assert record["tenant_id"] == "t-1"


@pytest.mark.usefixtures("restore_logging")
def test_the_level_filters_and_chatty_libraries_stay_quiet():
    out = configured(io.StringIO(), log_level="WARNING")

    structlog.get_logger().info("not_shown")
    logging.getLogger("sqlalchemy.engine").info("SELECT 1")
    structlog.get_logger().error("shown")

    assert [r["event"] for r in records(out)] == ["shown"]


@pytest.mark.usefixtures("restore_logging")
def test_context_is_bound_not_formatted_into_the_message():
    out = configured(io.StringIO())
    log = structlog.get_logger()

    with structlog.contextvars.bound_contextvars(tenant_id="t-7", workflow_id="prompt-request-1"):
        log.info("plan_ready")
    log.info("after")

    inside, after = records(out)
    assert inside["event"] == "plan_ready"
    assert (inside["tenant_id"], inside["workflow_id"]) == ("t-7", "prompt-request-1")
    assert "tenant_id" not in after and "workflow_id" not in after


@pytest.mark.usefixtures("restore_logging")
def test_secrets_never_reach_the_output():
    url = f"postgresql://app:{DB_PASSWORD}@db.internal:5432/changeflow"
    settings = {"database_url": url, "temporal_api_key": API_KEY}
    out = configured(io.StringIO(), **settings)
    log = structlog.get_logger()

    log.info("connecting", database_url=url)
    log.info(f"connecting to {url}")
    log.info("temporal", api_key=API_KEY, headers={"authorization": f"Bearer {API_KEY}"})
    log.info(f"retrying with key {API_KEY}")
    log.info("settings_loaded", settings=Settings(**settings))  # type: ignore[arg-type]
    logging.getLogger("asyncpg.pool").error("cannot connect to %s", url)
    try:
        raise ConnectionError(f"refused: {url}")
    except ConnectionError:
        log.exception("database_down")

    written = out.getvalue()
    assert len(records(out)) == 7
    assert DB_PASSWORD not in written
    assert API_KEY not in written
    # What is not secret stays readable.
    assert "db.internal:5432/changeflow" in written


class ChargeInput(BaseModel):
    tenant_id: uuid.UUID
    amount: int


@activity.defn(name="test_logging_charge")
async def charge(request: ChargeInput) -> None:
    structlog.get_logger("changeflow.billing").info("charging", amount=request.amount)
    activity.logger.info("charge sent")


@workflow.defn(name="TestLoggingChargeWorkflow", sandboxed=False)
class ChargeWorkflow:
    @workflow.run
    async def run(self, request: ChargeInput) -> None:
        workflow.logger.info("charge requested")
        await workflow.execute_activity(
            charge, request, start_to_close_timeout=timedelta(seconds=10)
        )


@pytest.mark.usefixtures("restore_logging")
async def test_the_worker_interceptor_binds_workflow_activity_attempt_and_tenant(
    client, task_queue
):
    out = configured(io.StringIO())
    tenant_id = uuid.uuid4()
    workflow_id = f"charge-{uuid.uuid4()}"

    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[ChargeWorkflow],
        activities=[charge],
        interceptors=[LogContextInterceptor()],
    ):
        await client.execute_workflow(
            ChargeWorkflow.run,
            ChargeInput(tenant_id=tenant_id, amount=40),
            id=workflow_id,
            task_queue=task_queue,
        )

    (line,) = [r for r in records(out) if r["event"] == "charging"]
    assert line["workflow_id"] == workflow_id
    assert line["workflow_type"] == "TestLoggingChargeWorkflow"
    assert line["activity"] == "test_logging_charge"
    assert line["attempt"] == 1
    assert line["tenant_id"] == str(tenant_id)
    assert line["amount"] == 40

    # Temporal's own loggers carry their context as a field, not appended to the message.
    (sent,) = [r for r in records(out) if r["event"].startswith("charge sent")]
    assert sent["event"] == "charge sent"
    assert sent["temporal_activity"]["workflow_id"] == workflow_id
    (requested,) = [r for r in records(out) if r["event"].startswith("charge requested")]
    assert requested["event"] == "charge requested"
    assert requested["temporal_workflow"]["workflow_id"] == workflow_id


def slow_task_warning(n: int) -> logging.LogRecord:
    # As sdk-core's managed_run.rs words it, forwarded by temporalio.runtime.LogForwardingConfig.
    return logging.LogRecord(
        "temporalio.core-sdk_core::temporalio_sdk_core::worker::workflow::managed_run",
        logging.WARNING,
        "(sdk-core)",
        0,
        f"[sdk_core::temporalio_sdk_core] [TMPRL1104] run-{n}:12:1 Workflow task duration "
        "exceeded 5 seconds.",
        (),
        None,
    )


def test_slow_workflow_task_warnings_pass_once_a_minute_with_the_count_held_back():
    now = [0.0]
    throttle = SlowTaskWarnings(every_s=60, clock=lambda: now[0])
    passed = []
    for n in range(25):  # an outage: every running workflow's task is slow within seconds
        now[0] = n * 0.5
        record = slow_task_warning(n)
        if throttle.filter(record):
            passed.append(record.getMessage())
    assert len(passed) == 1 and "run-0:" in passed[0]

    now[0] = 61.0
    later = slow_task_warning(99)
    assert throttle.filter(later)
    assert later.getMessage().endswith("(24 more held back since the last)")
    other = logging.LogRecord("temporalio.core", logging.WARNING, "", 0, "other", (), None)
    assert throttle.filter(other) and throttle.filter(other), "other core lines are untouched"


@pytest.mark.system
async def test_core_slow_task_warnings_reach_the_log_once_not_once_per_workflow(
    client: Client,
):
    """Real core warnings from a worker process: three slow workflow tasks, one line."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.slow_task_child",
        client.service_client.config.target_host,
        "3",
        cwd=ROOT,
        env=clean_environment(TEMPORAL_WORKFLOW_TASK_DURATION_WARN_SECONDS="1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=120)
    assert child.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip() == "EMITTED 3", out
    logged = [line for line in err.decode().splitlines() if SLOW_WORKFLOW_TASK in line]
    assert len(logged) == 1, logged
    assert json.loads(logged[0])["level"] == "warning"
