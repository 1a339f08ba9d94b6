"""The token ledger: accounts and their immutable entries."""

import enum
import uuid
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
    )

    id: uuid.UUID = id_field()
    # Money history outlives nothing by accident: a tenant with a ledger cannot be deleted.
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="RESTRICT")
    plan_tier: PlanTier = enum_field(PlanTier, PlanTier.FREE)
    # Cached sum of the entries; reconciliation proves it.
    balance: int = tokens_field()
    floor: int = tokens_field()
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
    )

    id: uuid.UUID = id_field()
    account_id: uuid.UUID = fk_field("token_accounts.id", ondelete="RESTRICT")
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="RESTRICT")
    direction: TokenDirection = enum_field(TokenDirection)
    kind: TokenTransactionKind = enum_field(TokenTransactionKind)
    amount: int = tokens_field()
    balance_after: int = tokens_field()
    idempotency_key: str = Field(max_length=300)
    reverses_id: uuid.UUID | None = fk_field(
        "token_transactions.id", ondelete="RESTRICT", nullable=True
    )
    description: str = Field(default="", max_length=500)
    meta: dict[str, Any] = json_field()
    created_at: datetime = created_at_field()

    account: TokenAccount = Relationship(back_populates="transactions")
    reverses: Optional["TokenTransaction"] = Relationship(
        sa_relationship_kwargs={"remote_side": "TokenTransaction.id"}
    )
