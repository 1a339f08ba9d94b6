"""The order and customer sync's activities: one window of one stream per call, its upserts
and its checkpoint in one transaction, and the ModuleExecution record of the run.

Windows are half-open on the source's updated_at, [cursor - overlap, cursor + window), and the
next cursor is the window's end. The overlap re-reads a little before the checkpoint, so a
record indexed late at the boundary is not missed; the upsert only replaces a stored record by
a strictly newer one, so what is re-read is counted as unchanged, never twice.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from activities.connectors import Connections, ConnectorError
from activities.shopify import (
    ShopifyClient,
    ShopifyError,
    ShopifyUnavailable,
    bulk_query,
    minor_units,
)
from models.base import utcnow
from models.commerce import (
    Customer,
    ModuleExecution,
    ModuleExecutionStatus,
    ModuleKind,
    Order,
    OrderSource,
    OrderStatus,
    SyncCheckpoint,
    SyncStream,
)
from models.db import SessionFactory
from models.projects import Connector, ConnectorStatus
from models.transitions import IllegalTransition, ensure_transition
from workflows.contracts.commerce import (
    CloseModuleExecution,
    ModuleExecutionOpened,
    OpenModuleExecution,
    SyncCounts,
    SyncWindow,
    WindowSynced,
)
from workflows.contracts.errors import ErrorType, refused

# Rows per INSERT statement (arrays: no bind-parameter limit; bounded for memory).
UPSERT_BATCH = 5000
# Records one window call reads and commits at most (settings.sync_window_records): bounded
# memory, and a part that fits the activity's time limit even at Shopify's standard rate
# (about 5 orders a second with line items: some 8 minutes); a busy day is read in parts.
WINDOW_RECORDS = 2500
# A checkpoint's page_after while a Bulk Operation is read:
# "bulk:<operation id>|<records done>|<fetched>,<inserted>,<updated>,<unchanged>", the counts
# of the batches committed so far (a mark without them, written before they were kept, reads
# as none).
BULK_MARK = "bulk:"
# How long one activity call polls a running Bulk Operation before it hands the wait to the
# workflow, and the workflow's recheck when no bulk_operations/finish webhook wakes it.
BULK_WAIT_SECONDS = 20.0
BULK_RECHECK_SECONDS = 60.0
# A later (incremental) window with more records than this is read by a Bulk Operation.
BULK_WINDOW_RECORDS = 5000
_NEVER = datetime.min.replace(tzinfo=UTC)


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _name(node: dict[str, Any]) -> str:
    return " ".join(p for p in (node.get("firstName"), node.get("lastName")) if p)[:200]


def customer_row(tenant_id: uuid.UUID, node: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "source": OrderSource.SHOPIFY.value,
        "external_id": node["id"],
        "email": (node.get("defaultEmailAddress") or {}).get("emailAddress") or None,
        "name": _name(node),
        "phone": (node.get("defaultPhoneNumber") or {}).get("phoneNumber") or None,
        "source_updated_at": _when(node.get("updatedAt")),
    }


def order_status(node: dict[str, Any]) -> OrderStatus:
    """The source is the truth: whatever state it reports, seen before or not."""
    if node.get("cancelledAt"):
        return OrderStatus.CANCELLED
    financial = node.get("displayFinancialStatus")
    if financial == "REFUNDED":
        return OrderStatus.REFUNDED
    if financial in ("PAID", "PARTIALLY_REFUNDED", "PARTIALLY_PAID"):
        if node.get("displayFulfillmentStatus") == "FULFILLED":
            return OrderStatus.FULFILLED
        return OrderStatus.PAID
    return OrderStatus.PENDING


def _bag(bag: dict[str, Any] | None, side: str) -> tuple[str | None, str | None]:
    money = (bag or {}).get(side) or {}
    return money.get("amount"), money.get("currencyCode")


def order_row(
    tenant_id: uuid.UUID,
    connector_id: uuid.UUID,
    node: dict[str, Any],
    customers: dict[str, uuid.UUID],
) -> dict[str, Any]:
    """An order in the shop's currency (shopMoney; Order.currencyCode is the shop's), with
    what the customer was charged in its own currency (presentmentMoney) beside it."""
    currency = _bag(node.get("totalPriceSet"), "shopMoney")[1] or node.get("currencyCode") or "USD"

    def money(bag: dict[str, Any] | None) -> int:
        return minor_units(_bag(bag, "shopMoney")[0], currency)

    total, refunded = money(node.get("totalPriceSet")), money(node.get("totalRefundedSet"))
    presented, presented_currency = _bag(node.get("totalPriceSet"), "presentmentMoney")
    presented_currency = presented_currency or node.get("presentmentCurrencyCode") or currency
    customer = node.get("customer") or {}
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "connector_id": connector_id,
        "customer_id": customers.get(customer.get("id", "")),
        "source": OrderSource.SHOPIFY.value,
        "external_id": node["id"],
        "name": (node.get("name") or "")[:100],
        "channel": (node.get("sourceName") or "")[:100],
        "status": order_status(node).value,
        "subtotal_cents": money(node.get("subtotalPriceSet")),
        "discount_cents": money(node.get("totalDiscountsSet")),
        "refunded_cents": refunded,
        "total_cents": total,
        "net_cents": total - refunded,
        "currency": currency,
        "presentment_currency": presented_currency,
        "presentment_total_cents": minor_units(presented, presented_currency),
        "test": bool(node.get("test")),
        "refunds": [
            {"at": refund["createdAt"], "cents": money(refund.get("totalRefundedSet"))}
            for refund in node.get("refunds") or []
        ],
        "line_items": [
            {
                "id": item["id"],
                "title": item.get("title", ""),
                "sku": item.get("sku"),
                "quantity": item.get("quantity", 0),
                "unit_price_cents": money(item.get("originalUnitPriceSet")),
            }
            for item in ((node.get("lineItems") or {}).get("nodes") or [])
        ],
        "placed_at": _when(node.get("processedAt") or node.get("createdAt")),
        "cancelled_at": _when(node.get("cancelledAt")),
        "source_updated_at": _when(node.get("updatedAt")),
    }


def _latest(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per external id, the newest: one statement may not touch a row twice."""
    newest: dict[str, dict[str, Any]] = {}
    for row in rows:
        seen = newest.get(row["external_id"])
        if seen is None or (row["source_updated_at"] or _NEVER) > (
            seen["source_updated_at"] or _NEVER
        ):
            newest[row["external_id"]] = row
    return list(newest.values())


def _array_type(column: sa.Column[Any]) -> str:
    """The PostgreSQL array type a column's values travel in (JSON as text, cast back)."""
    kind = column.type
    if isinstance(kind, sa.Uuid):
        return "uuid[]"
    if isinstance(kind, sa.DateTime):
        return "timestamptz[]"
    if isinstance(kind, sa.Integer):
        return "bigint[]"
    if isinstance(kind, sa.Boolean):
        return "boolean[]"
    return "text[]"


def upsert_statement(table: type[Customer] | type[Order], columns: list[str]) -> str:
    """One INSERT of unnested column arrays: new records in, stored ones replaced only by a
    strictly newer one (by the source's updated_at); RETURNING says which rows were inserted."""
    sa_table: sa.Table = table.__table__  # type: ignore[union-attr]
    name = sa_table.name
    types = [_array_type(sa_table.c[c]) for c in columns]
    selected = [
        f"u.{c}::json" if isinstance(sa_table.c[c].type, sa.JSON) else f"u.{c}" for c in columns
    ]
    replaced = [c for c in columns if c not in ("id", "tenant_id", "source", "external_id")]
    return (
        f"INSERT INTO {name} ({', '.join(columns)}, created_at, updated_at) "
        f"SELECT {', '.join(selected)}, now(), now() "
        f"FROM unnest({', '.join(f'${i + 1}::{t}' for i, t in enumerate(types))}) "
        f"AS u({', '.join(columns)}) "
        "ON CONFLICT (tenant_id, source, external_id) DO UPDATE SET "
        f"{', '.join(f'{c} = excluded.{c}' for c in replaced)}, updated_at = now() "
        f"WHERE {name}.source_updated_at IS NULL "
        f"OR {name}.source_updated_at < excluded.source_updated_at "
        "RETURNING (xmax = 0)"
    )


async def upsert(
    session: AsyncSession, table: type[Customer] | type[Order], rows: list[dict[str, Any]]
) -> SyncCounts:
    """Insert new records and replace stored ones by strictly newer ones, keyed by (tenant,
    source, external id), in the session's transaction; counts inserted, updated, unchanged."""
    rows = _latest(rows)
    counts = SyncCounts(fetched=len(rows))
    if not rows:
        return counts
    columns = list(rows[0])
    sa_table: sa.Table = table.__table__  # type: ignore[union-attr]
    json_columns = {c for c in columns if isinstance(sa_table.c[c].type, sa.JSON)}
    statement = upsert_statement(table, columns)
    # One statement per batch, the columns as arrays.
    driver = await _driver(session)
    for start in range(0, len(rows), UPSERT_BATCH):
        batch = rows[start : start + UPSERT_BATCH]
        arrays = [
            [json.dumps(r[c]) for r in batch] if c in json_columns else [r[c] for r in batch]
            for c in columns
        ]
        written = await driver.fetch(statement, *arrays)
        inserted = sum(1 for record in written if record[0])
        counts.inserted += inserted
        counts.updated += len(written) - inserted
    counts.unchanged = counts.fetched - counts.inserted - counts.updated
    return counts


async def upsert_customers(
    session: AsyncSession, rows: list[dict[str, Any]]
) -> dict[str, uuid.UUID]:
    """Upsert customer rows of one tenant and source (see upsert) and return the stored ids
    of their external ids, for the orders that link to them."""
    if not rows:
        return {}
    await upsert(session, Customer, rows)
    found = await (await _driver(session)).fetch(
        "SELECT external_id, id FROM customers "
        "WHERE tenant_id = $1 AND source = $2 AND external_id = ANY($3::text[])",
        rows[0]["tenant_id"],
        rows[0]["source"],
        list({row["external_id"] for row in rows}),
    )
    return {external: cid for external, cid in found}


async def _driver(session: AsyncSession) -> Any:
    """The session's own asyncpg connection (its transaction), for statements of arrays."""
    raw = await (await session.connection()).get_raw_connection()
    assert raw.driver_connection is not None
    return raw.driver_connection


class CommerceSyncActivities:
    def __init__(
        self,
        sessions: SessionFactory,
        connections: Connections,
        *,
        window: timedelta | None,
        overlap: timedelta,
        initial_lookback: timedelta,
        window_records: int = WINDOW_RECORDS,
        bulk_first_sync: bool = True,
        bulk_poll_seconds: float = 1.0,
        bulk_wait_seconds: float = BULK_WAIT_SECONDS,
        bulk_recheck_seconds: float = BULK_RECHECK_SECONDS,
        bulk_window_records: int = BULK_WINDOW_RECORDS,
    ) -> None:
        self._sessions = sessions
        self._connections = connections
        # A window spans at most this long (None: up to the sync's end) and reads at most
        # window_records records per activity call (more: the window is read in parts).
        self._window = window
        self._window_records = window_records
        # A first sync by Bulk Operations (not rate-limited), polled this often for up to
        # bulk_wait_seconds per call; then the workflow waits for the bulk_operations/finish
        # webhook, or bulk_recheck_seconds. A later window of more than bulk_window_records
        # records (0: never) is read by a Bulk Operation too.
        self._bulk_first_sync = bulk_first_sync
        self._bulk_poll_seconds = bulk_poll_seconds
        self._bulk_wait_seconds = bulk_wait_seconds
        self._bulk_recheck_seconds = bulk_recheck_seconds
        self._bulk_window_records = bulk_window_records
        self._overlap = overlap
        self._initial_lookback = initial_lookback

    def activities(self) -> list[Any]:
        return [self.open_module_execution, self.sync_window, self.close_module_execution]

    @activity.defn
    async def open_module_execution(self, request: OpenModuleExecution) -> ModuleExecutionOpened:
        """The run's record, created once per run key (a retried call finds it), running."""
        async with self._sessions() as session, session.begin():
            tenant_id = request.tenant_id
            cursors: dict[str, Any] = {}
            if request.connector_id is not None:
                connector = await session.get(Connector, request.connector_id)
                if connector is None:
                    raise refused(
                        ErrorType.CONNECTOR_NOT_FOUND, f"no connector {request.connector_id}"
                    )
                tenant_id = connector.tenant_id
                cursors = await _cursors(session, connector.id)
            if tenant_id is None:
                raise refused(ErrorType.UNKNOWN_TENANT, "a module run needs a tenant")
            stmt = (
                insert(ModuleExecution)
                .values(
                    id=uuid.uuid4(),
                    tenant_id=tenant_id,
                    connector_id=request.connector_id,
                    module=request.module.value,
                    status=ModuleExecutionStatus.RUNNING.value,
                    workflow_id=activity.info().workflow_id,
                    run_key=request.run_key,
                    cursor_before=cursors,
                    cursor_after={},
                    meta={},
                    started_at=utcnow(),
                )
                .on_conflict_do_nothing(index_elements=["run_key"])
            )
            await (await session.connection()).execute(stmt)
            if request.connector_id is not None:
                # One sync per connector at a time: a record still running is one whose run
                # ended without closing it (terminated, timed out).
                await close_ended_runs(
                    session,
                    request.connector_id,
                    "the sync ended without closing its record (terminated or timed out)",
                    keep=request.run_key,
                )
            execution = (
                await session.exec(
                    select(ModuleExecution).where(ModuleExecution.run_key == request.run_key)
                )
            ).one()
        return ModuleExecutionOpened(execution_id=execution.id, tenant_id=tenant_id)

    @activity.defn
    async def close_module_execution(self, request: CloseModuleExecution) -> None:
        """Persist the outcome the workflow decided."""
        async with self._sessions() as session, session.begin():
            execution = await session.get(
                ModuleExecution, request.execution_id, with_for_update=True
            )
            if execution is None:
                raise refused(ErrorType.INVALID_REQUEST, f"no module run {request.execution_id}")
            if execution.status is request.status:
                return
            try:
                ensure_transition(execution.status, request.status)
            except IllegalTransition as err:
                raise refused(ErrorType.ILLEGAL_TRANSITION, str(err)) from None
            execution.status = request.status
            execution.fetched = request.counts.fetched
            execution.inserted = request.counts.inserted
            execution.updated = request.counts.updated
            execution.unchanged = request.counts.unchanged
            execution.records_processed = request.counts.fetched
            execution.error = request.error
            execution.meta = {**execution.meta, **request.result}
            if execution.connector_id is not None:
                execution.cursor_after = await _cursors(session, execution.connector_id)
            execution.finished_at = utcnow()
            session.add(execution)
            if execution.connector_id is not None and execution.module is ModuleKind.ORDER_SYNC:
                # A connector whose syncs fail says why where people look (connector show,
                # list); a sync that succeeds clears it.
                failed = request.status is ModuleExecutionStatus.FAILED
                await (await session.connection()).execute(
                    sa.update(Connector)
                    .where(
                        col(Connector.id) == execution.connector_id,
                        col(Connector.status) == ConnectorStatus.ACTIVE,
                    )
                    .values(last_error=f"sync failed: {request.error}" if failed else None)
                )

    @activity.defn
    async def sync_window(self, request: SyncWindow) -> WindowSynced:
        """Fetch one window of one stream and store it with its checkpoint, atomically."""
        async with self._sessions() as session:
            connector = await session.get(Connector, request.connector_id)
            checkpoint = await session.get(
                SyncCheckpoint, (request.connector_id, request.stream.value)
            )
        if connector is None:
            raise refused(ErrorType.CONNECTOR_NOT_FOUND, f"no connector {request.connector_id}")
        if connector.status is not ConnectorStatus.ACTIVE:
            raise refused(
                ErrorType.CONNECTOR_NOT_ACTIVE,
                f"connector {connector.id} is {connector.status.value}, not active"
                + (f": {connector.last_error}" if connector.last_error else ""),
            )
        # Whole seconds: Shopify's updated_at and its search syntax have no finer precision.
        until = request.until.replace(microsecond=0)
        cursor = checkpoint.cursor if checkpoint else until - self._initial_lookback
        after: str | None = None
        bulk = checkpoint.page_after if checkpoint and checkpoint.page_after else ""
        if (checkpoint is None and self._bulk_first_sync) or bulk.startswith(BULK_MARK):
            # A first sync: one Bulk Operation per stream, not pages under the rate limit.
            start = checkpoint.window_start if checkpoint and checkpoint.window_start else cursor
            end = checkpoint.window_end if checkpoint and checkpoint.window_end else until
            return await self._bulk_window(connector, request.stream, start, end, bulk)
        if (
            checkpoint
            and checkpoint.page_after
            and checkpoint.window_start
            and checkpoint.window_end
        ):
            # A window read in part: the same query, from the page after the last part.
            start, end, after = (
                checkpoint.window_start,
                checkpoint.window_end,
                checkpoint.page_after,
            )
        elif cursor >= until:
            return WindowSynced(
                stream=request.stream,
                window_start=cursor,
                window_end=cursor,
                counts=SyncCounts(),
                cursor=cursor,
                done=True,
            )
        else:
            start = cursor - self._overlap if checkpoint else cursor
            end = until if self._window is None else min(cursor + self._window, until)
        nodes: list[dict[str, Any]] = []
        # Where the next part of this window starts, when it is cut by volume.
        resume: str | None = None
        by_bulk = False
        try:
            async with self._connections.shopify(
                connector, on_wait=lambda seconds: activity.heartbeat(f"throttled {seconds:.1f}s")
            ) as shop:
                async for page in shop.pages(request.stream.value, start, end, after):
                    if after is None and not nodes and page.has_next:
                        # More than a page: a window this big (a sale, an app's bulk edit,
                        # a long pause) is read by a Bulk Operation, not under the rate limit.
                        by_bulk = await self._too_big_for_pages(shop, request.stream, start, end)
                        if by_bulk:
                            break
                    nodes.extend(page.nodes)
                    activity.heartbeat(len(nodes))
                    if page.has_next and len(nodes) >= self._window_records:
                        resume = page.end_cursor
                        break
                if not nodes and self._window is not None:
                    # A quiet stretch (a first sync's years before the shop opened, a
                    # shop closed for a season): the checkpoint steps to the next update
                    # instead of walking it window by window.
                    following = await shop.next_update(request.stream.value, end)
                    end = until if following is None else min(until, max(end, following))
        except (ShopifyError, ConnectorError) as err:
            raise refused(err.error_type, str(err)) from None
        if by_bulk:
            return await self._bulk_window(connector, request.stream, start, end, "")
        # In part: the checkpoint stays at the window's start and remembers the page.
        committed = cursor if resume else end
        async with self._sessions() as session, session.begin():
            counts = await self._store(session, connector, request.stream, nodes)
            await _note_shop_answer(session, connector.id, shop, counts)
            part = {
                "window_start": start if resume else None,
                "window_end": end if resume else None,
                "page_after": resume,
            }
            stmt = insert(SyncCheckpoint).values(
                connector_id=connector.id, stream=request.stream.value, cursor=committed, **part
            )
            await (await session.connection()).execute(
                stmt.on_conflict_do_update(
                    index_elements=["connector_id", "stream"],
                    set_={
                        "cursor": sa.func.greatest(SyncCheckpoint.cursor, stmt.excluded.cursor),
                        **{name: getattr(stmt.excluded, name) for name in part},
                        "updated_at": sa.func.now(),
                    },
                )
            )
            await (await session.connection()).execute(
                sa.update(Connector)
                .where(col(Connector.id) == connector.id)
                .values(last_synced_at=sa.func.now())
            )
        return WindowSynced(
            stream=request.stream,
            window_start=start,
            window_end=end,
            counts=counts,
            cursor=committed,
            done=resume is None and end >= until,
        )

    async def _too_big_for_pages(
        self, shop: ShopifyClient, stream: SyncStream, start: datetime, end: datetime
    ) -> bool:
        if not self._bulk_window_records:
            return False
        limit = self._bulk_window_records + 1
        return await shop.count(stream.value, start, end, limit) > self._bulk_window_records

    async def _bulk_window(
        self, connector: Connector, stream: SyncStream, start: datetime, end: datetime, mark: str
    ) -> WindowSynced:
        """The stream's records of [start, end) by a Bulk Operation: started (or found again
        after a retry), polled for a while, its JSONL streamed and upserted in batches, each
        batch committed with a checkpoint naming the operation and the records done, so a
        retry skips them. Order lines come before their line items (`__parentId`). An
        operation still running when the polling ends is handed back to the workflow
        (`bulk_operation`), which waits for Shopify's bulk_operations/finish webhook and
        calls again."""
        counts = SyncCounts()
        try:
            async with self._connections.shopify(
                connector, on_wait=lambda seconds: activity.heartbeat(f"throttled {seconds:.1f}s")
            ) as shop:
                if mark:
                    # A retry: what the attempts before it committed is skipped, and counted.
                    operation_id, skip, counts = read_bulk_mark(mark)
                else:
                    operation_id = await self._start_bulk(shop, stream, start, end)
                    skip = 0
                    await self._bulk_checkpoint(
                        connector, stream, start, end, f"{BULK_MARK}{operation_id}|0"
                    )
                try:
                    finished, url, age = await self._bulk_result(shop, operation_id)
                except BulkOperationEnded:
                    # Failed, cancelled or expired: nothing of it was read (it has no result);
                    # the window starts a new one, and a retry finds that one.
                    operation_id = await self._start_bulk(shop, stream, start, end)
                    await self._bulk_checkpoint(
                        connector, stream, start, end, f"{BULK_MARK}{operation_id}|0"
                    )
                    raise
                if not finished:
                    # Rechecked sooner while the operation is young (a mid-sized shop's takes
                    # seconds): after a quarter of its age, between bulk_poll_seconds and
                    # bulk_recheck_seconds.
                    recheck = min(self._bulk_recheck_seconds, max(self._bulk_poll_seconds, age / 4))
                    return WindowSynced(
                        stream=stream,
                        window_start=start,
                        window_end=end,
                        counts=counts,
                        cursor=start,
                        done=False,
                        bulk_operation=operation_id,
                        recheck_seconds=recheck,
                    )
                batch: list[dict[str, Any]] = []
                seen = 0  # records read, those committed before a retry included
                skipping = False
                # The batch being committed while the next one is read (one at a time, in
                # order, so each checkpoint follows the one before).
                committing: asyncio.Task[SyncCounts] | None = None
                lines = shop.bulk_lines(url) if url else _no_lines()
                try:
                    async for line in lines:
                        if line.get("__parentId") is not None:  # a line item of the last order
                            if not skipping and batch and batch[-1]["id"] == line["__parentId"]:
                                batch[-1]["lineItems"]["nodes"].append(line)
                            continue
                        if len(batch) >= self._window_records:
                            # A new record: the batch's orders have all their line items.
                            activity.heartbeat(seen)
                            if committing is not None:
                                counts = counts.plus(await committing)
                            committing = asyncio.create_task(
                                self._bulk_commit(
                                    connector, stream, start, end, operation_id, batch, seen,
                                    before=counts,
                                )
                            )  # fmt: skip
                            batch = []
                        seen += 1
                        skipping = seen <= skip
                        if not skipping:
                            if stream is SyncStream.ORDERS:
                                line["lineItems"] = {"nodes": []}
                            batch.append(line)
                    if committing is not None:
                        counts = counts.plus(await committing)
                finally:
                    if committing is not None and not committing.done():
                        committing.cancel()
                counts = counts.plus(
                    await self._bulk_commit(
                        connector, stream, start, end, operation_id, batch, seen, last=True
                    )
                )
        except (ShopifyError, ConnectorError) as err:
            raise refused(err.error_type, str(err)) from None
        return WindowSynced(
            stream=stream,
            window_start=start,
            window_end=end,
            counts=counts,
            cursor=end,
            done=True,
        )

    async def _start_bulk(
        self, shop: ShopifyClient, stream: SyncStream, start: datetime, end: datetime
    ) -> str:
        """A new bulk operation; or, when an attempt cut off before its checkpoint started one
        (Shopify runs one bulk query per app and shop at a time), that one."""
        current = await shop.current_bulk_operation()
        if current.get("status") in ("CREATED", "RUNNING"):
            return str(current["id"])
        return await shop.run_bulk_query(bulk_query(stream.value, start, end))

    async def _bulk_result(
        self, shop: ShopifyClient, operation_id: str
    ) -> tuple[bool, str | None, float]:
        """Poll currentBulkOperation for up to bulk_wait_seconds: whether the operation is done,
        its result's URL (None: no record at all) and its age in seconds. A failed or expired
        operation is retried from the start. Polled after an eighth of the operation's age,
        between 0.1 s and bulk_poll_seconds: a small shop's operation, done in a second or two,
        is seen done within a fraction of its time, not up to a whole poll interval later."""
        polling = time.monotonic()
        deadline = polling + self._bulk_wait_seconds
        while True:
            current = await shop.current_bulk_operation()
            if current.get("id") != operation_id:
                raise ShopifyUnavailable(
                    f"the bulk operation {operation_id} is not the current one"
                )
            status = current.get("status")
            activity.heartbeat(f"bulk {status} {current.get('objectCount')}")
            created = _when(current.get("createdAt"))
            age = (utcnow() - created).total_seconds() if created else 0.0
            if status == "COMPLETED":
                return True, current.get("url"), age
            if status in ("FAILED", "CANCELED", "EXPIRED"):
                raise BulkOperationEnded(
                    f"the bulk operation ended {status} ({current.get('errorCode')})"
                )
            # (At least as old as this call's polling, should the shop not say its age.)
            known = max(age, time.monotonic() - polling)
            pause = min(self._bulk_poll_seconds, max(0.1, known / 8))
            if time.monotonic() + pause > deadline:
                return False, None, age
            await asyncio.sleep(pause)

    async def _bulk_checkpoint(
        self,
        connector: Connector,
        stream: SyncStream,
        start: datetime,
        end: datetime,
        mark: str | None,
    ) -> None:
        async with self._sessions() as session, session.begin():
            await _checkpoint(session, connector.id, stream, start, end, mark)

    async def _bulk_commit(
        self,
        connector: Connector,
        stream: SyncStream,
        start: datetime,
        end: datetime,
        operation_id: str,
        batch: list[dict[str, Any]],
        seen: int,
        *,
        before: SyncCounts | None = None,
        last: bool = False,
    ) -> SyncCounts:
        """One batch of the bulk result and the checkpoint after it, in one transaction; the
        checkpoint keeps the counts of the window's batches so far (`before` and this one)."""
        async with self._sessions() as session, session.begin():
            counts = await self._store(session, connector, stream, batch)
            if last:
                await _checkpoint(session, connector.id, stream, end, None, None)
            else:
                mark = bulk_mark(operation_id, seen, (before or SyncCounts()).plus(counts))
                await _checkpoint(session, connector.id, stream, start, end, mark)
            await _add_counts(session, connector.id, counts)
        return counts

    async def _store(
        self,
        session: AsyncSession,
        connector: Connector,
        stream: SyncStream,
        nodes: list[dict[str, Any]],
    ) -> SyncCounts:
        if not nodes:
            return SyncCounts()
        if stream is SyncStream.CUSTOMERS:
            return await upsert(
                session, Customer, [customer_row(connector.tenant_id, n) for n in nodes]
            )
        # An order's customer as the order shows it; a newer customers-stream row wins. Each
        # version of a customer once (most orders of a batch share a few customers).
        versions = {
            (n["customer"]["id"], n["customer"].get("updatedAt")): n["customer"]
            for n in nodes
            if n.get("customer")
        }
        embedded = [customer_row(connector.tenant_id, c) for c in versions.values()]
        customers = await upsert_customers(session, embedded)
        return await upsert(
            session,
            Order,
            [order_row(connector.tenant_id, connector.id, n, customers) for n in nodes],
        )


def bulk_mark(operation_id: str, done: int, counts: SyncCounts) -> str:
    tally = f"{counts.fetched},{counts.inserted},{counts.updated},{counts.unchanged}"
    return f"{BULK_MARK}{operation_id}|{done}|{tally}"


def read_bulk_mark(mark: str) -> tuple[str, int, SyncCounts]:
    """A bulk checkpoint's operation id, records done and the counts committed with them."""
    operation_id, done, *tally = mark[len(BULK_MARK) :].split("|")
    counts = SyncCounts()
    if tally:
        fetched, inserted, updated, unchanged = (int(n) for n in tally[0].split(","))
        counts = SyncCounts(
            fetched=fetched, inserted=inserted, updated=updated, unchanged=unchanged
        )
    return operation_id, int(done), counts


class BulkOperationEnded(ShopifyUnavailable):
    """The window's Bulk Operation failed, was cancelled or expired: retried with a new one."""


async def _no_lines() -> AsyncIterator[dict[str, Any]]:
    """A bulk operation that found nothing has no result file."""
    empty: tuple[dict[str, Any], ...] = ()
    for line in empty:
        yield line


async def _checkpoint(
    session: AsyncSession,
    connector_id: uuid.UUID,
    stream: SyncStream,
    cursor: datetime,
    window_end: datetime | None,
    mark: str | None,
) -> None:
    """The stream's checkpoint: its cursor, and a window in progress (its end and where the
    next part starts) or none."""
    part = {
        "window_start": cursor if mark else None,
        "window_end": window_end if mark else None,
        "page_after": mark,
    }
    stmt = insert(SyncCheckpoint).values(
        connector_id=connector_id, stream=stream.value, cursor=cursor, **part
    )
    await (await session.connection()).execute(
        stmt.on_conflict_do_update(
            index_elements=["connector_id", "stream"],
            set_={
                "cursor": sa.func.greatest(SyncCheckpoint.cursor, stmt.excluded.cursor),
                **{name: getattr(stmt.excluded, name) for name in part},
                "updated_at": sa.func.now(),
            },
        )
    )


async def _running(session: AsyncSession, connector_id: uuid.UUID) -> ModuleExecution | None:
    """The connector's sync record being written (one sync per connector at a time)."""
    return (
        await session.exec(
            select(ModuleExecution)
            .where(
                ModuleExecution.connector_id == connector_id,
                ModuleExecution.module == ModuleKind.ORDER_SYNC,
                ModuleExecution.status == ModuleExecutionStatus.RUNNING,
            )
            .with_for_update()
        )
    ).first()


async def _add_counts(session: AsyncSession, connector_id: uuid.UUID, counts: SyncCounts) -> None:
    """Add a batch's counts to the connector's running sync record, in one statement."""
    table = ModuleExecution
    await (await session.connection()).execute(
        sa.update(table)
        .where(
            col(table.connector_id) == connector_id,
            col(table.module) == ModuleKind.ORDER_SYNC,
            col(table.status) == ModuleExecutionStatus.RUNNING,
        )
        .values(
            fetched=col(table.fetched) + counts.fetched,
            records_processed=col(table.records_processed) + counts.fetched,
            inserted=col(table.inserted) + counts.inserted,
            updated=col(table.updated) + counts.updated,
            unchanged=col(table.unchanged) + counts.unchanged,
        )
    )


async def close_ended_runs(
    session: AsyncSession, connector_id: uuid.UUID, reason: str, *, keep: str = ""
) -> int:
    """Close the connector's sync records left running by a run that ended without closing
    them (a termination, a timeout): failed, with `reason`, the counts their windows committed
    and the cursors reached. How many were closed."""
    stale = (
        await session.exec(
            select(ModuleExecution)
            .where(
                ModuleExecution.connector_id == connector_id,
                ModuleExecution.module == ModuleKind.ORDER_SYNC,
                ModuleExecution.status == ModuleExecutionStatus.RUNNING,
                ModuleExecution.run_key != keep,
            )
            .with_for_update()
        )
    ).all()
    for execution in stale:
        execution.status = ModuleExecutionStatus.FAILED
        execution.error = reason
        execution.cursor_after = await _cursors(session, connector_id)
        execution.finished_at = utcnow()
        session.add(execution)
    return len(stale)


async def _note_shop_answer(
    session: AsyncSession, connector_id: uuid.UUID, shop: ShopifyClient, counts: SyncCounts
) -> None:
    """Record on the connector's running sync what the shop said beside the data (the API
    version that served it, the fields it withheld) and the window's counts, so a run that
    ends without closing its record (terminated, timed out) still says what it did."""
    execution = await _running(session, connector_id)
    if execution is None:
        return
    meta = dict(execution.meta)
    if shop.served_version:
        meta["api_version"] = {"asked": shop.api_version, "served": shop.served_version}
    if shop.withheld:
        meta["withheld"] = sorted(set(meta.get("withheld") or []) | shop.withheld)
    execution.meta = meta
    execution.fetched += counts.fetched
    execution.records_processed += counts.fetched
    execution.inserted += counts.inserted
    execution.updated += counts.updated
    execution.unchanged += counts.unchanged
    session.add(execution)


async def _cursors(session: AsyncSession, connector_id: uuid.UUID) -> dict[str, Any]:
    rows = (
        await session.exec(
            select(SyncCheckpoint).where(SyncCheckpoint.connector_id == connector_id)
        )
    ).all()
    return {row.stream: row.cursor.isoformat() for row in rows}
