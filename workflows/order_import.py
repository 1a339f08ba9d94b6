"""The import of one staged order file, recorded as one ModuleExecution like a sync's run."""

import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.commerce_sync import CommerceSyncActivities
    from activities.order_import import OrderImportActivities
    from models.commerce import ModuleExecutionStatus, ModuleKind
    from workflows.commerce import BOOKKEEPING_TIMEOUT, RETRY
    from workflows.contracts.commerce import (
        CloseModuleExecution,
        ImportOrders,
        OpenModuleExecution,
        OrderImportInput,
        OrderImportResult,
        OrdersImported,
        SyncCounts,
    )
    from workflows.contracts.errors import (
        NON_RETRYABLE_ERROR_TYPES,
        ErrorType,
        application_error,
        error_message,
        refused,
    )
    from workflows.contracts.ids import module_run_key
    from workflows.contracts.submitted import Submitted, parse_input

# A large file is many batches; each heartbeats, so a worker that died is noticed soon.
IMPORT_TIMEOUT = timedelta(minutes=30)
IMPORT_HEARTBEAT = timedelta(seconds=20)


@workflow.defn
class OrderImportWorkflow:
    """Id `order-import-<tenant>-<source>-<sha256>`: a file's content is imported once. Valid
    rows are kept even when others are invalid; a file without one valid row fails."""

    @workflow.run
    async def run(self, submitted: Submitted[OrderImportInput]) -> OrderImportResult:
        request = parse_input(OrderImportInput, submitted)
        info = workflow.info()
        opened = await workflow.execute_activity_method(
            CommerceSyncActivities.open_module_execution,
            OpenModuleExecution(
                tenant_id=request.tenant_id,
                module=ModuleKind.ORDER_IMPORT,
                run_key=module_run_key(info.workflow_id, info.first_execution_run_id),
            ),
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=RETRY,
        )
        try:
            imported = await workflow.execute_activity_method(
                OrderImportActivities.import_orders,
                ImportOrders(import_id=request.import_id, execution_id=opened.execution_id),
                start_to_close_timeout=IMPORT_TIMEOUT,
                heartbeat_timeout=IMPORT_HEARTBEAT,
                retry_policy=RETRY,
            )
        except ActivityError as err:
            await self._close(opened.execution_id, ModuleExecutionStatus.FAILED, error_message(err))
            cause = application_error(err)
            if cause is not None and cause.type in NON_RETRYABLE_ERROR_TYPES:
                raise refused(ErrorType(cause.type), cause.message) from err
            raise
        if imported.counts.fetched == 0:
            message = _no_valid_row(imported)
            await self._close(opened.execution_id, ModuleExecutionStatus.FAILED, message, imported)
            raise refused(ErrorType.NO_VALID_IMPORT_ROW, message)
        await self._close(opened.execution_id, ModuleExecutionStatus.SUCCEEDED, None, imported)
        return OrderImportResult(
            execution_id=opened.execution_id,
            import_id=request.import_id,
            status=ModuleExecutionStatus.SUCCEEDED,
            counts=imported.counts,
            rows=imported.rows,
            row_errors=imported.row_errors,
            row_error_count=imported.row_error_count,
        )

    async def _close(
        self,
        execution_id: uuid.UUID,
        status: ModuleExecutionStatus,
        error: str | None,
        imported: OrdersImported | None = None,
    ) -> None:
        result: dict[str, object] = {}
        if imported is not None:
            result = {
                "rows": imported.rows,
                "row_errors": [e.model_dump() for e in imported.row_errors],
                "row_error_count": imported.row_error_count,
            }
        await workflow.execute_activity_method(
            CommerceSyncActivities.close_module_execution,
            CloseModuleExecution(
                execution_id=execution_id,
                status=status,
                counts=imported.counts if imported is not None else SyncCounts(),
                error=error,
                result=result,
            ),
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=RETRY,
        )


def _no_valid_row(imported: OrdersImported) -> str:
    if imported.rows == 0:
        return "the file has no order rows"
    first = imported.row_errors[0]
    more = imported.row_error_count - 1
    return (
        f"none of the file's {imported.rows} rows is valid "
        f"(row {first.row} {first.field or '-'}: {first.message}"
        + (f"; {more} more errors)" if more else ")")
    )
