"""Commerce records synced from a tenant's channels: module runs, customers and orders."""

import enum
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, Relationship, SQLModel

from models.base import (
    created_at_field,
    enum_field,
    fk_field,
    id_field,
    json_field,
    timestamp_field,
    updated_at_field,
)


class ModuleKind(enum.StrEnum):
    ORDER_SYNC = "order_sync"
    CUSTOMER_SYNC = "customer_sync"
    REPORT = "report"


class ModuleExecutionStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class OrderSource(enum.StrEnum):
    SHOPIFY = "shopify"
    WOOCOMMERCE = "woocommerce"
    POS = "pos"
    MANUAL = "manual"


class OrderStatus(enum.StrEnum):
    PENDING = "pending"
    PAID = "paid"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


class ModuleExecution(SQLModel, table=True):
    __tablename__ = "module_executions"

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    connector_id: uuid.UUID | None = fk_field("connectors.id", ondelete="SET NULL", nullable=True)
    module: ModuleKind = enum_field(ModuleKind)
    status: ModuleExecutionStatus = enum_field(
        ModuleExecutionStatus, ModuleExecutionStatus.QUEUED, index=True
    )
    records_processed: int = Field(default=0)
    error: str | None = Field(default=None)
    meta: dict[str, Any] = json_field()
    started_at: datetime | None = timestamp_field()
    finished_at: datetime | None = timestamp_field()
    created_at: datetime = created_at_field()


class Customer(SQLModel, table=True):
    __tablename__ = "customers"
    __table_args__ = (sa.UniqueConstraint("tenant_id", "email", name="uq_customers_tenant_email"),)

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    email: str = Field(max_length=320)
    name: str = Field(default="", max_length=200)
    phone: str | None = Field(default=None, max_length=50)
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()

    orders: list["Order"] = Relationship(back_populates="customer", passive_deletes="all")


class Order(SQLModel, table=True):
    __tablename__ = "orders"
    __table_args__ = (
        sa.UniqueConstraint(
            "tenant_id", "source", "external_id", name="uq_orders_tenant_source_external"
        ),
    )

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    # An order is a sales record: it stays when the customer profile is erased.
    customer_id: uuid.UUID | None = fk_field("customers.id", ondelete="SET NULL", nullable=True)
    source: OrderSource = enum_field(OrderSource)
    external_id: str = Field(max_length=200)
    status: OrderStatus = enum_field(OrderStatus, OrderStatus.PENDING)
    total_cents: int = Field(default=0, sa_type=sa.BigInteger)  # type: ignore[call-overload]
    currency: str = Field(default="USD", max_length=3)
    placed_at: datetime | None = timestamp_field()
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()

    customer: Customer | None = Relationship(back_populates="orders")
