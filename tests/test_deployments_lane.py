"""The deployment lane on its own (activities/lane.py, real PostgreSQL and Temporal): places
taken by racing deployments are distinct and in commit order, leaving hands the turn to the
next waiter with one signal, and waiters that stopped running are skipped."""

import asyncio
import dataclasses
import uuid

from sqlmodel import col, select
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.deployments import DeploymentActivities
from activities.lane import LaneActivities
from models import DeploymentEnvironment, DeploymentLaneEntry, DeploymentPlan, PromptRequest
from models.db import SessionFactory
from tests.factories import make_project, make_tenant
from workflows.contracts.deployment import LanePlace, LaneTurn, RecordDeployment

STAGING = DeploymentEnvironment.STAGING


@workflow.defn(sandboxed=False)
class LaneWaiter:
    """Stands in for a waiting deployment: counts the `lane_turn` signals it gets."""

    def __init__(self) -> None:
        self.turns = 0

    @workflow.signal(name="lane_turn")
    def lane_turn(self, turn: LaneTurn) -> None:
        assert turn.queue_position == 0
        self.turns += 1

    @workflow.query
    def told(self) -> int:
        return self.turns

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.turns > 0)
        await workflow.wait_condition(lambda: False)  # holds on, like a deployment releasing
        return self.turns


@dataclasses.dataclass
class Lane:
    sessions: SessionFactory
    client: Client
    project_id: uuid.UUID
    tenant_id: uuid.UUID
    plan_id: uuid.UUID
    activities: LaneActivities

    async def enter(self, workflow_id: str) -> int | None:
        recorded = await ActivityEnvironment().run(
            DeploymentActivities(self.sessions).record_deployment,
            RecordDeployment(
                deployment_id=uuid.uuid4(),
                tenant_id=self.tenant_id,
                project_id=self.project_id,
                plan_id=self.plan_id,
                environment=STAGING,
                commit_sha="abc123",
                workflow_id=workflow_id,
                enter_lane=True,
            ),
        )
        return recorded.queue_position

    def place(self, workflow_id: str) -> LanePlace:
        return LanePlace(project_id=self.project_id, environment=STAGING, workflow_id=workflow_id)

    async def leave(self, workflow_id: str) -> None:
        await ActivityEnvironment().run(
            self.activities.leave_deployment_lane,
            self.place(workflow_id),
        )

    async def check(self, workflow_id: str) -> int | None:
        turn = await ActivityEnvironment().run(
            self.activities.check_deployment_lane, self.place(workflow_id)
        )
        return turn.queue_position

    async def waiting(self) -> list[str]:
        async with self.sessions() as session:
            rows = await session.exec(
                select(DeploymentLaneEntry.workflow_id)
                .where(
                    DeploymentLaneEntry.project_id == self.project_id,
                    col(DeploymentLaneEntry.left_at).is_(None),
                )
                .order_by(col(DeploymentLaneEntry.seq))
            )
            return list(rows.all())


async def make_lane(sessions: SessionFactory, client: Client) -> Lane:
    tenant = await make_tenant(sessions)
    project = await make_project(sessions, tenant=tenant, repo_url="/nonexistent/repo")
    async with sessions() as session:
        request = PromptRequest(tenant_id=tenant.id, project_id=project.id, prompt="p")
        session.add(request)
        await session.flush()
        plan = DeploymentPlan(tenant_id=tenant.id, prompt_request_id=request.id)
        session.add(plan)
        await session.commit()
    return Lane(sessions, client, project.id, tenant.id, plan.id, LaneActivities(sessions, client))


async def test_racing_deployments_take_distinct_places_with_one_holder(
    sessions: SessionFactory, client: Client
) -> None:
    lane = await make_lane(sessions, client)
    ids = [f"deployment-race-{n}-{uuid.uuid4()}" for n in range(12)]

    positions = await asyncio.gather(*(lane.enter(wf_id) for wf_id in ids))

    assert sorted(p for p in positions if p is not None) == list(range(12))
    # The order of the places is the order of the rows: each entry's position is its rank.
    in_order = await lane.waiting()
    assert [positions[ids.index(wf_id)] for wf_id in in_order] == list(range(12))
    # A retried entry keeps its place.
    assert await lane.enter(in_order[5]) == 5


async def test_leaving_hands_the_turn_to_the_next_running_waiter_only(
    sessions: SessionFactory, client: Client, task_queue: str
) -> None:
    lane = await make_lane(sessions, client)
    async with Worker(client, task_queue=task_queue, workflows=[LaneWaiter]):
        holder = f"deployment-holder-{uuid.uuid4()}"
        gone = f"deployment-gone-{uuid.uuid4()}"  # never ran, like a waiter terminated
        waiters: list[WorkflowHandle[LaneWaiter, int]] = [
            await client.start_workflow(
                LaneWaiter.run, id=f"deployment-waiter-{n}-{uuid.uuid4()}", task_queue=task_queue
            )
            for n in range(2)
        ]
        places = [await lane.enter(wf_id) for wf_id in (holder, gone, *[w.id for w in waiters])]
        assert places == [0, 1, 2, 3]

        await lane.leave(holder)

        # The gone one is skipped; the first running waiter is told, the one behind is not.
        assert await lane.waiting() == [waiters[0].id, waiters[1].id]
        assert await waiters[0].query(LaneWaiter.told) == 1
        assert await waiters[1].query(LaneWaiter.told) == 0
        assert await lane.check(waiters[1].id) == 1

        # A retried leave tells the new holder again (harmless) and moves nobody.
        await lane.leave(holder)
        assert await waiters[0].query(LaneWaiter.told) == 2
        assert await lane.waiting() == [waiters[0].id, waiters[1].id]

        # A waiter that leaves (cancelled) while another holds tells nobody.
        await lane.leave(waiters[1].id)
        assert await waiters[0].query(LaneWaiter.told) == 2
        assert await lane.waiting() == [waiters[0].id]
        for handle in waiters:
            await handle.terminate("test over")


async def test_a_waiters_look_skips_a_holder_that_no_longer_runs_and_wakes_the_next(
    sessions: SessionFactory, client: Client, task_queue: str
) -> None:
    lane = await make_lane(sessions, client)
    async with Worker(client, task_queue=task_queue, workflows=[LaneWaiter]):
        dead = await client.start_workflow(
            LaneWaiter.run, id=f"deployment-dead-{uuid.uuid4()}", task_queue=task_queue
        )
        nxt = await client.start_workflow(
            LaneWaiter.run, id=f"deployment-next-{uuid.uuid4()}", task_queue=task_queue
        )
        last = f"deployment-last-{uuid.uuid4()}"
        for wf_id in (dead.id, nxt.id, last):
            await lane.enter(wf_id)
        assert await lane.check(last) == 2  # the holder still runs: nothing changes

        await dead.terminate("killed mid-release")
        assert await lane.check(last) == 1

        assert await lane.waiting() == [nxt.id, last]
        assert await nxt.query(LaneWaiter.told) == 1  # woken without waiting for its own look
        await nxt.terminate("test over")
