"""A worker SIGKILLed after the model answered and before the planning activity completed: the
retried activity reuses the recorded answer, so the model is asked once and charged once."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from temporalio.client import Client

from client.lifecycle import LifecycleClient
from models import PromptStatus
from models.db import SessionFactory
from scripts.model_stand_in import Reply, RunningStandIn, StandIn, edit_block
from tests.lifecycle_support import (
    FUNDS,
    balance,
    entries,
    make_shop,
    request_row,
    settlements,
    submit,
)
from tests.model_engine_support import API_KEY, THEME_DARK, model_calls
from tests.process_support import WorkerProcess
from tests.test_lifecycle_worker_crash import pending_work

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROMPT = "Please make the storefront use the dark theme."


@pytest.fixture
def stand_in() -> Iterator[tuple[StandIn, str]]:
    model = StandIn(api_key=API_KEY)
    server = RunningStandIn(model)
    yield model, server.base_url
    server.stop()


async def test_a_worker_killed_after_the_model_answered_does_not_ask_or_charge_twice(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    worker_env: dict[str, str],
    stand_in: tuple[StandIn, str],
    tmp_path: Path,
) -> None:
    model, base_url = stand_in
    answer = edit_block("config.json", *THEME_DARK)
    # Slow enough to hold the request's row before the answer is recorded.
    model.script = [Reply(answer, delay_s=1.5, times=5)]
    env = {
        **worker_env,
        # The settings' default engine this time (no project setting).
        "CHANGEFLOW_CHANGE_ENGINE": "model",
        "CHANGEFLOW_MODEL_BASE_URL": base_url,
        "CHANGEFLOW_MODEL_NAME": model.model,
        "CHANGEFLOW_MODEL_API_KEY": API_KEY,
    }
    shop = await make_shop(sessions, tmp_path)
    lifecycle = LifecycleClient(
        client, task_queue=task_queue, deploy_task_queue=f"{task_queue}-deploy"
    )
    first = WorkerProcess(env, tmp_path / "worker-1.log")
    second = WorkerProcess(env, tmp_path / "worker-2.log")
    first.start()
    try:
        request_id = await submit(lifecycle, shop, PROMPT)
        async with asyncio.timeout(60):
            while True:
                row = await request_row(sessions, request_id)
                if row is not None and row.status is PromptStatus.PLANNING:
                    break
                await asyncio.sleep(0.05)
        async with sessions() as holder:
            # The plan's last step locks this row (FOR UPDATE): it waits here, after the
            # model's answer was recorded (a FOR KEY SHARE of the row, which this allows).
            await holder.exec(
                text("SELECT 1 FROM prompt_requests WHERE id = :id FOR NO KEY UPDATE"),
                params={"id": request_id},
            )
            async with asyncio.timeout(30):
                while True:
                    if await model_calls(sessions, request_id):
                        break
                    await asyncio.sleep(0.05)
            first.kill()
            await holder.rollback()
        assert model.calls == 1

        second.start()
        try:
            async with asyncio.timeout(180):
                result = await lifecycle.wait_for_outcome(request_id)
        except TimeoutError:
            pytest.fail(f"no outcome:\n{await pending_work(client, task_queue)}")
    finally:
        first.stop()
        second.stop()

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert model.calls == 1  # the retried plan reused the recorded answer
    [call] = await model_calls(sessions, request_id)
    assert result.tokens_used == call.tokens_charged == call.prompt_tokens + call.completion_tokens
    [settlement] = await settlements(sessions, shop)
    assert settlement.amount == call.tokens_charged
    granted = sum(
        e.amount for e in await entries(sessions, shop.account) if e.kind.value == "grant"
    )
    assert await balance(sessions, shop.account) == FUNDS + granted - call.tokens_charged
    logs = (tmp_path / "worker-1.log").read_text() + (tmp_path / "worker-2.log").read_text()
    assert "worker_started" in logs
    assert API_KEY not in logs and "dark theme" not in logs and '"theme": "dark"' not in logs
