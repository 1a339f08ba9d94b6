"""Payloads of the token-ledger activities. Keys are derived, not passed: an activity combines
the calling workflow's id with `step`, so retries, replays and worker restarts reuse one key."""

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StrictInt

from models.billing import HoldStatus

# Strict: JSON `true`, `5.0` or `"5"` is refused, not read as a number of tokens.
Tokens = Annotated[StrictInt, Field(ge=0)]
PositiveTokens = Annotated[StrictInt, Field(gt=0)]


class ReserveTokens(BaseModel):
    tenant_id: uuid.UUID
    amount: PositiveTokens
    step: str = Field(min_length=1, max_length=100)
    ttl_seconds: int = Field(default=8 * 24 * 3600, gt=0)
    description: str = ""


class HoldView(BaseModel):
    hold_id: uuid.UUID
    account_id: uuid.UUID
    amount: int
    status: HoldStatus
    expires_at: datetime


class SettleHold(BaseModel):
    hold_id: uuid.UUID
    amount: Tokens
    step: str = Field(min_length=1, max_length=100)
    description: str = ""


class SettlementView(BaseModel):
    hold_id: uuid.UUID
    settled: int
    released: int
    transaction_id: uuid.UUID | None
    balance_after: int


class ReleaseHold(BaseModel):
    hold_id: uuid.UUID
    step: str = Field(min_length=1, max_length=100)


class ReleaseForgottenHolds(BaseModel):
    tenant_id: uuid.UUID
    # The holds the workflow knows of (it settles or releases those itself).
    known: list[uuid.UUID] = []


class ChargeTokens(BaseModel):
    tenant_id: uuid.UUID
    amount: PositiveTokens
    step: str = Field(min_length=1, max_length=100)
    description: str = ""


class EntryView(BaseModel):
    transaction_id: uuid.UUID
    account_id: uuid.UUID
    kind: str
    direction: str
    amount: int
    balance_after: int


class BalanceView(BaseModel):
    account_id: uuid.UUID
    tenant_id: uuid.UUID
    plan_tier: str
    balance: int
    floor: int
    held: int  # live (unexpired) holds
    available: int  # balance - held


class SweepExpiredHolds(BaseModel):
    batch_size: int = Field(default=1000, gt=0, le=10_000)


class SweepResult(BaseModel):
    expired: int


class GrantPlanTokens(BaseModel):
    """Grant every account its plan tier's tokens for a period (a calendar month, 'YYYY-MM');
    without one, the period the run was scheduled in."""

    period: str | None = None


class GrantResult(BaseModel):
    period: str
    accounts: int  # accounts that hold the period's grant (granted now or before)


class AlertView(BaseModel):
    alert_id: uuid.UUID
    account_id: uuid.UUID
    tenant_id: uuid.UUID
    threshold: int
    status: str  # open | resolved
    balance_at_alert: int
    created_at: datetime
    resolved_at: datetime | None
