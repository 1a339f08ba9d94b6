"""Tenant notifications: the tenant's webhook (a WEBHOOK connector, one per tenant, its signing
secret encrypted in the credential store) and the activity that delivers one event to it.

The lifecycle starts a TenantNotificationWorkflow per event (workflows/notifications.py); that
workflow's retry policy, not this activity, decides how long a receiver that is down is tried.
"""

import secrets
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from sqlmodel import col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.connectors import Connections, ConnectorError, ConnectorService
from activities.diffs import parse_unified_diff
from activities.risk import changes_to_verification
from activities.webhook_client import WebhookRejected, WebhookUnavailable
from models.db import SessionFactory
from models.lifecycle import DeploymentPlan
from models.projects import Connector, ConnectorKind, ConnectorStatus
from workflows.contracts.errors import ErrorType, refused
from workflows.contracts.ids import web_ui_workflow_url
from workflows.contracts.notifications import (
    FileChange,
    NotificationOutcome,
    TenantNotification,
)

log = structlog.get_logger(__name__)
WEBHOOK_NAME = "notifications"
# Retried by the delivery workflow's policy (not one of ErrorType: those are never retried).
UNAVAILABLE = "WebhookUnavailable"


def new_signing_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


async def tenant_webhook(
    sessions: SessionFactory, tenant_id: uuid.UUID, *, enabled_only: bool = False
) -> Connector | None:
    """The tenant's notification webhook (the newest, should there be more); with enabled_only,
    None when it is disabled (`notify remove`)."""
    statement = select(Connector).where(
        Connector.tenant_id == tenant_id, Connector.kind == ConnectorKind.WEBHOOK
    )
    if enabled_only:
        statement = statement.where(Connector.status != ConnectorStatus.DISABLED)
    async with sessions() as session:
        return (
            await session.exec(statement.order_by(col(Connector.created_at).desc()).limit(1))
        ).first()


class TenantWebhooks:
    """The operator's side (`changeflow notify ...`), through the connector lifecycle."""

    def __init__(self, sessions: SessionFactory, connectors: ConnectorService) -> None:
        self._sessions = sessions
        self._connectors = connectors

    async def find(self, tenant_id: uuid.UUID) -> Connector | None:
        return await tenant_webhook(self._sessions, tenant_id)

    async def set(self, tenant_id: uuid.UUID, *, url: str, secret: str) -> Connector:
        """Create the tenant's webhook, or give the existing one this URL and secret (a removed
        one comes back). Not tested: `test` sends the signed ping."""
        config, credentials = {"url": url}, {"signing_secret": secret}
        existing = await self.find(tenant_id)
        if existing is None:
            return await self._connectors.create(
                tenant_id=tenant_id,
                kind=ConnectorKind.WEBHOOK,
                name=WEBHOOK_NAME,
                config=config,
                credentials=credentials,
            )
        return await self._connectors.reconfigure(
            existing.id, config=config, credentials=credentials
        )

    async def test(self, tenant_id: uuid.UUID) -> Connector:
        return await self._connectors.test((await self._required(tenant_id)).id)

    async def remove(self, tenant_id: uuid.UUID) -> Connector:
        """Disable it: nothing more is sent; `set` brings it back."""
        return await self._connectors.disable((await self._required(tenant_id)).id)

    async def _required(self, tenant_id: uuid.UUID) -> Connector:
        webhook = await self.find(tenant_id)
        if webhook is None:
            raise ConnectorError(
                ErrorType.CONNECTOR_NOT_FOUND,
                f"tenant {tenant_id} has no notification webhook (set one with `notify set`)",
            )
        return webhook


class NotificationActivities:
    def __init__(self, sessions: SessionFactory, connections: Connections, *, ui_url: str):
        self._sessions = sessions
        self._connections = connections
        self._ui_url = ui_url

    @activity.defn
    async def notify_tenant(self, notification: TenantNotification) -> NotificationOutcome:
        """Post one event to the tenant's webhook, signed. A webhook removed since the event was
        decided on gets nothing. Raises WebhookUnavailable (retried) or WebhookRejected."""
        info = activity.info()
        bound = log.bind(
            tenant_id=str(notification.tenant_id),
            event_id=notification.id,
            event=notification.type.value,
            attempt=info.attempt,
        )
        webhook = await tenant_webhook(self._sessions, notification.tenant_id, enabled_only=True)
        if webhook is None:
            bound.info("notification skipped: the tenant has no webhook")
            return NotificationOutcome(delivered=False, detail="no webhook configured")
        notification = await self._with_plan_facts(notification)
        if notification.workflow_id:
            notification = notification.model_copy(
                update={
                    "web_ui_url": web_ui_workflow_url(
                        self._ui_url, info.namespace, notification.workflow_id
                    )
                }
            )
        try:
            async with self._connections.webhook(webhook) as hook:
                code = await hook.send(notification)
        except WebhookUnavailable as err:
            bound.warning("notification not delivered; retrying", error=str(err))
            raise ApplicationError(str(err), type=UNAVAILABLE) from None
        except WebhookRejected as err:
            bound.warning("notification refused by the webhook", error=str(err))
            raise refused(ErrorType.WEBHOOK_REJECTED, str(err)) from None
        except ConnectorError as err:  # the secret does not decrypt: no retry will change that
            raise refused(err.error_type, str(err)) from None
        bound.info("notification delivered", status_code=code)
        return NotificationOutcome(delivered=True, attempts=info.attempt)

    async def _with_plan_facts(self, notification: TenantNotification) -> TenantNotification:
        """An approval notice with what its plan changes, from the plan's row: the files with
        their line counts, and what it edits of its own verification."""
        approval = notification.approval
        if approval is None:
            return notification
        async with self._sessions() as session:
            plan = (
                await session.exec(
                    select(DeploymentPlan).where(
                        DeploymentPlan.id == approval.plan_id,
                        DeploymentPlan.tenant_id == notification.tenant_id,
                    )
                )
            ).one_or_none()
        if plan is None:
            return notification
        files = [
            FileChange(path=f.path, status=f.status, added=len(f.added), removed=len(f.removed))
            for f in parse_unified_diff(plan.diff)
        ]
        facts = {"files": files, "changes_verification": changes_to_verification(plan.risk_reasons)}
        return notification.model_copy(update={"approval": approval.model_copy(update=facts)})

    def activities(self) -> list[Callable[..., Any]]:
        return [self.notify_tenant]
