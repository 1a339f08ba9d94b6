"""Every workflow and activity the project has, per task queue. The worker entry point, the
tests and the benchmarks all register from here, so nothing is forgotten in one of them."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from temporalio.client import Client

from infra.settings import Settings
from models.db import SessionFactory

if TYPE_CHECKING:
    from activities.connectors import Connections
    from activities.credentials import CredentialStore
    from activities.github_activities import GitHubActivities
    from activities.remote_repository import Repositories


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
    from workflows.commerce import OrderSyncTriggerWorkflow, OrderSyncWorkflow, ReportWorkflow
    from workflows.deployment import DeploymentWorkflow, RollbackWorkflow
    from workflows.lifecycle import PromptRequestWorkflow
    from workflows.notifications import TenantNotificationWorkflow
    from workflows.order_import import OrderImportWorkflow

    return [
        LedgerSweepWorkflow,
        PlanGrantWorkflow,
        DeploymentWorkflow,
        RollbackWorkflow,
        PromptRequestWorkflow,
        TenantNotificationWorkflow,
        OrderSyncWorkflow,
        OrderSyncTriggerWorkflow,
        ReportWorkflow,
        OrderImportWorkflow,
    ]


def versioned_workflows() -> list[type]:
    """The workflow classes with their Worker Versioning behaviours (workflows/versioned.py),
    for a worker serving a Worker Deployment version."""
    from workflows.versioned import VERSIONED

    missing = [cls.__name__ for cls in workflows() if cls not in VERSIONED]
    if missing:
        raise RuntimeError(f"no versioning behaviour chosen for {', '.join(missing)}")
    return [VERSIONED[cls] for cls in workflows()]


def lifecycle_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    """Short activities (database, ledger, planning) for settings.task_queue."""
    from activities.billing import BillingActivities
    from activities.change_engine import ChangeEngine
    from activities.decisions import DecisionActivities
    from activities.deployments import DeploymentActivities
    from activities.git_change_engine import GitChangeEngine
    from activities.lane import LaneActivities
    from activities.ledger import Ledger
    from activities.lifecycle import LifecycleActivities
    from activities.model_engine import ModelChangeEngine
    from activities.rollbacks import RollbackActivities
    from infra.decision_tokens import DecisionTokenVerifier
    from models.projects import ChangeEngineKind

    billing = BillingActivities(Ledger(deps.sessions))
    # The model engine's client is made on its first call: a worker whose projects never
    # choose it opens no connection.
    engines: dict[ChangeEngineKind, ChangeEngine] = {
        ChangeEngineKind.RULE: GitChangeEngine(),
        ChangeEngineKind.MODEL: ModelChangeEngine(deps.settings, deps.sessions),
    }
    on_github = github(deps)
    lifecycle = LifecycleActivities(
        deps.sessions,
        engines[deps.settings.change_engine],
        engines=engines,
        repositories=repositories(deps),
        github_head=on_github.head_of,
    )
    return [
        lifecycle.plan_request,
        lifecycle.open_approval,
        lifecycle.record_decision,
        lifecycle.apply_change,
        lifecycle.set_request_status,
        lifecycle.close_request_branch,
        billing.reserve_tokens,
        billing.settle_hold,
        billing.release_hold,
        billing.release_forgotten_holds,
        billing.charge_tokens,
        billing.sweep_expired_holds,
        billing.grant_plan_tokens,
        *DeploymentActivities(deps.sessions).activities(),
        *DecisionActivities(
            deps.sessions,
            DecisionTokenVerifier.from_settings(deps.settings),
            deps.settings.decision_tokens,
        ).activities(),
        *LaneActivities(deps.sessions, deps.client).activities(),
        *RollbackActivities(
            deps.sessions, repositories(deps), deps.settings.release_retention
        ).lifecycle_activities(),
        *commerce_activities(deps),
        *notification_activities(deps),
        *on_github.activities(),
    ]


def github(deps: Dependencies) -> "GitHubActivities":
    """A GitHub project's steps (activities/github_activities.py), on settings.task_queue, on
    one set of clients (one token cache)."""
    from activities.connectors import ConnectorService
    from activities.github_activities import GitHubActivities

    store, connections = credential_store(deps)
    connectors = ConnectorService(deps.sessions, store, connections)
    return GitHubActivities(connectors, connections, workflow_url=deps.settings.workflow_url)


def notification_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    """Delivery of tenant notifications to their webhooks, on settings.task_queue."""
    from activities.notifications import NotificationActivities

    _, connections = credential_store(deps)
    return NotificationActivities(
        deps.sessions, connections, ui_url=deps.settings.ui_url
    ).activities()


def commerce_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    """Connector syncs, order file imports and reports, on settings.task_queue."""
    from datetime import timedelta

    from activities.commerce_sync import CommerceSyncActivities
    from activities.connectors import ConnectorActivities, ConnectorService
    from activities.order_import import OrderImportActivities
    from activities.reports import ReportActivities

    s = deps.settings
    store, connections = credential_store(deps)
    return [
        *CommerceSyncActivities(
            deps.sessions,
            connections,
            window=timedelta(hours=s.sync_window_hours) if s.sync_window_hours else None,
            window_records=s.sync_window_records,
            bulk_first_sync=s.sync_bulk_first_sync,
            bulk_poll_seconds=s.sync_bulk_poll_seconds,
            bulk_wait_seconds=s.sync_bulk_wait_seconds,
            bulk_recheck_seconds=s.sync_bulk_recheck_seconds,
            bulk_window_records=s.sync_bulk_window_records,
            overlap=timedelta(seconds=s.sync_overlap_seconds),
            initial_lookback=timedelta(days=s.sync_initial_days),
        ).activities(),
        ConnectorActivities(
            ConnectorService(deps.sessions, store, connections)
        ).record_connector_failure,
        ReportActivities(deps.sessions).compute_report,
        *OrderImportActivities(deps.sessions, batch_rows=s.import_batch_rows).activities(),
    ]


def credential_store(deps: Dependencies) -> tuple["CredentialStore", "Connections"]:
    """The connectors' credential store under the settings' key ring, and their clients."""
    return connector_clients(deps.settings, deps.sessions)


def connector_clients(
    settings: Settings, sessions: SessionFactory
) -> tuple["CredentialStore", "Connections"]:
    """credential_store for code with no Temporal client (the `changeflow` command)."""
    from activities.connectors import Connections
    from activities.credentials import CredentialStore, KeyRing

    s = settings
    ring = (
        KeyRing.parse(s.credential_keys.get_secret_value(), s.credential_key_id)
        if s.credential_keys is not None
        else None
    )
    store = CredentialStore(sessions, ring)
    connections = Connections(store, api_version=s.shopify_api_version)
    # GitHub's content creation takes turns per installation across the whole fleet.
    connections.github_clients.writes.across_processes(sessions)
    return store, connections


def deploy_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    """Slow activities (release, verify, roll back) for settings.deploy_task_queue."""
    from activities.deploy_target import GitDeployTarget
    from activities.releases import ReleaseActivities
    from activities.rollbacks import RollbackActivities

    target = GitDeployTarget(deps.settings.resolved_workspace_dir)
    mirrors = repositories(deps)
    return [
        *ReleaseActivities(
            sessions=deps.sessions,
            target=target,
            repositories=mirrors,
            release_retention=deps.settings.release_retention,
        ).activities(),
        *RollbackActivities(
            deps.sessions, mirrors, deps.settings.release_retention
        ).deploy_activities(),
    ]


def repositories(deps: Dependencies) -> "Repositories":
    """Projects' repositories: local paths in place, remotes through this worker's mirrors."""
    from activities.remote_repository import Repositories

    store, _ = credential_store(deps)
    return Repositories(
        deps.settings.resolved_repository_cache_dir,
        deps.sessions,
        store,
        github_credentials=github(deps).git_credentials,
    )
