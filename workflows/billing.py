"""The ledger's housekeeping workflow: release holds past their expiry. It runs on a Temporal
Schedule (workers/schedules.py), so expired holds never rot waiting for their workflow."""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.billing import BillingActivities
    from workflows.contracts.billing import SweepExpiredHolds, SweepResult
    from workflows.contracts.submitted import Submitted, parse_input


@workflow.defn
class LedgerSweepWorkflow:
    @workflow.run
    async def run(self, submitted: Submitted[SweepExpiredHolds] = None) -> SweepResult:
        # No input sweeps with the defaults; a malformed one ends at once as InvalidRequest.
        request = (
            SweepExpiredHolds() if submitted is None else parse_input(SweepExpiredHolds, submitted)
        )
        result = await workflow.execute_activity_method(
            BillingActivities.sweep_expired_holds,
            request,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RetryPolicy(maximum_attempts=5),
        )
        workflow.logger.info("expired %d token holds", result.expired)
        return result
