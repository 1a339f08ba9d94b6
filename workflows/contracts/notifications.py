"""Tenant notifications: what the lifecycle tells a tenant's webhook, and the delivery
workflow's input. No payload carries the webhook's URL or secret: the delivery activity loads
them (the secret decrypted) from the tenant's webhook connector.

The JSON body a receiver gets is a `TenantNotification` (``model_dump_json``), signed as
activities/webhook_signature.py says; its `type` is also in the ``Changeflow-Event`` header and
its `id` in ``Changeflow-Event-Id``.
"""

import enum
import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from models.lifecycle import PromptStatus, RiskLevel

NOTIFICATION_WORKFLOW_TYPE = "TenantNotificationWorkflow"


class NotificationEvent(enum.StrEnum):
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_REMINDER = "approval.reminder"
    REQUEST_ENDED = "request.ended"
    # Sent by `changeflow notify test` only: proves the URL and the secret.
    PING = "ping"


class FileChange(BaseModel):
    """One file a plan changes, with its changed line counts."""

    path: str
    status: str  # added | deleted | modified | renamed
    added: int
    removed: int


class ApprovalNotice(BaseModel):
    """What waits for approval (approval.requested and approval.reminder)."""

    plan_id: uuid.UUID
    revision: int
    summary: str
    risk_level: RiskLevel
    risk_reasons: list[str]
    token_estimate: int
    approvals_required: int
    approvals_so_far: int
    expires_at: datetime | None
    # Why a plan waits again after an approval (re-planned on the new base, overspent...).
    reason: str = ""
    # Filled by the delivery activity from the plan's row (the diff stays out of histories).
    files: list[FileChange] = Field(default_factory=list)
    # What the change edits of its own verification ("check.py (run by the check command)"):
    # when not empty, the system never approves it and people must read it.
    changes_verification: list[str] = Field(default_factory=list)


class EndedNotice(BaseModel):
    """How the request ended (request.ended)."""

    status: PromptStatus
    reason: str = ""


class TenantNotification(BaseModel):
    """One event for a tenant's webhook; also TenantNotificationWorkflow's input."""

    # Stable across delivery retries (the delivery workflow's id): receivers de-duplicate on it.
    id: str
    type: NotificationEvent
    # 1, 2, 3 ... per request, in the order the lifecycle sent its events (counted by the
    # workflow, so the same on every retry and replay). Each event is delivered on its own,
    # so after a receiver's outage they can arrive out of order: order them by this. 0: ping.
    sequence: int = Field(default=0, ge=0)
    created_at: datetime
    tenant_id: uuid.UUID
    project_id: uuid.UUID | None = None
    prompt_request_id: uuid.UUID | None = None
    # The lifecycle's workflow; the activity turns it into `web_ui_url` (it knows the Web UI).
    workflow_id: str = ""
    web_ui_url: str = ""
    approval: ApprovalNotice | None = None
    ended: EndedNotice | None = None


class NotificationOutcome(BaseModel):
    delivered: bool
    # Why nothing was delivered (no webhook configured any more); never a secret or the URL.
    detail: str = ""
    attempts: int = Field(default=0, ge=0)
