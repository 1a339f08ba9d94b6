"""Allowed state transitions, kept as data, and the one function that enforces them."""

import enum
from collections.abc import Mapping

from models.billing import TokenDirection
from models.commerce import ModuleExecutionStatus, OrderStatus
from models.lifecycle import ChangeJobStatus, DeploymentStatus, PlanApprovalStatus, PromptStatus
from models.projects import ConnectorStatus
from models.tenancy import PlanTier, UserRole


class IllegalTransition(ValueError):
    """A status change the lifecycle does not allow."""

    def __init__(self, current: enum.Enum, target: enum.Enum) -> None:
        allowed = sorted(s.value for s in TRANSITIONS[type(current)].get(current, frozenset()))
        super().__init__(
            f"{type(current).__name__} cannot go from {current.value!r} to {target.value!r}; "
            f"allowed from {current.value!r}: {allowed or 'none (terminal)'}"
        )
        self.current = current
        self.target = target


def _any_other(enum_cls: type[enum.Enum]) -> dict[enum.Enum, frozenset[enum.Enum]]:
    return {m: frozenset(o for o in enum_cls if o is not m) for m in enum_cls}


P = PromptStatus
_PROMPT_ABORTS = frozenset({P.CANCELLED, P.FAILED})

D = DeploymentStatus

TRANSITIONS: Mapping[type[enum.Enum], Mapping[enum.Enum, frozenset[enum.Enum]]] = {
    PromptStatus: {
        P.RECEIVED: frozenset({P.PLANNING}) | _PROMPT_ABORTS,
        P.PLANNING: frozenset({P.AWAITING_APPROVAL, P.APPROVED}) | _PROMPT_ABORTS,
        # Revising the prompt sends the request back to planning.
        P.AWAITING_APPROVAL: frozenset({P.APPROVED, P.REJECTED, P.EXPIRED, P.PLANNING})
        | _PROMPT_ABORTS,
        P.APPROVED: frozenset({P.DEPLOYING_STAGING}) | _PROMPT_ABORTS,
        # Overspending the estimate pauses a deploying request for a fresh approval; a change
        # the default branch already holds completes without a release.
        P.DEPLOYING_STAGING: frozenset(
            {P.DEPLOYING_PRODUCTION, P.ROLLED_BACK, P.AWAITING_APPROVAL, P.COMPLETED}
        )
        | _PROMPT_ABORTS,
        # A default branch that moved before production sends the rebased change to staging.
        P.DEPLOYING_PRODUCTION: frozenset(
            {P.COMPLETED, P.ROLLED_BACK, P.AWAITING_APPROVAL, P.DEPLOYING_STAGING}
        )
        | _PROMPT_ABORTS,
        P.COMPLETED: frozenset(),
        P.REJECTED: frozenset(),
        P.EXPIRED: frozenset(),
        P.CANCELLED: frozenset(),
        P.FAILED: frozenset(),
        P.ROLLED_BACK: frozenset(),
    },
    PlanApprovalStatus: {
        PlanApprovalStatus.PENDING: frozenset(
            {
                PlanApprovalStatus.APPROVED,
                PlanApprovalStatus.AUTO_APPROVED,
                PlanApprovalStatus.REJECTED,
                PlanApprovalStatus.EXPIRED,
                PlanApprovalStatus.SUPERSEDED,
                PlanApprovalStatus.CANCELLED,
            }
        ),
        # An approved plan is superseded when overspend needs a new amount approved.
        PlanApprovalStatus.APPROVED: frozenset(
            {PlanApprovalStatus.SUPERSEDED, PlanApprovalStatus.CANCELLED}
        ),
        PlanApprovalStatus.AUTO_APPROVED: frozenset(
            {PlanApprovalStatus.SUPERSEDED, PlanApprovalStatus.CANCELLED}
        ),
        PlanApprovalStatus.REJECTED: frozenset(),
        PlanApprovalStatus.EXPIRED: frozenset(),
        PlanApprovalStatus.SUPERSEDED: frozenset(),
        PlanApprovalStatus.CANCELLED: frozenset(),
    },
    DeploymentStatus: {
        D.QUEUED: frozenset({D.IN_PROGRESS, D.CANCELLED}),
        D.IN_PROGRESS: frozenset({D.VERIFYING, D.FAILED, D.CANCELLED}),
        D.VERIFYING: frozenset({D.SUCCEEDED, D.FAILED, D.CANCELLED}),
        # A released deployment is undone by a later rollback deployment.
        D.SUCCEEDED: frozenset({D.ROLLED_BACK}),
        D.FAILED: frozenset({D.ROLLED_BACK}),
        D.CANCELLED: frozenset({D.ROLLED_BACK}),
        D.ROLLED_BACK: frozenset(),
    },
    ChangeJobStatus: {
        ChangeJobStatus.QUEUED: frozenset(
            {ChangeJobStatus.RUNNING, ChangeJobStatus.CANCELLED, ChangeJobStatus.FAILED}
        ),
        ChangeJobStatus.RUNNING: frozenset(
            {ChangeJobStatus.SUCCEEDED, ChangeJobStatus.FAILED, ChangeJobStatus.CANCELLED}
        ),
        ChangeJobStatus.SUCCEEDED: frozenset(),
        # A retried activity attempt reopens the job its earlier attempt ended.
        ChangeJobStatus.FAILED: frozenset({ChangeJobStatus.RUNNING}),
        ChangeJobStatus.CANCELLED: frozenset({ChangeJobStatus.RUNNING}),
    },
    ConnectorStatus: {
        ConnectorStatus.PENDING: frozenset(
            {ConnectorStatus.ACTIVE, ConnectorStatus.ERROR, ConnectorStatus.DISABLED}
        ),
        ConnectorStatus.ACTIVE: frozenset({ConnectorStatus.ERROR, ConnectorStatus.DISABLED}),
        ConnectorStatus.ERROR: frozenset({ConnectorStatus.ACTIVE, ConnectorStatus.DISABLED}),
        ConnectorStatus.DISABLED: frozenset({ConnectorStatus.PENDING}),
    },
    ModuleExecutionStatus: {
        ModuleExecutionStatus.QUEUED: frozenset(
            {ModuleExecutionStatus.RUNNING, ModuleExecutionStatus.CANCELLED}
        ),
        ModuleExecutionStatus.RUNNING: frozenset(
            {
                ModuleExecutionStatus.SUCCEEDED,
                ModuleExecutionStatus.FAILED,
                ModuleExecutionStatus.CANCELLED,
            }
        ),
        ModuleExecutionStatus.SUCCEEDED: frozenset(),
        ModuleExecutionStatus.FAILED: frozenset(),
        ModuleExecutionStatus.CANCELLED: frozenset(),
    },
    OrderStatus: {
        OrderStatus.PENDING: frozenset({OrderStatus.PAID, OrderStatus.CANCELLED}),
        OrderStatus.PAID: frozenset(
            {OrderStatus.FULFILLED, OrderStatus.REFUNDED, OrderStatus.CANCELLED}
        ),
        OrderStatus.FULFILLED: frozenset({OrderStatus.REFUNDED}),
        OrderStatus.CANCELLED: frozenset(),
        OrderStatus.REFUNDED: frozenset(),
    },
    # Ledger entries are immutable: a direction never changes; corrections are new entries.
    TokenDirection: {d: frozenset() for d in TokenDirection},
    # Tiers and roles may change to any other value; the change itself is the audited event.
    PlanTier: _any_other(PlanTier),
    UserRole: _any_other(UserRole),
}


def ensure_transition(current: enum.Enum, target: enum.Enum) -> None:
    """Refuse a status change that TRANSITIONS does not list. Staying put is always allowed."""
    if type(current) is not type(target):
        raise TypeError(f"cannot compare {type(current).__name__} with {type(target).__name__}")
    if current is target:
        return
    if target not in TRANSITIONS[type(current)].get(current, frozenset()):
        raise IllegalTransition(current, target)


def is_terminal(status: enum.Enum) -> bool:
    return not TRANSITIONS[type(status)].get(status)
