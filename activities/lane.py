"""The deployment lane: one deployment at a time per project and environment, in arrival order.

The lane is rows of `deployment_lane_entries`, not a workflow. A deployment takes its place in
the same transaction that records it (`enter`); the holder is the oldest entry that has not
left. An uncontended deployment therefore waits for nothing and costs no message. When the
holder leaves, the leaving activity signals `lane_turn` to the next entry only: one message per
deployment however long the queue. Waiters learn their position from the database (`check`),
on a timer that grows with the position, which also finds a holder that was terminated and
never left.

Entries are numbered under a per-lane advisory lock, so arrival order is commit order and two
deployments can never both see themselves at the head.
"""

import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy
from sqlmodel import col, func, select, update
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from models import DeploymentEnvironment, DeploymentLaneEntry
from models.base import utcnow
from models.db import SessionFactory
from workflows.contracts.deployment import LanePlace, LaneTurn

TURN_SIGNAL = "lane_turn"


async def _lock(session: AsyncSession, project_id: uuid.UUID, env: DeploymentEnvironment) -> None:
    """Serialise writers of one lane until the transaction ends."""
    connection = await session.connection()
    await connection.execute(
        sqlalchemy.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"deployment-lane:{project_id}:{env.value}"},
    )


async def _entry(session: AsyncSession, workflow_id: str) -> DeploymentLaneEntry | None:
    found = await session.exec(
        select(DeploymentLaneEntry).where(DeploymentLaneEntry.workflow_id == workflow_id)
    )
    return found.first()


async def _head(
    session: AsyncSession, project_id: uuid.UUID, env: DeploymentEnvironment
) -> DeploymentLaneEntry | None:
    found = await session.exec(
        select(DeploymentLaneEntry)
        .where(
            DeploymentLaneEntry.project_id == project_id,
            DeploymentLaneEntry.environment == env,
            col(DeploymentLaneEntry.left_at).is_(None),
        )
        .order_by(col(DeploymentLaneEntry.seq))
        .limit(1)
    )
    return found.first()


async def position(session: AsyncSession, entry: DeploymentLaneEntry) -> int | None:
    """Deployments ahead of this entry (0 = it holds the lane); None once it has left."""
    if entry.left_at is not None:
        return None
    ahead = await session.exec(
        select(func.count())
        .select_from(DeploymentLaneEntry)
        .where(
            DeploymentLaneEntry.project_id == entry.project_id,
            DeploymentLaneEntry.environment == entry.environment,
            col(DeploymentLaneEntry.left_at).is_(None),
            DeploymentLaneEntry.seq < entry.seq,
        )
    )
    return ahead.one()


async def enter(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    environment: DeploymentEnvironment,
    workflow_id: str,
    deployment_id: uuid.UUID,
) -> int | None:
    """Take a place at the end of the lane, in the caller's transaction; the position it got.
    A retry finds the place its first attempt took."""
    entry = await _entry(session, workflow_id)
    if entry is None:
        await _lock(session, project_id, environment)
        last = await session.exec(
            select(func.max(DeploymentLaneEntry.seq)).where(
                DeploymentLaneEntry.project_id == project_id,
                DeploymentLaneEntry.environment == environment,
            )
        )
        entry = DeploymentLaneEntry(
            project_id=project_id,
            environment=environment,
            seq=(last.one() or 0) + 1,
            workflow_id=workflow_id,
            deployment_id=deployment_id,
        )
        session.add(entry)
        await session.flush()
    return await position(session, entry)


class LaneActivities:
    """Leaving the lane and checking a place in it (lifecycle task queue, local activities)."""

    def __init__(self, sessions: SessionFactory, client: Client) -> None:
        self._sessions = sessions
        self._client = client

    def activities(self) -> list[Callable[..., Any]]:
        return [self.leave_deployment_lane, self.check_deployment_lane]

    @activity.defn(name="leave_deployment_lane")
    async def leave_deployment_lane(self, request: LanePlace) -> None:
        """Give the lane back and hand the turn to the next deployment (one signal).

        A retry after the commit hands the turn again: a second `lane_turn` to the same holder
        changes nothing, a lost one would stall the lane until the waiter's next check.
        """
        if await self._leave(request.project_id, request.environment, request.workflow_id):
            await self._hand_turn(request.project_id, request.environment)

    @activity.defn(name="check_deployment_lane")
    async def check_deployment_lane(self, request: LanePlace) -> LaneTurn:
        """A waiter's periodic look at its place. A holder whose workflow no longer runs (it
        was terminated, so it never left) is removed, and the lane moves on."""
        while True:
            async with self._sessions() as session:
                entry = await _entry(session, request.workflow_id)
                head = await _head(session, request.project_id, request.environment)
                if entry is None or head is None or head.id == entry.id:
                    place = await position(session, entry) if entry else None
                    return LaneTurn(queue_position=place)
                head_workflow_id = head.workflow_id
                place = await position(session, entry)
            if await self._runs(head_workflow_id):
                return LaneTurn(queue_position=place)
            await self._skip_gone(request.project_id, request.environment, head_workflow_id)
            # The new head may be another waiter, asleep until its own check: wake it.
            await self._hand_turn(request.project_id, request.environment)

    async def _leave(
        self, project_id: uuid.UUID, environment: DeploymentEnvironment, workflow_id: str
    ) -> bool:
        """Leave; whether the turn must be handed on (the leaver held the lane)."""
        async with self._sessions() as session:
            await _lock(session, project_id, environment)
            head = await _head(session, project_id, environment)
            left = await session.exec(
                update(DeploymentLaneEntry)
                .where(
                    col(DeploymentLaneEntry.workflow_id) == workflow_id,
                    col(DeploymentLaneEntry.left_at).is_(None),
                )
                .values(left_at=utcnow())
            )
            await session.commit()
        already_left = left.rowcount == 0  # type: ignore[attr-defined]
        # Already left: a retry, which hands the turn again in case the first did not.
        return already_left or (head is not None and head.workflow_id == workflow_id)

    async def _hand_turn(self, project_id: uuid.UUID, environment: DeploymentEnvironment) -> None:
        """Signal the head its turn; a head that no longer runs leaves, and the next is told."""
        while True:
            async with self._sessions() as session:
                head = await _head(session, project_id, environment)
            if head is None:
                return
            try:
                await self._client.get_workflow_handle(head.workflow_id).signal(
                    TURN_SIGNAL, LaneTurn(queue_position=0)
                )
                return
            except RPCError as err:
                if err.status is not RPCStatusCode.NOT_FOUND:
                    raise
            await self._skip_gone(project_id, environment, head.workflow_id)

    async def _skip_gone(
        self, project_id: uuid.UUID, environment: DeploymentEnvironment, workflow_id: str
    ) -> None:
        """Take a deployment that no longer runs out of the lane, as if it had left."""
        activity.logger.warning("deployment %s no longer runs; skipped", workflow_id)
        await self._leave(project_id, environment, workflow_id)

    async def _runs(self, workflow_id: str) -> bool:
        try:
            described = await self._client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return False
            raise
        return described.status is WorkflowExecutionStatus.RUNNING
