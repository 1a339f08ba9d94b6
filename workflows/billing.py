"""The ledger's housekeeping workflow: release holds past their expiry. It runs on a Temporal
Schedule (workers/schedules.py), so expired holds never rot waiting for their workflow."""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.billing import BillingActivities
    from workflows.contracts.billing import SweepExpiredHolds, SweepResult


@workflow.defn
class LedgerSweepWorkflow:
    @workflow.run
    async def run(self, request: SweepExpiredHolds) -> SweepResult:
        result = await workflow.execute_activity_method(
            BillingActivities.sweep_expired_holds,
            request,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RetryPolicy(maximum_attempts=5),
        )
        workflow.logger.info("expired %d token holds", result.expired)
        return result
