"""The lifecycle's pure rules (workflows/lifecycle_rules.py), without any server: charges and
holds, who may decide or amend, what settles a plan, expiry and reminders, deployment endings."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.exceptions import ApplicationError

from models.billing import HoldStatus
from models.lifecycle import (
    ApprovalDecision,
    DeploymentEnvironment,
    DeploymentStatus,
    PlanApprovalStatus,
    PromptStatus,
    RiskLevel,
)
from workflows.contracts.deployment import DeploymentResult
from workflows.contracts.errors import ErrorType
from workflows.contracts.lifecycle import (
    ApprovalPolicyView,
    ApprovalRecord,
    HoldState,
    PlanSummary,
)
from workflows.lifecycle_rules import (
    DecisionContext,
    approval_notice,
    approvals_of,
    cancel_too_late,
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

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
REQUESTER, APPROVER, VIEWER, OUTSIDER = (uuid.uuid4() for _ in range(4))
HASH = "c" * 64


def hold(amount: int, status: HoldStatus = HoldStatus.ACTIVE) -> HoldState:
    return HoldState(hold_id=uuid.uuid4(), amount=amount, status=status)


def plan(**changes: object) -> PlanSummary:
    fields: dict[str, object] = {
        "plan_id": uuid.uuid4(),
        "revision": 2,
        "diff_summary": "theme",
        "files_changed": ["config.json"],
        "risk_level": RiskLevel.LOW,
        "risk_reasons": [],
        "token_estimate": 100,
        "content_hash": HASH,
        "approval_status": PlanApprovalStatus.PENDING,
        "approvals_required": 1,
        "expires_at": NOW + timedelta(hours=1),
    }
    fields.update(changes)
    return PlanSummary.model_validate(fields)


def policy(**changes: object) -> ApprovalPolicyView:
    fields: dict[str, object] = {
        "approver_roles": ["client_admin"],
        "approvals_required": {},
        "auto_approve_max_risk": None,
        "plan_ttl_seconds": 3600,
        "overspend_tolerance_pct": 10,
    }
    fields.update(changes)
    return ApprovalPolicyView.model_validate(fields)


def decision(
    kind: ApprovalDecision, user: uuid.UUID = APPROVER, reason: str = ""
) -> ApprovalRecord:
    return ApprovalRecord(user_id=user, decision=kind, content_hash=HASH, at=NOW, reason=reason)


def context(**changes: object) -> DecisionContext:
    fields: dict[str, object] = {
        "status": PromptStatus.AWAITING_APPROVAL,
        "plan": plan(),
        "policy": policy(),
        "roster": {REQUESTER: "client_admin", APPROVER: "client_admin", VIEWER: "viewer"},
        "requested_by": REQUESTER,
        "deciding": False,
    }
    fields.update(changes)
    return DecisionContext(**fields)  # type: ignore[arg-type]


def refusal(call: object, *args: object, **kwargs: object) -> str | None:
    with pytest.raises(ApplicationError) as raised:
        call(*args, **kwargs)  # type: ignore[operator]
    return raised.value.type


# --- tokens and holds -------------------------------------------------------------------------


def test_only_active_holds_count_as_held() -> None:
    assert held([hold(100), hold(50, HoldStatus.RELEASED), hold(30)]) == 130


@pytest.mark.parametrize(
    ("applied", "used", "approved", "charged"),
    [
        (False, 500, 100, 0),  # nothing applied: nothing charged
        (True, 80, 100, 80),  # the work, when within what was approved
        (True, 150, 100, 100),  # never more than was approved before applying
    ],
)
def test_an_early_end_charges_the_applied_work_up_to_what_was_approved(
    applied: bool, used: int, approved: int, charged: int
) -> None:
    assert chargeable(applied=applied, tokens_used=used, approved_before_apply=approved) == charged


def test_a_charge_settles_the_active_holds_in_order_and_releases_the_rest() -> None:
    holds = [hold(100), hold(40, HoldStatus.SETTLED), hold(60), hold(25)]
    split = split_charge(holds, 130)
    assert split.per_hold == [(0, 100), (2, 30), (3, 0)]
    assert split.beyond == 0


def test_what_the_holds_cannot_cover_is_left_beyond_them() -> None:
    split = split_charge([hold(100), hold(20)], 150)
    assert split.per_hold == [(0, 100), (1, 20)]
    assert split.beyond == 30
    assert split_charge([], 0).per_hold == []


# --- decisions --------------------------------------------------------------------------------


def test_an_approval_settles_the_plan_approved_and_keeps_its_comment_to_itself() -> None:
    settled = settles(decision(ApprovalDecision.APPROVE, reason="looks fine"))
    assert (settled.plan_status, settled.status, settled.reason) == (
        PlanApprovalStatus.APPROVED,
        PromptStatus.APPROVED,
        "",
    )


def test_a_rejection_settles_the_plan_rejected_with_its_reason_for_the_request() -> None:
    settled = settles(decision(ApprovalDecision.REJECT, reason="not in December"))
    assert (settled.plan_status, settled.status, settled.reason) == (
        PlanApprovalStatus.REJECTED,
        PromptStatus.REJECTED,
        "not in December",
    )


def test_approvals_are_counted_and_a_second_one_by_the_same_person_refused() -> None:
    records = [decision(ApprovalDecision.APPROVE), decision(ApprovalDecision.REJECT, VIEWER)]
    assert approvals_of(records) == 1
    assert refusal(check_not_approved_by, records, APPROVER, plan()) == ErrorType.ALREADY_APPROVED
    check_not_approved_by(records, VIEWER, plan())  # a rejection is not an approval


def test_an_approver_of_the_current_plan_may_decide() -> None:
    check_plan_decider(context(), APPROVER, HASH, judged_now=False)


@pytest.mark.parametrize(
    ("changes", "user", "content_hash", "expected"),
    [
        ({"deciding": True}, APPROVER, HASH, ErrorType.NOT_AWAITING_APPROVAL),
        ({"status": PromptStatus.APPROVED}, APPROVER, HASH, ErrorType.NOT_AWAITING_APPROVAL),
        ({"plan": None}, APPROVER, HASH, ErrorType.NOT_AWAITING_APPROVAL),
        ({}, OUTSIDER, HASH, ErrorType.USER_OF_ANOTHER_TENANT),
        ({}, REQUESTER, HASH, ErrorType.SELF_APPROVAL),
        ({}, VIEWER, HASH, ErrorType.ROLE_MAY_NOT_APPROVE),
        ({}, APPROVER, "d" * 64, ErrorType.STALE_PLAN_HASH),
    ],
)
def test_a_decision_on_the_plan_is_refused_with_its_reason(
    changes: dict[str, object], user: uuid.UUID, content_hash: str, expected: ErrorType
) -> None:
    assert (
        refusal(check_plan_decider, context(**changes), user, content_hash, judged_now=False)
        == expected
    )


def test_a_token_naming_the_tenant_leaves_roster_and_role_to_the_verify_activity() -> None:
    # Judged at decision time from the database: a role granted since planning counts.
    check_plan_decider(context(), OUTSIDER, HASH, judged_now=True)
    check_plan_decider(context(), VIEWER, HASH, judged_now=True)
    # Never the requester, whatever the token.
    assert (
        refusal(check_plan_decider, context(), REQUESTER, HASH, judged_now=True)
        == ErrorType.SELF_APPROVAL
    )


def test_membership_and_revisability() -> None:
    roster = {APPROVER: "viewer"}
    check_member(roster, APPROVER, judged_now=False)
    check_member(roster, None, judged_now=False)  # an operator without a named user
    check_member(roster, OUTSIDER, judged_now=True)
    assert (
        refusal(check_member, roster, OUTSIDER, judged_now=False)
        == ErrorType.USER_OF_ANOTHER_TENANT
    )
    check_revisable(
        status=PromptStatus.AWAITING_APPROVAL, deciding=False, revising=False, applied=False
    )
    for blocked in ({"deciding": True}, {"revising": True}, {"applied": True}):
        flags = {"deciding": False, "revising": False, "applied": False, **blocked}
        assert (
            refusal(check_revisable, status=PromptStatus.AWAITING_APPROVAL, **flags)
            == ErrorType.NOT_AWAITING_APPROVAL
        )


def test_a_cancel_too_late_names_the_live_deployment_and_the_way_back() -> None:
    live = result(DeploymentStatus.SUCCEEDED, verified=True)
    error = cancel_too_late(live)
    assert isinstance(error, ApplicationError)
    assert error.type == ErrorType.CANCEL_TOO_LATE
    assert f"changeflow rollback {live.deployment_id}" in error.message


# --- time -------------------------------------------------------------------------------------


def test_a_plan_expires_at_its_own_time_never_before() -> None:
    assert time_to_expiry(plan(), policy(), NOW) == timedelta(hours=1)
    assert time_to_expiry(plan(expires_at=None), policy(), NOW) == timedelta(seconds=3600)
    # Past its time, a timer still needs a positive duration.
    assert time_to_expiry(plan(), policy(), NOW + timedelta(hours=2)) == timedelta(milliseconds=1)


def test_a_reminder_comes_its_lead_before_expiry_only_to_a_tenant_that_is_notified() -> None:
    notified = policy(notifies=True, reminder_before_seconds=600)
    assert time_to_reminder(plan(), notified, NOW) == timedelta(minutes=50)
    assert time_to_reminder(plan(), policy(reminder_before_seconds=600), NOW) is None
    assert time_to_reminder(plan(), policy(notifies=True), NOW) is None
    # Expiring sooner than the lead: it was just announced, no reminder.
    assert time_to_reminder(plan(expires_at=NOW + timedelta(minutes=5)), notified, NOW) is None


def test_durations_read_in_seconds_then_minutes() -> None:
    assert duration(timedelta(seconds=119.4)) == "119 s"
    assert duration(timedelta(minutes=7, seconds=30)) == "7 min"


def test_planning_waits_longer_for_a_model_that_stays_down_up_to_a_cap() -> None:
    cap = timedelta(seconds=30)
    waits = [model_retry_delay(n, None, cap).total_seconds() for n in range(1, 8)]
    assert waits == [1, 2, 4, 8, 16, 30, 30]
    assert model_retry_delay(3, timedelta(seconds=7), cap) == timedelta(seconds=7)


# --- deployments ------------------------------------------------------------------------------


def result(status: DeploymentStatus, **changes: object) -> DeploymentResult:
    fields: dict[str, object] = {
        "deployment_id": uuid.uuid4(),
        "environment": DeploymentEnvironment.PRODUCTION,
        "status": status,
        "commit_sha": "abcdef1234567890",
        "verified": False,
    }
    fields.update(changes)
    return DeploymentResult.model_validate(fields)


def test_a_deployment_outcome_reads_as_what_happened() -> None:
    assert outcome_detail(result(DeploymentStatus.SUCCEEDED, verified=True)) == "verified"
    assert outcome_detail(result(DeploymentStatus.CANCELLED)) == "cancelled"
    assert outcome_detail(result(DeploymentStatus.FAILED, base_moved=True)) == (
        "not released: the default branch moved; rebasing"
    )
    assert outcome_detail(result(DeploymentStatus.FAILED)) == "verification failed"
    assert (
        outcome_detail(result(DeploymentStatus.FAILED, rollback_status=DeploymentStatus.SUCCEEDED))
        == "verification failed; rollback succeeded"
    )


def test_a_failed_release_ends_rolled_back_when_the_rollback_held_else_failed() -> None:
    rollback = uuid.uuid4()
    status, reason = failed_deployment_ending(
        result(
            DeploymentStatus.FAILED,
            rollback_deployment_id=rollback,
            rollback_status=DeploymentStatus.SUCCEEDED,
        )
    )
    assert status is PromptStatus.ROLLED_BACK
    assert reason == f"production verification failed; rolled back by deployment {rollback}"
    status, reason = failed_deployment_ending(
        result(
            DeploymentStatus.FAILED,
            rollback_deployment_id=rollback,
            rollback_status=DeploymentStatus.FAILED,
            verification_output="x" * 600 + "assert theme",
        )
    )
    assert status is PromptStatus.FAILED
    assert reason.startswith("production verification failed: ")
    assert reason.endswith("assert theme") and len(reason) < 560


def test_the_approval_notice_tells_what_waits_and_how_far_it_got() -> None:
    waiting = plan(approvals_required=2, risk_reasons=["touches config"])
    notice = approval_notice(
        waiting,
        [decision(ApprovalDecision.APPROVE), decision(ApprovalDecision.REJECT, VIEWER)],
        "re-planned on the new base: config.json",
    )
    assert (notice.plan_id, notice.revision, notice.summary) == (waiting.plan_id, 2, "theme")
    assert (notice.approvals_required, notice.approvals_so_far) == (2, 1)
    assert notice.risk_reasons == ["touches config"] and notice.expires_at == waiting.expires_at
    assert notice.reason == "re-planned on the new base: config.json"
    assert notice.files == []  # the delivery activity fills them from the plan's row
