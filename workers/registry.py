"""Every workflow and activity the project has, per task queue. The worker entry point, the
tests and the benchmarks all register from here, so nothing is forgotten in one of them."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from temporalio.client import Client

from models.db import SessionFactory
from workers.settings import Settings

if TYPE_CHECKING:
    from activities.releases import ReleaseActivities


@dataclass
class Dependencies:
    """What activity classes are built with."""

    settings: Settings
    sessions: SessionFactory
    # For activities that start or signal workflows (deployment lanes).
    client: Client


def workflows() -> list[type]:
    """Workflow classes; all run on settings.task_queue."""
    from workflows.billing import LedgerSweepWorkflow, PlanGrantWorkflow
    from workflows.deployment import DeploymentLaneWorkflow, DeploymentWorkflow, RollbackWorkflow
    from workflows.lifecycle import PromptRequestWorkflow

    return [
        LedgerSweepWorkflow,
        PlanGrantWorkflow,
        DeploymentLaneWorkflow,
        DeploymentWorkflow,
        RollbackWorkflow,
        PromptRequestWorkflow,
    ]


def lifecycle_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    """Short activities (database, ledger, planning) for settings.task_queue."""
    from activities.billing import BillingActivities
    from activities.delivery import DeliveryActivities
    from activities.git_change_engine import GitChangeEngine
    from activities.ledger import Ledger

    billing = BillingActivities(Ledger(deps.sessions))
    delivery = DeliveryActivities(deps.sessions, GitChangeEngine())
    return [
        delivery.plan_request,
        delivery.open_approval,
        delivery.record_decision,
        delivery.apply_change,
        delivery.set_request_status,
        billing.reserve_tokens,
        billing.settle_hold,
        billing.release_hold,
        billing.charge_tokens,
        billing.sweep_expired_holds,
        billing.grant_plan_tokens,
        *_releases(deps).lifecycle_activities(),
    ]


def deploy_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    """Slow activities (release, verify, roll back) for settings.deploy_task_queue."""
    return [*_releases(deps).deploy_activities()]


def _releases(deps: Dependencies) -> "ReleaseActivities":
    from activities.deploy_target import GitDeployTarget
    from activities.releases import ReleaseActivities

    return ReleaseActivities(
        sessions=deps.sessions,
        target=GitDeployTarget(deps.settings.resolved_workspace_dir),
        client=deps.client,
    )
