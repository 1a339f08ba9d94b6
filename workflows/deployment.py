"""Deployments: one release of a commit to one environment, verified, rolled back when it fails.

- `DeploymentWorkflow` (id `deployment-<uuid>`) records the Deployment with its place in the
  lane of its project and environment (activities/lane.py: one at a time, in arrival order),
  waits its turn, releases, verifies and on failure restores the last good release as a
  rollback Deployment before it gives the lane back.
- `RollbackWorkflow` (id `rollback-<uuid>`) is an operator's rollback to an earlier release.
"""

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    TypedSearchAttributes,
)
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.decisions import DecisionActivities
    from activities.deployments import DeploymentActivities
    from activities.github_activities import GitHubActivities
    from activities.github_target import POLL_FIRST, POLL_MAX
    from activities.lane import LaneActivities
    from activities.releases import ReleaseActivities
    from activities.rollbacks import RollbackActivities
    from models.lifecycle import ChangeJobKind, DeploymentEnvironment, DeploymentStatus
    from workflows.contracts import search_attributes
    from workflows.contracts.decisions import DecisionAction, VerifyDecision
    from workflows.contracts.deployment import (
        MERGE_ASKED_SIGNAL,
        MERGE_GO_SIGNAL,
        DeploymentInput,
        DeploymentProgress,
        DeploymentResult,
        DeploymentState,
        DeploymentView,
        FindLastGoodRelease,
        GitHubRelease,
        LanePlace,
        LaneTurn,
        MergeAsked,
        PlanRollback,
        RecordDeployment,
        RecordVerdict,
        ReleaseOutcome,
        ReleaseStep,
        RollbackRequest,
        TransitionDeployment,
        VerificationOutcome,
        retry_through_outages,
    )
    from workflows.contracts.errors import (
        NON_RETRYABLE_ERROR_TYPES,
        ErrorType,
        application_error,
        error_message,
        error_type,
    )
    from workflows.contracts.github import (
        GITHUB_EVENT_SIGNAL,
        EndRequest,
        FinishDeployment,
        GitHubEvent,
        LookAtChecks,
        MergePullRequest,
        RevertPullRequest,
        StartDeployment,
    )
    from workflows.contracts.ids import deployment_id_of_rollback, deployment_workflow_id
    from workflows.contracts.submitted import Submitted, parse_input
    from workflows.late_cancels import obeyed_while_in_time

# Short, idempotent database work: local activities (no round trip through the server), and
# the few such activities that run elsewhere.
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
# A waiter looks at its place at most this far apart, however long the queue ahead.
_LANE_CHECK_CAP = timedelta(minutes=30)
# Patch: an operator's rollback checks its decider's tenant before its target.
ROLLBACK_DECIDER_FIRST_PATCH = "rollback-decider-first"
# Releases, checks and their records ride out an outage of what they use (the database, the
# repository): only the check's verdict, or a typed refusal, fails a release.
_RELEASE_RETRY = retry_through_outages(NON_RETRYABLE_ERROR_TYPES)
# Patch id: the check returns its verdict (run_check) and a separate activity persists it
# (record_verdict); a cancellation that arrives between the two undoes the release.
VERDICT_APART = "verdict-recorded-apart"
# A cancelled check hears of it within about 80% of this (the SDK's heartbeat throttle).
_CHECK_HEARTBEAT = timedelta(seconds=10)
# Patch id: this workflow decides every status of its deployments and persists each with
# mark_deployment; the release activities only report and write facts. Runs from before it
# counted on their activities to write the statuses, which they no longer do: such a run still
# going when this ships ends with its rows behind (none does under Worker Versioning, where a
# deployment is pinned to the version it started on).
STATUS_DECIDED_HERE = "deployment-status-decided-here"
# The statuses a deployment's run ends in; a cancellation turns the others into CANCELLED.
_RUN_ENDS = frozenset(
    {DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED, DeploymentStatus.CANCELLED}
)
# Patch id (a GitHub project's deployments): once production's request answered go to its merge,
# Temporal's cancel is not obeyed: GitHub's default branch may hold the change, and undoing the
# release would leave it there. Runs from before it undid the release, the merge staying.
MERGE_OUTLIVES_CANCEL = "merge-outlives-cancel"
# Patch id (a GitHub project's deployments): a rollback is verified as the request's releases
# are, by the tenant's checks on GitHub with a GitHub Deployment of the commit; in production
# its revert pull request is merged first and the merge commit verified. Runs before it checked
# a rollback with the project's check command and merged the revert after it passed.
ROLLBACKS_VERIFIED_ON_GITHUB = "rollbacks-verified-on-github"

# A call to GitHub: a few REST requests. Rate limits and outages come back as retries after
# GitHub's wait (activities/github_client.py); refusals are typed and not retried.
_GITHUB_STEP: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=2),
    "retry_policy": RetryPolicy(
        maximum_interval=timedelta(seconds=30), non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES
    ),
}

T = TypeVar("T")


def _upsert_missing(wanted: TypedSearchAttributes) -> None:
    given = workflow.info().typed_search_attributes
    missing = search_attributes.missing_from(given, wanted)
    if missing:
        workflow.upsert_search_attributes(missing)


def _cancelled(err: BaseException) -> bool:
    return isinstance(err, asyncio.CancelledError) or is_cancelled_exception(err)


def _raise_refusal(err: ActivityError) -> None:
    """Surface an activity's typed refusal (bad input) as this workflow's own failure."""
    cause = application_error(err.cause) if err.cause else None
    if cause is not None and cause.non_retryable:
        raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from None


def not_a_deployment_of(request: RollbackRequest) -> ApplicationError:
    """The one answer for a target that does not exist and one of a tenant the decider is not
    of (plan_rollback's words)."""
    return ApplicationError(
        f"no deployment {request.target_deployment_id} for tenant {request.tenant_id}",
        type=ErrorType.DEPLOYMENT_NOT_FOUND,
        non_retryable=True,
    )


def _refused_state(refused: ApplicationError) -> DeploymentState:
    """The `status` answer of a deployment whose input never decoded: failed, and why."""
    return DeploymentState(
        deployment_id=None,
        environment=None,
        status=DeploymentStatus.FAILED,
        step=f"refused: {refused.message}",
    )


@workflow.defn(name="DeploymentWorkflow")
class DeploymentWorkflow:
    """QUEUED -> (its turn in the lane) -> IN_PROGRESS -> VERIFYING -> SUCCEEDED or FAILED;
    a failure restores the last good release as a verified rollback Deployment before the lane
    passes on. Cancellation restores what the environment ran before."""

    @workflow.init
    def __init__(self, submitted: Submitted[DeploymentInput] = None) -> None:
        # Raising here would fail the workflow task in a loop: run() ends with the refusal.
        self._refused: ApplicationError | None = None
        self._verdict_apart = False
        self._decides = False
        # The status last decided (and persisted) for this workflow's deployments, and those
        # that began releasing (a cancellation undoes them).
        self._decided: dict[uuid.UUID, DeploymentStatus] = {}
        self._releasing: set[uuid.UUID] = set()
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
        # The `lane_turn` signal came: the deployment ahead left.
        self._my_turn = False
        self._rollback_step: ReleaseStep | None = None
        self._compensating = False
        # The release was refused because the project's default branch moved (BASE_MOVED).
        self._base_moved = False
        # An undo found its environment running another release: nothing was restored.
        self._superseded = False
        # Progress reports the parent has not been sent yet, and their sender (see _progress).
        self._unsent: list[DeploymentProgress] = []
        self._progress_sent: asyncio.Task[None] | None = None
        # A GitHub project (input.github): `github_event` signals so far (each wakes the look
        # at the checks), the merge commit each of this run's production releases put on the
        # default branch (the request's pull request, a rollback's revert), which its checks
        # verify, the release's log, and a release whose pull request GitHub did not merge (it
        # is rolled back).
        self._github_events = 0
        self._merged: dict[uuid.UUID, str] = {}
        self._release_log_url = ""
        self._released_unmerged = False
        self._not_merged: str | None = None
        self._checks: str | None = None
        # The parent request let production ask GitHub to merge (input.github's
        # asks_before_merging): no cancel was authorized before it.
        self._merge_go: MergeAsked | None = None
        # MERGE_OUTLIVES_CANCEL, and what the deployment says of a cancel it did not obey.
        self._merge_outlives_cancel = False
        self._rollbacks_on_github = False
        self._cancel_refused: str | None = None

    @workflow.signal(name=MERGE_GO_SIGNAL)
    def merge_go(self, go: MergeAsked) -> None:
        self._merge_go = go

    @workflow.signal(name=GITHUB_EVENT_SIGNAL)
    def github_event(self, event: GitHubEvent) -> None:
        self._github_events += 1

    @workflow.signal(name="lane_turn")
    def lane_turn(self, turn: LaneTurn) -> None:
        self._my_turn = self._my_turn or turn.queue_position == 0

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
        # Asked before the first local activity (see RUN_START_PATCHES in workflows/lifecycle.py).
        self._verdict_apart = workflow.patched(VERDICT_APART)
        self._decides = workflow.patched(STATUS_DECIDED_HERE)
        self._merge_outlives_cancel = input.github is not None and workflow.patched(
            MERGE_OUTLIVES_CANCEL
        )
        self._rollbacks_on_github = input.github is not None and workflow.patched(
            ROLLBACKS_VERIFIED_ON_GITHUB
        )
        lane_place = LanePlace(
            project_id=input.project_id,
            environment=input.environment,
            workflow_id=workflow.info().workflow_id,
        )
        in_lane = False
        try:
            # The row and its place in the lane, in one local transaction.
            in_lane = True
            try:
                recorded = await self._record_deployment(
                    RecordDeployment(
                        deployment_id=input.deployment_id,
                        tenant_id=input.tenant_id,
                        project_id=input.project_id,
                        plan_id=input.plan_id,
                        environment=input.environment,
                        commit_sha=input.commit_sha,
                        rollback_of=input.rollback_of,
                        workflow_id=workflow.info().workflow_id,
                        enter_lane=True,
                    )
                )
            except ActivityError as err:
                _raise_refusal(err)
                raise
            self._checkpoint()
            await self._wait_for_turn(lane_place, recorded.queue_position)
            if self._merge_outlives_cancel:
                return await obeyed_while_in_time(
                    self._merge_went_ahead, self._deploy(), refused=self._refuse_cancel
                )
            return await self._deploy()
        except BaseException as err:
            if not _cancelled(err):
                raise
            await self._compensate()
            raise
        finally:
            if in_lane:
                self._state.queue_position = None
                await workflow.execute_local_activity_method(
                    LaneActivities.leave_deployment_lane,
                    lane_place,
                    **_BOOKKEEPING,
                )
            if self._progress_sent is not None:
                await self._progress_sent  # the parent hears the outcome before the result

    def _merge_went_ahead(self) -> bool:
        """Production's request answered go to its merge (MERGE_OUTLIVES_CANCEL): from then on
        a cancel is too late, as for the request (its `authorize_cancel` answers CancelTooLate)."""
        return self._merge_outlives_cancel and self._merge_go is not None

    def _refuse_cancel(self) -> None:
        """A cancel came once the merge went ahead: not obeyed. The deployment ends as its
        release does (verified, or rolled back, the default branch reverted with it), and its
        status and result say so."""
        assert self._merge_go is not None
        self._cancel_refused = self._merge_go.outlived_cancel()
        self._progress(self._cancel_refused)

    async def _wait_for_turn(self, place: LanePlace, position: int | None) -> None:
        """Until the lane's turn: the `lane_turn` signal when the one ahead leaves, or a look
        at the lane on a timer that grows with the position (the queue is told nothing)."""
        while not self._my_turn and position != 0:
            if position is None:  # the place was taken away: the lane is not held
                raise ApplicationError("the deployment lost its place in the lane")
            if position != self._state.queue_position:
                self._state.queue_position = position
                self._progress(f"waiting: {position} ahead in the lane")
            look_after = min(
                timedelta(seconds=self._input.lane_check_s) * position, _LANE_CHECK_CAP
            )
            try:
                await workflow.wait_condition(lambda: self._my_turn, timeout=look_after)
            except TimeoutError:
                checked = await workflow.execute_local_activity_method(
                    LaneActivities.check_deployment_lane, place, **_BOOKKEEPING
                )
                position = checked.queue_position
        self._state.queue_position = 0

    async def _deploy(self) -> DeploymentResult:
        input = self._input
        step = self._step(input.deployment_id, input.commit_sha, "release", input.rollback_of)
        env = input.environment.value
        self._progress(f"releasing {input.commit_sha[:12]} to {env}")
        released, outcome = await self._release_and_verify(step)
        result = DeploymentResult(
            deployment_id=input.deployment_id,
            environment=input.environment,
            # How the run ended, as decided; a rollback that follows moves the row on.
            status=self._decided[input.deployment_id],
            commit_sha=input.commit_sha,
            verified=outcome.ok,
            verification_output=outcome.output,
            log_url=outcome.log_url or (released.log_url if released else None),
            diff_url=released.diff_url if released else None,
            base_moved=self._base_moved,
            previous_commit_sha=released.previous_commit_sha if released else None,
            checks=self._checks,
            not_merged=self._not_merged,
        )
        # A refused release released nothing: there is nothing to roll back.
        rolls_back = (
            not outcome.ok
            and input.auto_rollback
            and (not self._base_moved or self._released_unmerged)
            and not self._superseded
        )
        if outcome.ok:
            detail = "verified"
        else:
            detail = outcome.output if self._superseded else "verification failed"
        self._progress(
            detail,
            # The last word: a parent that started this child reads it from the result.
            tell_parent=rolls_back or not self._parent_gets_result(),
        )
        if rolls_back:
            await self._auto_rollback(result)
        result.status_now = self._decided[input.deployment_id]
        result.cancel_refused = self._cancel_refused
        return result

    async def _auto_rollback(self, result: DeploymentResult) -> None:
        """Restore the last good release as a new, verified Deployment (rollback_of = this)."""
        input = self._input
        try:
            good = await workflow.execute_activity_method(
                RollbackActivities.find_last_good_release,
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
            workflow.logger.warning("nothing to roll back to: %s", error_message(err))
            self._progress("no earlier release to restore")
            return
        rollback_id = workflow.uuid4()
        result.rollback_deployment_id = rollback_id
        self._state.rollback_deployment_id = rollback_id
        await self._record_deployment(
            RecordDeployment(
                deployment_id=rollback_id,
                tenant_id=input.tenant_id,
                project_id=input.project_id,
                plan_id=input.plan_id,
                environment=input.environment,
                commit_sha=good.commit_sha,
                rollback_of=input.deployment_id,
                workflow_id=workflow.info().workflow_id,
            )
        )
        self._rollback_step = self._step(
            rollback_id, good.commit_sha, "auto-rollback", input.deployment_id
        )
        self._checkpoint()
        self._progress(f"rolling back to {good.commit_sha[:12]} ({good.source})")
        result.rollback_status = await self._run_rollback(self._rollback_step)
        self._rollback_step = None

    async def _run_rollback(self, step: ReleaseStep) -> DeploymentStatus:
        _, outcome = await self._release_and_verify(step)
        self._progress("rolled back" if outcome.ok else "the rollback failed too")
        return self._decided[step.deployment_id]

    async def _release_and_verify(
        self, step: ReleaseStep
    ) -> tuple[ReleaseOutcome | None, VerificationOutcome]:
        """Release, then verify. A release or check that cannot run (after its retries) fails
        the deployment like a failed check: the environment cannot be trusted either way."""
        is_rollback = step.deployment_id != self._input.deployment_id
        # A resumed release (after a cancellation) keeps the status it reached.
        if self._decided.get(step.deployment_id) is DeploymentStatus.QUEUED:
            await self._decide(step.deployment_id, DeploymentStatus.IN_PROGRESS)
        self._releasing.add(step.deployment_id)
        try:
            released = await self._release(step)
        except ActivityError as err:
            if _cancelled(err):
                raise
            if error_type(err) in (ErrorType.BASE_MOVED, ErrorType.RELEASE_SUPERSEDED):
                self._releasing.discard(step.deployment_id)  # refused before releasing
            if error_type(err) == ErrorType.BASE_MOVED:
                self._base_moved = not is_rollback
                return None, await self._fail(step, f"release refused: {error_message(err)}")
            if error_type(err) == ErrorType.RELEASE_SUPERSEDED:
                self._superseded = True
                detail = f"not undone: {error_message(err)}"
                return None, await self._fail(step, detail, DeploymentStatus.CANCELLED)
            return None, await self._fail(step, f"release failed: {error_message(err)}")
        if released is not None:
            self._release_log_url = released.log_url or ""
        if self._merges(step):
            try:
                await self._merge()
            except ActivityError as err:
                if _cancelled(err):
                    raise
                # Released but not merged: the release is rolled back and the request fails
                # with GitHub's reason. A moved head is a push to the request's branch from
                # outside: what would merge is not what was approved (and a rebase keeps it).
                self._released_unmerged = True
                self._not_merged = error_message(err)
                if error_type(err) == ErrorType.BASE_MOVED:
                    self._not_merged = (
                        f"changeflow/{self._input.prompt_request_id} was pushed to outside "
                        f"changeflow after {self._input.commit_sha[:12]} was verified: what "
                        f"would merge is not what was approved ({self._not_merged})"
                    )
                return released, await self._fail(step, f"not merged: {self._not_merged}")
        elif self._reverts_on_github(step) and self._rollbacks_on_github:
            try:
                await self._revert_on_github(step)
            except ActivityError as err:
                if _cancelled(err):
                    raise
                return released, await self._fail(step, f"revert not merged: {error_message(err)}")
        if self._decided.get(step.deployment_id) is DeploymentStatus.IN_PROGRESS:
            await self._decide(step.deployment_id, DeploymentStatus.VERIFYING)
        if not is_rollback:
            self._progress(f"verifying {self._input.environment.value}")
        try:
            return released, await self._verify(step)
        except ActivityError as err:
            if _cancelled(err):
                raise
            detail = f"verification could not run: {error_message(err)}"
            return released, await self._fail(step, detail)

    async def _fail(
        self, step: ReleaseStep, detail: str, status: DeploymentStatus = DeploymentStatus.FAILED
    ) -> VerificationOutcome:
        # Persisted here by runs from before STATUS_DECIDED_HERE too.
        await self._decide(step.deployment_id, status, detail, persist=True)
        self._checkpoint()
        return VerificationOutcome(ok=False, output=detail, log_url="", duration_s=0)

    def _replaced_by(self, step: ReleaseStep) -> uuid.UUID | None:
        """The deployment whose release this step's release replaces once verified: the one a
        rollback undoes."""
        if step.deployment_id == self._input.deployment_id:
            return self._input.rollback_of
        return self._input.deployment_id  # the automatic rollback undoes this deployment

    async def _decide(
        self,
        deployment_id: uuid.UUID,
        status: DeploymentStatus,
        detail: str | None = None,
        *,
        rolls_back: uuid.UUID | None = None,
        persist: bool | None = None,
    ) -> None:
        """The one place a deployment's status changes: persisted by mark_deployment (allowed
        moves only), then shown. Runs from before STATUS_DECIDED_HERE only show it: their
        activities wrote it."""
        if not (self._decides if persist is None else persist):
            self._show_decided(deployment_id, status, rolls_back)
            return

        async def persisted() -> None:
            await workflow.execute_local_activity_method(
                DeploymentActivities.mark_deployment,
                TransitionDeployment(
                    deployment_id=deployment_id, status=status, detail=detail, rolls_back=rolls_back
                ),
                **_BOOKKEEPING,
            )
            self._show_decided(deployment_id, status, rolls_back)

        # Runs from before STATUS_DECIDED_HERE wrote only failures here, unshielded.
        await (self._whole(persisted()) if self._decides else persisted())

    def _show_decided(
        self, deployment_id: uuid.UUID, status: DeploymentStatus, rolls_back: uuid.UUID | None
    ) -> None:
        self._decided[deployment_id] = status
        if deployment_id == self._input.deployment_id:
            self._state.status = status
        else:
            self._state.rollback_status = status
        if rolls_back in self._decided and status is DeploymentStatus.SUCCEEDED:
            self._show_decided(rolls_back, DeploymentStatus.ROLLED_BACK, None)

    async def _record_deployment(self, record: RecordDeployment) -> DeploymentView:
        """The row, QUEUED (record_deployment); known to be there even when a cancellation
        comes meanwhile."""

        async def recorded() -> DeploymentView:
            view = await workflow.execute_local_activity_method(
                DeploymentActivities.record_deployment, record, **_BOOKKEEPING
            )
            self._show_decided(record.deployment_id, view.status, None)
            return view

        return await (self._whole(recorded()) if self._decides else recorded())

    async def _whole(self, step: Awaitable[T], *, cancels_after: bool = True) -> T:
        """Run a step to its end even when the deployment is cancelled meanwhile, so what it
        wrote is known; the cancellation is raised after it, or (cancels_after=False) left
        to the next checkpoint."""
        task = asyncio.ensure_future(step)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            done = await task
            if cancels_after:
                raise
            return done

    async def _compensate(self) -> None:
        """After a cancellation: finish an automatic rollback already under way, or restore
        what the environment ran before this deployment."""
        self._compensating = True
        if self._rollback_step is not None:
            rollback = self._decided.get(self._rollback_step.deployment_id)
            if self._decides and rollback in _RUN_ENDS:
                return  # the rollback's own run ended as the cancellation came
            resumed = self._rollback_step.model_copy(update={"step": "auto-rollback-resumed"})
            await self._run_rollback(resumed)
            return
        input = self._input
        if not self._decides:
            self._restoring()
            view = await self._undo_release()  # its activity wrote the statuses then
            self._show_decided(input.deployment_id, view.status, None)
        elif self._decided.get(input.deployment_id) in (
            DeploymentStatus.SUCCEEDED,  # finished before the cancellation
            DeploymentStatus.ROLLED_BACK,  # already undone
            None,  # never recorded
        ):
            pass
        else:
            if self._decided[input.deployment_id] not in _RUN_ENDS:
                await self._decide(input.deployment_id, DeploymentStatus.CANCELLED)
            if input.deployment_id in self._releasing:
                self._restoring()
                await self._undo_release()
                await self._decide(input.deployment_id, DeploymentStatus.ROLLED_BACK)
        self._progress("cancelled")

    def _restoring(self) -> None:
        self._state.step = "cancelled: restoring the previous release"
        workflow.set_current_details(self._state.step)

    async def _undo_release(self) -> DeploymentView:
        input = self._input
        return await workflow.execute_activity_method(
            ReleaseActivities.compensate_deployment,
            self._step(input.deployment_id, input.commit_sha, "cancel", input.rollback_of),
            task_queue=input.deploy_task_queue,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=_RELEASE_RETRY,
        )

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
        if not self._verdict_apart:
            verified = await self._verify_and_record(step)
            self._show_decided(step.deployment_id, *self._verdict_means(step, verified))
            return verified
        if self._on_github(step):
            verdict = await self._github_checks(step)
        else:
            verdict = await workflow.execute_activity_method(
                ReleaseActivities.run_check,
                step,
                task_queue=self._input.deploy_task_queue,
                start_to_close_timeout=timedelta(minutes=30),
                heartbeat_timeout=_CHECK_HEARTBEAT,
                retry_policy=_RELEASE_RETRY,
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        # Cancelled while the check ran (it finished before hearing of it): nothing is recorded
        # as verified and the default branch does not move; the compensation undoes the release.
        self._checkpoint()
        if verdict.ok and self._reverts_on_github(step) and not self._rollbacks_on_github:
            await self._revert_on_github(step)
        if not self._decides:
            recorded = await self._record_verdict(step, verdict)
            self._show_decided(step.deployment_id, *self._verdict_means(step, verdict))
            return recorded

        async def recorded_and_decided() -> VerificationOutcome:
            recorded = await self._record_verdict(step, verdict)
            status, rolls_back = self._verdict_means(step, verdict)
            await self._decide(step.deployment_id, status, rolls_back=rolls_back)
            return recorded

        # Not cancelled halfway: once it starts, a verified production release ships whole.
        return await self._whole(recorded_and_decided(), cancels_after=False)

    # --- a GitHub project's release ------------------------------------------------------

    def _on_github(self, step: ReleaseStep) -> bool:
        """Whether the tenant's checks on GitHub verify this step: a GitHub project's release
        of its request, and (ROLLBACKS_VERIFIED_ON_GITHUB) its rollbacks, automatic or an
        operator's (runs before it verified those by the project's check command)."""
        return self._input.github is not None and (
            step.job_kind is ChangeJobKind.DEPLOY or self._rollbacks_on_github
        )

    def _reverts_on_github(self, step: ReleaseStep) -> bool:
        """A rollback of a GitHub project's production: the default branch gets its revert by a
        pull request, merged before the merge commit is verified (ROLLBACKS_VERIFIED_ON_GITHUB;
        runs before it merged once the check command passed), so that main holds the tree
        production runs whatever the verdict."""
        return (
            self._input.github is not None
            and self._input.environment is DeploymentEnvironment.PRODUCTION
            and step.job_kind is ChangeJobKind.ROLLBACK
        )

    async def _revert_on_github(self, step: ReleaseStep) -> None:
        """The git layer pushes `changeflow/<rollback deployment id>` holding the revert (no
        branch: the default branch holds the restored tree already, and the restored commit is
        what its checks verify); GitHub merges it as a pull request, whose merge commit its
        checks verify, and the branch goes."""
        github = self._input.github
        assert github is not None
        branch = await workflow.execute_activity_method(
            ReleaseActivities.push_revert_branch,
            step,
            task_queue=self._input.deploy_task_queue,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=_RELEASE_RETRY,
        )
        if branch is None:
            return
        self._progress(f"merging the revert to {step.commit_sha[:12]} on GitHub")
        merged = await workflow.execute_activity_method(
            GitHubActivities.revert,
            RevertPullRequest(
                connector_id=github.connector_id,
                branch=branch,
                title=f"Revert production to {step.commit_sha[:12]}",
                body=(
                    f"Production was rolled back to {step.commit_sha} by changeflow deployment "
                    f"`{step.deployment_id}`; this brings the default branch to the tree "
                    "production runs."
                ),
            ),
            **_GITHUB_STEP,
        )
        self._merged[step.deployment_id] = merged.merge_sha
        await workflow.execute_activity_method(
            GitHubActivities.end_request,
            EndRequest(connector_id=github.connector_id, request_id=step.deployment_id),
            **_GITHUB_STEP,
        )

    def _merges(self, step: ReleaseStep) -> bool:
        return (
            self._on_github(step)
            and step.job_kind is ChangeJobKind.DEPLOY
            and self._input.environment is DeploymentEnvironment.PRODUCTION
            and self._input.github is not None
            and self._input.github.pull_number is not None
        )

    async def _merge(self) -> None:
        """Production merges the request's pull request, the released (and staged) head as the
        guard: GitHub refuses the merge if the head moved since."""
        github = self._input.github
        assert github is not None and github.pull_number is not None
        if github.asks_before_merging:
            await self._await_merge_go(github.pull_number)
        self._progress(f"merging pull request #{github.pull_number}")
        merged = await workflow.execute_activity_method(
            GitHubActivities.merge_pull_request,
            MergePullRequest(
                connector_id=github.connector_id,
                number=github.pull_number,
                head_sha=self._input.commit_sha,
            ),
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            **_GITHUB_STEP,
        )
        self._merged[self._input.deployment_id] = merged.merge_sha

    async def _await_merge_go(self, pull_number: int) -> None:
        """The parent request decides, in the order it hears of them, between a cancel and
        this merge: without a cancel authorized before, it answers go and refuses cancels from
        then on; with one, it cancels this deployment instead (the wait ends cancelled and the
        release is undone), so a cancelled request's change never reaches the default branch."""
        input = self._input
        assert input.parent_workflow_id is not None
        self._progress(f"asking the request before merging pull request #{pull_number}")
        await workflow.get_external_workflow_handle(input.parent_workflow_id).signal(
            MERGE_ASKED_SIGNAL,
            MergeAsked(deployment_id=input.deployment_id, pull_number=pull_number),
        )
        await workflow.wait_condition(lambda: self._merge_go is not None)

    async def _github_checks(self, step: ReleaseStep) -> VerificationOutcome:
        """The tenant's own checks decide: a GitHub Deployment of the step's commit (the merge
        commit its release put on the default branch, if any) marked in progress, its checks
        looked at until decided (from POLL_FIRST doubling to POLL_MAX, at once on a
        `github_event`), the deployment marked with the verdict, which names each check and
        its link."""
        input = self._input
        github = input.github
        assert github is not None
        environment = input.environment.value
        sha = self._merged.get(step.deployment_id, step.commit_sha)
        deployment = await workflow.execute_activity_method(
            GitHubActivities.start_deployment,
            StartDeployment(
                connector_id=github.connector_id,
                environment=environment,
                sha=sha,
                log_url=self._release_log_url,
                request_id=input.prompt_request_id,
                deployment_id=step.deployment_id,
            ),
            **_GITHUB_STEP,
        )
        started = workflow.now()
        pause = POLL_FIRST
        while True:
            seen = self._github_events
            verdict = await workflow.execute_activity_method(
                GitHubActivities.look_at_checks,
                LookAtChecks(
                    connector_id=github.connector_id,
                    sha=sha,
                    elapsed=workflow.now() - started,
                    environment=environment,
                ),
                **_GITHUB_STEP,
            )
            if verdict.done:
                break
            self._progress(verdict.summary())
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda seen=seen: self._github_events > seen,  # type: ignore[misc]
                    timeout=pause,
                    timeout_summary="GitHub checks",
                )
            pause = min(pause * 2, POLL_MAX)
        summary = verdict.summary()
        self._checks = f"GitHub checks of {environment}: {summary}"
        await workflow.execute_activity_method(
            GitHubActivities.finish_deployment,
            FinishDeployment(
                connector_id=github.connector_id,
                deployment=deployment,
                ok=verdict.ok,
                log_url=self._release_log_url,
                description=summary,
            ),
            **_GITHUB_STEP,
        )
        return VerificationOutcome(
            ok=verdict.ok,
            output=self._checks,
            log_url=self._release_log_url,
            duration_s=(workflow.now() - started).total_seconds(),
        )

    async def _record_verdict(
        self, step: ReleaseStep, verdict: VerificationOutcome
    ) -> VerificationOutcome:
        return await workflow.execute_activity_method(
            ReleaseActivities.record_verdict,
            RecordVerdict(step=step, verdict=verdict),
            task_queue=self._input.deploy_task_queue,
            # A few writes and a fast-forward: an attempt lost with its worker is retried soon.
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_RELEASE_RETRY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

    def _verdict_means(
        self, step: ReleaseStep, verdict: VerificationOutcome
    ) -> tuple[DeploymentStatus, uuid.UUID | None]:
        """What a check's verdict makes of the release: SUCCEEDED, replacing the release a
        rollback undoes (returned second), or FAILED."""
        if not verdict.ok:
            return DeploymentStatus.FAILED, None
        return DeploymentStatus.SUCCEEDED, self._replaced_by(step)

    async def _verify_and_record(self, step: ReleaseStep) -> VerificationOutcome:
        """Runs started before VERDICT_APART: check and record in one activity."""
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
        the request is not raised again; check for it so the deployment still compensates
        (unless its merge went ahead: that cancel is not obeyed)."""
        if (
            not self._compensating
            and workflow.cancellation_reason() is not None
            and not self._merge_went_ahead()
        ):
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
            undoes_commit_sha=(
                input.undoes_commit_sha if deployment_id == input.deployment_id else None
            ),
        )

    def _parent_gets_result(self) -> bool:
        """Whether the workflow told of progress is this deployment's own parent, which gets
        the outcome as the child's result; an observer that did not start it hears it only by
        signal."""
        parent = workflow.info().parent
        return parent is not None and parent.workflow_id == self._input.parent_workflow_id

    def _progress(self, detail: str, *, tell_parent: bool = True) -> None:
        """The status decided (and persisted) so far and what happens now, for the UI and the
        parent.

        Signals go out in the background, one after the other so the parent hears them in
        order; the deployment does not wait a round trip per report, and the run waits for the
        last one before it returns. A status report still waiting to be sent is replaced by a
        newer one (the parent only needs the latest); places in the queue are always told.
        """
        self._state.step = detail
        workflow.set_current_details(f"{self._input.environment.value}: {detail}")
        parent = self._input.parent_workflow_id
        if not parent or not tell_parent:
            return
        report = DeploymentProgress(
            deployment_id=self._input.deployment_id,
            environment=self._input.environment,
            status=self._state.status,
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
        decision = VerifyDecision(
            tenant_id=request.tenant_id,
            request=request.target_deployment_id,
            action=DecisionAction.ROLLBACK,
            user_id=request.requested_by,
            token=request.token,
            used_by=workflow.info().workflow_id,
        )
        try:
            if workflow.patched(ROLLBACK_DECIDER_FIRST_PATCH):
                # Who decides, and in which tenant, before anything about the target is said:
                # another tenant's deployment is answered as one that does not exist.
                try:
                    await workflow.execute_local_activity_method(
                        DecisionActivities.verify_decision,
                        decision.model_copy(update={"spend": False}),
                        **_BOOKKEEPING,
                    )
                except (ActivityError, ApplicationError) as err:
                    # A local activity's refusal arrives as its ApplicationError.
                    if error_type(err) == ErrorType.USER_OF_ANOTHER_TENANT:
                        raise not_a_deployment_of(request) from None
                    raise
            plan = await workflow.execute_local_activity_method(
                RollbackActivities.plan_rollback,
                PlanRollback(
                    tenant_id=request.tenant_id, target_deployment_id=request.target_deployment_id
                ),
                **_BOOKKEEPING,
            )
            # The operator's signed decision counts (its token spent) before anything is
            # released, and only once the target was found good: a refused plan spends nothing.
            await workflow.execute_local_activity_method(
                DecisionActivities.verify_decision, decision, **_BOOKKEEPING
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
            github=(
                GitHubRelease(connector_id=plan.github_connector_id)
                if plan.github_connector_id is not None
                else None
            ),
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
        self._state.status = result.status_now or result.status
        self._state.step = "verified" if result.verified else "verification failed"
        if result.rollback_status is not None:
            self._state.step += f"; rollback {result.rollback_status.value}"
        self._state.queue_position = None
        return result
