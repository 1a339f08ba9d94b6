"""The lifecycle's rules that need neither I/O nor Temporal (workflows/lifecycle.py applies them):
what a request may be charged, how a charge spreads over its holds, who may decide on a plan
or amend it, what settles a plan, when a plan expires and reminds, how a deployment's outcome
reads and ends the request. Pure functions of what they are given (the time included), so
they are tested without servers (tests/test_lifecycle_rules.py).
"""

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from models.billing import HoldStatus
from models.lifecycle import ApprovalDecision, DeploymentStatus, PlanApprovalStatus, PromptStatus
from workflows.contracts.deployment import DeploymentResult
from workflows.contracts.errors import ErrorType, refused
from workflows.contracts.lifecycle import (
    ApprovalPolicyView,
    ApprovalRecord,
    HoldState,
    PlanSummary,
)
from workflows.contracts.notifications import ApprovalNotice

# ------------------------------------------------------------------ how steps end

# Refusals of the request itself: the workflow fails with the same typed error.
REQUEST_REFUSALS = {
    ErrorType.UNKNOWN_TENANT,
    ErrorType.UNKNOWN_PROJECT,
    ErrorType.UNKNOWN_USER,
    ErrorType.USER_OF_ANOTHER_TENANT,
}
# The change engine could not plan: the request ends failed with the reason (before its hold).
PLANNING_FAILURES = {
    ErrorType.CHANGE_REQUEST_INVALID,
    ErrorType.REPOSITORY_ERROR,
    ErrorType.MODEL_AUTH_FAILED,
    ErrorType.MODEL_NOT_FOUND,
    ErrorType.MODEL_CONTEXT_EXCEEDED,
    ErrorType.MODEL_REQUEST_REFUSED,
}

# What applying can end a request with: the change itself is wrong (or planning it again on the
# new base failed).
APPLY_FAILURES = {
    ErrorType.REBASE_CONFLICT,
    ErrorType.CHANGE_REQUEST_INVALID,
    ErrorType.REPOSITORY_ERROR,
    *PLANNING_FAILURES,
}
# The reason of a request that completed without a release: its change was there already.
NO_CHANGE = "no change to ship"

# What the verify activity refuses that the run's keys should have refused: its keys or its
# settings are out of date, and are loaded again.
STALE_TRUST_REFUSALS = {
    ErrorType.TOKEN_REQUIRED,
    ErrorType.BAD_TOKEN_SIGNATURE,
    ErrorType.WRONG_ISSUER,
    ErrorType.WRONG_AUDIENCE,
    ErrorType.TOKEN_LIFETIME_TOO_LONG,
}


# ------------------------------------------------------------------ tokens and holds


def held(holds: Iterable[HoldState]) -> int:
    """Tokens on active holds: what the approved plan may use."""
    return sum(hold.amount for hold in holds if hold.status is HoldStatus.ACTIVE)


def chargeable(*, applied: bool, tokens_used: int, approved_before_apply: int) -> int:
    """Tokens to charge when the request ends early: the applied work, up to what was held
    and approved before it. Nothing before the change was applied."""
    if not applied:
        return 0
    return min(tokens_used, approved_before_apply)


@dataclass(frozen=True)
class ChargeSplit:
    # (index of an active hold, tokens settled on it; 0: released), in the holds' order.
    per_hold: list[tuple[int, int]]
    # What the holds cannot cover: charged on its own when the policy allows.
    beyond: int


def split_charge(holds: Sequence[HoldState], charge: int) -> ChargeSplit:
    """`charge` settled across the active holds in order; every other active hold released."""
    remaining = charge
    per_hold = []
    for index, hold in enumerate(holds):
        if hold.status is not HoldStatus.ACTIVE:
            continue
        amount = min(remaining, hold.amount)
        remaining -= amount
        per_hold.append((index, amount))
    return ChargeSplit(per_hold, remaining)


# ------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class Settlement:
    """Where a deciding decision moves the plan and the request."""

    plan_status: PlanApprovalStatus
    status: PromptStatus
    reason: str


def settles(decision: ApprovalRecord) -> Settlement:
    """The plan and request statuses a deciding approval or rejection reaches. A rejection's
    reason is the request's; an approval's comment stays with the approval."""
    if decision.decision is ApprovalDecision.APPROVE:
        return Settlement(PlanApprovalStatus.APPROVED, PromptStatus.APPROVED, "")
    return Settlement(PlanApprovalStatus.REJECTED, PromptStatus.REJECTED, decision.reason)


def approvals_of(approvals: Iterable[ApprovalRecord]) -> int:
    return sum(1 for a in approvals if a.decision is ApprovalDecision.APPROVE)


def approval_notice(
    plan: PlanSummary, approvals: Iterable[ApprovalRecord], reason: str
) -> ApprovalNotice:
    """What the tenant's webhook is told waits for approval (the delivery activity adds the
    files from the plan's row: the diff stays out of histories)."""
    return ApprovalNotice(
        plan_id=plan.plan_id,
        revision=plan.revision,
        summary=plan.diff_summary,
        risk_level=plan.risk_level,
        risk_reasons=list(plan.risk_reasons),
        token_estimate=plan.token_estimate,
        approvals_required=plan.approvals_required,
        approvals_so_far=approvals_of(approvals),
        expires_at=plan.expires_at,
        reason=reason,
    )


def approved_by(approvals: Iterable[ApprovalRecord], user_id: uuid.UUID) -> bool:
    return any(a.user_id == user_id and a.decision is ApprovalDecision.APPROVE for a in approvals)


def check_not_approved_by(
    approvals: Iterable[ApprovalRecord], user_id: uuid.UUID, plan: PlanSummary
) -> None:
    if approved_by(approvals, user_id):
        raise refused(
            ErrorType.ALREADY_APPROVED,
            f"user {user_id} already approved revision {plan.revision} of this plan",
        )


@dataclass(frozen=True)
class DecisionContext:
    """What the run knows when a decision on its plan arrives."""

    status: PromptStatus
    plan: PlanSummary | None
    policy: ApprovalPolicyView | None
    roster: dict[uuid.UUID, str]
    requested_by: uuid.UUID
    # Another decision is settling the plan right now.
    deciding: bool


def check_plan_decider(
    context: DecisionContext, user_id: uuid.UUID, content_hash: str, *, judged_now: bool
) -> None:
    """Refusals shared by approve and reject, before anything is written.

    With judged_now (a token naming this tenant), the roster and role are judged at decision
    time by the verify activity (a role revoked or granted since planning counts); without,
    by the roster loaded with the plan."""
    plan = context.plan
    if context.deciding:
        raise refused(
            ErrorType.NOT_AWAITING_APPROVAL,
            "another decision has just settled this plan; it no longer awaits approval",
        )
    if context.status is not PromptStatus.AWAITING_APPROVAL or plan is None:
        raise refused(
            ErrorType.NOT_AWAITING_APPROVAL,
            f"the request is {context.status.value}, not awaiting approval",
        )
    role = context.roster.get(user_id)
    if role is None and not judged_now:
        raise refused(
            ErrorType.USER_OF_ANOTHER_TENANT,
            f"user {user_id} is not a member of this request's tenant",
        )
    if user_id == context.requested_by:
        raise refused(ErrorType.SELF_APPROVAL, "the requester cannot decide on their own request")
    assert context.policy is not None, "a plan comes with its policy"
    roles = context.policy.approver_roles
    if not judged_now and role not in roles:
        raise refused(
            ErrorType.ROLE_MAY_NOT_APPROVE,
            f"role {role!r} may not approve; allowed: {', '.join(roles)}",
        )
    if content_hash != plan.content_hash:
        raise refused(
            ErrorType.STALE_PLAN_HASH,
            f"plan hash {content_hash[:12]} is stale; the current plan is "
            f"revision {plan.revision} with hash {plan.content_hash}",
        )


def check_member(
    roster: dict[uuid.UUID, str], user_id: uuid.UUID | None, *, judged_now: bool
) -> None:
    """A decision by someone outside the tenant's roster (and without a token naming the
    tenant, which the verify activity judges against the roster as it is now)."""
    if user_id is not None and user_id not in roster and not judged_now:
        raise refused(
            ErrorType.USER_OF_ANOTHER_TENANT,
            f"user {user_id} is not a member of this request's tenant",
        )


def check_revisable(*, status: PromptStatus, deciding: bool, revising: bool, applied: bool) -> None:
    """Only a plan awaiting approval, before its change is applied, can be amended."""
    if status is not PromptStatus.AWAITING_APPROVAL or deciding or revising or applied:
        raise refused(
            ErrorType.NOT_AWAITING_APPROVAL,
            "only a plan awaiting approval before the change is applied can be revised",
        )


def cancel_too_late(live: DeploymentResult) -> Exception:
    """The refusal of a cancel once production verified the request's release."""
    return refused(
        ErrorType.CANCEL_TOO_LATE,
        f"too late to cancel: production deployment {live.deployment_id} verified "
        f"{live.commit_sha[:12]} and the default branch holds it; roll that deployment back "
        f"to undo the change (changeflow rollback {live.deployment_id})",
    )


def cancel_too_late_merging(deployment_id: uuid.UUID, pull_number: int) -> Exception:
    """The refusal of a cancel once production asked GitHub to merge the request's pull request
    (a GitHub project): the merge may have moved the default branch already, and undoing the
    release would leave the change there."""
    return refused(
        ErrorType.CANCEL_TOO_LATE,
        f"too late to cancel: production deployment {deployment_id} is merging pull request "
        f"#{pull_number} on GitHub, and once merged the default branch holds the change; roll "
        f"that deployment back to undo it (changeflow rollback {deployment_id})",
    )


# ------------------------------------------------------------------ time


def time_to_expiry(plan: PlanSummary, policy: ApprovalPolicyView, now: datetime) -> timedelta:
    """Until the plan's own expires_at, to the microsecond: a request never expires before
    the time its plan shows. A timer needs a positive duration."""
    if plan.expires_at is None:
        return timedelta(seconds=policy.plan_ttl_seconds)
    return max(plan.expires_at - now, timedelta(milliseconds=1))


def time_to_reminder(
    plan: PlanSummary, policy: ApprovalPolicyView, now: datetime
) -> timedelta | None:
    """Until the reminder is due; None when none is sent (no webhook, no setting, or a plan
    that expires sooner than the reminder's lead: it was just announced)."""
    if not policy.notifies or policy.reminder_before_seconds is None:
        return None
    due = time_to_expiry(plan, policy, now) - timedelta(seconds=policy.reminder_before_seconds)
    return due if due > timedelta(0) else None


def duration(span: timedelta) -> str:
    seconds = round(span.total_seconds())
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"


def model_retry_delay(
    failed: int, suggested: timedelta | None, maximum: timedelta | None
) -> timedelta:
    """The wait before planning again after `failed` attempts found the model endpoint down:
    what the error suggests, else doubling from 1 s up to the retry policy's maximum."""
    backoff = timedelta(seconds=2 ** min(failed - 1, 5))
    return suggested or min(backoff, maximum or backoff)


# ------------------------------------------------------------------ deployments


def outcome_detail(result: DeploymentResult) -> str:
    if result.verified:
        return "verified"
    if result.status is DeploymentStatus.CANCELLED:
        return result.verification_output or "cancelled"
    if result.base_moved:
        return "not released: the default branch moved; rebasing"
    if result.rollback_status is None:
        return "verification failed"
    return f"verification failed; rollback {result.rollback_status.value}"


def failed_deployment_ending(outcome: DeploymentResult) -> tuple[PromptStatus, str]:
    """How a request whose release failed ends: rolled back when the rollback held, else
    failed with the check's output."""
    rolled_back = outcome.rollback_deployment_id is not None and outcome.rollback_status in (
        DeploymentStatus.SUCCEEDED,
        DeploymentStatus.ROLLED_BACK,
    )
    if outcome.not_merged:  # GitHub refused the merge, or a person closed the pull request
        return PromptStatus.FAILED, outcome.not_merged
    what = f"{outcome.environment.value} verification failed"
    if outcome.checks:
        what += f" ({outcome.checks})"
    if rolled_back:
        return PromptStatus.ROLLED_BACK, (
            f"{what}; rolled back by deployment {outcome.rollback_deployment_id}"
        )
    return PromptStatus.FAILED, f"{what}: {outcome.verification_output[-500:]}"
