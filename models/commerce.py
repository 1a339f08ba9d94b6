"""Commerce records synced from a tenant's channels: module runs, customers, orders, the sync
checkpoints, the connectors' encrypted credentials and the order files staged for import."""

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
    ORDER_IMPORT = "order_import"
    # A privacy request or deletion the source sent (customers/redact, shop/redact,
    # customers/data_request, orders/delete): what was removed or found, recorded.
    PRIVACY = "privacy"


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
    # Orders and customers from an imported file (a POS or marketplace export); their
    # external ids are "<import source>/<id in the file>", so two sources never collide.
    IMPORT = "import"


class OrderStatus(enum.StrEnum):
    PENDING = "pending"
    PAID = "paid"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


class SyncStream(enum.StrEnum):
    ORDERS = "orders"
    CUSTOMERS = "customers"


def _money() -> Any:
    return Field(default=0, sa_type=sa.BigInteger, nullable=False)  # type: ignore[call-overload]


class ModuleExecution(SQLModel, table=True):
    __tablename__ = "module_executions"

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    connector_id: uuid.UUID | None = fk_field("connectors.id", ondelete="SET NULL", nullable=True)
    module: ModuleKind = enum_field(ModuleKind)
    status: ModuleExecutionStatus = enum_field(
        ModuleExecutionStatus, ModuleExecutionStatus.QUEUED, index=True
    )
    # The workflow run that owns this record: a retried start finds it instead of adding one.
    workflow_id: str = Field(default="", max_length=300)
    run_key: str = Field(default="", max_length=400, unique=True)
    records_processed: int = Field(default=0)
    fetched: int = Field(default=0)
    inserted: int = Field(default=0)
    updated: int = Field(default=0)
    unchanged: int = Field(default=0)
    # Per stream, the updated_at cursor (ISO 8601) when the run began and when it ended.
    cursor_before: dict[str, Any] = json_field()
    cursor_after: dict[str, Any] = json_field()
    error: str | None = Field(default=None)
    # A report's figures, or other module-specific output.
    meta: dict[str, Any] = json_field()
    started_at: datetime | None = timestamp_field()
    finished_at: datetime | None = timestamp_field()
    created_at: datetime = created_at_field()


class SyncCheckpoint(SQLModel, table=True):
    """How far a connector's stream is synced: everything updated before `cursor` is stored.
    Written in the same transaction as the window's upserts it accounts for."""

    __tablename__ = "sync_checkpoints"

    connector_id: uuid.UUID = Field(
        foreign_key="connectors.id", ondelete="CASCADE", primary_key=True
    )
    stream: str = Field(max_length=32, primary_key=True)  # a SyncStream
    cursor: datetime = timestamp_field(nullable=False)
    # A window read in parts (bounded by volume): its query's bounds and the source's page
    # cursor after the last committed part; a retried or later sync resumes there.
    window_start: datetime | None = timestamp_field()
    window_end: datetime | None = timestamp_field()
    page_after: str | None = Field(default=None, sa_type=sa.Text)  # type: ignore[call-overload]
    updated_at: datetime = updated_at_field()


class ConnectorCredential(SQLModel, table=True):
    """One secret field of a connector, AES-GCM encrypted under the key ring's `key_id`; the
    associated data binds it to (tenant, connector, field)."""

    __tablename__ = "connector_credentials"

    connector_id: uuid.UUID = Field(
        foreign_key="connectors.id", ondelete="CASCADE", primary_key=True
    )
    field: str = Field(max_length=64, primary_key=True)
    key_id: str = Field(max_length=64)
    nonce: bytes = Field(sa_type=sa.LargeBinary)  # type: ignore[call-overload]
    ciphertext: bytes = Field(sa_type=sa.LargeBinary)  # type: ignore[call-overload]
    # A token that expires (Shopify's client-credentials grant) is refreshed before this.
    expires_at: datetime | None = timestamp_field()
    updated_at: datetime = updated_at_field()


class OrderImportFile(SQLModel, table=True):
    """An order file as the CLI read it, staged so that a worker on another machine can import
    it. One row per (tenant, import source, content): staging the same file again finds it."""

    __tablename__ = "order_import_files"
    __table_args__ = (
        sa.UniqueConstraint(
            "tenant_id", "source", "sha256", name="uq_order_import_files_tenant_source_sha256"
        ),
    )

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    # The import source's name (pos, etsy, ...): the orders' channel unless a row names one.
    source: str = Field(max_length=40)
    sha256: str = Field(max_length=64)
    format: str = Field(max_length=8)  # an ImportFormat
    filename: str = Field(default="", max_length=300)
    size_bytes: int = Field(default=0)
    content: str = Field(sa_type=sa.Text)  # type: ignore[call-overload]
    created_at: datetime = created_at_field()


class Customer(SQLModel, table=True):
    __tablename__ = "customers"
    # Keyed by the source's id: a customer may have no email, and two sources may know one.
    __table_args__ = (
        sa.UniqueConstraint(
            "tenant_id", "source", "external_id", name="uq_customers_tenant_source_external"
        ),
    )

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    source: OrderSource = enum_field(OrderSource, OrderSource.MANUAL)
    external_id: str = Field(max_length=200)
    email: str | None = Field(default=None, max_length=320)
    name: str = Field(default="", max_length=200)
    phone: str | None = Field(default=None, max_length=50)
    # The source's own updated_at: an upsert never replaces a newer record by an older one.
    source_updated_at: datetime | None = timestamp_field()
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
    connector_id: uuid.UUID | None = fk_field("connectors.id", ondelete="SET NULL", nullable=True)
    # An order is a sales record: it stays when the customer profile is erased.
    customer_id: uuid.UUID | None = fk_field("customers.id", ondelete="SET NULL", nullable=True)
    source: OrderSource = enum_field(OrderSource)
    external_id: str = Field(max_length=200)
    name: str = Field(default="", max_length=100)
    # The sales channel within the source (Shopify's sourceName: web, pos, a marketplace).
    channel: str = Field(default="", max_length=100)
    status: OrderStatus = enum_field(OrderStatus, OrderStatus.PENDING)
    # Amounts in minor units of `currency`, the shop's currency (Shopify's shopMoney):
    # total = subtotal (after discounts) + shipping + taxes as placed; net = total - refunded.
    subtotal_cents: int = _money()
    discount_cents: int = _money()
    refunded_cents: int = _money()
    total_cents: int = _money()
    net_cents: int = _money()
    currency: str = Field(default="USD", max_length=3)
    # What the customer was charged in: the order's own currency (Shopify's presentmentMoney).
    # (Server defaults: writers that predate these columns, an order file's import, still work.)
    presentment_currency: str = Field(
        default="", max_length=3, sa_column_kwargs={"server_default": ""}
    )
    presentment_total_cents: int = Field(
        default=0,
        sa_type=sa.BigInteger,  # type: ignore[call-overload]
        nullable=False,
        sa_column_kwargs={"server_default": "0"},
    )
    # A test order (Shopify's `test`): never a sale in a report.
    test: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    # Each refund: {"at": ISO 8601, "cents": shop-currency minor units}, or none known (an
    # imported file: its `refunded` counts on the order's day). Reports count a refund on
    # its own day, as Shopify's reports do.
    refunds: list[dict[str, Any]] = Field(
        default_factory=list,
        sa_type=sa.JSON,  # type: ignore[call-overload]
        nullable=False,
        sa_column_kwargs={"server_default": "[]"},
    )
    line_items: list[dict[str, Any]] = json_field(list)
    placed_at: datetime | None = timestamp_field()
    cancelled_at: datetime | None = timestamp_field()
    source_updated_at: datetime | None = timestamp_field()
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()

    customer: Customer | None = Relationship(back_populates="orders")


class WebhookDelivery(SQLModel, table=True):
    """One accepted webhook delivery of a connector, by the source's delivery id (Shopify's
    X-Shopify-Webhook-Id). The unique key is the de-duplication: a redelivery inserts nothing
    and so starts nothing."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint(
            "connector_id", "webhook_id", name="uq_webhook_deliveries_connector_webhook"
        ),
    )

    id: uuid.UUID = id_field()
    connector_id: uuid.UUID = fk_field("connectors.id", ondelete="CASCADE", index=False)
    webhook_id: str = Field(max_length=200)
    topic: str = Field(max_length=100)
    received_at: datetime = created_at_field()
