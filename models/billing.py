"""The token ledger: accounts and their immutable entries."""

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Optional

import sqlalchemy as sa
from sqlmodel import Field, Relationship, SQLModel

from models.base import (
    created_at_field,
    enum_field,
    fk_field,
    id_field,
    json_field,
    timestamp_field,
    tokens_field,
    updated_at_field,
)
from models.tenancy import PlanTier

if TYPE_CHECKING:
    from models.tenancy import Tenant


class TokenDirection(enum.StrEnum):
    CREDIT = "credit"
    DEBIT = "debit"


class TokenTransactionKind(enum.StrEnum):
    GRANT = "grant"
    TOP_UP = "top_up"
    CHARGE = "charge"
    SETTLEMENT = "settlement"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class TokenAccount(SQLModel, table=True):
    __tablename__ = "token_accounts"
    __table_args__ = (
        sa.UniqueConstraint("tenant_id", "plan_tier", name="uq_token_accounts_tenant_tier"),
        sa.CheckConstraint("balance >= floor", name="ck_token_accounts_balance_floor"),
        # Holds are spent from the balance, so what they keep aside respects the floor too.
        sa.CheckConstraint("balance - held >= floor", name="ck_token_accounts_available_floor"),
        sa.CheckConstraint("held >= 0", name="ck_token_accounts_held_nonnegative"),
    )

    id: uuid.UUID = id_field()
    # Money history outlives nothing by accident: a tenant with a ledger cannot be deleted.
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="RESTRICT")
    plan_tier: PlanTier = enum_field(PlanTier, PlanTier.FREE)
    # Cached sum of the entries; reconciliation proves it.
    balance: int = tokens_field()
    floor: int = tokens_field()
    # Cached sum of active holds: available = balance - held, checked in the same UPDATE.
    held: int = tokens_field()
    # Sequence of the newest entry; entries are numbered 1..n in the order they applied.
    last_sequence: int = tokens_field()
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()

    tenant: "Tenant" = Relationship(back_populates="token_accounts")
    transactions: list["TokenTransaction"] = Relationship(
        back_populates="account", passive_deletes="all"
    )


class TokenTransaction(SQLModel, table=True):
    """One immutable ledger entry. Corrections are new entries, never edits."""

    __tablename__ = "token_transactions"
    __table_args__ = (
        sa.UniqueConstraint(
            "account_id", "idempotency_key", name="uq_token_transactions_account_key"
        ),
        sa.CheckConstraint("amount >= 0", name="ck_token_transactions_amount_positive"),
        sa.UniqueConstraint(
            "account_id", "sequence", name="uq_token_transactions_account_sequence"
        ),
        # A refund reverses its entry at most once; a hold is settled by at most one entry.
        sa.Index(
            "uq_token_transactions_reverses_once",
            "reverses_id",
            unique=True,
            postgresql_where=sa.text("reverses_id IS NOT NULL"),
        ),
        sa.Index(
            "uq_token_transactions_hold_settled_once",
            "hold_id",
            unique=True,
            postgresql_where=sa.text("hold_id IS NOT NULL"),
        ),
    )

    id: uuid.UUID = id_field()
    # Lookups by account use the (account_id, sequence) and (account_id, key) unique indexes.
    account_id: uuid.UUID = fk_field("token_accounts.id", ondelete="RESTRICT", index=False)
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="RESTRICT")
    direction: TokenDirection = enum_field(TokenDirection)
    kind: TokenTransactionKind = enum_field(TokenTransactionKind)
    amount: int = tokens_field()
    balance_after: int = tokens_field()
    # Position in the account's history: balance_after follows from the entry before.
    sequence: int = tokens_field()
    idempotency_key: str = Field(max_length=300)
    reverses_id: uuid.UUID | None = fk_field(
        "token_transactions.id", ondelete="RESTRICT", nullable=True, index=False
    )
    # The hold a settlement entry settles.
    hold_id: uuid.UUID | None = fk_field(
        "token_holds.id", ondelete="RESTRICT", nullable=True, index=False
    )
    description: str = Field(default="", max_length=500)
    meta: dict[str, Any] = json_field()
    created_at: datetime = created_at_field()

    account: TokenAccount = Relationship(back_populates="transactions")
    reverses: Optional["TokenTransaction"] = Relationship(
        sa_relationship_kwargs={"remote_side": "TokenTransaction.id"}
    )


class HoldStatus(enum.StrEnum):
    ACTIVE = "active"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"


class LedgerOperation(enum.StrEnum):
    GRANT = "grant"
    TOP_UP = "top_up"
    CHARGE = "charge"
    RESERVE = "reserve"
    SETTLE = "settle"
    RELEASE = "release"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class LedgerRequestOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class AlertStatus(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class TierAllowance:
    """What a plan tier grants per period and where its low-balance alerts sit."""

    grant_per_period: int
    low_balance_thresholds: tuple[int, ...]


# Plain data, so pricing changes are a reviewed diff rather than a migration.
TIER_ALLOWANCES: dict[PlanTier, TierAllowance] = {
    PlanTier.FREE: TierAllowance(grant_per_period=50_000, low_balance_thresholds=(10_000, 2_000)),
    PlanTier.STARTER: TierAllowance(
        grant_per_period=500_000, low_balance_thresholds=(100_000, 20_000)
    ),
    PlanTier.GROWTH: TierAllowance(
        grant_per_period=2_000_000, low_balance_thresholds=(400_000, 100_000, 20_000)
    ),
    PlanTier.SCALE: TierAllowance(
        grant_per_period=10_000_000, low_balance_thresholds=(2_000_000, 500_000, 100_000)
    ),
}


class TokenHold(SQLModel, table=True):
    """Tokens reserved for work not yet done (a TigerBeetle pending transfer): settled or
    released at most once; an expired hold is released by the sweep."""

    __tablename__ = "token_holds"
    __table_args__ = (
        sa.CheckConstraint("amount > 0", name="ck_token_holds_amount_positive"),
        sa.CheckConstraint(
            "settled_amount IS NULL OR settled_amount BETWEEN 0 AND amount",
            name="ck_token_holds_settled_within_amount",
        ),
        # An active hold is exactly an unresolved one (the ledger relies on either test).
        sa.CheckConstraint(
            "(status = 'active') = (resolved_at IS NULL)",
            name="ck_token_holds_active_unresolved",
        ),
        # The sweep and the per-account availability check look only at live holds.
        sa.Index(
            "ix_token_holds_active_expiry",
            "expires_at",
            postgresql_where=sa.text("status = 'active'"),
        ),
        sa.Index(
            "ix_token_holds_active_account",
            "account_id",
            postgresql_where=sa.text("status = 'active'"),
        ),
    )

    id: uuid.UUID = id_field()
    # Indexed by the unique key and the partial indexes; every index is paid on each write.
    account_id: uuid.UUID = fk_field("token_accounts.id", ondelete="RESTRICT", index=False)
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="RESTRICT", index=False)
    amount: int = tokens_field()
    status: HoldStatus = enum_field(HoldStatus, HoldStatus.ACTIVE)
    # The reserve request's key; its uniqueness lives in token_ledger_requests' primary key.
    idempotency_key: str = Field(max_length=300)
    expires_at: datetime = Field(sa_type=sa.DateTime(timezone=True), nullable=False)  # type: ignore[call-overload]
    settled_amount: int | None = Field(default=None, sa_type=sa.BigInteger, nullable=True)  # type: ignore[call-overload]
    description: str = Field(default="", max_length=500)
    created_at: datetime = created_at_field()
    resolved_at: datetime | None = timestamp_field()


class TokenLedgerRequest(SQLModel, table=True):
    """One idempotency record per key and account (Stripe's idempotency key): what was asked
    and how it ended. A failed request stays failed, so a retry cannot turn into a charge."""

    __tablename__ = "token_ledger_requests"
    __table_args__ = (
        # A hold is settled or released by one request, ever: TigerBeetle's post-or-void once.
        sa.Index(
            "uq_token_ledger_requests_hold_resolved_once",
            "hold_id",
            unique=True,
            postgresql_where=sa.text(
                "outcome = 'succeeded' AND operation IN ('settle', 'release')"
            ),
        ),
    )

    # The key is the identity (TigerBeetle's ids): one index, and it is the unique one.
    account_id: uuid.UUID = Field(
        foreign_key="token_accounts.id", ondelete="RESTRICT", primary_key=True
    )
    idempotency_key: str = Field(max_length=300, primary_key=True)
    operation: LedgerOperation = enum_field(LedgerOperation)
    # The request's fingerprint: the same key must come back with the same values.
    amount: int | None = Field(default=None, sa_type=sa.BigInteger, nullable=True)  # type: ignore[call-overload]
    subject_id: uuid.UUID | None = Field(default=None, nullable=True)
    outcome: LedgerRequestOutcome = enum_field(LedgerRequestOutcome)
    error_type: str | None = Field(default=None, max_length=50)
    error_message: str | None = Field(default=None, max_length=500)
    # Not indexed: entries and holds are never deleted, and replays look up by key.
    transaction_id: uuid.UUID | None = fk_field(
        "token_transactions.id", ondelete="RESTRICT", nullable=True, index=False
    )
    hold_id: uuid.UUID | None = fk_field(
        "token_holds.id", ondelete="RESTRICT", nullable=True, index=False
    )
    # The balance the request left behind, so a replay returns exactly the first answer.
    result_balance: int | None = Field(default=None, sa_type=sa.BigInteger, nullable=True)  # type: ignore[call-overload]
    created_at: datetime = created_at_field()


class TokenAlert(SQLModel, table=True):
    """A low-balance alert: opened when the balance crosses a tier threshold downward,
    resolved when it climbs back to it. At most one open alert per account and threshold."""

    __tablename__ = "token_alerts"
    __table_args__ = (
        sa.Index(
            "uq_token_alerts_open_threshold",
            "account_id",
            "threshold",
            unique=True,
            postgresql_where=sa.text("status = 'open'"),
        ),
    )

    id: uuid.UUID = id_field()
    account_id: uuid.UUID = fk_field("token_accounts.id", ondelete="RESTRICT")
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="RESTRICT")
    threshold: int = tokens_field()
    status: AlertStatus = enum_field(AlertStatus, AlertStatus.OPEN)
    balance_at_alert: int = tokens_field()
    transaction_id: uuid.UUID | None = fk_field(
        "token_transactions.id", ondelete="RESTRICT", nullable=True, index=False
    )
    created_at: datetime = created_at_field()
    resolved_at: datetime | None = timestamp_field()
