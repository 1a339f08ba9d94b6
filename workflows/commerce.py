"""The commerce modules' workflows: a connector's order and customer sync, its scheduled
trigger, and a tenant's report. Each run is recorded as one ModuleExecution."""

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, TypedSearchAttributes
from temporalio.exceptions import (
    ActivityError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.commerce_sync import CommerceSyncActivities
    from activities.connectors import ConnectorActivities
    from activities.reports import ReportActivities
    from models.commerce import ModuleExecutionStatus, ModuleKind, SyncStream
    from workflows.billing import SCHEDULED_START_TIME
    from workflows.contracts.commerce import (
        SYNC_STREAMS,
        BulkOperationFinished,
        CloseModuleExecution,
        ConnectorFailure,
        OpenModuleExecution,
        OrderSyncInput,
        OrderSyncResult,
        ReportInput,
        ReportResult,
        StartOrderSync,
        SyncCounts,
        SyncRequested,
        SyncTriggered,
        SyncWindow,
        total,
    )
    from workflows.contracts.errors import (
        NON_RETRYABLE_ERROR_TYPES,
        ErrorType,
        application_error,
        error_message,
        refused,
    )
    from workflows.contracts.ids import module_run_key, order_sync_workflow_id
    from workflows.contracts.search_attributes import commerce_attributes, missing_from
    from workflows.contracts.submitted import Submitted, parse_input

# Transient failures (the shop down, the database restarting) are retried for a long while;
# typed refusals end the run at once.
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)
BOOKKEEPING_TIMEOUT = timedelta(seconds=30)
# A window can wait out a long throttle; its heartbeats prove it is alive meanwhile, and a
# worker that died is noticed within the heartbeat timeout.
WINDOW_TIMEOUT = timedelta(minutes=30)
WINDOW_HEARTBEAT = timedelta(seconds=20)
# The errors that mean the connector itself is wrong, not this run.
CONNECTOR_FAULTS = frozenset(
    {
        ErrorType.INVALID_CREDENTIALS.value,
        ErrorType.CREDENTIAL_UNAVAILABLE.value,
        ErrorType.INVALID_CONNECTOR_CONFIG.value,
    }
)


@workflow.defn
class OrderSyncWorkflow:
    """Id `order-sync-<connector_id>`: one sync of a connector at a time. Reads the connector's
    customers, then its orders, window by window up to the moment the sync began; each
    window's records and checkpoint are committed together, so a retried window or a restarted
    worker resumes from the last committed one."""

    def __init__(self) -> None:
        self._windows = 0
        # Windows the sync's earlier runs read (before continuing as new).
        self._windows_before = 0
        self._cursors: dict[str, datetime] = {}
        self._last_request: datetime | None = None
        # Bulk Operations Shopify said are finished (bulk_operations/finish), by id.
        self._bulk_finished: set[str] = set()
        # Waits for a Bulk Operation: each adds events to the history, as a window does.
        self._bulk_waits = 0

    @workflow.signal
    def request_sync(self, request: SyncRequested) -> None:
        # Workflow time, not the sender's clock: a request that started this run (signal-with-
        # start) is handled at the run's own start time, so only later ones ask for another run.
        self._last_request = workflow.now()

    @workflow.signal
    def bulk_operation_finished(self, finished: BulkOperationFinished) -> None:
        self._bulk_finished.add(finished.operation_id)

    @workflow.query
    def progress(self) -> dict[str, object]:
        return {
            "windows": self._windows_before + self._windows,
            "cursors": {k: v.isoformat() for k, v in self._cursors.items()},
        }

    @workflow.run
    async def run(self, submitted: Submitted[OrderSyncInput]) -> OrderSyncResult:
        request = parse_input(OrderSyncInput, submitted)
        self._windows_before = request.windows_before
        info = workflow.info()
        until = request.until or workflow.now()
        if request.until is None and request.requested:
            # A read ends at the whole second before `until` (Shopify's precision): a change
            # in the second a webhook reported it would be missed. Wait the second out.
            until = until.replace(microsecond=0) + timedelta(seconds=1)
            await workflow.sleep(until - workflow.now())
        execution_id = request.execution_id
        if execution_id is None:
            opened = await workflow.execute_activity_method(
                CommerceSyncActivities.open_module_execution,
                OpenModuleExecution(
                    connector_id=request.connector_id,
                    module=ModuleKind.ORDER_SYNC,
                    # A sync continued as new to run again (sync_again) is a module run of its
                    # own: keyed by its own run id, not the first run's.
                    run_key=module_run_key(
                        info.workflow_id,
                        info.first_execution_run_id
                        if info.continued_run_id is None
                        else info.run_id,
                    ),
                ),
                start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                retry_policy=RETRY,
            )
            execution_id = opened.execution_id
            _findable(commerce_attributes(opened.tenant_id, request.connector_id))
        counts = request.counts
        done = list(request.streams_done)

        def sync_again() -> bool:
            return request.sync_again or (
                self._last_request is not None and self._last_request > until
            )

        try:
            for stream in SYNC_STREAMS:
                if stream in done:
                    continue
                while True:
                    if self._windows + self._bulk_waits >= request.windows_per_run:
                        workflow.continue_as_new(
                            request.model_copy(
                                update={
                                    "until": until,
                                    "execution_id": execution_id,
                                    "counts": counts,
                                    "windows_before": request.windows_before + self._windows,
                                    "streams_done": done,
                                    "sync_again": sync_again(),
                                }
                            )
                        )
                    window = await workflow.execute_activity_method(
                        CommerceSyncActivities.sync_window,
                        SyncWindow(connector_id=request.connector_id, stream=stream, until=until),
                        start_to_close_timeout=WINDOW_TIMEOUT,
                        heartbeat_timeout=WINDOW_HEARTBEAT,
                        retry_policy=RETRY,
                    )
                    if window.bulk_operation is not None:
                        # Shopify is still running the window's Bulk Operation: wait for its
                        # bulk_operations/finish webhook (a signal), polling as the fallback.
                        await self._wait_for_bulk(window.bulk_operation, window.recheck_seconds)
                        continue
                    self._windows += 1
                    self._cursors[stream.value] = window.cursor
                    counts = {
                        **counts,
                        stream: counts.get(stream, SyncCounts()).plus(window.counts),
                    }
                    if window.done:
                        break
                done.append(stream)
        except ActivityError as err:
            if is_cancelled_exception(err):
                # Cancelled by an operator: the record says so; committed windows stay.
                await workflow.execute_activity_method(
                    CommerceSyncActivities.close_module_execution,
                    CloseModuleExecution(
                        execution_id=execution_id,
                        status=ModuleExecutionStatus.CANCELLED,
                        counts=total(counts),
                        result=_per_stream(counts),
                    ),
                    start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                    retry_policy=RETRY,
                )
                raise
            cause = application_error(err)
            message = error_message(err)
            if cause is not None and cause.type in CONNECTOR_FAULTS:
                await workflow.execute_activity_method(
                    ConnectorActivities.record_connector_failure,
                    ConnectorFailure(connector_id=request.connector_id, error=message),
                    start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                    retry_policy=RETRY,
                )
            await workflow.execute_activity_method(
                CommerceSyncActivities.close_module_execution,
                CloseModuleExecution(
                    execution_id=execution_id,
                    status=ModuleExecutionStatus.FAILED,
                    counts=total(counts),
                    error=message,
                    result=_per_stream(counts),
                ),
                start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                retry_policy=RETRY,
            )
            if cause is not None and cause.type in NON_RETRYABLE_ERROR_TYPES:
                raise refused(ErrorType(cause.type), message) from err
            raise
        await workflow.execute_activity_method(
            CommerceSyncActivities.close_module_execution,
            CloseModuleExecution(
                execution_id=execution_id,
                status=ModuleExecutionStatus.SUCCEEDED,
                counts=total(counts),
                result=_per_stream(counts),
            ),
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=RETRY,
        )
        if sync_again():
            # However many requests came meanwhile: one more sync, a new module run.
            workflow.continue_as_new(
                OrderSyncInput(
                    connector_id=request.connector_id,
                    windows_per_run=request.windows_per_run,
                    requested=True,
                )
            )
        return OrderSyncResult(
            execution_id=execution_id,
            connector_id=request.connector_id,
            status=ModuleExecutionStatus.SUCCEEDED,
            counts=counts,
            cursors=self._cursors,
            windows=request.windows_before + self._windows,
        )

    async def _wait_for_bulk(self, operation_id: str, recheck_seconds: float) -> None:
        # The command sequence changes only for a window that reports a Bulk Operation still
        # running, which no window of an earlier release did: no patch is needed to replay.
        self._bulk_waits += 1
        try:
            await workflow.wait_condition(
                lambda: operation_id in self._bulk_finished,
                timeout=timedelta(seconds=max(recheck_seconds, 1.0)),
                timeout_summary="bulk operation recheck",
            )
        except TimeoutError:
            pass


def _findable(wanted: TypedSearchAttributes) -> None:
    """Set the run's search attributes its starter did not (a CLI start, a Schedule)."""
    updates = missing_from(workflow.info().typed_search_attributes, wanted)
    if updates:
        workflow.upsert_search_attributes(updates)


def _per_stream(counts: dict[SyncStream, SyncCounts]) -> dict[str, object]:
    return {"streams": {stream.value: c.model_dump() for stream, c in counts.items()}}


@workflow.defn
class OrderSyncTriggerWorkflow:
    """What a connector's Schedule starts: the connector's OrderSyncWorkflow under its one id,
    left running on its own; a sync already running is left alone (never two at once)."""

    @workflow.run
    async def run(self, submitted: Submitted[StartOrderSync]) -> SyncTriggered:
        request = parse_input(StartOrderSync, submitted)
        workflow_id = order_sync_workflow_id(request.connector_id)
        try:
            await workflow.start_child_workflow(
                OrderSyncWorkflow.run,
                OrderSyncInput(connector_id=request.connector_id),
                id=workflow_id,
                parent_close_policy=ParentClosePolicy.ABANDON,
            )
        except WorkflowAlreadyStartedError:
            return SyncTriggered(workflow_id=workflow_id, started=False)
        return SyncTriggered(workflow_id=workflow_id, started=True)


@workflow.defn
class ReportWorkflow:
    """A tenant's sales report for a period, computed in SQL and stored with its
    ModuleExecution. Started on demand or by the tenant's daily Schedule (yesterday)."""

    @workflow.run
    async def run(self, submitted: Submitted[ReportInput]) -> ReportResult:
        request = parse_input(ReportInput, submitted)
        info = workflow.info()
        opened = await workflow.execute_activity_method(
            CommerceSyncActivities.open_module_execution,
            OpenModuleExecution(
                tenant_id=request.tenant_id,
                module=ModuleKind.REPORT,
                run_key=module_run_key(info.workflow_id, info.first_execution_run_id),
            ),
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=RETRY,
        )
        _findable(commerce_attributes(request.tenant_id))
        if request.first_day is None or request.last_day is None:
            # The day before the run was due (a late catch-up still reports its own day); the
            # activity reads it in the shop's zone.
            due = workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME)
            request = request.model_copy(update={"as_of": due or workflow.now()})
        try:
            report = await workflow.execute_activity_method(
                ReportActivities.compute_report,
                request,
                start_to_close_timeout=timedelta(minutes=10),
                retry_policy=RETRY,
            )
        except ActivityError as err:
            await workflow.execute_activity_method(
                CommerceSyncActivities.close_module_execution,
                CloseModuleExecution(
                    execution_id=opened.execution_id,
                    status=ModuleExecutionStatus.FAILED,
                    error=error_message(err),
                ),
                start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                retry_policy=RETRY,
            )
            raise
        await workflow.execute_activity_method(
            CommerceSyncActivities.close_module_execution,
            CloseModuleExecution(
                execution_id=opened.execution_id,
                status=ModuleExecutionStatus.SUCCEEDED,
                result={"report": report.model_dump(mode="json")},
            ),
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=RETRY,
        )
        return ReportResult(execution_id=opened.execution_id, report=report)
