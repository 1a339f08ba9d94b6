"""Product metrics, exported beside the SDK's on CHANGEFLOW_METRICS_PORT (the Temporal runtime's
Prometheus endpoint): lifecycles by outcome, approval wait, tokens charged, deployments and
rollbacks by outcome, verification duration; and, sampled from PostgreSQL, open lifecycles by
state with the age of the oldest, and ledger drift.

The first group is recorded by a workflow interceptor from what the workflows already see (their
results and their activities' results), through `workflow.metric_meter()`: nothing is recorded
while a history replays, so each lifecycle counts once however often a worker restarts.

Labels stay bounded: outcomes, environments, decisions and risk levels are enums; a tenant id is
never a label (tenants are unbounded; the SDK's own labels add namespace and task queue).
Alert rules and the dashboard in ops/ use these names; tests/test_observability.py holds them
to it.
"""

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import text
from temporalio import workflow
from temporalio.common import MetricMeter
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from activities.reconciliation import reconcile
from infra.metric_names import (
    APPROVAL_WAIT,
    DEPLOYMENTS_ENDED,
    LEDGER_ACCOUNTS_DRIFTING,
    LEDGER_RECONCILED_AT,
    LIFECYCLE_OLDEST_AGE,
    LIFECYCLES_ENDED,
    LIFECYCLES_OPEN,
    ROLLBACKS_ENDED,
    TOKENS_CHARGED,
    VERIFICATION_DURATION,
)
from models.db import SessionFactory
from models.lifecycle import PromptStatus
from models.transitions import is_terminal

log = structlog.get_logger(__name__)

SAMPLE_INTERVAL = timedelta(seconds=30)
RECONCILE_INTERVAL = timedelta(minutes=15)
# Holds the sweep (every minute) has not reached yet are not drift.
RECONCILE_EXPIRY_GRACE = timedelta(minutes=5)


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))


class _RecordingOutbound(WorkflowOutboundInterceptor):
    """Watches the activities a workflow runs; records what their results say."""

    def __init__(self, next: WorkflowOutboundInterceptor, inbound: "_RecordingInbound") -> None:
        super().__init__(next)
        self._inbound = inbound

    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        handle = super().start_activity(input)
        self._inbound.watch(input.activity, input.args, handle)
        return handle

    def start_local_activity(self, input: StartLocalActivityInput) -> workflow.ActivityHandle[Any]:
        handle = super().start_local_activity(input)
        self._inbound.watch(input.activity, input.args, handle)
        return handle


class _RecordingInbound(WorkflowInboundInterceptor):
    awaiting_since: datetime | None = None

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_RecordingOutbound(outbound, self))

    @staticmethod
    def _meter() -> MetricMeter:
        return workflow.metric_meter()

    def _count(self, name: str, amount: int = 1, **labels: str) -> None:
        if amount > 0:
            self._meter().create_counter(name).add(amount, labels)

    def _observe(self, name: str, value: float, **labels: str) -> None:
        self._meter().create_histogram_float(name, unit="s").record(max(value, 0.0), labels)

    def watch(self, activity: str, args: Any, handle: "asyncio.Future[Any]") -> None:
        recorder = self._RECORDERS.get(activity)
        if recorder is None:
            return

        def done(finished: "asyncio.Future[Any]") -> None:
            if not finished.cancelled() and finished.exception() is None:
                recorder(self, args, finished.result())

        handle.add_done_callback(done)

    # -- per activity --

    def _opened(self, args: Any, result: Any) -> None:
        # The workflow tells the activity which status the request is in from now on.
        opened = args[0] if args else None
        if _name(getattr(opened, "status", "")) == "awaiting_approval":
            self.awaiting_since = workflow.now()

    def _decided(self, args: Any, result: Any) -> None:
        decision = args[0] if args else None
        if decision is None or decision.plan_status is None or self.awaiting_since is None:
            return
        waited = (workflow.now() - self.awaiting_since).total_seconds()
        self.awaiting_since = None
        self._observe(APPROVAL_WAIT, waited, decision=_name(decision.decision))

    def _settled(self, args: Any, result: Any) -> None:
        self._count(TOKENS_CHARGED, int(getattr(result, "settled", 0)), kind="settlement")

    def _charged(self, args: Any, result: Any) -> None:
        self._count(TOKENS_CHARGED, int(getattr(result, "amount", 0)), kind="charge")

    def _verified(self, args: Any, result: Any) -> None:
        step = args[0] if args else None
        self._observe(
            VERIFICATION_DURATION,
            float(result.duration_s),
            environment=_name(getattr(step, "environment", "unknown")),
            outcome="passed" if result.ok else "failed",
        )

    _RECORDERS: dict[str, Callable[["_RecordingInbound", Any, Any], None]] = {
        "open_approval": _opened,
        "record_decision": _decided,
        "settle_hold": _settled,
        "charge_tokens": _charged,
        "verify_deployment": _verified,
        "run_check": _verified,
    }

    # -- per workflow outcome --

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        kind = workflow.info().workflow_type
        try:
            result = await super().execute_workflow(input)
        except (CancelledError, asyncio.CancelledError):
            if kind == "PromptRequestWorkflow":
                self._count(LIFECYCLES_ENDED, outcome="cancelled", risk_level="")
            raise
        except ApplicationError as err:
            self._ended(kind, None, refused=err.type or "ApplicationError")
            raise
        self._ended(kind, result)
        return result

    def _ended(self, kind: str, result: Any, *, refused: str | None = None) -> None:
        if kind == "PromptRequestWorkflow":
            outcome = "refused" if refused else _name(result.status)
            risk = _name(result.risk_level) if result is not None and result.risk_level else ""
            self._count(LIFECYCLES_ENDED, outcome=outcome, risk_level=risk)
        elif kind == "DeploymentWorkflow" and result is not None:
            environment = _name(result.environment)
            self._count(DEPLOYMENTS_ENDED, environment=environment, status=_name(result.status))
            if result.rollback_status is not None:
                status = _name(result.rollback_status)
                self._count(
                    ROLLBACKS_ENDED, environment=environment, status=status, trigger="automatic"
                )
        elif kind == "RollbackWorkflow":
            environment = _name(result.environment) if result is not None else "unknown"
            status = "refused" if refused else _name(result.status)
            self._count(ROLLBACKS_ENDED, environment=environment, status=status, trigger="operator")


class ProductMetricsInterceptor(Interceptor):
    """Worker interceptor: the product metrics above, from every workflow this worker runs."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _RecordingInbound


# --- sampled from PostgreSQL --------------------------------------------------------------


async def sample_open_lifecycles(sessions: SessionFactory, meter: MetricMeter) -> None:
    """Open lifecycles per state, and how long the oldest has been in it (0 when none)."""
    open_states = [s for s in PromptStatus if not is_terminal(s)]
    async with sessions() as session:
        conn = await session.connection()
        rows = await conn.execute(
            text(
                "SELECT status, count(*), EXTRACT(EPOCH FROM now() - min(updated_at))"
                " FROM prompt_requests WHERE status = ANY(:open) GROUP BY status"
            ),
            {"open": [s.value for s in open_states]},
        )
        found = {str(status): (int(n), float(age or 0)) for status, n, age in rows}
    count = meter.create_gauge(LIFECYCLES_OPEN)
    oldest = meter.create_gauge_float(LIFECYCLE_OLDEST_AGE, unit="s")
    for state in open_states:
        n, age = found.get(state.value, (0, 0.0))
        count.set(n, {"status": state.value})
        oldest.set(age, {"status": state.value})


async def sample_ledger_drift(sessions: SessionFactory, meter: MetricMeter) -> None:
    """How many accounts reconciliation finds drifting (activities/reconciliation.py)."""
    reports = await reconcile(sessions, expiry_grace=RECONCILE_EXPIRY_GRACE)
    meter.create_gauge(LEDGER_ACCOUNTS_DRIFTING).set(sum(not r.clean for r in reports))
    meter.create_gauge_float(LEDGER_RECONCILED_AT, unit="s").set(datetime.now(UTC).timestamp())


async def sample_until_stopped(
    sessions: SessionFactory, meter: MetricMeter, stop: asyncio.Event
) -> None:
    """The worker's sampling loop; a failed sample is logged and tried again next time."""
    last_reconciled: float | None = None
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            await sample_open_lifecycles(sessions, meter)
            if last_reconciled is None or (
                loop.time() - last_reconciled >= RECONCILE_INTERVAL.total_seconds()
            ):
                await sample_ledger_drift(sessions, meter)
                last_reconciled = loop.time()
        except Exception:
            log.exception("metrics_sample_failed")
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_INTERVAL.total_seconds())
        except TimeoutError:
            pass
