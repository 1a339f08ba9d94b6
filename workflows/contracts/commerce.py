"""Payloads of the commerce modules: connector syncs, order file imports and reports. None
carries a secret: a workflow names its connector by id and the activity loads and decrypts the
credentials; none carries a file's content: an import names its staged file by id."""

import uuid
from datetime import date, datetime

from pydantic import BaseModel, Field

from models.commerce import ModuleExecutionStatus, ModuleKind, SyncStream

# Customers first, so each order's customer is current when the order links to it.
SYNC_STREAMS: tuple[SyncStream, ...] = (SyncStream.CUSTOMERS, SyncStream.ORDERS)
# Windows one run handles before it continues as new (its history stays short).
DEFAULT_WINDOWS_PER_RUN = 200


class SyncCounts(BaseModel):
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    def plus(self, other: "SyncCounts") -> "SyncCounts":
        return SyncCounts(
            fetched=self.fetched + other.fetched,
            inserted=self.inserted + other.inserted,
            updated=self.updated + other.updated,
            unchanged=self.unchanged + other.unchanged,
        )


class OrderSyncInput(BaseModel):
    """Start input of OrderSyncWorkflow (id `order-sync-<connector_id>`). Only connector_id is
    given by a starter; the rest is carried across continue-as-new."""

    connector_id: uuid.UUID
    windows_per_run: int = Field(default=DEFAULT_WINDOWS_PER_RUN, ge=1, le=10_000)
    # Set by the first run: the sync reads what the shop held up to this moment.
    until: datetime | None = None
    execution_id: uuid.UUID | None = None
    counts: dict[SyncStream, SyncCounts] = {}
    # Windows the sync's earlier runs (before continuing as new) read.
    windows_before: int = 0
    streams_done: list[SyncStream] = []
    # Started by a sync request (a webhook): the change it reports may lie in this very second,
    # so the sync waits the second out and reads it whole.
    requested: bool = False
    # A sync was requested after this one began reading: run once more at the end.
    sync_again: bool = False


def total(counts: dict[SyncStream, SyncCounts]) -> SyncCounts:
    result = SyncCounts()
    for part in counts.values():
        result = result.plus(part)
    return result


class OrderSyncResult(BaseModel):
    execution_id: uuid.UUID
    connector_id: uuid.UUID
    status: ModuleExecutionStatus
    counts: dict[SyncStream, SyncCounts]
    cursors: dict[str, datetime]
    # Windows read by the whole sync, across its continue-as-new runs.
    windows: int


class OpenModuleExecution(BaseModel):
    tenant_id: uuid.UUID | None = None
    connector_id: uuid.UUID | None = None
    module: ModuleKind
    run_key: str


class ModuleExecutionOpened(BaseModel):
    execution_id: uuid.UUID
    tenant_id: uuid.UUID


class CloseModuleExecution(BaseModel):
    execution_id: uuid.UUID
    status: ModuleExecutionStatus
    counts: SyncCounts = SyncCounts()
    error: str | None = None
    result: dict[str, object] = {}


class SyncWindow(BaseModel):
    connector_id: uuid.UUID
    stream: SyncStream
    until: datetime


class WindowSynced(BaseModel):
    stream: SyncStream
    window_start: datetime
    window_end: datetime
    counts: SyncCounts
    # The checkpoint after this window; the stream is done when it reached `until`.
    cursor: datetime
    done: bool
    # A Bulk Operation the window waits for (still running when the call gave up polling):
    # the workflow calls again once the bulk_operation_finished signal names it, or after
    # recheck_seconds without one (the polling fallback).
    bulk_operation: str | None = None
    recheck_seconds: float = 0.0


class ConnectorFailure(BaseModel):
    connector_id: uuid.UUID
    error: str


class StartOrderSync(BaseModel):
    """Input of the scheduled trigger: it starts the connector's sync unless one is running."""

    connector_id: uuid.UUID


class SyncRequested(BaseModel):
    """Signal `request_sync` of OrderSyncWorkflow, sent with signal-with-start by the webhooks
    endpoint: the source says something changed. It carries no data of the change: the sync
    reads the source, so a burst, a duplicate or an out-of-order delivery ends in the same
    rows. A request that arrives while a sync is reading makes it run once more at its end."""

    topic: str
    webhook_id: str = ""


class BulkOperationFinished(BaseModel):
    """Signal `bulk_operation_finished` of OrderSyncWorkflow, sent by the webhooks endpoint on
    Shopify's `bulk_operations/finish`: the operation (its admin_graphql_api_id) ended with
    `status` (completed, failed, canceled). A sync waiting for it reads it at once."""

    operation_id: str
    status: str = ""
    error_code: str | None = None


class SyncTriggered(BaseModel):
    workflow_id: str
    started: bool


# Row errors an import's record and result list; the count says how many there were in all.
MAX_ROW_ERRORS = 100


class OrderImportInput(BaseModel):
    """Start input of OrderImportWorkflow (id `order-import-<tenant>-<source>-<sha256>`): a file
    staged in PostgreSQL by `changeflow commerce import-orders`, by its id."""

    tenant_id: uuid.UUID
    import_id: uuid.UUID


class ImportOrders(BaseModel):
    """The import activity's input: the staged file and the run's record, which holds the
    progress (rows committed, counts) so a retried activity resumes after the last batch."""

    import_id: uuid.UUID
    execution_id: uuid.UUID


class RowError(BaseModel):
    """Why one row of a file was not imported. `row` is the row's number as a spreadsheet shows
    it (the CSV header is row 1), or its 1-based position in a JSON array."""

    row: int
    field: str
    message: str


class OrdersImported(BaseModel):
    # fetched = the file's valid rows; inserted + updated + unchanged = fetched.
    counts: SyncCounts
    rows: int
    row_errors: list[RowError]
    row_error_count: int


class OrderImportResult(BaseModel):
    execution_id: uuid.UUID
    import_id: uuid.UUID
    status: ModuleExecutionStatus
    counts: SyncCounts
    rows: int
    row_errors: list[RowError]
    row_error_count: int


class ReportInput(BaseModel):
    """Start input of ReportWorkflow: a tenant's figures for the days first_day..last_day in
    the shop's time zone (`timezone`, else the tenant's Shopify connector's, else UTC). Without
    dates: the day before `as_of` (the workflow sets it to when the run was due)."""

    tenant_id: uuid.UUID
    first_day: date | None = None
    last_day: date | None = None
    timezone: str | None = None
    as_of: datetime | None = None
    top_customers: int = Field(default=10, ge=1, le=100)


class DailyRevenue(BaseModel):
    day: date
    currency: str
    orders: int
    gross_cents: int
    discount_cents: int
    refunded_cents: int
    net_cents: int


class ChannelSales(BaseModel):
    channel: str
    currency: str
    orders: int
    net_cents: int


class CustomerAverage(BaseModel):
    currency: str
    new_customer_orders: int
    new_customer_aov_cents: int
    returning_customer_orders: int
    returning_customer_aov_cents: int


class TopCustomer(BaseModel):
    customer_id: uuid.UUID
    name: str
    email: str | None
    currency: str
    orders: int
    net_cents: int


class Report(BaseModel):
    tenant_id: uuid.UUID
    first_day: date
    last_day: date
    timezone: str
    daily: list[DailyRevenue]
    by_channel: list[ChannelSales]
    average_order_value: list[CustomerAverage]
    top_customers: list[TopCustomer]
    # Of the customers who ordered in the period, the share with two or more orders ever.
    repeat_purchase_rate: float
    customers: int


class ReportResult(BaseModel):
    execution_id: uuid.UUID
    report: Report
