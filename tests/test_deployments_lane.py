"""The deployment lane on its own: first come first served, positions told, holders that stopped
running skipped, and continue-as-new carrying the queue over."""

import asyncio
import itertools
import uuid
from datetime import datetime

from pydantic import BaseModel
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from models import DeploymentEnvironment
from workflows.contracts.deployment import (
    LaneInput,
    LaneRelease,
    LaneRequest,
    LaneState,
    LaneTurn,
)
from workflows.contracts.ids import lane_workflow_id
from workflows.deployment import DeploymentLaneWorkflow


class LaneUse(BaseModel):
    positions: list[int]
    turn_at: datetime


@workflow.defn(sandboxed=False)
class LaneUser:
    """Stands in for a deployment: waits for its turn, then gives the lane back (or, with
    `keep`, ends while holding it, like a deployment terminated mid-release)."""

    def __init__(self) -> None:
        self.positions: list[int] = []

    @workflow.signal(name="lane_turn")
    def lane_turn(self, turn: LaneTurn) -> None:
        if not self.positions or self.positions[-1] != turn.queue_position:
            self.positions.append(turn.queue_position)

    @workflow.query
    def heard(self) -> list[int]:
        return self.positions

    @workflow.run
    async def run(self, lane_id: str, keep: bool) -> LaneUse:
        await workflow.wait_condition(lambda: bool(self.positions) and self.positions[-1] == 0)
        use = LaneUse(positions=self.positions, turn_at=workflow.now())
        if not keep:
            await workflow.get_external_workflow_handle(lane_id).signal(
                "release", LaneRelease(deployment_workflow_id=workflow.info().workflow_id)
            )
        return use


async def test_lane_serves_in_arrival_order_skips_the_gone_and_continues_as_new(
    client: Client, task_queue: str
) -> None:
    project_id = uuid.uuid4()
    lane_id = lane_workflow_id(project_id, DeploymentEnvironment.STAGING)
    lane_input = LaneInput(
        project_id=project_id,
        environment=DeploymentEnvironment.STAGING,
        holder_check_s=1,
        history_limit=50,
    )
    async with Worker(client, task_queue=task_queue, workflows=[DeploymentLaneWorkflow, LaneUser]):
        users = []
        for n in range(8):
            user_id = f"lane-user-{n}-{uuid.uuid4()}"
            # The first keeps the lane and stops: the lane must notice and move on.
            users.append(
                await client.start_workflow(
                    LaneUser.run, args=[lane_id, n == 0], id=user_id, task_queue=task_queue
                )
            )
        first_run = None
        for user in users:
            handle = await client.start_workflow(
                DeploymentLaneWorkflow.run,
                lane_input,
                id=lane_id,
                task_queue=task_queue,
                start_signal="request",
                start_signal_args=[
                    LaneRequest(deployment_workflow_id=user.id, deployment_id=uuid.uuid4())
                ],
            )
            first_run = first_run or handle.first_execution_run_id
        # Gone while fourth in line, once everyone knows their place.
        async with asyncio.timeout(20):
            while not await users[-1].query(LaneUser.heard):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await users[3].terminate("stopped while waiting")

        served = [0, 1, 2, 4, 5, 6, 7]
        uses = {n: await users[n].result() for n in served}
        lane_state = await client.get_workflow_handle(lane_id, result_type=LaneState).result()

    assert uses[0].positions == [0]
    # Each heard its place in arrival order, moving only forward, until its turn...
    for n in served[1:]:
        assert uses[n].positions[0] == n
        assert uses[n].positions == sorted(uses[n].positions, reverse=True)
    # ...and the turns came in arrival order.
    for earlier, later in itertools.pairwise(served):
        assert uses[earlier].turn_at < uses[later].turn_at
    assert lane_state.holder is None and lane_state.waiting == []
    assert lane_state.handed_out == len(served)  # not the waiter that was gone
    first = await client.get_workflow_handle(lane_id, run_id=first_run).fetch_history()
    assert first.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
