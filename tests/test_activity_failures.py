"""An activity's failure reaches the workflow history short and readable, naming its cause,
however long the error's text, traceback and cause chain (the worker log keeps all of it)."""

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from workers.interceptors import worker_interceptors
from workflows.contracts.failures import MAX_FAILURE_MESSAGE_CHARS


@activity.defn(name="test_failures_query_a_stopped_database")
async def query_a_stopped_database(huge: bool) -> None:
    """What an activity meets while PostgreSQL restarts: connection refused, deep in SQLAlchemy
    and asyncpg, with the statement and its parameters in the error's text."""
    engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:9/none")
    try:
        async with engine.connect() as connection:
            await connection.execute(text("select :payload"), {"payload": "x" * 50_000})
    except Exception as exc:
        if huge:
            raise RuntimeError(f"recording failed for payload {'x' * 50_000}") from exc
        raise
    finally:
        await engine.dispose()


@activity.defn(name="test_failures_refuse_at_length")
async def refuse_at_length() -> None:
    raise ApplicationError("refused: " + "y" * 20_000, type="Refused", non_retryable=True)


@workflow.defn(name="TestFailuresWorkflow", sandboxed=False)
class FailingWorkflow:
    @workflow.run
    async def run(self, which: str) -> None:
        options = {
            # Generous: a machine that stalls (a loaded CI host) must not turn the failure the
            # test reads into a timeout.
            "start_to_close_timeout": timedelta(seconds=120),
            "retry_policy": RetryPolicy(maximum_attempts=1),
        }
        if which == "typed":
            await workflow.execute_activity(refuse_at_length, **options)  # type: ignore[call-overload]
        else:
            await workflow.execute_activity(  # type: ignore[call-overload]
                query_a_stopped_database, which == "huge", **options
            )


async def failure_in_history(client: Client, task_queue: str, which: str):
    workflow_id = f"failures-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[FailingWorkflow],
        activities=[query_a_stopped_database, refuse_at_length],
        interceptors=worker_interceptors(),
    ):
        with pytest.raises(WorkflowFailureError):
            await client.execute_workflow(
                FailingWorkflow.run, which, id=workflow_id, task_queue=task_queue
            )
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    (failed,) = [
        e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]
    return await readable(client, failed.activity_task_failed_event_attributes.failure)


async def readable(client: Client, failure: Failure) -> Failure:
    """The failure as an operator reads it through the codec: message and stack trace are
    encrypted in the history (infra/codec.py)."""
    codec = client.data_converter.payload_codec
    assert codec is not None
    await codec.decode_failure(failure)
    attributes = client.data_converter.payload_converter.from_payload(failure.encoded_attributes)
    failure.message, failure.stack_trace = attributes["message"], attributes["stack_trace"]
    failure.ClearField("encoded_attributes")
    return failure


@pytest.mark.parametrize("which", ["plain", "huge"])
async def test_a_database_outage_shows_in_the_history_as_its_short_cause(
    client: Client, task_queue: str, which: str
) -> None:
    failure = await failure_in_history(client, task_queue, which)

    assert failure.message != "Failure exceeds size limit."
    assert len(failure.message) <= MAX_FAILURE_MESSAGE_CHARS
    # The cause is named: connection refused, wherever it sat in the chain.
    assert "refused" in failure.message.lower() or "connect call failed" in failure.message.lower()
    info = failure.application_failure_info
    # Named after the error's class, as a retry policy's non-retryable types expect.
    assert info.type == ("RuntimeError" if which == "huge" else "ConnectionRefusedError")
    assert not info.non_retryable
    # No traceback or cause chain rides along: the whole failure stays small.
    assert not failure.HasField("cause")
    assert len(failure.SerializeToString()) < 4 * MAX_FAILURE_MESSAGE_CHARS


async def test_a_typed_refusal_keeps_its_type_and_rule_with_a_bounded_message(
    client: Client, task_queue: str
) -> None:
    failure = await failure_in_history(client, task_queue, "typed")

    assert failure.message.startswith("refused: yyy")
    assert len(failure.message) <= MAX_FAILURE_MESSAGE_CHARS
    info = failure.application_failure_info
    assert (info.type, info.non_retryable) == ("Refused", True)
