"""PromptRequestWorkflow: one tenant's change request from prompt to production.

request -> plan -> hold the estimate -> approval (policy, people, expiry, revisions)
-> apply -> staging child -> production child -> settle exactly once.

Short steps run as shielded tasks: a cancellation lets the step in flight finish, so the
compensation knows every hold and every token the work used. Deployment children are not
shielded: cancelling the lifecycle cancels the running child, which rolls back its release, and
a staging release that already succeeded is undone by a deployment of its own. Once production
verified the release (and the default branch moved to it), or a GitHub project's production was
told to merge its pull request, a cancel is refused (CancelTooLate) and Temporal's own cancel is
not obeyed: the change is live (or may be), and an operator rollback is the way back.
"""

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    WorkflowAlreadyStartedError,
)

with workflow.unsafe.imports_passed_through():
    from activities.billing import BillingActivities
    from activities.decisions import DecisionActivities
    from activities.github_activities import GitHubActivities
    from activities.lifecycle import LifecycleActivities
    from activities.rollbacks import RollbackActivities
    from models.billing import HoldStatus
    from models.lifecycle import (
        ApprovalDecision,
        DeploymentEnvironment,
        DeploymentStatus,
        PlanApprovalStatus,
        PromptStatus,
    )
    from models.transitions import is_terminal
    from workflows.contracts.billing import (
        ChargeTokens,
        ReleaseForgottenHolds,
        ReleaseHold,
        ReserveTokens,
        SettleHold,
    )
    from workflows.contracts.decision_rules import (
        DecisionClaims,
        DecisionMemory,
    )
    from workflows.contracts.decisions import (
        DecisionAction,
        LoadDecisionTrust,
        VerifyDecision,
        unverified_tenant,
    )
    from workflows.contracts.deployment import (
        MERGE_ASKED_SIGNAL,
        MERGE_GO_SIGNAL,
        DeploymentInput,
        DeploymentProgress,
        DeploymentResult,
        FindLastGoodRelease,
        GitHubRelease,
        MergeAsked,
    )
    from workflows.contracts.errors import (
        MODEL_UNAVAILABLE,
        NON_RETRYABLE_ERROR_TYPES,
        ErrorType,
        application_error,
        error_message,
        error_type,
        refused,
    )
    from workflows.contracts.github import (
        GITHUB_EVENT_SIGNAL,
        ConnectorStep,
        EndRequest,
        GitHubEvent,
        GitHubEventKind,
        OpenPullRequest,
        PullRequestPlan,
        PullRequestRef,
        request_branch,
    )
    from workflows.contracts.ids import deployment_workflow_id, notification_workflow_id
    from workflows.contracts.lifecycle import (
        MAX_REBASE_ROUNDS,
        AppliedChangeView,
        ApplyChange,
        ApprovalPolicyView,
        ApprovalRecord,
        ApproveRequest,
        CancelRequest,
        CloseRequestBranch,
        DeploymentSummary,
        HoldState,
        OpenApproval,
        PlannedRevision,
        PlanRequest,
        PlanSummary,
        PromptRequestInput,
        PromptRequestResult,
        PromptRequestStatus,
        RecordDecision,
        RejectRequest,
        ReviseRequest,
        SetRequestStatus,
        check_prompt,
        check_reason,
    )
    from workflows.contracts.notifications import (
        NOTIFICATION_WORKFLOW_TYPE,
        ApprovalNotice,
        EndedNotice,
        NotificationEvent,
        TenantNotification,
    )
    from workflows.contracts.search_attributes import (
        PROMPT_STATUS,
        RISK_LEVEL,
        deployment_attributes,
        missing_from,
        prompt_request_attributes,
    )
    from workflows.contracts.submitted import Submitted, parse_input
    from workflows.late_cancels import obeyed_while_in_time
    from workflows.lifecycle_patches import (
        AUTHORIZED_CANCEL_STOPS_RELEASES,
        CANCEL_NEVER_LIVE,
        CANCEL_OBEYED_WHILE_TIMELY,
        CLOSE_REQUEST_BRANCH,
        GITHUB_PULL_REQUESTS,
        JUDGED_BY_VALIDATORS_PATCH,
        MODEL_UNAVAILABLE_PATCH,
        NEVER_AUTO_APPROVE_OWN_VERIFICATION,
        ONE_DECISION_STEP,
        RELEASE_FORGOTTEN_HOLDS,
        REPLAN_ON_CONFLICT,
        RUN_START_PATCHES,
        SHIP_UNTIL_SHIPPED,
        VERIFIED_DECISIONS_PATCH,
    )
    from workflows.lifecycle_rules import (
        APPLY_FAILURES,
        NO_CHANGE,
        PLANNING_FAILURES,
        REQUEST_REFUSALS,
        STALE_TRUST_REFUSALS,
        DecisionContext,
        approval_notice,
        approvals_of,
        approved_by,
        cancel_too_late,
        cancel_too_late_merging,
        chargeable,
        check_member,
        check_not_approved_by,
        check_plan_decider,
        check_revisable,
        duration,
        failed_deployment_ending,
        held,
        model_retry_delay,
        outcome_detail,
        settles,
        split_charge,
        time_to_expiry,
        time_to_reminder,
    )

T = TypeVar("T")

RETRY = RetryPolicy(
    maximum_interval=timedelta(seconds=30), non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES
)
PLAN_RETRY = RetryPolicy(
    maximum_interval=RETRY.maximum_interval,
    non_retryable_error_types=[*NON_RETRYABLE_ERROR_TYPES, MODEL_UNAVAILABLE],
)
# Short: a worker that dies mid-step has its step retried elsewhere after this long.
DB_TIMEOUT = timedelta(seconds=30)
# Short, idempotent database steps (ledger operations, status and approval rows) run as local
# activities: no task queue round trip, no extra workflow task. They are registered on the
# workflow's worker (workers/registry.py, lifecycle_activities) and keyed like activities, so a
# retry after a crash lands on the same row or ledger key.
DB_STEP: dict[str, Any] = {"start_to_close_timeout": DB_TIMEOUT, "retry_policy": RETRY}
# A local activity's failure reaches the workflow as its ApplicationError, not wrapped in an
# ActivityError as an activity task's does.
LOCAL_STEP_FAILURES = (ActivityError, ApplicationError)
ENGINE_TIMEOUT = timedelta(minutes=15)
# Deleting an ended request's branch (a push to a remote): tried a while, then left.
BRANCH_CLOSE_TIMEOUT = timedelta(minutes=2)
BRANCH_CLOSE_RETRY = RetryPolicy(
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)
ENGINE_HEARTBEAT = timedelta(seconds=30)
# A call to GitHub (a few REST requests); its rate limits come back as retries with GitHub's
# wait (activities/github_client.py), so the retry policy is the usual one.
GITHUB_STEP: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=2),
    "retry_policy": RETRY,
}
# A pull request's title: the prompt, cut to what a title shows.
PULL_TITLE_CHARS = 120
APPROVED_BY_POLICY = "approved by policy"
# A token naming a key the run does not hold reloads the keys (a key rotated in) at most this
# often: made-up key ids cost one handler run per interval, not one per call.
# While the run holds no key at all (the JWKS was not there yet when it started), each key id
# reloads them once.
KEY_RELOAD_INTERVAL = timedelta(minutes=5)
# Someone the handler refused by the roster as it is now is refused by the validators for this
# long, doubling with each refusal up to the cap (DeciderRefusals).
REFUSED_DECIDER_WAIT = timedelta(minutes=1)
REFUSED_DECIDER_WAIT_CAP = timedelta(hours=1)
# A hold outlives the plan's approval window by this much, to cover applying and deploying.
HOLD_MARGIN_SECONDS = 24 * 3600
# Temporal's cancel follows an accepted cancel decision at once (the typed client sends it);
# a request that does not hear it within this long cancels itself.
AUTHORIZED_CANCEL_WAIT = timedelta(minutes=1)


class RequestEnded(Exception):
    """Internal: the request reached a terminal state before production; carries the result."""

    def __init__(self, result: PromptRequestResult) -> None:
        super().__init__(result.status.value)
        self.result = result


class CancelledByDecision(Exception):
    """Internal: a cancel decision was accepted and Temporal's cancel never came."""


@workflow.defn(name="PromptRequestWorkflow")
class PromptRequestWorkflow:
    @workflow.init
    def __init__(self, submitted: Submitted[PromptRequestInput] = None) -> None:
        # Raising here would fail the workflow task in a loop: run() ends with the refusal.
        self._refused: ApplicationError | None = None
        try:
            self._input = parse_input(PromptRequestInput, submitted)
        except ApplicationError as refusal:
            self._refused = refusal
        self._status = PromptStatus.RECEIVED
        self._reason = ""
        self._step = "received"
        self._plan: PlanSummary | None = None
        self._policy: ApprovalPolicyView | None = None
        self._roster: dict[uuid.UUID, str] = {}
        self._approvals: list[ApprovalRecord] = []
        self._decision: ApprovalDecision | None = None
        # A decision that settles the plan is being recorded: no revision may start meanwhile.
        self._deciding = False
        # Approvals and rejections of the plan are decided one at a time (ONE_DECISION_STEP):
        # each sees the ones before it, so exactly one of them settles the plan.
        self._one_decision = asyncio.Lock()
        # The decision keys (none: a run from before JUDGED_BY_VALIDATORS_PATCH, or not loaded
        # yet while _loading_keys), token ids spent on a decision here, refusals to repeat.
        self._memory = DecisionMemory(
            refused_wait=REFUSED_DECIDER_WAIT,
            refused_cap=REFUSED_DECIDER_WAIT_CAP,
            reload_interval=KEY_RELOAD_INTERVAL,
        )
        self._loading_keys = False
        # The reason an authorized cancel gave (Temporal's own cancel carries none of ours).
        self._cancel_reason = ""
        # A cancel decision was accepted (AUTHORIZED_CANCEL_STOPS_RELEASES): nothing more is
        # released; the deployment child running now, if any.
        self._cancel_authorized = False
        self._releasing: workflow.ChildWorkflowHandle[Any, DeploymentResult] | None = None
        self._revision: ReviseRequest | None = None
        self._approval_rounds = 0
        self._applied = False
        # Applies so far (each a round of its own), and the head the last one applied onto.
        self._applies = 0
        self._base_commit: str | None = None
        # The plan was made again after a conflict and is not applied yet.
        self._replanned = False
        # Times production refused the change because pushes from outside moved its base.
        self._outside_moves = 0
        self._approved_before_apply = 0
        self._tokens_used = 0
        self._tokens_settled = 0
        self._commit_sha: str | None = None
        self._holds: list[HoldState] = []
        self._deployments: dict[uuid.UUID, DeploymentSummary] = {}
        # The request's last staging release that succeeded: a cancellation undoes it.
        self._staged: DeploymentResult | None = None
        # Production's verified release of this request: from then on a cancel is refused.
        self._live: DeploymentResult | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        # Notices to the tenant's webhook being started; `request.ended` follows only a request
        # that told the tenant something.
        self._notices: set[asyncio.Task[None]] = set()
        self._notices_sent = 0
        self._notified = False
        self._finished = False
        self._patches: frozenset[str] = frozenset()
        # A GitHub project (GITHUB_PULL_REQUESTS): its connector, the request's pull request,
        # who closed it on GitHub (the request is cancelled), and the request is ending (the
        # pull request closes because changeflow closes it).
        self._github: uuid.UUID | None = None
        self._pull: PullRequestRef | None = None
        self._closed_on_github_by: str | None = None
        self._ending = False
        # A person merged the pull request on GitHub before production did: production releases
        # the default branch's head, which holds the change. Production's own merge comes after
        # _merging is set.
        self._merged_on_github_by: str | None = None
        self._merging = False
        # Production asked to merge the pull request with no cancel authorized before it (its
        # MERGE_ASKED_SIGNAL, answered go): from then on a cancel is refused (CancelTooLate).
        self._merge_asked: MergeAsked | None = None
        # A Temporal cancel came too late (_cancel_too_late) and was not obeyed, in words.
        self._late_cancel: str | None = None

    # ---------------------------------------------------------------- the run

    @workflow.run
    async def run(self, submitted: Submitted[PromptRequestInput] = None) -> PromptRequestResult:
        if self._refused is not None:
            raise self._refused_at_submission(self._refused)
        request = self._input
        # The client starts the request with these; upsert only what it did not set.
        missing = missing_from(
            workflow.info().typed_search_attributes,
            prompt_request_attributes(request.tenant_id, request.project_id, self._status),
        )
        if missing:
            workflow.upsert_search_attributes(missing)
        self._patches = frozenset(p for p in RUN_START_PATCHES if workflow.patched(p))
        try:
            try:
                if self._patched(CANCEL_OBEYED_WHILE_TIMELY):
                    result = await obeyed_while_in_time(self._cancel_too_late, self._lifecycle())
                else:
                    result = await self._lifecycle()
            except RequestEnded as ended:
                result = ended.result
        except CancelledByDecision:
            await self._compensate_cancellation()
            result = self._result()
        except asyncio.CancelledError:
            if not self._cancel_too_late():
                await self._compensate_cancellation()
                await self._close_request_branch()
                await self._announce_end()
                await self._drain_handlers()
                raise
            # Too late: production runs the change. The request completes as it would have.
            result = await self._complete_despite_cancel()
        await self._close_request_branch()
        await self._announce_end()
        await self._drain_handlers()
        return result

    def _patched(self, patch: str) -> bool:
        """Whether this run takes one of RUN_START_PATCHES (asked at its start)."""
        return patch in self._patches

    async def _lifecycle(self) -> PromptRequestResult:
        request = self._input
        try:
            # Checked here (a revision's prompt by its validator), so that no activity payload
            # ever carries a prompt that is refused.
            check_prompt(request.prompt)
        except ApplicationError as refusal:
            raise self._refused_at_submission(refusal) from None
        if self._patched(JUDGED_BY_VALIDATORS_PATCH):
            self._loading_keys = True
            await self._load_decision_keys()
        await self._plan_revision(request.prompt, revision=1)
        await self._hold_estimate()
        await self._seek_approval(allow_auto=True)

        await self._approve_revision(await self._apply_change())
        while not await self._ship():
            # Production refused the commit: the default branch moved since it was made (a
            # change shipped first, or a push). Rebase onto it and go through staging again.
            if self._patched(SHIP_UNTIL_SHIPPED):
                await self._restage()
                continue
            if self._applies >= MAX_REBASE_ROUNDS:
                await self._close_holds(charge=self._tokens_used, beyond_holds=True)
                await self._end(
                    PromptStatus.FAILED,
                    f"the default branch kept moving: not shipped after {self._applies} applies",
                    tokens_used=self._tokens_used,
                )
            await self._approve_revision(await self._apply_change())
        return await self._settle_completed()

    async def _settle_completed(self) -> PromptRequestResult:
        await self._close_holds(charge=self._tokens_used, beyond_holds=True)
        reason = ""
        if self._merged_on_github_by is not None and self._pull is not None:
            reason = (
                f"pull request #{self._pull.number} merged on GitHub by "
                f"{self._merged_on_github_by}; production runs the default branch's head"
            )
        await self._persist_status(
            PromptStatus.COMPLETED, self._noting_late_cancel(reason), tokens_used=self._tokens_used
        )
        return self._result()

    async def _apply_change(self) -> AppliedChangeView:
        """Commit the approved change on the default branch's head. A change that conflicts
        there is planned again on it and goes back for approval, then is applied (again);
        a change that cannot be applied or planned again ends the request FAILED, charged as
        policy says. (Runs from before the re-plan end FAILED on a conflict.)"""
        while True:
            self._applies += 1
            try:
                applied = await self._shielded(self._apply(self._applies))
            except ActivityError as err:
                if error_type(err) == ErrorType.CHANGE_ALREADY_PRESENT:
                    await self._end_without_change(error_message(err))
                if error_type(err) not in APPLY_FAILURES:
                    raise
                await self._close_holds(charge=self._chargeable())
                await self._end(
                    PromptStatus.FAILED,
                    error_message(err),
                    plan_status=PlanApprovalStatus.CANCELLED,
                    tokens_used=self._tokens_used if self._applied else None,
                )
                raise  # not reached: _end raises RequestEnded
            if not applied.replanned:
                if self._github is not None and self._closed_on_github_by is None:
                    await self._publish_pull_request()
                return applied
            self._replanned = True
            await self._approve_revision(applied)

    async def _end_without_change(self, reason: str) -> None:
        """The default branch already holds the approved change: the request completes as a
        no-op, charged only the work already done (nothing unless it was applied before)."""
        await self._close_holds(charge=self._chargeable())
        await self._end(
            PromptStatus.COMPLETED,
            f"{NO_CHANGE}: {reason}",
            tokens_used=self._tokens_used if self._applied else None,
        )

    async def _restage(self) -> None:
        """Rebase onto the default branch's new head and ship again, for as long as other
        requests' releases move it: each refusal means one of them shipped, so the project
        makes progress and this request's turn comes. Only pushes from outside changeflow
        (commits no release made) count towards giving up."""
        applied = await self._apply_change()
        if applied.moved_outside:
            self._outside_moves += 1
        if self._outside_moves >= MAX_REBASE_ROUNDS:
            await self._close_holds(charge=self._tokens_used, beyond_holds=True)
            await self._end(
                PromptStatus.FAILED,
                "the default branch kept moving by commits no changeflow release made: "
                f"not shipped after {self._outside_moves} such moves",
                tokens_used=self._tokens_used,
            )
        await self._approve_revision(applied)

    async def _approve_revision(self, applied: AppliedChangeView) -> None:
        """When applying made a new plan revision (overspent, rebased onto other lines, or
        planned again after a conflict), hold what it costs more and have it approved before
        anything ships."""
        if applied.repriced_plan is None:
            return  # apply_change persisted DEPLOYING_STAGING with its work
        self._adopt_plan(applied.repriced_plan)
        # The reason is persisted with the approval it asks for (open_approval).
        self._set_status(PromptStatus.AWAITING_APPROVAL, applied.reapproval_reason)
        # A re-plan's work is the new revision's: its estimate is what must be held.
        needed = applied.repriced_plan.token_estimate if applied.replanned else self._tokens_used
        await self._hold(needed - self._held(), revision=applied.repriced_plan.revision)
        await self._seek_approval(allow_auto=False)
        if not applied.replanned:  # a re-plan is applied next, which persists its status
            await self._persist_status(PromptStatus.DEPLOYING_STAGING)

    async def _ship(self) -> bool:
        """Staging, then production; False when production refused the commit because the
        default branch moved (nothing was released)."""
        for environment in (DeploymentEnvironment.STAGING, DeploymentEnvironment.PRODUCTION):
            if environment is DeploymentEnvironment.PRODUCTION and self._github is not None:
                self._merging = True
            if environment is DeploymentEnvironment.PRODUCTION and self._merged_on_github_by:
                outcome = await self._deploy(environment, commit_sha=await self._github_head())
            else:
                outcome = await self._deploy(environment)
            if outcome.base_moved:
                # Nothing was merged: the rebase goes through staging again.
                self._merging, self._merge_asked = False, None
                return False
            if outcome.status is not DeploymentStatus.SUCCEEDED:
                await self._end_after_failed_deployment(outcome)
        return True

    # ---------------------------------------------------------------- planning and holds

    async def _plan_revision(self, prompt: str, *, revision: int) -> None:
        self._set_step(f"planning revision {revision}")
        try:
            planned = await self._shielded(self._run_plan(prompt, revision))
        except ActivityError as err:
            kind = error_type(err)
            if kind in REQUEST_REFUSALS:
                # Nothing was persisted: the request itself is refused, with the same type.
                raise self._refused_at_submission(
                    refused(ErrorType(kind), error_message(err))
                ) from err
            if kind in PLANNING_FAILURES:
                await self._end(PromptStatus.FAILED, error_message(err))
            raise
        if not planned.open:
            raise refused(ErrorType.REQUEST_CLOSED, "the request was closed while it was planned")

    async def _run_plan(self, prompt: str, revision: int) -> PlannedRevision:
        request = self._input
        self._set_status(PromptStatus.PLANNING)
        plan = PlanRequest(
            prompt_request_id=request.prompt_request_id,
            tenant_id=request.tenant_id,
            project_id=request.project_id,
            requested_by=request.requested_by,
            prompt=prompt,
            revision=revision,
            status=PromptStatus.PLANNING,
        )
        if self._patched(MODEL_UNAVAILABLE_PATCH):
            planned = await self._plan_while_the_model_answers(plan)
        else:
            planned = await self._plan_request(plan, RETRY)
        if planned.open:
            self._policy = planned.policy
            self._roster = dict(planned.roster)
            self._adopt_plan(planned.plan)
            if self._patched(GITHUB_PULL_REQUESTS):
                self._github = planned.github_connector_id
        return planned

    async def _plan_request(self, plan: PlanRequest, retry: RetryPolicy) -> PlannedRevision:
        return await workflow.execute_activity_method(
            LifecycleActivities.plan_request,
            plan,
            start_to_close_timeout=ENGINE_TIMEOUT,
            heartbeat_timeout=ENGINE_HEARTBEAT,
            retry_policy=retry,
        )

    async def _plan_while_the_model_answers(self, plan: PlanRequest) -> PlannedRevision:
        """Plan, retrying here a model endpoint that does not answer, with the attempt in the
        status; once the time the worker allows (the error's details) has passed, the request
        ends FAILED with the ModelUnavailable reason."""
        since = workflow.now()
        failed = 0
        waiting = ""
        while True:
            try:
                planned = await self._plan_request(plan, PLAN_RETRY)
                if waiting and self._reason == waiting:
                    self._reason = ""  # it answered: the wait is over
                return planned
            except ActivityError as err:
                down = application_error(err)
                if down is None or down.type != MODEL_UNAVAILABLE:
                    raise
            failed += 1
            give_up = timedelta(seconds=float(down.details[0] if down.details else 600))
            delay = model_retry_delay(failed, down.next_retry_delay, PLAN_RETRY.maximum_interval)
            waited = workflow.now() - since
            if waited + delay > give_up:
                await self._end(
                    PromptStatus.FAILED,
                    f"{down.message}; after {failed} attempts in {duration(waited)} planning "
                    "stopped (ModelUnavailable): start the model server or point "
                    "CHANGEFLOW_MODEL_BASE_URL at one, then submit again",
                )
            # In the status's reason too, which `changeflow status` prints.
            waiting = self._reason = (
                f"the model endpoint does not answer: attempt {failed}, next in {duration(delay)}"
            )
            self._set_step(waiting)
            await workflow.sleep(delay, summary="model endpoint retry")

    def _adopt_plan(self, plan: PlanSummary) -> None:
        self._plan = plan
        self._approvals = []
        self._decision = None
        workflow.upsert_search_attributes([RISK_LEVEL.value_set(plan.risk_level.value)])

    async def _hold_estimate(self) -> None:
        plan = self._require_plan()
        await self._hold(plan.token_estimate, revision=plan.revision)

    async def _hold(self, amount: int, *, revision: int) -> None:
        if amount <= 0:
            return  # nothing to reserve (an estimate of zero tokens)
        self._set_step(f"reserving {amount} tokens")
        try:
            await self._shielded(self._reserve(amount, revision))
        except LOCAL_STEP_FAILURES as err:
            if error_type(err) != ErrorType.INSUFFICIENT_TOKENS:
                raise
            reason = f"insufficient tokens: {error_message(err)}"
            await self._close_holds(charge=self._chargeable())
            await self._end(PromptStatus.FAILED, reason, plan_status=PlanApprovalStatus.CANCELLED)

    async def _reserve(self, amount: int, revision: int) -> None:
        policy = self._require_policy()
        hold = await workflow.execute_local_activity_method(
            BillingActivities.reserve_tokens,
            ReserveTokens(
                tenant_id=self._input.tenant_id,
                amount=amount,
                step=f"hold:{revision}",
                ttl_seconds=policy.plan_ttl_seconds + HOLD_MARGIN_SECONDS,
                description=f"prompt request {self._input.prompt_request_id} r{revision}",
            ),
            **DB_STEP,
        )
        self._holds.append(
            HoldState(hold_id=hold.hold_id, amount=hold.amount, status=HoldStatus.ACTIVE)
        )

    def _held(self) -> int:
        return held(self._holds)

    def _chargeable(self) -> int:
        return chargeable(
            applied=self._applied,
            tokens_used=self._tokens_used,
            approved_before_apply=self._approved_before_apply,
        )

    async def _close_holds(self, *, charge: int, beyond_holds: bool = False) -> None:
        """Settle `charge` across the active holds in order and release everything else.

        With beyond_holds, what the holds cannot cover (work within the overspend tolerance)
        is charged on its own, once.
        """
        split = split_charge(self._holds, charge)
        for index, amount in split.per_hold:
            await self._shielded(self._close_hold(index, amount))
        if beyond_holds and split.beyond > 0:
            await self._shielded(self._charge_beyond_holds(split.beyond))

    async def _charge_beyond_holds(self, amount: int) -> None:
        try:
            await workflow.execute_local_activity_method(
                BillingActivities.charge_tokens,
                ChargeTokens(
                    tenant_id=self._input.tenant_id,
                    amount=amount,
                    step="charge:within-tolerance",
                    description=f"prompt request {self._input.prompt_request_id}: "
                    "work beyond the estimate, within the tolerance",
                ),
                **DB_STEP,
            )
        except LOCAL_STEP_FAILURES as err:
            if error_type(err) != ErrorType.INSUFFICIENT_TOKENS:
                raise
            # The account's floor wins over the tolerance: the rest goes uncharged.
            workflow.logger.warning("tokens beyond the estimate left uncharged: %s", err)
            return
        self._tokens_settled += amount

    async def _close_hold(self, index: int, amount: int) -> None:
        hold = self._holds[index]
        if amount > 0:
            self._set_step(f"settling {amount} tokens")
            settlement = await workflow.execute_local_activity_method(
                BillingActivities.settle_hold,
                SettleHold(
                    hold_id=hold.hold_id,
                    amount=amount,
                    step=f"settle:{index}",
                    description=f"prompt request {self._input.prompt_request_id}",
                ),
                **DB_STEP,
            )
            hold.status, hold.settled = HoldStatus.SETTLED, settlement.settled
            self._tokens_settled += settlement.settled
        else:
            await workflow.execute_local_activity_method(
                BillingActivities.release_hold,
                ReleaseHold(hold_id=hold.hold_id, step=f"release:{index}"),
                **DB_STEP,
            )
            hold.status = HoldStatus.RELEASED

    # ---------------------------------------------------------------- approval

    async def _seek_approval(self, *, allow_auto: bool) -> None:
        """Return once the current plan is approved; end the request otherwise."""
        while True:
            plan = self._require_plan()
            policy = self._require_policy()
            changes_verification = bool(plan.changes_verification) and self._patched(
                NEVER_AUTO_APPROVE_OWN_VERIFICATION
            )
            auto = allow_auto and policy.auto_approves(
                plan.risk_level, changes_verification=changes_verification
            )
            await self._shielded(self._open_approval(plan, auto))
            self._approval_rounds += 1  # a pending revise update answers now
            if auto:
                return
            self._show_approval_progress()
            self._notify_waiting(NotificationEvent.APPROVAL_REQUESTED)
            try:
                await self._await_decision(plan, policy)
            except TimeoutError:
                if not self._deciding:
                    await self._expire(policy)
                # A deciding approval arrived with the deadline: it wins, unless it is refused.
                await workflow.wait_condition(
                    lambda: self._decision is not None or not self._deciding
                )
                if self._decision is None:
                    await self._expire(policy)
            if self._closed_on_github_by is not None:
                raise CancelledByDecision()
            if self._decision is ApprovalDecision.APPROVE:
                self._set_status(PromptStatus.APPROVED)
                return
            if self._decision is ApprovalDecision.REJECT:
                self._set_status(PromptStatus.REJECTED, self._reason)
                await self._close_holds(charge=self._chargeable())
                raise RequestEnded(self._result())
            await self._apply_revision()

    async def _expire(self, policy: ApprovalPolicyView) -> None:
        await self._close_holds(charge=self._chargeable())
        await self._end(
            PromptStatus.EXPIRED,
            f"no decision within {policy.plan_ttl_seconds} seconds",
            plan_status=PlanApprovalStatus.EXPIRED,
        )

    async def _await_decision(self, plan: PlanSummary, policy: ApprovalPolicyView) -> None:
        """Until a decision or a revision arrives; TimeoutError when the plan expires first.
        A tenant with a webhook and a reminder setting is reminded on the way."""
        reminder = time_to_reminder(plan, policy, workflow.now())
        if reminder is not None:
            try:
                await workflow.wait_condition(
                    self._decided, timeout=reminder, timeout_summary="approval reminder"
                )
                return
            except TimeoutError:
                if not self._deciding:  # a deciding approval arrived with the reminder time
                    self._notify_waiting(NotificationEvent.APPROVAL_REMINDER)
        await workflow.wait_condition(
            self._decided,
            timeout=time_to_expiry(plan, policy, workflow.now()),
            timeout_summary="plan expiry",
        )

    def _decided(self) -> bool:
        return (
            self._decision is not None
            or self._revision is not None
            or self._closed_on_github_by is not None
        )

    def _approvals_so_far(self) -> int:
        return approvals_of(self._approvals)

    def _show_approval_progress(self) -> None:
        plan = self._require_plan()
        approved = self._approvals_so_far()
        self._set_step(
            f"{approved} of {plan.approvals_required} approvals of {plan.content_hash[:12]}"
        )

    async def _open_approval(self, plan: PlanSummary, auto: bool) -> None:
        if auto:
            status, reason = PromptStatus.APPROVED, APPROVED_BY_POLICY
        else:
            # A repriced plan keeps the reason it needs approving again for.
            status = PromptStatus.AWAITING_APPROVAL
            reason = self._reason if self._status is PromptStatus.AWAITING_APPROVAL else ""
        await workflow.execute_local_activity_method(
            LifecycleActivities.open_approval,
            OpenApproval(
                prompt_request_id=self._input.prompt_request_id,
                plan_id=plan.plan_id,
                hold_id=self._holds[-1].hold_id if self._holds else None,
                auto_approved=auto,
                status=status,
                reason=reason,
            ),
            **DB_STEP,
        )
        if auto:
            plan.approval_status = PlanApprovalStatus.AUTO_APPROVED
        self._set_status(status, reason)

    async def _apply_revision(self) -> None:
        """Plan the amended prompt; earlier approvals are void and the hold is swapped."""
        revision = self._revision
        assert revision is not None
        plan = self._require_plan()
        # Release first so the new estimate does not need the old one's tokens as well.
        await self._close_holds(charge=0)
        await self._plan_revision(revision.prompt, revision=plan.revision + 1)
        self._revision = None
        await self._hold_estimate()

    # ---------------------------------------------------------------- notifications

    def _notify_waiting(self, event: NotificationEvent) -> None:
        """Tell the tenant's webhook what waits for approval, when the tenant has one."""
        if not self._require_policy().notifies:
            return
        reason = self._reason if self._status is PromptStatus.AWAITING_APPROVAL else ""
        notice = approval_notice(self._require_plan(), self._approvals, reason)
        self._notify(event, approval=notice)
        self._notified = True

    async def _announce_end(self) -> None:
        """The last message of a request that notified its tenant, then every notice started:
        each is a workflow of its own, which the lifecycle does not wait to see delivered."""
        if self._notified and is_terminal(self._status):
            self._notify(
                NotificationEvent.REQUEST_ENDED,
                ended=EndedNotice(status=self._status, reason=self._reason),
            )
        while self._notices:
            await next(iter(self._notices))

    def _notify(
        self,
        event: NotificationEvent,
        *,
        approval: ApprovalNotice | None = None,
        ended: EndedNotice | None = None,
    ) -> None:
        """Start the delivery of one notice beside the lifecycle, which goes on at once.

        Delivery is a TenantNotificationWorkflow child, abandoned (workflows/notifications.py
        says why): its retries never block the approval wait, its failure never reaches this
        workflow, and it goes on after this one completes or is cancelled.
        """
        self._notices_sent += 1
        request = self._input
        notice_id = notification_workflow_id(
            request.prompt_request_id, event.value, self._notices_sent
        )
        notification = TenantNotification(
            id=notice_id,
            type=event,
            sequence=self._notices_sent,
            created_at=workflow.now(),
            tenant_id=request.tenant_id,
            project_id=request.project_id,
            prompt_request_id=request.prompt_request_id,
            workflow_id=workflow.info().workflow_id,
            approval=approval,
            ended=ended,
        )

        async def start() -> None:
            try:
                await workflow.start_child_workflow(
                    NOTIFICATION_WORKFLOW_TYPE,
                    notification,
                    id=notice_id,
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                    cancellation_type=workflow.ChildWorkflowCancellationType.ABANDON,
                    static_summary=f"{event.value} to the tenant's webhook",
                )
            except WorkflowAlreadyStartedError:
                pass  # this notice was started before (a reset replays it): not sent twice

        task = asyncio.ensure_future(start())
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    # ---------------------------------------------------------------- updates

    def _check_decider(self, user_id: uuid.UUID, content_hash: str, token: str | None) -> None:
        """Refusals shared by approve and reject (lifecycle_rules.check_plan_decider).
        Validators: no I/O, no history on refusal."""
        context = DecisionContext(
            status=self._status,
            plan=self._plan,
            policy=self._policy,
            roster=self._roster,
            requested_by=self._input.requested_by,
            deciding=self._deciding,
        )
        check_plan_decider(
            context, user_id, content_hash, judged_now=self._names_this_tenant(token)
        )

    def _check_not_approved_by(self, user_id: uuid.UUID) -> None:
        check_not_approved_by(self._approvals, user_id, self._require_plan())

    def _approved_by(self, user_id: uuid.UUID) -> bool:
        return approved_by(self._approvals, user_id)

    def _names_this_tenant(self, token: str | None) -> bool:
        return unverified_tenant(token) == str(self._input.tenant_id)

    def _judge(
        self,
        action: DecisionAction,
        user_id: uuid.UUID | None,
        token: str | None,
        plan_hash: str | None = None,
    ) -> DecisionClaims | None:
        """What this run's memory refuses without I/O (DecisionMemory.judge): for validators,
        and the handler again, the state having moved on."""
        with _host_imports():
            return self._memory.judge(
                action,
                user_id,
                token,
                tenant_id=self._input.tenant_id,
                request=self._input.prompt_request_id,
                plan_hash=plan_hash,
                now=workflow.now(),
            )

    async def _load_decision_keys(self, unknown_kid: str | None = None) -> None:
        trust = await workflow.execute_local_activity_method(
            DecisionActivities.decision_trust,
            LoadDecisionTrust(unknown_kid=unknown_kid),
            **DB_STEP,
        )
        with _host_imports():
            self._memory.hold(trust, workflow.now())

    async def _verify_decision(
        self,
        action: DecisionAction,
        user_id: uuid.UUID | None,
        token: str | None,
        plan_hash: str | None = None,
    ) -> None:
        """The decision counts only after this: its token judged by the run's keys, then
        verified again with the roster as it is now and the token's id recorded as used
        (activities/decisions.py). Refused: nothing recorded, and what the activity refused is
        remembered, so that its validator refuses it again without a trace."""
        if not workflow.patched(VERIFIED_DECISIONS_PATCH):
            return  # a run that took decisions before they were verified replays as it ran
        claims = await self._judge_with_keys(action, user_id, token, plan_hash)
        await self._verified(claims, self._verification(action, user_id, token, plan_hash))

    async def _judge_with_keys(
        self,
        action: DecisionAction,
        user_id: uuid.UUID | None,
        token: str | None,
        plan_hash: str | None,
    ) -> DecisionClaims | None:
        """_judge, once the run holds its keys (a key the token names that it lacks loaded)."""
        if self._loading_keys:
            await workflow.wait_condition(lambda: self._memory.keys is not None)
        if (kid := self._memory.lacks_key(token)) is not None:
            await self._load_decision_keys(unknown_kid=kid)
        return self._judge(action, user_id, token, plan_hash)

    def _verification(
        self,
        action: DecisionAction,
        user_id: uuid.UUID | None,
        token: str | None,
        plan_hash: str | None = None,
        record: RecordDecision | None = None,
    ) -> VerifyDecision:
        update = workflow.current_update_info()
        return VerifyDecision(
            tenant_id=self._input.tenant_id,
            request=self._input.prompt_request_id,
            action=action,
            user_id=user_id,
            token=token,
            plan_hash=plan_hash,
            requested_by=self._input.requested_by,
            used_by=f"{workflow.info().workflow_id}/{update.id if update else ''}",
            record=record,
        )

    async def _verified(self, claims: DecisionClaims | None, verification: VerifyDecision) -> None:
        """Run the verify activity; a refusal is remembered and raised as its typed error."""
        try:
            verified = await workflow.execute_local_activity_method(
                DecisionActivities.verify_decision, verification, **DB_STEP
            )
        except LOCAL_STEP_FAILURES as err:
            cause = application_error(err)
            if cause is None or cause.type is None or not cause.non_retryable:
                raise
            kind = ErrorType(cause.type)
            if self._memory.keys is not None:
                self._memory.remember_refusal(
                    verification.action,
                    kind,
                    cause.message,
                    verification.user_id,
                    claims,
                    workflow.now(),
                )
                if kind in STALE_TRUST_REFUSALS:  # its keys or settings are out of date
                    await self._load_decision_keys()
            raise refused(kind, cause.message) from None
        if verified.jti is not None:
            self._memory.spent.add(verified.jti)

    async def _decide(self, decision: ApprovalRecord, token: str | None) -> None:
        """One approval or rejection of the plan (ONE_DECISION_STEP), after the ones before it:
        judged again against the state they left, then verified and recorded by one local
        activity; the one that settles the plan moves the request with it."""
        approving = decision.decision is ApprovalDecision.APPROVE
        action = DecisionAction.APPROVE if approving else DecisionAction.REJECT
        if approving:
            self._check_not_approved_by(decision.user_id)
        self._check_decider(decision.user_id, decision.content_hash, token)
        claims = await self._judge_with_keys(action, decision.user_id, token, decision.content_hash)
        # The state may have moved on while keys were loaded.
        self._check_decider(decision.user_id, decision.content_hash, token)
        plan = self._require_plan()
        closes = not approving or len(self._approvals) + 1 >= plan.approvals_required
        settled = settles(decision) if closes else None
        record = RecordDecision(
            prompt_request_id=self._input.prompt_request_id,
            plan_id=plan.plan_id,
            user_id=decision.user_id,
            decision=decision.decision,
            content_hash=decision.content_hash,
            reason=decision.reason,
            plan_status=settled.plan_status if settled else None,
            status=settled.status if settled else None,
            status_reason=settled.reason if settled else "",
        )
        verification = self._verification(
            action, decision.user_id, token, decision.content_hash, record
        )
        self._deciding = closes
        try:
            await self._verified(claims, verification)
        finally:
            self._deciding = False
        self._approvals.append(decision)
        if not approving:
            self._reason = decision.reason
        if settled is None:
            self._show_approval_progress()
            return
        plan.approval_status = settled.plan_status
        self._decision = decision.decision
        # The update's answer shows the state reached, not the one it started from.
        self._set_status(settled.status, settled.reason)

    def _decision_record(
        self,
        decision: ApprovalDecision,
        user_id: uuid.UUID,
        content_hash: str,
        reason: str,
    ) -> ApprovalRecord:
        return ApprovalRecord(
            user_id=user_id,
            decision=decision,
            content_hash=content_hash,
            at=workflow.now(),
            reason=reason,
        )

    @workflow.update
    async def approve(self, submitted: Submitted[ApproveRequest]) -> PromptRequestStatus:
        approval = parse_input(ApproveRequest, submitted)
        record = self._decision_record(
            ApprovalDecision.APPROVE, approval.user_id, approval.content_hash, approval.comment
        )
        if self._patched(ONE_DECISION_STEP):
            async with self._one_decision:
                await self._decide(record, approval.token)
            return self.status()
        # Runs from before ONE_DECISION_STEP: verified, then recorded.
        if self._approved_by(approval.user_id):
            if self._memory.keys is not None:
                self._check_not_approved_by(approval.user_id)
            return self.status()  # runs from before the patch: a repeat changed nothing
        await self._verify_decision(
            DecisionAction.APPROVE, approval.user_id, approval.token, approval.content_hash
        )
        if self._memory.keys is not None:
            self._check_not_approved_by(approval.user_id)  # a twin approved meanwhile
        # The plan may have moved on while the decision was verified.
        self._check_decider(approval.user_id, approval.content_hash, approval.token)
        plan = self._require_plan()
        if self._approved_by(approval.user_id):
            return self.status()
        self._approvals.append(record)
        closes = len(self._approvals) >= plan.approvals_required
        await self._record(plan, record, closes)
        if not closes:
            self._show_approval_progress()
        return self.status()

    @approve.validator
    def _validate_approve(self, submitted: Submitted[ApproveRequest]) -> None:
        approval = parse_input(ApproveRequest, submitted)
        self._check_not_approved_by(approval.user_id)
        self._check_decider(approval.user_id, approval.content_hash, approval.token)
        self._judge(DecisionAction.APPROVE, approval.user_id, approval.token, approval.content_hash)

    @workflow.update
    async def reject(self, submitted: Submitted[RejectRequest]) -> PromptRequestStatus:
        rejection = parse_input(RejectRequest, submitted)
        record = self._decision_record(
            ApprovalDecision.REJECT, rejection.user_id, rejection.content_hash, rejection.reason
        )
        if self._patched(ONE_DECISION_STEP):
            async with self._one_decision:
                await self._decide(record, rejection.token)
            return self.status()
        await self._verify_decision(
            DecisionAction.REJECT, rejection.user_id, rejection.token, rejection.content_hash
        )
        self._check_decider(rejection.user_id, rejection.content_hash, rejection.token)
        plan = self._require_plan()
        self._approvals.append(record)
        self._reason = rejection.reason
        await self._record(plan, record, closes=True)
        return self.status()

    @reject.validator
    def _validate_reject(self, submitted: Submitted[RejectRequest]) -> None:
        rejection = parse_input(RejectRequest, submitted)
        check_reason(rejection.reason)
        self._check_decider(rejection.user_id, rejection.content_hash, rejection.token)
        self._judge(
            DecisionAction.REJECT, rejection.user_id, rejection.token, rejection.content_hash
        )

    async def _record(self, plan: PlanSummary, record: ApprovalRecord, closes: bool) -> None:
        """Runs from before ONE_DECISION_STEP: the verified decision recorded on its own."""
        # Two deciding updates validated in one activation: the first one decides.
        closes = closes and not self._deciding
        if closes:
            self._deciding = True
        settled = settles(record) if closes else None
        await workflow.execute_local_activity_method(
            LifecycleActivities.record_decision,
            RecordDecision(
                prompt_request_id=self._input.prompt_request_id,
                plan_id=plan.plan_id,
                user_id=record.user_id,
                decision=record.decision,
                content_hash=record.content_hash,
                reason=record.reason,
                plan_status=settled.plan_status if settled else None,
                status=settled.status if settled else None,
                status_reason=settled.reason if settled else "",
            ),
            **DB_STEP,
        )
        if settled is not None:
            plan.approval_status = settled.plan_status
            self._decision = record.decision
            self._deciding = False
            # The update's answer shows the state reached, not the one it started from.
            self._set_status(settled.status, settled.reason)

    @workflow.update
    async def revise(self, submitted: Submitted[ReviseRequest]) -> PromptRequestStatus:
        revision = parse_input(ReviseRequest, submitted)
        await self._verify_decision(DecisionAction.REVISE, revision.user_id, revision.token)
        self._check_reviser(revision)
        rounds_before = self._approval_rounds
        self._revision = revision
        await workflow.wait_condition(
            lambda: self._approval_rounds > rounds_before or self._finished
        )
        return self.status()

    @revise.validator
    def _validate_revise(self, submitted: Submitted[ReviseRequest]) -> None:
        revision = parse_input(ReviseRequest, submitted)
        self._check_reviser(revision)
        self._judge(DecisionAction.REVISE, revision.user_id, revision.token)

    def _check_reviser(self, revision: ReviseRequest) -> None:
        check_revisable(
            status=self._status,
            deciding=self._deciding,
            revising=self._revision is not None,
            applied=self._applied,
        )
        check_member(
            self._roster, revision.user_id, judged_now=self._names_this_tenant(revision.token)
        )
        check_prompt(revision.prompt)

    @workflow.update
    async def authorize_cancel(self, submitted: Submitted[CancelRequest]) -> PromptRequestStatus:
        """A signed cancel decision, verified before the typed client sends Temporal's cancel
        (a cancel itself carries no payload)."""
        cancel = parse_input(CancelRequest, submitted)
        await self._verify_decision(DecisionAction.CANCEL, cancel.user_id, cancel.token)
        self._refuse_cancel_once_live()  # production may have verified while it was verified
        if self._patched(AUTHORIZED_CANCEL_STOPS_RELEASES):
            await self._stop_releasing()
        # What the person typed travels here, encrypted, never as Temporal's cancel reason.
        if cancel.reason:
            by = f" by {cancel.user_id}" if cancel.user_id else ""
            self._cancel_reason = f"cancelled{by}: {cancel.reason}"
        return self.status()

    @authorize_cancel.validator
    def _validate_authorize_cancel(self, submitted: Submitted[CancelRequest]) -> None:
        cancel = parse_input(CancelRequest, submitted)
        self._refuse_cancel_once_live()
        if is_terminal(self._status) or self._finished:
            raise refused(ErrorType.REQUEST_CLOSED, f"the request is {self._status.value}")
        check_member(self._roster, cancel.user_id, judged_now=self._names_this_tenant(cancel.token))
        self._judge(DecisionAction.CANCEL, cancel.user_id, cancel.token)

    async def _stop_releasing(self) -> None:
        """An accepted cancel: no release starts from now on, the one running is cancelled,
        and a production release is waited for: it stops (the cancel is accepted) or it had
        verified before hearing of the cancel (CancelTooLate). Either way the answer is true
        when Temporal's cancel follows it."""
        self._cancel_authorized = True
        releasing = self._releasing
        if releasing is None:
            return
        releasing.cancel()
        await workflow.wait_condition(lambda: self._releasing is None)
        if self._live is not None:
            self._cancel_authorized = False
            self._refuse_cancel_once_live()

    async def _await_authorized_cancel(self) -> None:
        """After an accepted cancel decision, wait for Temporal's cancel, which the typed client
        sends right after (it raises CancelledError here); without it, cancel anyway."""
        self._releasing = None
        self._set_step("cancelling")
        if self._closed_on_github_by is not None:
            raise CancelledByDecision()  # no cancel of Temporal's follows a person on GitHub
        try:
            await workflow.wait_condition(
                lambda: False,
                timeout=AUTHORIZED_CANCEL_WAIT,
                timeout_summary="cancel decision accepted",
            )
        except TimeoutError:
            raise CancelledByDecision() from None

    def _refuse_cancel_once_live(self) -> None:
        refusal = self._too_late_to_cancel()
        if refusal is not None:
            raise refusal

    def _too_late_to_cancel(self) -> Exception | None:
        """The one rule of a cancel that comes too late, `authorize_cancel`'s refusal
        (CancelTooLate): production verified the release, or was told to merge its pull
        request; the default branch holds the change, or may. None while a cancel is obeyed."""
        if self._live is not None:
            return cancel_too_late(self._live)
        if self._merge_asked is not None:
            asked = self._merge_asked
            return cancel_too_late_merging(asked.deployment_id, asked.pull_number)
        return None

    def _cancel_too_late(self) -> bool:
        """Whether Temporal's cancel is not obeyed now (_too_late_to_cancel): the request goes
        on to the end it would have had (production verified, or rolled back with the default
        branch), its reason saying the cancel came too late (_noting_late_cancel). Runs from
        before CANCEL_OBEYED_WHILE_TIMELY obeyed it until production verified (from
        CANCEL_NEVER_LIVE on), and always before that."""
        if self._patched(CANCEL_OBEYED_WHILE_TIMELY):
            return self._too_late_to_cancel() is not None
        return self._live is not None and self._patched(CANCEL_NEVER_LIVE)

    def _cancel_obeyed(self) -> bool:
        return workflow.cancellation_reason() is not None and not self._cancel_too_late()

    def _note_late_cancel(self, note: str | None = None) -> None:
        """Remember, for the request's ending, a Temporal cancel that came too late: `note`
        (its production deployment's words), or the request's own (it was cancelled)."""
        if self._late_cancel is not None:
            return
        if note is None and self._merge_asked is not None:
            note = self._merge_asked.outlived_cancel()
        elif note is None and self._live is not None:
            note = (
                f"a cancel came after production deployment {self._live.deployment_id} "
                f"verified {self._live.commit_sha[:12]}: too late, not obeyed"
            )
        self._late_cancel = note

    def _noting_late_cancel(self, reason: str) -> str:
        """An ending's reason, with the cancel that came too late to be obeyed, if one did."""
        if workflow.cancellation_reason() is not None:
            self._note_late_cancel()  # the request ends otherwise than cancelled: too late
        return "; ".join(part for part in (reason, self._late_cancel) if part)

    @workflow.signal(name=MERGE_ASKED_SIGNAL)
    async def merge_asked(self, ask: MergeAsked) -> None:
        """Production is about to ask GitHub to merge the pull request. Decided in the order the
        workflow hears of them: after an authorized cancel nothing merges (the deployment is
        being cancelled and undoes its release); otherwise the merge goes ahead and any cancel
        from now on is refused, so a cancelled request's change never stays on the default
        branch."""
        if self._cancel_authorized:
            return
        if self._patched(CANCEL_OBEYED_WHILE_TIMELY) and workflow.cancellation_reason() is not None:
            return  # Temporal's cancel came first: it is cancelling this deployment
        self._merge_asked = ask
        await workflow.get_external_workflow_handle(
            deployment_workflow_id(ask.deployment_id)
        ).signal(MERGE_GO_SIGNAL, ask)

    @workflow.signal(name="deployment_progress")
    def deployment_progress(self, progress: DeploymentProgress) -> None:
        # The request's step follows its deployments. A deployment's status is not copied:
        # it is the child's result once it ends; until then its own `status` query answers
        # (LifecycleClient.status asks it).
        state = self._deployments.get(progress.deployment_id)
        if state is not None:
            state.queue_position = progress.queue_position
            state.detail = progress.detail
        if progress.queue_position:
            self._set_step(
                f"{progress.environment.value}: {progress.queue_position} deployment(s) ahead"
            )
        elif progress.detail:
            self._set_step(f"{progress.environment.value}: {progress.detail}")

    @workflow.signal(name=GITHUB_EVENT_SIGNAL)
    async def github_event(self, event: GitHubEvent) -> None:
        """GitHub reported on this request (the webhooks process): its pull request closed or
        its branch deleted by a person cancels the request; anything else wakes the deployment
        verifying its checks."""
        if self._github is None or event.connector_id != self._github:
            return
        if event.event is GitHubEventKind.DELETE:
            # changeflow deletes the branch itself only once the request is ending; a merged
            # pull request's branch may go with the merge (a repository's auto-delete). The
            # pull request closes with its head gone, in either order: this names the cause.
            merged = self._merge_asked is not None or self._merged_on_github_by is not None
            if not self._ending and not self._finished and not merged:
                branch = request_branch(self._input.prompt_request_id)
                self._closed_on_github(
                    event.actor or "someone",
                    f"branch {branch} deleted on GitHub by {event.actor or 'someone'}",
                )
            return
        pull = self._pull
        if (
            event.event is GitHubEventKind.PULL_REQUEST
            and event.action == "closed"
            and pull is not None
            and event.pull_number == pull.number
            and not self._ending
            and self._closed_on_github_by is None
        ):
            if not event.merged:
                self._closed_on_github(event.actor or "someone")
                return
            if not self._merging and self._merged_on_github_by is None:
                # Merged by a person: the change is on the default branch, shipped from there.
                self._merged_on_github_by = event.actor or "someone"
                return
        releasing = self._releasing
        if releasing is not None:
            with contextlib.suppress(Exception):  # a child that ended needs no waking
                await releasing.signal(GITHUB_EVENT_SIGNAL, event)

    def _closed_on_github(self, actor: str, reason: str | None = None) -> None:
        """A person closed the request's pull request (or deleted its branch, `reason` saying
        so): nothing more is released (the release running is cancelled, a staged one undone)
        and the request ends CANCELLED, saying who."""
        if reason is None:
            assert self._pull is not None
            reason = f"pull request #{self._pull.number} closed on GitHub by {actor}"
        elif self._closed_on_github_by is not None:
            # The pull request closed first because its branch went: the deletion is the cause
            # (unless the ending is written already, with the reason it had).
            if not is_terminal(self._status):
                self._cancel_reason = self._reason = reason
            return
        self._closed_on_github_by = actor
        self._cancel_reason = reason
        self._reason = self._cancel_reason
        self._cancel_authorized = True
        if self._releasing is not None:
            self._releasing.cancel()

    @workflow.query
    def status(self) -> PromptRequestStatus:
        if self._refused is not None:
            raise self._refused  # the input never decoded: there is no request to describe
        plan = self._plan
        return PromptRequestStatus(
            prompt_request_id=self._input.prompt_request_id,
            tenant_id=self._input.tenant_id,
            project_id=self._input.project_id,
            requested_by=self._input.requested_by,
            status=self._status,
            reason=self._reason,
            step=self._step,
            plan=plan,
            approvals=list(self._approvals),
            deployments=list(self._deployments.values()),
            holds=list(self._holds),
            token_estimate=plan.token_estimate if plan else 0,
            tokens_used=self._tokens_used,
            tokens_settled=self._tokens_settled,
            commit_sha=self._commit_sha,
        )

    # ---------------------------------------------------------------- applying and deploying

    async def _apply(self, round: int) -> AppliedChangeView:
        plan = self._require_plan()
        policy = self._require_policy()
        self._set_step("applying the change" if round == 1 else f"rebasing (round {round})")
        self._approved_before_apply = self._held()
        replans = self._patched(REPLAN_ON_CONFLICT)
        applied = await workflow.execute_activity_method(
            LifecycleActivities.apply_change,
            ApplyChange(
                prompt_request_id=self._input.prompt_request_id,
                plan_id=plan.plan_id,
                approved_tokens=self._approved_before_apply,
                overspend_tolerance_pct=policy.overspend_tolerance_pct,
                plan_ttl_seconds=policy.plan_ttl_seconds,
                round=round,
                status=PromptStatus.DEPLOYING_STAGING,
                replan_on_conflict=replans,
                previous_base=self._base_commit if replans else None,
            ),
            start_to_close_timeout=ENGINE_TIMEOUT,
            heartbeat_timeout=ENGINE_HEARTBEAT,
            retry_policy=RETRY,
        )
        if applied.replanned:
            return applied  # nothing committed: the new revision is approved first
        # The work was done once; a rebase costs nothing more. A re-plan's revision is the
        # work that ships (what conflicted is not the tenant's to pay twice).
        if not self._applied or self._replanned:
            self._tokens_used = applied.tokens_used
        self._replanned = False
        self._base_commit = applied.base_commit or None
        self._applied = True
        self._commit_sha = applied.commit_sha
        self._set_status(PromptStatus.DEPLOYING_STAGING)
        return applied

    async def _publish_pull_request(self) -> None:
        """_open_pull_request; GitHub refusing it ends the request FAILED with its reason."""
        try:
            await self._shielded(self._open_pull_request())
        except ActivityError as err:
            await self._close_holds(charge=self._tokens_used, beyond_holds=True)
            await self._end(
                PromptStatus.FAILED,
                f"the pull request could not be opened on GitHub: {error_message(err)}",
                tokens_used=self._tokens_used,
            )

    async def _open_pull_request(self) -> None:
        """The applied change as the request's pull request on GitHub (the git layer pushed its
        branch): opened after the first apply, its title and body updated by the next ones."""
        assert self._github is not None
        plan = self._require_plan()
        prompt = " ".join(self._input.prompt.split())
        title = prompt if len(prompt) <= PULL_TITLE_CHARS else prompt[: PULL_TITLE_CHARS - 1] + "…"
        approvals = [
            str(a.user_id) for a in self._approvals if a.decision is ApprovalDecision.APPROVE
        ]
        if plan.approval_status is PlanApprovalStatus.AUTO_APPROVED:
            approvals.append(APPROVED_BY_POLICY)
        self._set_step(
            "opening the pull request" if self._pull is None else "updating the pull request"
        )
        self._pull = await workflow.execute_activity_method(
            GitHubActivities.open_pull_request,
            OpenPullRequest(
                connector_id=self._github,
                plan=PullRequestPlan(
                    request_id=self._input.prompt_request_id,
                    title=title,
                    summary=plan.diff_summary,
                    risk_level=plan.risk_level.value,
                    risk_reasons=list(plan.risk_reasons),
                    estimate_tokens=plan.token_estimate,
                    approvals=approvals,
                    revision=plan.revision,
                ),
            ),
            **GITHUB_STEP,
        )

    async def _github_head(self) -> str:
        """The default branch's head on GitHub (a person merged the pull request there)."""
        assert self._github is not None
        self._set_step("reading the default branch's head on GitHub")
        head = await workflow.execute_activity_method(
            GitHubActivities.default_head,
            ConnectorStep(connector_id=self._github),
            **GITHUB_STEP,
        )
        return head.sha

    async def _deploy(
        self, environment: DeploymentEnvironment, *, commit_sha: str | None = None
    ) -> DeploymentResult:
        """Release the request's commit (or `commit_sha`) to `environment` by a child."""
        assert self._commit_sha is not None
        commit = commit_sha or self._commit_sha
        if self._cancel_authorized:
            await self._await_authorized_cancel()  # nothing more is released
        deployment_id = workflow.uuid4()
        self._set_status(
            PromptStatus.DEPLOYING_STAGING
            if environment is DeploymentEnvironment.STAGING
            else PromptStatus.DEPLOYING_PRODUCTION
        )
        self._set_step(f"deploying {commit[:10]} to {environment.value}")
        state = DeploymentSummary(
            deployment_id=deployment_id, environment=environment, status=DeploymentStatus.QUEUED
        )
        self._deployments[deployment_id] = state
        persisting: asyncio.Future[None] | None = None
        try:
            child = await workflow.start_child_workflow(
                **self._deployment_child(
                    deployment_id,
                    environment,
                    commit,
                    f"{environment.value} release of {commit[:10]}",
                )
            )
            if self._patched(AUTHORIZED_CANCEL_STOPS_RELEASES):
                self._releasing = child
                if self._cancel_authorized:  # accepted while the child was starting
                    child.cancel()
            if environment is DeploymentEnvironment.PRODUCTION:
                # Written beside the running deployment, not before it starts (staging's status
                # came with apply_change); the outcome is acted on once it is written.
                persisting = asyncio.ensure_future(
                    self._persist_status(PromptStatus.DEPLOYING_PRODUCTION, announce=False)
                )
            result = await child
        except ChildWorkflowError as err:
            if self._cancel_obeyed():
                raise asyncio.CancelledError("cancelled while deploying") from err
            if self._cancel_authorized:
                await self._await_authorized_cancel()
            result = DeploymentResult(
                deployment_id=deployment_id,
                environment=environment,
                status=DeploymentStatus.FAILED,
                commit_sha=commit,
                verified=False,
                verification_output=error_message(err),
            )
        if persisting is not None:
            await persisting
        # The child's result is its last word: the status shows it, cancelled or not.
        self._show_outcome(state, result)
        if result.status is DeploymentStatus.SUCCEEDED:
            if environment is DeploymentEnvironment.STAGING:
                self._staged = result
            else:
                self._live = result
        self._releasing = None  # an accepted cancel's answer waits for this
        if self._cancel_authorized and self._live is None:
            await self._await_authorized_cancel()  # the compensation undoes what it released
        if result.cancel_refused:
            self._note_late_cancel(result.cancel_refused)
        if self._cancel_obeyed():
            # The child finished before the cancellation reached it (or compensated and
            # returned): the compensation undoes what it released.
            raise asyncio.CancelledError("cancelled while deploying")
        return result

    def _deployment_child(
        self,
        deployment_id: uuid.UUID,
        environment: DeploymentEnvironment,
        commit_sha: str,
        summary: str,
        *,
        undoes: DeploymentResult | None = None,
    ) -> dict[str, Any]:
        """The start of a deployment child of this request: a release of `commit_sha`, or, with
        `undoes`, the deployment restoring what ran before that release (verified, never rolled
        back itself). Started with its search attributes, so it need not upsert them."""
        request = self._input
        return {
            "workflow": "DeploymentWorkflow",
            "arg": DeploymentInput(
                deployment_id=deployment_id,
                tenant_id=request.tenant_id,
                project_id=request.project_id,
                plan_id=self._require_plan().plan_id,
                prompt_request_id=request.prompt_request_id,
                environment=environment,
                commit_sha=commit_sha,
                rollback_of=undoes.deployment_id if undoes else None,
                parent_workflow_id=workflow.info().workflow_id,
                auto_rollback=undoes is None,
                undoes_commit_sha=undoes.commit_sha if undoes else None,
                deploy_task_queue=request.deploy_task_queue,
                github=(
                    GitHubRelease(
                        connector_id=self._github,
                        # Merged by a person already: production merges nothing.
                        pull_number=None if self._merged_on_github_by else self._pull.number,
                        asks_before_merging=True,
                    )
                    if self._github is not None and self._pull is not None and undoes is None
                    else None
                ),
            ),
            "id": deployment_workflow_id(deployment_id),
            "search_attributes": deployment_attributes(
                request.tenant_id, request.project_id, environment
            ),
            "result_type": DeploymentResult,
            "static_summary": summary,
        }

    def _show_outcome(self, state: DeploymentSummary, result: DeploymentResult) -> None:
        state.status = result.status_now or result.status
        state.queue_position = None
        state.detail = outcome_detail(result)
        state.rollback_deployment_id = result.rollback_deployment_id
        state.rollback_status = result.rollback_status
        state.log_url = result.log_url
        if result.rollback_deployment_id is not None:
            self._deployments.setdefault(
                result.rollback_deployment_id,
                DeploymentSummary(
                    deployment_id=result.rollback_deployment_id,
                    environment=result.environment,
                    status=result.rollback_status or DeploymentStatus.SUCCEEDED,
                ),
            )

    async def _end_after_failed_deployment(self, outcome: DeploymentResult) -> None:
        status, reason = failed_deployment_ending(outcome)
        # The work was done: its tokens are charged even though the release was undone.
        await self._close_holds(charge=self._tokens_used, beyond_holds=True)
        await self._end(status, self._noting_late_cancel(reason), tokens_used=self._tokens_used)

    # ---------------------------------------------------------------- status and endings

    async def _persist_status(
        self,
        status: PromptStatus,
        reason: str = "",
        *,
        plan_status: PlanApprovalStatus | None = None,
        tokens_used: int | None = None,
        announce: bool = True,
    ) -> None:
        """Write the request's status; with announce, also show it (status query, search
        attribute) once written."""
        await self._shielded(
            workflow.execute_local_activity_method(
                LifecycleActivities.set_request_status,
                SetRequestStatus(
                    prompt_request_id=self._input.prompt_request_id,
                    status=status,
                    reason=reason,
                    plan_status=plan_status,
                    tokens_used=tokens_used,
                ),
                **DB_STEP,
            )
        )
        if announce:
            self._set_status(status, reason)

    async def _end(
        self,
        status: PromptStatus,
        reason: str,
        *,
        plan_status: PlanApprovalStatus | None = None,
        tokens_used: int | None = None,
    ) -> None:
        await self._persist_status(status, reason, plan_status=plan_status, tokens_used=tokens_used)
        if plan_status is not None and self._plan is not None:
            self._plan.approval_status = plan_status
        raise RequestEnded(self._result())

    async def _close_request_branch(self) -> None:
        """The ended request's branch goes (a request that never applied has none). A branch
        that cannot be deleted stays: the request's outcome does not depend on it."""
        if self._applies == 0 or not self._patched(CLOSE_REQUEST_BRANCH):
            return
        self._ending = True
        closing: asyncio.Future[Any]
        if self._github is not None:
            # On GitHub: its pull request closed if still open, the branch deleted there (the
            # mirrors prune it on their next fetch).
            closing = asyncio.ensure_future(
                workflow.execute_activity_method(
                    GitHubActivities.end_request,
                    EndRequest(
                        connector_id=self._github,
                        request_id=self._input.prompt_request_id,
                        number=self._pull.number if self._pull else None,
                    ),
                    start_to_close_timeout=BRANCH_CLOSE_TIMEOUT,
                    retry_policy=BRANCH_CLOSE_RETRY,
                )
            )
        else:
            closing = asyncio.ensure_future(
                workflow.execute_activity_method(
                    LifecycleActivities.close_request_branch,
                    CloseRequestBranch(
                        prompt_request_id=self._input.prompt_request_id,
                        project_id=self._input.project_id,
                    ),
                    start_to_close_timeout=BRANCH_CLOSE_TIMEOUT,
                    retry_policy=BRANCH_CLOSE_RETRY,
                )
            )
        while True:
            try:
                await asyncio.shield(closing)
                return
            except asyncio.CancelledError:
                continue  # the request has ended: a cancel arriving now changes nothing
            except ActivityError as err:
                workflow.logger.warning("the request's branch stays: %s", error_message(err))
                return

    async def _compensate_cancellation(self) -> None:
        """Let the step in flight finish, then release (or settle) holds and persist CANCELLED."""
        self._set_step("cancelling")
        await self._drain_steps()
        if is_terminal(self._status):
            return
        if self._staged is not None and self._patched(CANCEL_NEVER_LIVE):
            await self._undo_release(self._staged)
        await self._close_holds(charge=self._chargeable())
        if workflow.patched(RELEASE_FORGOTTEN_HOLDS):
            await self._shielded(self._release_forgotten_holds())
        if self._status is not PromptStatus.RECEIVED:  # RECEIVED: nothing was ever persisted
            await self._persist_status(
                PromptStatus.CANCELLED,
                self._cancel_reason or workflow.cancellation_reason() or "cancelled",
                plan_status=PlanApprovalStatus.CANCELLED,
                tokens_used=self._tokens_used if self._applied else None,
            )
            if self._plan is not None and self._plan.approval_status is PlanApprovalStatus.PENDING:
                self._plan.approval_status = PlanApprovalStatus.CANCELLED
        self._set_step("cancelled")

    async def _complete_despite_cancel(self) -> PromptRequestResult:
        """A cancel that came after production verified the release: the steps in flight
        finish and the request completes, settled as any completed request."""
        await self._drain_steps()
        if self._status is PromptStatus.COMPLETED:
            return self._result()
        return await self._settle_completed()

    async def _undo_release(self, released: DeploymentResult) -> None:
        """Restore what the environment ran before this request's release, through its lane, as
        a verified deployment (rollback_of = the release); nothing when another release came
        since (the environment no longer runs this request's change)."""
        environment = released.environment
        self._set_step(f"cancelled: restoring {environment.value}'s previous release")
        restore = released.previous_commit_sha
        if restore is None:  # the first release there, or recorded before the field existed
            good = await workflow.execute_activity_method(
                RollbackActivities.find_last_good_release,
                FindLastGoodRelease(
                    project_id=self._input.project_id,
                    environment=environment,
                    exclude_deployment_id=released.deployment_id,
                ),
                task_queue=self._input.deploy_task_queue,
                start_to_close_timeout=DB_TIMEOUT,
                retry_policy=RETRY,
            )
            restore = good.commit_sha
        undo_id = workflow.uuid4()
        state = DeploymentSummary(
            deployment_id=undo_id, environment=environment, status=DeploymentStatus.QUEUED
        )
        self._deployments[undo_id] = state
        try:
            result = await workflow.execute_child_workflow(
                **self._deployment_child(
                    undo_id,
                    environment,
                    restore,
                    f"{environment.value}: undo of cancelled {released.commit_sha[:10]}",
                    undoes=released,
                )
            )
        except ChildWorkflowError as err:
            workflow.logger.warning("the undo of %s failed: %s", environment.value, err)
            state.status = DeploymentStatus.FAILED
            state.detail = error_message(err)
            return
        self._show_outcome(state, result)
        undone = self._deployments.get(released.deployment_id)
        if undone is not None and result.status is DeploymentStatus.SUCCEEDED:
            undone.status = DeploymentStatus.ROLLED_BACK
            undone.rollback_deployment_id = undo_id
            undone.rollback_status = result.status
            undone.detail = "undone: the request was cancelled"

    async def _release_forgotten_holds(self) -> None:
        """A reservation cut off after its commit (a worker killed, the database restarted)
        made a hold this run never learnt of: the ledger finds it by this workflow's keys."""
        await workflow.execute_local_activity_method(
            BillingActivities.release_forgotten_holds,
            ReleaseForgottenHolds(
                tenant_id=self._input.tenant_id, known=[hold.hold_id for hold in self._holds]
            ),
            **DB_STEP,
        )

    async def _drain_steps(self) -> None:
        while self._inflight:
            task = next(iter(self._inflight))
            try:
                await task
            except Exception:  # the compensation goes on whatever the step did
                workflow.logger.warning("a step failed while the request was being cancelled")
            self._inflight.discard(task)

    async def _drain_handlers(self) -> None:
        self._finished = True
        await workflow.wait_condition(workflow.all_handlers_finished)

    async def _shielded(self, step: Awaitable[T]) -> T:
        """Run a step so that cancelling the workflow does not cancel it halfway."""
        task: asyncio.Task[T] = asyncio.ensure_future(step)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    def _refused_at_submission(self, refusal: ApplicationError) -> ApplicationError:
        """The request ends refused (the workflow fails with `refusal`): its status query and
        search attribute say failed instead of planning forever; nothing was written."""
        self._set_status(PromptStatus.FAILED, refusal.message)
        return refusal

    def _set_status(self, status: PromptStatus, reason: str = "") -> None:
        if status is not self._status:
            self._status = status
            workflow.upsert_search_attributes([PROMPT_STATUS.value_set(status.value)])
        if reason:
            self._reason = reason
        self._set_step(status.value.replace("_", " "))

    def _set_step(self, step: str) -> None:
        self._step = step
        workflow.set_current_details(f"**{self._status.value}**: {step}")

    def _result(self) -> PromptRequestResult:
        plan = self._plan
        return PromptRequestResult(
            prompt_request_id=self._input.prompt_request_id,
            status=self._status,
            reason=self._reason,
            plan_id=plan.plan_id if plan else None,
            content_hash=plan.content_hash if plan else None,
            risk_level=plan.risk_level if plan else None,
            commit_sha=self._commit_sha,
            tokens_used=self._tokens_used,
            tokens_settled=self._tokens_settled,
            deployments=list(self._deployments.values()),
        )

    def _require_plan(self) -> PlanSummary:
        assert self._plan is not None, "no plan yet"
        return self._plan

    def _require_policy(self) -> ApprovalPolicyView:
        assert self._policy is not None, "no policy yet"
        return self._policy


def _host_imports() -> contextlib.AbstractContextManager[None]:
    """For calls into the cryptography library: its Rust core imports Python modules lazily
    (an exception type when a signature fails), which inside the sandbox would be imported a
    second time, and a Rust extension cannot be: the process aborts. Taken from the host."""
    return workflow.unsafe.imports_passed_through()
