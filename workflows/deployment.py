"""Deployments: one release of a commit to one environment, verified, rolled back when it fails.

- `DeploymentLaneWorkflow` (id `deployment-lane-<project>-<environment>`) is a FIFO mutex:
  deployments of one project and environment run one at a time in arrival order.
- `DeploymentWorkflow` (id `deployment-<uuid>`) records the Deployment, waits its turn, releases,
  verifies and on failure restores the last good release as a rollback Deployment.
- `RollbackWorkflow` (id `rollback-<uuid>`) is an operator's rollback to an earlier release.
"""

import asyncio
import contextlib
import uuid
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    TypedSearchAttributes,
)
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.releases import ReleaseActivities
    from models.delivery import ChangeJobKind, DeploymentStatus
    from workflows.contracts import search_attributes
    from workflows.contracts.deployment import (
        DeploymentInput,
        DeploymentProgress,
        DeploymentResult,
        DeploymentState,
        EnterLane,
        FindLastGoodRelease,
        LaneInput,
        LaneRelease,
        LaneRequest,
        LaneState,
        LaneTurn,
        LeaveLane,
        PlanRollback,
        RecordDeployment,
        ReleaseOutcome,
        ReleaseStep,
        RollbackRequest,
        TransitionDeployment,
        VerificationOutcome,
    )
    from workflows.contracts.errors import NON_RETRYABLE_ERROR_TYPES, ErrorType
    from workflows.contracts.ids import deployment_id_of_rollback, deployment_workflow_id
    from workflows.contracts.submitted import Submitted, parse_input

_BOOKKEEPING: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    # A cancelled workflow waits for the write in flight, so compensation sees its result.
    "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    "retry_policy": RetryPolicy(
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=20,
        non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
    ),
}
# Entering the lane waits on the lane's answer; its heartbeat lets a dead worker's attempt be
# retried within seconds instead of after the whole start-to-close timeout.
_LANE_ENTRY: dict[str, Any] = {**_BOOKKEEPING, "heartbeat_timeout": timedelta(seconds=10)}
_RELEASE_RETRY = RetryPolicy(
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)


def _upsert_missing(wanted: TypedSearchAttributes) -> None:
    given = workflow.info().typed_search_attributes
    missing = search_attributes.missing_from(given, wanted)
    if missing:
        workflow.upsert_search_attributes(missing)


def _cancelled(err: BaseException) -> bool:
    return isinstance(err, asyncio.CancelledError) or is_cancelled_exception(err)


def _raise_refusal(err: ActivityError) -> None:
    """Surface an activity's typed refusal (bad input) as this workflow's own failure."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.non_retryable:
        raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from None


def _refused_state(refused: ApplicationError) -> DeploymentState:
    """The `status` answer of a deployment whose input never decoded: failed, and why."""
    return DeploymentState(
        deployment_id=None,
        environment=None,
        status=DeploymentStatus.FAILED,
        step=f"refused: {refused.message}",
    )


def _failure_message(err: BaseException) -> str:
    cause = err.cause if isinstance(err, ActivityError | ChildWorkflowError) else None
    return str(cause or err)


@workflow.defn(name="DeploymentLaneWorkflow")
class DeploymentLaneWorkflow:
    """One deployment at a time per project and environment, first come first served.

    Deployments ask with the `enter` update (or the older `request` signal) and give the lane
    back with the `release` signal, sent with start, so the lane exists whenever it is needed.
    The lane tells each its position, first as the update's answer, then by `lane_turn`
    signals whenever it changes; position 0 is the turn. A request is never dropped;
    a holder or waiter that no longer runs is skipped. The lane ends when idle and continues
    as new when its history grows.
    """

    @workflow.init
    def __init__(self, lane: LaneInput) -> None:
        self._lane = lane
        self._holder: LaneRequest | None = lane.holder
        self._waiting: list[LaneRequest] = list(lane.waiting)
        self._handed_out = lane.handed_out
        self._inbox: list[LaneRequest | LaneRelease] = []
        # Positions already told, so a handoff signals only those whose position changed.
        self._told: dict[str, int] = {}
        # Requests that came by the `enter` update: their first position is its answer.
        self._answer_by_update: set[str] = set()
        if self._holder:
            self._told[self._holder.deployment_workflow_id] = 0
        for i, waiter in enumerate(self._waiting, start=1):
            self._told[waiter.deployment_workflow_id] = i

    @workflow.signal(name="request")
    def request(self, request: LaneRequest) -> None:
        self._inbox.append(request)

    @workflow.signal(name="release")
    def release(self, release: LaneRelease) -> None:
        self._inbox.append(release)

    @workflow.update(name="enter")
    async def enter(self, request: LaneRequest) -> LaneTurn:
        """Like the `request` signal, but the position comes back as the answer (sent by
        update-with-start): a deployment that gets the lane at once needs no `lane_turn`
        signal. Later changes of its position are signalled as usual."""
        wf_id = request.deployment_workflow_id
        if wf_id not in self._told:  # a retried request is answered with what it was told
            self._answer_by_update.add(wf_id)
            self._inbox.append(request)
            await workflow.wait_condition(lambda: wf_id in self._told)
        return LaneTurn(queue_position=self._told[wf_id])

    @workflow.query(name="state")
    def state(self) -> LaneState:
        return LaneState(
            holder=self._holder.deployment_workflow_id if self._holder else None,
            waiting=[w.deployment_workflow_id for w in self._waiting],
            handed_out=self._handed_out,
        )

    @workflow.run
    async def run(self, lane: LaneInput) -> LaneState:
        _upsert_missing(search_attributes.lane_attributes(lane.project_id, lane.environment))
        while True:
            if not self._inbox:
                if self._holder is None and not self._waiting:
                    return self.state()
                if self._should_continue_as_new():
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    workflow.continue_as_new(
                        lane.model_copy(
                            update={
                                "holder": self._holder,
                                "waiting": self._waiting,
                                "handed_out": self._handed_out,
                            }
                        )
                    )
                try:
                    await workflow.wait_condition(
                        lambda: bool(self._inbox), timeout=timedelta(seconds=lane.holder_check_s)
                    )
                except TimeoutError:
                    # Re-telling the holder its turn fails when it is gone; then move on.
                    if self._holder and not await self._tell(self._holder, 0):
                        self._holder = None
            while self._inbox:
                self._apply(self._inbox.pop(0))
            await self._announce()
            workflow.set_current_details(self._details())

    def _apply(self, message: LaneRequest | LaneRelease) -> None:
        wf_id = message.deployment_workflow_id
        if isinstance(message, LaneRequest):
            known = (self._holder and self._holder.deployment_workflow_id == wf_id) or any(
                w.deployment_workflow_id == wf_id for w in self._waiting
            )
            if not known:  # a retried request is the same request
                self._waiting.append(message)
            return
        if self._holder and self._holder.deployment_workflow_id == wf_id:
            self._holder = None
        else:  # left while still waiting (cancelled)
            self._waiting = [w for w in self._waiting if w.deployment_workflow_id != wf_id]
        self._told.pop(wf_id, None)

    async def _announce(self) -> None:
        """Hand the lane to the next waiter and tell everyone whose position changed."""
        while True:
            if self._holder is None and self._waiting:
                self._holder = self._waiting.pop(0)
            if self._holder and self._told.get(self._holder.deployment_workflow_id) != 0:
                if not await self._tell(self._holder, 0):
                    self._holder = None
                    continue
                self._handed_out += 1
            gone = []
            for position, waiter in enumerate(list(self._waiting), start=1):
                if self._told.get(waiter.deployment_workflow_id) == position:
                    continue
                if not await self._tell(waiter, position):
                    gone.append(waiter)
            if not gone:
                return
            self._waiting = [w for w in self._waiting if w not in gone]

    async def _tell(self, who: LaneRequest, position: int) -> bool:
        """Signal a deployment its position; False when it no longer runs."""
        if who.deployment_workflow_id in self._answer_by_update:
            self._answer_by_update.discard(who.deployment_workflow_id)
            self._told[who.deployment_workflow_id] = position  # the `enter` update answers
            return True
        try:
            await workflow.get_external_workflow_handle(who.deployment_workflow_id).signal(
                "lane_turn", LaneTurn(queue_position=position)
            )
        except Exception:
            workflow.logger.warning(
                "deployment %s no longer runs; skipped in the lane", who.deployment_workflow_id
            )
            self._told.pop(who.deployment_workflow_id, None)
            return False
        self._told[who.deployment_workflow_id] = position
        return True

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > self._lane.history_limit
        )

    def _details(self) -> str:
        holder = self._holder.deployment_workflow_id if self._holder else "nobody"
        return f"held by {holder}; {len(self._waiting)} waiting"


@workflow.defn(name="DeploymentWorkflow")
class DeploymentWorkflow:
    """QUEUED -> (its turn in the lane) -> IN_PROGRESS -> VERIFYING -> SUCCEEDED or FAILED;
    a failure restores the last good release as a verified rollback Deployment before the lane
    passes on. Cancellation restores what the environment ran before."""

    @workflow.init
    def __init__(self, submitted: Submitted[DeploymentInput] = None) -> None:
        # Raising here would fail the workflow task in a loop: run() ends with the refusal.
        self._refused: ApplicationError | None = None
        try:
            input = self._input = parse_input(DeploymentInput, submitted)
        except ApplicationError as refused:
            self._refused = refused
            self._state = _refused_state(refused)
        else:
            self._state = DeploymentState(
                deployment_id=input.deployment_id,
                environment=input.environment,
                status=DeploymentStatus.QUEUED,
                step="recording the deployment",
                commit_sha=input.commit_sha,
                rollback_of=input.rollback_of,
            )
        self._lane_position: int | None = None
        self._rollback_step: ReleaseStep | None = None
        self._compensating = False
        # The release was refused because the project's default branch moved (BASE_MOVED).
        self._base_moved = False
        # Progress reports the parent has not been sent yet, and their sender (see _progress).
        self._unsent: list[DeploymentProgress] = []
        self._progress_sent: asyncio.Task[None] | None = None

    @workflow.signal(name="lane_turn")
    def lane_turn(self, turn: LaneTurn) -> None:
        self._lane_position = turn.queue_position

    @workflow.query(name="status")
    def status(self) -> DeploymentState:
        return self._state

    @workflow.run
    async def run(self, submitted: Submitted[DeploymentInput] = None) -> DeploymentResult:
        if self._refused is not None:
            raise self._refused
        input = self._input
        _upsert_missing(
            search_attributes.deployment_attributes(
                input.tenant_id, input.project_id, input.environment
            )
        )
        in_lane = False
        entering: workflow.ActivityHandle[LaneTurn | None] | None = None
        try:
            # Recorded and queued up at once: the row is written while the lane answers. The
            # turn is only used once the row exists.
            recording = workflow.start_activity_method(
                ReleaseActivities.record_deployment,
                RecordDeployment(
                    deployment_id=input.deployment_id,
                    tenant_id=input.tenant_id,
                    project_id=input.project_id,
                    plan_id=input.plan_id,
                    environment=input.environment,
                    commit_sha=input.commit_sha,
                    rollback_of=input.rollback_of,
                    workflow_id=workflow.info().workflow_id,
                ),
                **_BOOKKEEPING,
            )
            in_lane = True
            entering = workflow.start_activity_method(
                ReleaseActivities.enter_deployment_lane,
                EnterLane(
                    project_id=input.project_id,
                    environment=input.environment,
                    deployment_workflow_id=workflow.info().workflow_id,
                    deployment_id=input.deployment_id,
                    lane_task_queue=workflow.info().task_queue,
                ),
                **_LANE_ENTRY,
            )
            try:
                await recording
            except ActivityError as err:
                _raise_refusal(err)
                raise
            self._checkpoint()
            # The parent started this deployment as QUEUED: only a place in the queue is news.
            self._progress(DeploymentStatus.QUEUED, "waiting for its turn", tell_parent=False)
            turn = await entering
            # The lane's answer; a `lane_turn` signal that came meanwhile is newer news.
            if turn is not None and self._lane_position is None:
                self._lane_position = turn.queue_position
            self._checkpoint()
            await self._wait_for_turn()
            return await self._deploy()
        except BaseException as err:
            if not _cancelled(err):
                raise
            await self._compensate()
            raise
        finally:
            if in_lane:
                self._state.queue_position = None
                if entering is not None and not entering.done():
                    # Leave only after entering, or the lane would queue a deployment gone.
                    with contextlib.suppress(ActivityError):
                        await entering
                await workflow.execute_activity_method(
                    ReleaseActivities.leave_deployment_lane,
                    LeaveLane(
                        project_id=input.project_id,
                        environment=input.environment,
                        deployment_workflow_id=workflow.info().workflow_id,
                        lane_task_queue=workflow.info().task_queue,
                    ),
                    **_BOOKKEEPING,
                )
            if self._progress_sent is not None:
                await self._progress_sent  # the parent hears the outcome before the result

    async def _wait_for_turn(self) -> None:
        """Until the lane says 0; a position may arrive before enter_deployment_lane returns."""
        reported: int | None = None
        while True:
            position = self._lane_position
            if position is not None and position != reported:
                reported = self._state.queue_position = position
                if position:
                    self._progress(
                        DeploymentStatus.QUEUED, f"waiting: {position} ahead in the lane"
                    )
            if position == 0:
                return
            await workflow.wait_condition(
                lambda seen=position: self._lane_position != seen  # type: ignore[misc]
            )

    async def _deploy(self) -> DeploymentResult:
        input = self._input
        step = self._step(input.deployment_id, input.commit_sha, "release", input.rollback_of)
        env = input.environment.value
        self._progress(DeploymentStatus.IN_PROGRESS, f"releasing {input.commit_sha[:12]} to {env}")
        released, outcome = await self._release_and_verify(step)
        result = DeploymentResult(
            deployment_id=input.deployment_id,
            environment=input.environment,
            status=DeploymentStatus.SUCCEEDED if outcome.ok else DeploymentStatus.FAILED,
            commit_sha=input.commit_sha,
            verified=outcome.ok,
            verification_output=outcome.output,
            log_url=outcome.log_url or (released.log_url if released else None),
            diff_url=released.diff_url if released else None,
            base_moved=self._base_moved,
        )
        # A refused release released nothing: there is nothing to roll back.
        rolls_back = not outcome.ok and input.auto_rollback and not self._base_moved
        self._progress(
            result.status,
            "verified" if outcome.ok else "verification failed",
            # The last word: a parent that started this child reads it from the result.
            tell_parent=rolls_back or not self._parent_gets_result(),
        )
        if rolls_back:
            await self._auto_rollback(result)
        return result

    async def _auto_rollback(self, result: DeploymentResult) -> None:
        """Restore the last good release as a new, verified Deployment (rollback_of = this)."""
        input = self._input
        try:
            good = await workflow.execute_activity_method(
                ReleaseActivities.find_last_good_release,
                FindLastGoodRelease(
                    project_id=input.project_id,
                    environment=input.environment,
                    exclude_deployment_id=input.deployment_id,
                ),
                task_queue=input.deploy_task_queue,
                **_BOOKKEEPING,
            )
        except ActivityError as err:
            if _cancelled(err):
                raise
            workflow.logger.warning("nothing to roll back to: %s", _failure_message(err))
            self._progress(DeploymentStatus.FAILED, "no earlier release to restore")
            return
        rollback_id = workflow.uuid4()
        result.rollback_deployment_id = rollback_id
        self._state.rollback_deployment_id = rollback_id
        await workflow.execute_activity_method(
            ReleaseActivities.record_deployment,
            RecordDeployment(
                deployment_id=rollback_id,
                tenant_id=input.tenant_id,
                project_id=input.project_id,
                plan_id=input.plan_id,
                environment=input.environment,
                commit_sha=good.commit_sha,
                rollback_of=input.deployment_id,
                workflow_id=workflow.info().workflow_id,
            ),
            **_BOOKKEEPING,
        )
        self._rollback_step = self._step(
            rollback_id, good.commit_sha, "auto-rollback", input.deployment_id
        )
        self._checkpoint()
        self._progress(
            DeploymentStatus.FAILED, f"rolling back to {good.commit_sha[:12]} ({good.source})"
        )
        result.rollback_status = await self._run_rollback(self._rollback_step)
        self._rollback_step = None

    async def _run_rollback(self, step: ReleaseStep) -> DeploymentStatus:
        self._state.rollback_status = DeploymentStatus.IN_PROGRESS
        _, outcome = await self._release_and_verify(step)
        status = DeploymentStatus.SUCCEEDED if outcome.ok else DeploymentStatus.FAILED
        self._state.rollback_status = status
        self._progress(
            DeploymentStatus.FAILED,
            "rolled back" if outcome.ok else "the rollback failed too",
        )
        return status

    async def _release_and_verify(
        self, step: ReleaseStep
    ) -> tuple[ReleaseOutcome | None, VerificationOutcome]:
        """Release, then verify. A release or check that cannot run (after its retries) fails
        the deployment like a failed check: the environment cannot be trusted either way."""
        is_rollback = step.deployment_id != self._input.deployment_id
        try:
            released = await self._release(step)
        except ActivityError as err:
            if _cancelled(err):
                raise
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == ErrorType.BASE_MOVED:
                self._base_moved = not is_rollback
                return None, await self._fail(step, f"release refused: {cause.message}")
            return None, await self._fail(step, f"release failed: {_failure_message(err)}")
        if is_rollback:
            self._state.rollback_status = DeploymentStatus.VERIFYING
        else:
            self._progress(DeploymentStatus.VERIFYING, f"verifying {self._input.environment.value}")
        try:
            return released, await self._verify(step)
        except ActivityError as err:
            if _cancelled(err):
                raise
            detail = f"verification could not run: {_failure_message(err)}"
            return released, await self._fail(step, detail)

    async def _fail(self, step: ReleaseStep, detail: str) -> VerificationOutcome:
        await workflow.execute_activity_method(
            ReleaseActivities.mark_deployment,
            TransitionDeployment(
                deployment_id=step.deployment_id, status=DeploymentStatus.FAILED, detail=detail
            ),
            **_BOOKKEEPING,
        )
        self._checkpoint()
        return VerificationOutcome(ok=False, output=detail, log_url="", duration_s=0)

    async def _compensate(self) -> None:
        """After a cancellation: finish an automatic rollback already under way, or restore
        what the environment ran before this deployment."""
        self._compensating = True
        if self._rollback_step is not None:
            resumed = self._rollback_step.model_copy(update={"step": "auto-rollback-resumed"})
            await self._run_rollback(resumed)
            return
        input = self._input
        self._state.step = "cancelled: restoring the previous release"
        workflow.set_current_details(self._state.step)
        view = await workflow.execute_activity_method(
            ReleaseActivities.compensate_deployment,
            self._step(input.deployment_id, input.commit_sha, "cancel", input.rollback_of),
            task_queue=input.deploy_task_queue,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=_RELEASE_RETRY,
        )
        self._progress(view.status, "cancelled")

    async def _release(self, step: ReleaseStep) -> ReleaseOutcome:
        released = await workflow.execute_activity_method(
            ReleaseActivities.release_deployment,
            step,
            task_queue=self._input.deploy_task_queue,
            start_to_close_timeout=timedelta(minutes=5),
            # A release on a worker that died is retried after this, not after 5 minutes.
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=_RELEASE_RETRY,
            # Compensation must not race a release still running on a worker.
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        self._checkpoint()
        return released

    async def _verify(self, step: ReleaseStep) -> VerificationOutcome:
        verified = await workflow.execute_activity_method(
            ReleaseActivities.verify_deployment,
            step,
            task_queue=self._input.deploy_task_queue,
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=_RELEASE_RETRY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        # No checkpoint: a verified deployment is finished, and a failed one rolls back anyway.
        return verified

    def _checkpoint(self) -> None:
        """An activity that finished despite a cancellation request returns its result and
        the request is not raised again; check for it so the deployment still compensates."""
        if not self._compensating and workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError("deployment cancelled")

    def _step(
        self,
        deployment_id: uuid.UUID,
        commit_sha: str,
        name: str,
        rollback_of: uuid.UUID | None,
    ) -> ReleaseStep:
        input = self._input
        return ReleaseStep(
            deployment_id=deployment_id,
            tenant_id=input.tenant_id,
            project_id=input.project_id,
            plan_id=input.plan_id,
            prompt_request_id=input.prompt_request_id,
            environment=input.environment,
            commit_sha=commit_sha,
            job_kind=ChangeJobKind.ROLLBACK if rollback_of else ChangeJobKind.DEPLOY,
            step=name,
        )

    def _parent_gets_result(self) -> bool:
        """Whether the workflow told of progress is this deployment's own parent, which gets
        the outcome as the child's result; an observer that did not start it hears it only by
        signal."""
        parent = workflow.info().parent
        return parent is not None and parent.workflow_id == self._input.parent_workflow_id

    def _progress(self, status: DeploymentStatus, detail: str, *, tell_parent: bool = True) -> None:
        """Persisted state is already written; now tell the UI and the parent.

        Signals go out in the background, one after the other so the parent hears them in
        order; the deployment does not wait a round trip per report, and the run waits for the
        last one before it returns. A status report still waiting to be sent is replaced by a
        newer one (the parent only needs the latest); places in the queue are always told.
        """
        self._state.status = status
        self._state.step = detail
        workflow.set_current_details(f"{self._input.environment.value}: {detail}")
        parent = self._input.parent_workflow_id
        if not parent or not tell_parent:
            return
        report = DeploymentProgress(
            deployment_id=self._input.deployment_id,
            environment=self._input.environment,
            status=status,
            queue_position=self._state.queue_position,
            detail=detail,
        )
        if self._unsent and not self._unsent[-1].queue_position:
            self._unsent[-1] = report
        else:
            self._unsent.append(report)
        if self._progress_sent is None or self._progress_sent.done():
            self._progress_sent = asyncio.create_task(self._send_progress(parent))

    async def _send_progress(self, parent: str) -> None:
        while self._unsent:
            report = self._unsent.pop(0)
            try:
                await workflow.get_external_workflow_handle(parent).signal(
                    "deployment_progress", report
                )
            except Exception:
                # Progress is informational; a parent that has gone does not stop a deployment.
                workflow.logger.info("parent %s did not take the progress signal", parent)


@workflow.defn(name="RollbackWorkflow")
class RollbackWorkflow:
    """An operator restores the release of an earlier SUCCEEDED deployment (a rollback
    included): a new Deployment whose rollback_of is the deployment live now, through the same
    lane, verified like any other."""

    @workflow.init
    def __init__(self, submitted: Submitted[RollbackRequest] = None) -> None:
        # Raising here would fail the workflow task in a loop: run() ends with the refusal.
        self._refused: ApplicationError | None = None
        try:
            request = self._request = parse_input(RollbackRequest, submitted)
        except ApplicationError as refused:
            self._refused = refused
            self._state = _refused_state(refused)
        else:
            self._state = DeploymentState(
                deployment_id=request.deployment_id,
                environment=None,
                status=DeploymentStatus.QUEUED,
                step="checking the rollback target",
            )

    @workflow.signal(name="deployment_progress")
    def deployment_progress(self, progress: DeploymentProgress) -> None:
        self._state.status = progress.status
        self._state.step = progress.detail
        self._state.queue_position = progress.queue_position

    @workflow.query(name="status")
    def status(self) -> DeploymentState:
        return self._state

    @workflow.run
    async def run(self, submitted: Submitted[RollbackRequest] = None) -> DeploymentResult:
        if self._refused is not None:
            raise self._refused
        request = self._request
        deployment_id = (
            request.deployment_id
            or deployment_id_of_rollback(workflow.info().workflow_id)
            or workflow.uuid4()
        )
        self._state.deployment_id = deployment_id
        workflow.upsert_search_attributes(
            [search_attributes.TENANT_ID.value_set(str(request.tenant_id))]
        )
        try:
            plan = await workflow.execute_activity_method(
                ReleaseActivities.plan_rollback,
                PlanRollback(
                    tenant_id=request.tenant_id, target_deployment_id=request.target_deployment_id
                ),
                **_BOOKKEEPING,
            )
        except ActivityError as err:
            _raise_refusal(err)
            raise
        if workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError("rollback cancelled before it started")
        self._state.environment = plan.environment
        self._state.commit_sha = plan.commit_sha
        self._state.rollback_of = plan.live_deployment_id
        workflow.upsert_search_attributes(
            [
                search_attributes.PROJECT_ID.value_set(str(plan.project_id)),
                search_attributes.ENVIRONMENT.value_set(plan.environment.value),
            ]
        )
        reason = f": {request.reason}" if request.reason else ""
        deployment = DeploymentInput(
            deployment_id=deployment_id,
            tenant_id=plan.tenant_id,
            project_id=plan.project_id,
            plan_id=plan.plan_id,
            prompt_request_id=plan.prompt_request_id,
            environment=plan.environment,
            commit_sha=plan.commit_sha,
            rollback_of=plan.live_deployment_id,
            parent_workflow_id=workflow.info().workflow_id,
            deploy_task_queue=request.deploy_task_queue,
        )
        result = await workflow.execute_child_workflow(
            DeploymentWorkflow.run,
            deployment,
            id=deployment_workflow_id(deployment_id),
            search_attributes=search_attributes.deployment_attributes(
                deployment.tenant_id, deployment.project_id, deployment.environment
            ),
            static_summary=(
                f"Rollback of {plan.environment.value} to {plan.commit_sha[:12]} "
                f"(deployment {request.target_deployment_id}){reason}"
            ),
        )
        # The child's last word comes as its result, not as a progress signal.
        self._state.status = result.status
        self._state.step = "verified" if result.verified else "verification failed"
        if result.rollback_status is not None:
            self._state.step += f"; rollback {result.rollback_status.value}"
        self._state.queue_position = None
        return result
