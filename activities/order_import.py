"""Orders imported from a file: staging the file in PostgreSQL (the CLI's side, so a worker on
any machine can read it) and the import activity, which stores its valid rows through the
sync's upsert in batches.

Each batch is one transaction that also advances the run's ModuleExecution (rows committed,
counts), so a retried activity (a worker killed, the database restarted) resumes after the
last committed batch and counts every row once. A row equal to its stored order is unchanged;
a changed row replaces it when it is newer (its updated_at, else its file's staging time).
"""

import hashlib
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from activities.commerce_sync import upsert, upsert_customers
from activities.order_file import (
    ImportFileError,
    ImportFormat,
    OrderRow,
    customer_values,
    order_values,
    parse_orders,
)
from models.commerce import ModuleExecution, Order, OrderImportFile, OrderSource
from models.db import SessionFactory
from workflows.contracts.commerce import MAX_ROW_ERRORS, ImportOrders, OrdersImported, SyncCounts
from workflows.contracts.errors import ErrorType, refused

# What makes two versions of an order different (the bookkeeping columns do not).
_COMPARED = (
    "customer_id",
    "name",
    "channel",
    "status",
    "subtotal_cents",
    "discount_cents",
    "refunded_cents",
    "total_cents",
    "net_cents",
    "currency",
    "line_items",
    "placed_at",
    "cancelled_at",
)


async def stage_order_file(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    source: str,
    fmt: ImportFormat,
    filename: str,
    content: str,
) -> OrderImportFile:
    """The file's staged row, created once per (tenant, source, content)."""
    sha256 = hashlib.sha256(content.encode()).hexdigest()
    await (await session.connection()).execute(
        insert(OrderImportFile)
        .values(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            source=source,
            sha256=sha256,
            format=fmt.value,
            filename=filename[:300],
            size_bytes=len(content.encode()),
            content=content,
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "source", "sha256"])
    )
    return (
        await session.exec(
            select(OrderImportFile).where(
                OrderImportFile.tenant_id == tenant_id,
                OrderImportFile.source == source,
                OrderImportFile.sha256 == sha256,
            )
        )
    ).one()


class OrderImportActivities:
    def __init__(self, sessions: SessionFactory, *, batch_rows: int) -> None:
        self._sessions = sessions
        self._batch_rows = batch_rows

    def activities(self) -> list[Any]:
        return [self.import_orders]

    @activity.defn
    async def import_orders(self, request: ImportOrders) -> OrdersImported:
        """Store the staged file's valid rows, batch by batch, from where the run's record
        says the last attempt stopped; report the invalid ones."""
        async with self._sessions() as session:
            staged = await session.get(OrderImportFile, request.import_id)
            execution = await session.get(ModuleExecution, request.execution_id)
        if staged is None or execution is None or staged.tenant_id != execution.tenant_id:
            raise refused(
                ErrorType.INVALID_REQUEST,
                f"no staged order file {request.import_id} of the run's tenant",
            )
        try:
            parsed = parse_orders(staged.content, ImportFormat(staged.format))
        except ImportFileError as err:
            raise refused(ErrorType.INVALID_IMPORT_FILE, str(err)) from None
        start = execution.records_processed
        activity.heartbeat(start)
        while start < len(parsed.valid):
            batch = parsed.valid[start : start + self._batch_rows]
            async with self._sessions() as session, session.begin():
                # Locked: the progress and the batch's rows commit together, or neither.
                progress = await session.get(
                    ModuleExecution, request.execution_id, with_for_update=True
                )
                assert progress is not None
                if progress.records_processed == start:
                    counts = await self._store(session, staged, batch)
                    await (await session.connection()).execute(
                        sa.update(ModuleExecution)
                        .where(col(ModuleExecution.id) == progress.id)
                        .values(
                            records_processed=start + len(batch),
                            fetched=ModuleExecution.fetched + counts.fetched,
                            inserted=ModuleExecution.inserted + counts.inserted,
                            updated=ModuleExecution.updated + counts.updated,
                            unchanged=ModuleExecution.unchanged + counts.unchanged,
                        )
                    )
                    start += len(batch)
                else:
                    start = progress.records_processed
            activity.heartbeat(start)
        async with self._sessions() as session:
            done = await session.get(ModuleExecution, request.execution_id, populate_existing=True)
        assert done is not None
        return OrdersImported(
            counts=SyncCounts(
                fetched=done.fetched,
                inserted=done.inserted,
                updated=done.updated,
                unchanged=done.unchanged,
            ),
            rows=parsed.rows,
            row_errors=parsed.errors[:MAX_ROW_ERRORS],
            row_error_count=len(parsed.errors),
        )

    async def _store(
        self, session: AsyncSession, staged: OrderImportFile, batch: list[OrderRow]
    ) -> SyncCounts:
        tenant_id, source, version = staged.tenant_id, staged.source, staged.created_at
        customers = await upsert_customers(
            session,
            [
                c
                for row in batch
                if (c := customer_values(row, tenant_id=tenant_id, source=source, version=version))
                is not None
            ],
        )
        rows = [
            order_values(
                row, tenant_id=tenant_id, source=source, customers=customers, version=version
            )
            for row in batch
        ]
        # The compared columns only: no ORM objects to build for rows that did not change.
        table: sa.Table = Order.__table__  # type: ignore[attr-defined]
        found = await (await session.connection()).execute(
            sa.select(*(table.c[c] for c in ("external_id", *_COMPARED))).where(
                table.c.tenant_id == staged.tenant_id,
                table.c.source == OrderSource.IMPORT,
                table.c.external_id.in_([r["external_id"] for r in rows]),
            )
        )
        stored = {row.external_id: row for row in found}
        changed = [r for r in rows if not _same(stored.get(r["external_id"]), r)]
        counts = await upsert(session, Order, changed)
        return SyncCounts(
            fetched=len(rows),
            inserted=counts.inserted,
            updated=counts.updated,
            unchanged=len(rows) - counts.inserted - counts.updated,
        )


def _same(stored: sa.Row[Any] | None, row: dict[str, Any]) -> bool:
    return stored is not None and all(getattr(stored, c) == row[c] for c in _COMPARED)
