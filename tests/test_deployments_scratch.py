import asyncio
import pytest
from temporalio.client import WorkflowFailureError
from temporalio.worker import Replayer
from temporalio.contrib.pydantic import pydantic_data_converter
from tests.test_deployments import *  # noqa
from tests.test_deployments import stage, repo  # noqa


async def test_scratch_cancel_timings(stage, tmp_path):
    stuck = commit(stage.repo, "stuck", healthy=True, gate=str(tmp_path / "never"))
    v3 = commit(stage.repo, "v3", healthy=True)
    holder = await stage.start(stage.deployment(stuck))
    async def verifying():
        return (await state_of(holder)).status is DeploymentStatus.VERIFYING
    await eventually(verifying)
    replayer = Replayer(workflows=[DeploymentWorkflow, RollbackWorkflow, DeploymentLaneWorkflow], data_converter=pydantic_data_converter)
    bad = 0
    for i in range(16):
        h = await stage.start(stage.deployment(v3))
        await asyncio.sleep(i * 0.02)
        await h.cancel()
        with pytest.raises(WorkflowFailureError):
            await h.result()
        hist = await h.fetch_history()
        try:
            await replayer.replay_workflow(hist)
        except Exception as e:
            bad += 1
            print("BAD", i, e)
            for ev in hist.events:
                print("  ", ev.event_id, ev.event_type)
    assert bad == 0
