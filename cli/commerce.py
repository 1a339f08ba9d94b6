"""`changeflow commerce ...`: a tenant's commerce records. Orders imported from a file (a POS
or marketplace export) through OrderImportWorkflow, once per file content; a report of a period
through ReportWorkflow. Both runs are recorded as ModuleExecutions.
"""

import asyncio
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from temporalio.client import WorkflowFailureError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.order_file import ImportFileError, ImportFormat, decode, parse_orders, source_name
from activities.order_import import stage_order_file
from activities.reports import daily_revenue_csv
from activities.shopify import format_money
from cli import tenancy
from cli.common import DEFAULT_WAIT_S, Json, TenantRef, Timeout, as_row, rich_table
from cli.runner import EXIT_NOT_COMPLETED, EXIT_REFUSED, Outcome, run
from cli.stack import Stack
from cli.tenancy import Refused
from models import ModuleExecution, OrderImportFile, queries
from workflows.commerce import ReportWorkflow
from workflows.contracts.commerce import OrderImportInput, ReportInput, ReportResult
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import order_import_workflow_id, report_workflow_id
from workflows.contracts.search_attributes import commerce_attributes
from workflows.order_import import OrderImportWorkflow

RUN_TIMEOUT = timedelta(minutes=30)

commerce_app = typer.Typer(
    help="Commerce records: order imports and reports.", no_args_is_help=True
)

# --- imports ------------------------------------------------------------------------------


def _import_outcome(
    staged: OrderImportFile, workflow_id: str, started: bool, execution: ModuleExecution | None
) -> dict[str, Any]:
    meta = execution.meta if execution is not None else {}
    return {
        "workflow_id": workflow_id,
        "import_id": staged.id,
        "tenant_id": staged.tenant_id,
        "source": staged.source,
        "filename": staged.filename,
        "format": staged.format,
        "sha256": staged.sha256,
        # False: this content was imported before (or is being imported), nothing new started.
        "started": started,
        "execution_id": execution.id if execution else None,
        "status": execution.status.value if execution else "starting",
        "counts": {
            "fetched": execution.fetched if execution else 0,
            "inserted": execution.inserted if execution else 0,
            "updated": execution.updated if execution else 0,
            "unchanged": execution.unchanged if execution else 0,
        },
        "rows": meta.get("rows"),
        "row_errors": meta.get("row_errors", []),
        "row_error_count": meta.get("row_error_count", 0),
        "error": execution.error if execution else None,
    }


def _render_import(out: Console, data: dict[str, Any]) -> None:
    again = "" if data["started"] else " (this file was imported before: nothing new started)"
    out.print(
        f"import of {escape(data['filename'])} ({data['source']}, {data['format']}): "
        f"[bold]{data['status']}[/]{again}"
    )
    c = data["counts"]
    rows = f"{data['rows']} rows: " if data["rows"] is not None else ""
    out.print(
        f"  {rows}{c['inserted']} inserted, {c['updated']} updated, {c['unchanged']} unchanged, "
        f"{data['row_error_count']} with errors"
    )
    for e in data["row_errors"]:
        out.print(f"  row {e['row']} {escape(e['field'] or '-')}: {escape(e['message'])}")
    if data["row_error_count"] > len(data["row_errors"]):
        out.print(f"  ... {data['row_error_count'] - len(data['row_errors'])} more")
    if data["error"]:
        out.print(f"  error: {escape(data['error'])}")
    out.print(f"  workflow {data['workflow_id']}")


@commerce_app.command("import-orders")
def commerce_import_orders(
    file: Annotated[Path, typer.Argument(help="A CSV or JSON order file (README: the columns).")],
    tenant: TenantRef,
    source: Annotated[
        str, typer.Option(help="The file's origin (pos, etsy...): its orders' channel and keys.")
    ],
    file_format: Annotated[
        ImportFormat | None,
        typer.Option("--format", help="csv or json; by default the file's extension."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the import to end.")] = False,
    timeout: Timeout = DEFAULT_WAIT_S,
    json_output: Json = False,
) -> None:
    """Import orders and their customers from a file, once per file content."""

    async def work(stack: Stack, progress: Console) -> Outcome:
        try:
            source_label = source_name(source)
        except ValueError as err:
            raise Refused(ErrorType.INVALID_REQUEST, str(err)) from None
        try:
            fmt = file_format or ImportFormat(file.suffix.lower().lstrip("."))
        except ValueError:
            raise Refused(
                ErrorType.INVALID_IMPORT_FILE,
                f"cannot tell the format of {file.name}: give --format csv or --format json",
            ) from None
        try:
            content = decode(file.read_bytes())
            # The whole file is checked before anything is written: a bad one stages nothing.
            parse_orders(content, fmt)
        except OSError as err:
            raise Refused(ErrorType.INVALID_IMPORT_FILE, f"cannot read {file}: {err}") from None
        except ImportFileError as err:
            raise Refused(ErrorType.INVALID_IMPORT_FILE, str(err)) from None
        async with (await stack.sessions())() as session, session.begin():
            found = await tenancy.find_tenant(session, tenant)
            staged = await stage_order_file(
                session=session,
                tenant_id=found.id,
                source=source_label,
                fmt=fmt,
                filename=file.name,
                content=content,
            )
        workflow_id = order_import_workflow_id(found.id, staged.source, staged.sha256)
        client = await stack.client()
        try:
            handle = await client.start_workflow(
                OrderImportWorkflow.run,
                OrderImportInput(tenant_id=found.id, import_id=staged.id),
                id=workflow_id,
                task_queue=stack.settings.task_queue,
                # The same content again is the same import; a failed one may run again.
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                search_attributes=commerce_attributes(found.id),
            )
            started = True
        except WorkflowAlreadyStartedError:
            handle = client.get_workflow_handle(workflow_id)
            started = False
        progress.print(f"import {staged.id} {'started' if started else 'found'}: {workflow_id}")
        code = 0
        if wait:
            try:
                await asyncio.wait_for(handle.result(), timeout)
            except WorkflowFailureError:
                code = EXIT_REFUSED  # the record below says why
            except TimeoutError:
                progress.print(f"[yellow]still running after {timeout:.0f} s[/]")
                code = EXIT_NOT_COMPLETED
        async with (await stack.sessions())() as session:
            execution = (await session.exec(queries.latest_execution(workflow_id))).first()
        data = _import_outcome(staged, workflow_id, started, execution)
        return Outcome(data, lambda out: _render_import(out, data), code)

    run(json_output, work)


# --- reports ------------------------------------------------------------------------------


@commerce_app.command("report")
def commerce_report(
    tenant: TenantRef,
    first_day: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD.")],
    last_day: Annotated[
        str | None, typer.Option("--to", help="Last day (default: --from).")
    ] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA zone (default: the shop's).")] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write the daily revenue as CSV here.")
    ] = None,
    json_output: Json = False,
) -> None:
    """A tenant's revenue, channels, order values and customers for a period, in the
    shop's time zone (ReportWorkflow; the run is recorded as a ModuleExecution)."""
    first, last = _day(first_day), _day(last_day or first_day)

    async def work(stack: Stack, _: Console) -> Outcome:
        found = await stack.tenant(tenant)
        client = await stack.client()
        result: ReportResult = await client.execute_workflow(
            ReportWorkflow.run,
            ReportInput(tenant_id=found.id, first_day=first, last_day=last, timezone=timezone),
            id=f"{report_workflow_id(found.id, first, last)}-{uuid.uuid4().hex[:8]}",
            task_queue=stack.settings.task_queue,
            execution_timeout=RUN_TIMEOUT,
        )
        if csv_path is not None:
            await asyncio.to_thread(csv_path.write_text, daily_revenue_csv(result.report))
        return Outcome(as_row(result), lambda out: _render_report(out, result, csv_path))

    run(json_output, work)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a day (YYYY-MM-DD)") from None


def _render_report(out: Console, result: ReportResult, csv_path: Path | None) -> None:
    report = result.report
    out.print(f"{report.first_day} .. {report.last_day} ({report.timezone})")
    out.print(
        rich_table(
            "Daily revenue",
            ["day", "orders", "gross", "discounts", "refunds", "net"],
            [
                [
                    d.day,
                    d.orders,
                    format_money(d.gross_cents, d.currency),
                    format_money(d.discount_cents, d.currency),
                    format_money(d.refunded_cents, d.currency),
                    format_money(d.net_cents, d.currency),
                ]
                for d in report.daily
            ],
        )
    )
    out.print(
        rich_table(
            "By channel",
            ["channel", "orders", "net"],
            [
                [c.channel, c.orders, format_money(c.net_cents, c.currency)]
                for c in report.by_channel
            ],
        )
    )
    out.print(
        f"repeat-purchase rate {report.repeat_purchase_rate:.0%} of {report.customers} customers"
    )
    if csv_path is not None:
        out.print(f"daily revenue written to {csv_path}")
