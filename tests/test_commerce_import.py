"""Orders imported from a CSV or JSON file with `changeflow commerce import-orders`, run as an
operator runs it, against real PostgreSQL and Temporal with workers serving the test's queue:
good rows kept, bad rows reported, a file imported once, an edited file updating only what
changed, a retried import counting every row once, and reports seeing the import's channel."""

import asyncio
import csv
import io
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import select
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.worker import Replayer

from activities.order_file import ImportFormat
from activities.order_import import stage_order_file
from models.commerce import (
    ModuleExecutionStatus,
    ModuleKind,
    OrderImportFile,
    OrderSource,
    OrderStatus,
)
from models.db import SessionFactory
from scripts.shopify_stand_in import ShopifyStandIn
from tests.cli_support import Ran, changeflow
from tests.commerce_support import (
    commerce_settings,
    connect_shop,
    customers_of,
    executions_of,
    orders_of,
    sync,
)
from tests.conftest import DATA_CONVERTER
from tests.factories import make_tenant
from tests.process_support import WorkerProcess
from tests.workers import running_workers
from workflows.commerce import ReportWorkflow
from workflows.contracts.commerce import OrderImportInput, OrderImportResult, ReportInput
from workflows.contracts.errors import ErrorType, error_type
from workflows.contracts.ids import order_import_workflow_id, report_workflow_id
from workflows.order_import import OrderImportWorkflow

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.shop_seed(orders=30, customers=6),
]

HISTORIES = Path(__file__).parent / "histories"
COLUMNS = [
    "external_id",
    "name",
    "placed_at",
    "currency",
    "subtotal",
    "discount",
    "total",
    "refunded",
    "channel",
    "status",
    "customer_external_id",
    "customer_email",
    "customer_name",
    "line_items",
]
MUGS = json.dumps([{"title": "Mug", "sku": "MUG-1", "quantity": 2, "unit_price": "10.00"}])


def good_and_bad_rows() -> list[dict[str, str]]:
    """Five good rows and two bad ones (rows 4 and 6 of the CSV, the header being row 1)."""
    return [
        {
            "external_id": "P-1001",
            "name": "#1001",
            "placed_at": "2026-11-02T10:00:00Z",
            "currency": "USD",
            "subtotal": "20.00",
            "total": "21.50",
            "customer_external_id": "C-1",
            "customer_email": "ann@example.com",
            "customer_name": "Ann",
            "line_items": MUGS,
        },
        {
            "external_id": "P-1002",
            "placed_at": "2026-11-02T11:30:00+01:00",
            "currency": "eur",
            "total": "15.00",
            "discount": "1.50",
            "channel": "market",
        },
        {
            "external_id": "P-1003",
            "placed_at": "2026-11-03T09:00:00Z",
            "currency": "USD",
            "total": "-5.00",
        },
        {
            "external_id": "P-1004",
            "placed_at": "2026-11-03T12:00:00Z",
            "currency": "JPY",
            "total": "1500",
            "customer_external_id": "C-1",
        },
        {"external_id": "P-1005", "placed_at": "yesterday", "currency": "USD", "total": "3.00"},
        {
            "external_id": "P-1006",
            "placed_at": "2026-11-04T08:00:00Z",
            "currency": "USD",
            "total": "9.99",
            "refunded": "9.99",
            "customer_email": "Bob@Example.com",
            "customer_name": "Bob",
        },
        {
            "external_id": "P-1007",
            "placed_at": "2026-11-04T09:00:00Z",
            "currency": "USD",
            "total": "5.00",
            "status": "fulfilled",
            "customer_email": "bob@example.com",
        },
    ]


def as_csv(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


async def cli(env: dict[str, str], *args: str) -> Ran:
    return await changeflow(env, "commerce", "import-orders", *args)


async def staged_files(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[OrderImportFile]:
    async with sessions() as session:
        rows = await session.exec(
            select(OrderImportFile).where(OrderImportFile.tenant_id == tenant_id)
        )
        return list(rows.all())


async def sql(sessions: SessionFactory, *statements: str) -> Any:
    """Run statements in one transaction; the last one's first value."""
    async with sessions() as session, session.begin():
        connection = await session.connection()
        for statement in statements:
            result = await connection.execute(text(statement))
        return result.scalar() if result.returns_rows else None


async def imports_of(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[Any]:
    return [
        e for e in await executions_of(sessions, tenant_id) if e.module is ModuleKind.ORDER_IMPORT
    ]


async def import_file(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    tenant_id: uuid.UUID,
    content: str,
    *,
    source: str = "pos",
    fmt: ImportFormat = ImportFormat.CSV,
) -> OrderImportResult:
    """What the CLI does, in process: stage the file, run its import."""
    async with sessions() as session, session.begin():
        staged = await stage_order_file(
            session=session,
            tenant_id=tenant_id,
            source=source,
            fmt=fmt,
            filename=f"orders.{fmt.value}",
            content=content,
        )
    return await client.execute_workflow(
        OrderImportWorkflow.run,
        OrderImportInput(tenant_id=tenant_id, import_id=staged.id),
        id=order_import_workflow_id(tenant_id, source, staged.sha256),
        task_queue=task_queue,
    )


async def test_a_csv_import_keeps_the_good_rows_reports_the_bad_and_runs_once_per_file(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    me = await make_tenant(sessions, name="Corner Shop")
    other = await make_tenant(sessions, name="Other Shop")
    rows = good_and_bad_rows()
    first = tmp_path / "orders.csv"
    first.write_text(as_csv(rows))
    settings = commerce_settings(task_queue, tmp_path, import_batch_rows=2)
    async with running_workers(client, sessions, settings):
        people = await cli(env, str(first), "-t", me.slug, "--source", "pos", "--wait")
        again = await cli(env, str(first), "-t", me.slug, "--source", "pos", "--wait", "--json")
        after_first = await orders_of(sessions, me.id)

        rows[1]["total"] = "17.00"  # P-1002 changed; the rest as they were
        edited = tmp_path / "orders-edited.csv"
        edited.write_text(as_csv(rows))
        changed = await cli(env, str(edited), "-t", me.slug, "--source", "pos", "--wait", "--json")
        # Another tenant imports the same orders, edited: its own rows, not mine.
        rows[0]["total"] = "99.00"
        theirs = tmp_path / "theirs.csv"
        theirs.write_text(as_csv(rows))
        other_ran = await cli(
            env, str(theirs), "-t", other.slug, "--source", "pos", "--wait", "--json"
        )

    assert people.code == 0, people.out + people.err
    assert "5 inserted, 0 updated, 0 unchanged, 2 with errors" in people.out
    assert "row 4 total: Input should be greater than or equal to 0" in people.out
    assert "row 6 placed_at:" in people.out

    assert again.code == 0, again.out + again.err
    repeated = again.json
    assert repeated["started"] is False
    assert repeated["status"] == "succeeded"
    assert repeated["counts"] == {"fetched": 5, "inserted": 5, "updated": 0, "unchanged": 0}
    assert repeated["rows"] == 7 and repeated["row_error_count"] == 2
    assert [(e["row"], e["field"]) for e in repeated["row_errors"]] == [
        (4, "total"),
        (6, "placed_at"),
    ]

    assert set(after_first) == {f"pos/P-100{n}" for n in (1, 2, 4, 6, 7)}
    mug = after_first["pos/P-1001"]
    assert mug.source is OrderSource.IMPORT and mug.channel == "pos"
    assert (mug.total_cents, mug.subtotal_cents, mug.net_cents) == (2150, 2000, 2150)
    assert mug.line_items == [
        {"title": "Mug", "sku": "MUG-1", "quantity": 2, "unit_price_cents": 1000}
    ]
    market = after_first["pos/P-1002"]
    assert (market.channel, market.currency, market.discount_cents) == ("market", "EUR", 150)
    assert market.placed_at == datetime(2026, 11, 2, 10, 30, tzinfo=UTC)
    assert after_first["pos/P-1004"].total_cents == 1500  # yen have no minor unit
    refunded = after_first["pos/P-1006"]
    assert (refunded.status, refunded.net_cents) == (OrderStatus.REFUNDED, 0)
    assert after_first["pos/P-1007"].status is OrderStatus.FULFILLED

    customers = await customers_of(sessions, me.id)
    assert set(customers) == {"pos/C-1", "pos/email:bob@example.com"}
    assert mug.customer_id == after_first["pos/P-1004"].customer_id == customers["pos/C-1"].id
    assert after_first["pos/P-1007"].customer_id == customers["pos/email:bob@example.com"].id

    assert changed.code == 0, changed.out + changed.err
    assert changed.json["started"] is True
    assert changed.json["counts"] == {"fetched": 5, "inserted": 0, "updated": 1, "unchanged": 4}
    after_edit = await orders_of(sessions, me.id)
    assert after_edit["pos/P-1002"].total_cents == 1700
    assert {k: o.updated_at for k, o in after_edit.items() if k != "pos/P-1002"} == {
        k: o.updated_at for k, o in after_first.items() if k != "pos/P-1002"
    }

    assert other_ran.code == 0 and other_ran.json["counts"]["inserted"] == 5
    assert (await orders_of(sessions, other.id))["pos/P-1001"].total_cents == 9900
    assert {
        k: (o.total_cents, o.updated_at) for k, o in (await orders_of(sessions, me.id)).items()
    } == {k: (o.total_cents, o.updated_at) for k, o in after_edit.items()}

    # One record per file content: the repeat started nothing.
    records = await imports_of(sessions, me.id)
    assert [(r.status, r.inserted, r.updated, r.unchanged) for r in records] == [
        (ModuleExecutionStatus.SUCCEEDED, 5, 0, 0),
        (ModuleExecutionStatus.SUCCEEDED, 0, 1, 4),
    ]
    assert records[0].meta["row_error_count"] == 2
    assert records[0].meta["row_errors"][1]["field"] == "placed_at"
    assert len(await staged_files(sessions, me.id)) == 2


async def test_a_json_file_imports_and_names_its_bad_rows(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    tenant = await make_tenant(sessions)
    orders = [
        {
            "external_id": "M-1",
            "placed_at": "2026-10-01T08:00:00-04:00",
            "currency": "GBP",
            "total": 42.5,
            "customer_external_id": "buyer-9",
            "customer_name": "Cleo",
            "line_items": [{"title": "Print", "quantity": 1, "unit_price": 42.5}],
        },
        {
            "external_id": "M-2",
            "placed_at": "2026-10-02T08:00:00Z",
            "currency": "GBP",
            "total": "10.001",
        },
        "not an order",
        {"external_id": "M-1", "placed_at": "2026-10-03T08:00:00Z", "currency": "GBP", "total": 1},
        {
            "external_id": "M-3",
            "placed_at": "2026-10-03T08:00:00Z",
            "currency": "GBP",
            "total": 7,
            "cancelled_at": "2026-10-04T08:00:00Z",
        },
    ]
    path = tmp_path / "etsy-export.json"
    path.write_text(json.dumps(orders))
    settings = commerce_settings(task_queue, tmp_path)
    async with running_workers(client, sessions, settings):
        ran = await cli(env, str(path), "-t", tenant.slug, "--source", "etsy", "--wait", "--json")

    assert ran.code == 0, ran.out + ran.err
    assert ran.json["counts"]["inserted"] == 2
    assert [(e["row"], e["field"]) for e in ran.json["row_errors"]] == [
        (2, "total"),
        (3, ""),
        (4, "external_id"),
    ]
    assert "repeats the order of row 1" in ran.json["row_errors"][2]["message"]
    stored = await orders_of(sessions, tenant.id)
    assert set(stored) == {"etsy/M-1", "etsy/M-3"}
    assert stored["etsy/M-1"].channel == "etsy" and stored["etsy/M-1"].total_cents == 4250
    assert stored["etsy/M-3"].status is OrderStatus.CANCELLED
    assert (await customers_of(sessions, tenant.id))["etsy/buyer-9"].name == "Cleo"


async def test_a_bad_file_is_refused_and_writes_nothing(
    sessions: SessionFactory,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    tenant = await make_tenant(sessions)
    no_currency = tmp_path / "export.csv"
    no_currency.write_text("external_id,placed_at,total\nA-1,2026-11-01T00:00:00Z,5\n")
    not_json = tmp_path / "export.json"
    not_json.write_text("{oops")
    binary = tmp_path / "export.xlsx"
    binary.write_bytes(b"PK\x03\x04\xff\xfe")

    header = await cli(env, str(no_currency), "-t", tenant.slug, "--source", "pos", "--json")
    broken = await cli(env, str(not_json), "-t", tenant.slug, "--source", "pos")
    unknown = await cli(env, str(binary), "-t", tenant.slug, "--source", "pos", "--json")
    bad_source = await cli(env, str(not_json), "-t", tenant.slug, "--source", "my shop", "--json")
    forced = await cli(
        env, str(binary), "-t", tenant.slug, "--source", "pos", "--format", "csv", "--json"
    )

    assert header.code == 1
    assert header.json["error"]["type"] == ErrorType.INVALID_IMPORT_FILE
    assert "lacks the required column(s) currency" in header.json["error"]["message"]
    assert broken.code == 1 and "InvalidImportFile: the file is not valid JSON" in broken.err
    assert unknown.code == 1 and "give --format csv" in unknown.json["error"]["message"]
    assert forced.code == 1 and "not UTF-8" in forced.json["error"]["message"]
    assert bad_source.code == 1 and bad_source.json["error"]["type"] == ErrorType.INVALID_REQUEST
    assert await staged_files(sessions, tenant.id) == []
    assert await executions_of(sessions, tenant.id) == []
    assert await orders_of(sessions, tenant.id) == {}


async def test_a_file_without_one_valid_row_fails_with_a_readable_error(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    tenant = await make_tenant(sessions)
    path = tmp_path / "bad-rows.csv"
    path.write_text(
        as_csv(
            [
                {
                    "external_id": "X-1",
                    "placed_at": "2026-11-01T10:00:00",
                    "currency": "USD",
                    "total": "1.00",
                },
                {
                    "external_id": "",
                    "placed_at": "2026-11-01T10:00:00Z",
                    "currency": "USDX",
                    "total": "1.00",
                },
            ]
        )
    )
    async with running_workers(client, sessions, commerce_settings(task_queue, tmp_path)):
        ran = await cli(env, str(path), "-t", tenant.slug, "--source", "pos", "--wait", "--json")

    assert ran.code == 1, ran.out + ran.err
    assert ran.json["status"] == "failed"
    assert ran.json["error"].startswith("none of the file's 2 rows is valid (row 2 placed_at:")
    assert {e["field"] for e in ran.json["row_errors"]} == {"placed_at", "external_id", "currency"}
    (record,) = await imports_of(sessions, tenant.id)
    assert record.status is ModuleExecutionStatus.FAILED and record.error == ran.json["error"]
    assert await orders_of(sessions, tenant.id) == {}


async def test_a_report_after_a_sync_and_an_import_shows_both_channels(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    tenant_id = connected.tenant.id
    placed = sorted(o.created_at for o in shop.orders.values())
    first_day, last_day = (
        (placed[0] - timedelta(days=1)).date(),
        (placed[-1] + timedelta(days=1)).date(),
    )
    # Three till sales in the middle of the shop's days, one of them a returning customer's.
    noon = placed[len(placed) // 2].replace(microsecond=0)
    till = [
        {
            "external_id": f"T-{n}",
            "placed_at": (noon + timedelta(minutes=n)).isoformat(),
            "currency": "USD",
            "total": f"{10 * n}.00",
            "customer_external_id": "regular",
            "customer_name": "Regular",
        }
        for n in (1, 2, 3)
    ]
    async with running_workers(client, sessions, settings):
        await sync(client, connected.connector.id, task_queue)
        imported = await import_file(client, sessions, task_queue, tenant_id, as_csv(till))
        result = await client.execute_workflow(
            ReportWorkflow.run,
            ReportInput(tenant_id=tenant_id, first_day=first_day, last_day=last_day),
            id=report_workflow_id(tenant_id, first_day, last_day),
            task_queue=task_queue,
        )

    assert imported.counts.inserted == 3
    by_channel = {
        (c.channel, c.currency): (c.orders, c.net_cents) for c in result.report.by_channel
    }
    # Reports are in the shop's currency (USD): every pos sale, whatever it was charged in.
    shop_pos = [
        o for o in shop.orders.values() if o.channel == "pos" and not o.cancelled_at and not o.test
    ]
    assert by_channel[("pos", "USD")][0] == len(shop_pos) + 3
    assert {channel for channel, _ in by_channel} > {"pos"}
    regular = next(t for t in result.report.top_customers if t.name == "Regular")
    assert regular.orders == 3
    assert regular.net_cents == 6000


async def test_a_retried_import_activity_counts_every_row_once(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path
) -> None:
    """The database refuses one insert of the third batch once: the activity fails after two
    committed batches, Temporal retries it, and it resumes after them."""
    tenant = await make_tenant(sessions)
    rows = [
        {
            "external_id": f"R-{n}",
            "placed_at": f"2026-11-0{n}T10:00:00Z",
            "currency": "USD",
            "total": f"{n}.00",
        }
        for n in range(1, 8)
    ]
    rows.append({"external_id": "R-8", "placed_at": "soon", "currency": "USD", "total": "1"})
    fault = f"import_fault_{uuid.uuid4().hex[:8]}"
    await sql(
        sessions,
        f"CREATE SEQUENCE {fault}",
        f"""CREATE FUNCTION {fault}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.tenant_id = '{tenant.id}' AND NEW.external_id = 'pos/R-5'
                 AND nextval('{fault}') = 1 THEN
                RAISE EXCEPTION 'injected: the database went away';
              END IF;
              RETURN NEW;
            END $$""",
        f"CREATE TRIGGER {fault} BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION {fault}()",
    )
    settings = commerce_settings(task_queue, tmp_path, import_batch_rows=2)
    try:
        async with running_workers(client, sessions, settings):
            result = await import_file(client, sessions, task_queue, tenant.id, as_csv(rows))
            workflow_id = order_import_workflow_id(
                tenant.id, "pos", (await staged_files(sessions, tenant.id))[0].sha256
            )
            history = await client.get_workflow_handle(workflow_id).fetch_history()
    finally:
        tries = await sql(
            sessions,
            f"DROP TRIGGER {fault} ON orders",
            f"DROP FUNCTION {fault}()",
            f"SELECT last_value FROM {fault}",
        )
        await sql(sessions, f"DROP SEQUENCE {fault}")

    assert tries >= 2  # the refused insert was tried again
    assert result.counts.model_dump() == {"fetched": 7, "inserted": 7, "updated": 0, "unchanged": 0}
    assert result.row_error_count == 1 and result.row_errors[0].row == 9
    assert len(await orders_of(sessions, tenant.id)) == 7
    (record,) = await imports_of(sessions, tenant.id)
    assert (record.status, record.inserted, record.records_processed) == (
        ModuleExecutionStatus.SUCCEEDED,
        7,
        7,
    )

    # The import's recorded history replays against the current code.
    path = HISTORIES / "OrderImportWorkflow-retried-with-a-row-error.json"
    if os.environ.get("CHANGEFLOW_RECORD_HISTORIES"):
        recording = {"workflow_id": history.workflow_id, "history": history.to_json_dict()}
        path.write_text(json.dumps(recording))
    replayer = Replayer(workflows=[OrderImportWorkflow], data_converter=DATA_CONVERTER)
    await replayer.replay_workflow(history)
    recording = json.loads(path.read_text())
    await replayer.replay_workflow(
        WorkflowHistory.from_json(recording["workflow_id"], recording["history"])
    )


async def test_an_import_of_another_tenants_staged_file_is_refused(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path
) -> None:
    mine, theirs = await make_tenant(sessions), await make_tenant(sessions)
    async with sessions() as session, session.begin():
        staged = await stage_order_file(
            session=session,
            tenant_id=theirs.id,
            source="pos",
            fmt=ImportFormat.CSV,
            filename="theirs.csv",
            content=as_csv(good_and_bad_rows()),
        )
    async with running_workers(client, sessions, commerce_settings(task_queue, tmp_path)):
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(
                OrderImportWorkflow.run,
                OrderImportInput(tenant_id=mine.id, import_id=staged.id),
                id=f"order-import-test-{uuid.uuid4()}",
                task_queue=task_queue,
            )
    assert error_type(failure.value) == ErrorType.INVALID_REQUEST
    assert await orders_of(sessions, mine.id) == await orders_of(sessions, theirs.id) == {}
    (record,) = await imports_of(sessions, mine.id)
    assert record.status is ModuleExecutionStatus.FAILED


async def test_an_import_survives_its_worker_being_killed_and_counts_every_row_once(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
    worker_env: dict[str, str],
) -> None:
    """A worker process SIGKILLed between batches: a fresh one resumes after the last
    committed batch; every order is stored once and counted once as inserted."""
    tenant = await make_tenant(sessions)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {
            "external_id": f"K-{n}",
            "placed_at": (start + timedelta(minutes=n)).isoformat(),
            "currency": "USD",
            "total": f"{n % 90 + 1}.25",
            "customer_external_id": f"buyer-{n % 40}",
        }
        for n in range(1500)
    ]
    # Slow inserts of this tenant's orders (2 ms a row), so the kill lands mid-import.
    slow = f"import_slow_{uuid.uuid4().hex[:8]}"
    await sql(
        sessions,
        f"""CREATE FUNCTION {slow}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.tenant_id = '{tenant.id}' THEN PERFORM pg_sleep(0.002); END IF;
              RETURN NEW;
            END $$""",
        f"CREATE TRIGGER {slow} BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION {slow}()",
    )
    small_batches = {**worker_env, "CHANGEFLOW_IMPORT_BATCH_ROWS": "50"}
    first = WorkerProcess(small_batches, tmp_path / "worker-1.log")
    second = WorkerProcess(small_batches, tmp_path / "worker-2.log")
    first.start()
    try:
        running = asyncio.create_task(
            import_file(client, sessions, task_queue, tenant.id, as_csv(rows))
        )
        async with asyncio.timeout(120):
            # The database is what to watch: nothing signals a committed batch.
            while (done := await rows_committed(sessions, tenant.id)) < 300:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        first.kill()
        at_kill = await rows_committed(sessions, tenant.id)
        second.start()
        async with asyncio.timeout(180):
            result = await running
    finally:
        first.stop()
        second.stop()
        await sql(sessions, f"DROP TRIGGER {slow} ON orders", f"DROP FUNCTION {slow}()")

    assert 300 <= done <= at_kill < 1500, "the kill came in the middle of the import"
    assert result.counts.model_dump() == {
        "fetched": 1500,
        "inserted": 1500,
        "updated": 0,
        "unchanged": 0,
    }
    stored = await orders_of(sessions, tenant.id)
    assert len(stored) == 1500 and set(stored) == {f"pos/K-{n}" for n in range(1500)}
    assert len(await customers_of(sessions, tenant.id)) == 40
    (record,) = await imports_of(sessions, tenant.id)
    assert (record.status, record.inserted, record.unchanged) == (
        ModuleExecutionStatus.SUCCEEDED,
        1500,
        0,
    )


async def rows_committed(sessions: SessionFactory, tenant_id: uuid.UUID) -> int:
    """The rows an import of the tenant committed so far, by its record's progress."""
    records = await imports_of(sessions, tenant_id)
    return records[0].records_processed if records else 0
