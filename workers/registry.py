"""Every workflow and activity the project has, per task queue. The worker entry point, the
tests and the benchmarks all register from here, so nothing is forgotten in one of them."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from temporalio.client import Client

from models.db import SessionFactory
from workers.settings import Settings


@dataclass
class Dependencies:
    """What activity classes are built with."""

    settings: Settings
    sessions: SessionFactory
    # For activities that signal or describe workflows (the deployment lane).
    client: Client


def workflows() -> list[type]:
    """Workflow classes; all run on settings.task_queue."""
    from workflows.billing import LedgerSweepWorkflow, PlanGrantWorkflow
    from workflows.deployment import DeploymentWorkflow, RollbackWorkflow
    from workflows.lifecycle import PromptRequestWorkflow

    return [
        LedgerSweepWorkflow,
        PlanGrantWorkflow,
        DeploymentWorkflow,
        RollbackWorkflow,
        PromptRequestWorkflow,
    ]


def lifecycle_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    """Short activities (database, ledger, planning) for settings.task_queue."""
    from activities.billing import BillingActivities
    from activities.change_engine import ChangeEngine
    from activities.deployments import DeploymentActivities
    from activities.git_change_engine import GitChangeEngine
    from activities.lane import LaneActivities
    from activities.ledger import Ledger
    from activities.lifecycle import LifecycleActivities
    from activities.model_engine import ModelChangeEngine
    from activities.rollbacks import RollbackActivities
    from models.projects import ChangeEngineKind

    billing = BillingActivities(Ledger(deps.sessions))
    # The model engine's client is made on its first call: a worker whose projects never
    # choose it opens no connection.
    engines: dict[ChangeEngineKind, ChangeEngine] = {
        ChangeEngineKind.RULE: GitChangeEngine(),
        ChangeEngineKind.MODEL: ModelChangeEngine(deps.settings, deps.sessions),
    }
    lifecycle = LifecycleActivities(
        deps.sessions, engines[deps.settings.change_engine], engines=engines
    )
    return [
        lifecycle.plan_request,
        lifecycle.open_approval,
        lifecycle.record_decision,
        lifecycle.apply_change,
        lifecycle.set_request_status,
        billing.reserve_tokens,
        billing.settle_hold,
        billing.release_hold,
        billing.charge_tokens,
        billing.sweep_expired_holds,
        billing.grant_plan_tokens,
        *DeploymentActivities(deps.sessions).activities(),
        *LaneActivities(deps.sessions, deps.client).activities(),
        *RollbackActivities(deps.sessions).lifecycle_activities(),
    ]


def deploy_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    """Slow activities (release, verify, roll back) for settings.deploy_task_queue."""
    from activities.deploy_target import GitDeployTarget
    from activities.releases import ReleaseActivities
    from activities.rollbacks import RollbackActivities

    target = GitDeployTarget(deps.settings.resolved_workspace_dir)
    return [
        *ReleaseActivities(sessions=deps.sessions, target=target).activities(),
        *RollbackActivities(deps.sessions).deploy_activities(),
    ]
