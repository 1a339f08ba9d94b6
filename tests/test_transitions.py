"""Allowed status changes are data, and one function refuses everything else."""

import enum

import pytest

from models import (
    TRANSITIONS,
    ChangeJobStatus,
    ConnectorStatus,
    DeploymentStatus,
    IllegalTransition,
    ModuleExecutionStatus,
    OrderStatus,
    PlanApprovalStatus,
    PlanTier,
    PromptStatus,
    TokenDirection,
    UserRole,
    ensure_transition,
    is_terminal,
)

STATUS_ENUMS = [
    PromptStatus,
    DeploymentStatus,
    ConnectorStatus,
    ModuleExecutionStatus,
    OrderStatus,
    TokenDirection,
    UserRole,
    PlanTier,
    ChangeJobStatus,
    PlanApprovalStatus,
]


@pytest.mark.parametrize("enum_cls", STATUS_ENUMS, ids=lambda e: e.__name__)
def test_every_state_of_every_enum_has_its_transitions_listed(enum_cls: type[enum.Enum]):
    table = TRANSITIONS[enum_cls]
    assert set(table) == set(enum_cls)
    for source, targets in table.items():
        assert all(type(t) is enum_cls for t in targets), source
        assert source not in targets, "staying put is implicit, not a transition"


def test_an_illegal_transition_is_refused_with_a_message_naming_what_is_allowed():
    with pytest.raises(IllegalTransition) as raised:
        ensure_transition(PromptStatus.RECEIVED, PromptStatus.COMPLETED)

    assert str(raised.value) == (
        "PromptStatus cannot go from 'received' to 'completed'; "
        "allowed from 'received': ['cancelled', 'failed', 'planning']"
    )
    assert raised.value.current is PromptStatus.RECEIVED
    assert raised.value.target is PromptStatus.COMPLETED


def test_leaving_a_terminal_state_is_refused_and_says_it_is_terminal():
    with pytest.raises(IllegalTransition, match=r"allowed from 'completed': none \(terminal\)"):
        ensure_transition(PromptStatus.COMPLETED, PromptStatus.PLANNING)


def test_every_listed_transition_is_accepted_and_staying_put_is_allowed():
    for enum_cls in STATUS_ENUMS:
        for source, targets in TRANSITIONS[enum_cls].items():
            ensure_transition(source, source)
            for target in targets:
                ensure_transition(source, target)


def test_comparing_states_of_different_enums_is_a_programming_error():
    with pytest.raises(TypeError):
        ensure_transition(PromptStatus.RECEIVED, DeploymentStatus.QUEUED)


@pytest.mark.parametrize(
    "state",
    [
        PromptStatus.COMPLETED,
        PromptStatus.REJECTED,
        PromptStatus.EXPIRED,
        PromptStatus.CANCELLED,
        PromptStatus.FAILED,
        PromptStatus.ROLLED_BACK,
        DeploymentStatus.ROLLED_BACK,
        OrderStatus.REFUNDED,
        OrderStatus.CANCELLED,
        ChangeJobStatus.SUCCEEDED,
        ModuleExecutionStatus.FAILED,
        TokenDirection.CREDIT,
    ],
)
def test_terminal_states(state):
    assert is_terminal(state)


@pytest.mark.parametrize(
    "state",
    [
        PromptStatus.RECEIVED,
        PromptStatus.AWAITING_APPROVAL,
        DeploymentStatus.QUEUED,
        # A finished deployment can still be undone by a rollback.
        DeploymentStatus.SUCCEEDED,
        ConnectorStatus.DISABLED,
        OrderStatus.PAID,
    ],
)
def test_states_that_still_move(state):
    assert not is_terminal(state)


def test_a_deployment_that_was_rolled_back_cannot_be_released_again():
    with pytest.raises(IllegalTransition):
        ensure_transition(DeploymentStatus.ROLLED_BACK, DeploymentStatus.SUCCEEDED)


@pytest.mark.parametrize(
    ("enum_cls", "start"),
    [
        (PromptStatus, PromptStatus.RECEIVED),
        (DeploymentStatus, DeploymentStatus.QUEUED),
        (ChangeJobStatus, ChangeJobStatus.QUEUED),
        (ModuleExecutionStatus, ModuleExecutionStatus.QUEUED),
        (OrderStatus, OrderStatus.PENDING),
        (PlanApprovalStatus, PlanApprovalStatus.PENDING),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_every_state_is_reachable_from_the_start_and_every_lifecycle_can_end(enum_cls, start):
    table = TRANSITIONS[enum_cls]

    def reachable(source: enum.Enum) -> set[enum.Enum]:
        seen, todo = {source}, [source]
        while todo:
            for nxt in table[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert reachable(start) == set(enum_cls)
    for state in enum_cls:
        assert any(is_terminal(s) for s in reachable(state)), f"{state} can never finish"


@pytest.mark.parametrize("ended", [ChangeJobStatus.CANCELLED, ChangeJobStatus.FAILED])
def test_a_retried_attempt_may_reopen_a_job_an_earlier_attempt_ended(ended):
    ensure_transition(ended, ChangeJobStatus.RUNNING)
    with pytest.raises(IllegalTransition):
        ensure_transition(ended, ChangeJobStatus.SUCCEEDED)
    with pytest.raises(IllegalTransition):
        ensure_transition(ChangeJobStatus.SUCCEEDED, ChangeJobStatus.RUNNING)
