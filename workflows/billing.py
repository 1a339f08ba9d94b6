"""The ledger's housekeeping workflows, each on a Temporal Schedule (workers/schedules.py):
release holds past their expiry, so they never rot waiting for their workflow, and grant every
account its plan tier's tokens once per period."""

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from activities.billing import BillingActivities
    from workflows.contracts.billing import (
        GrantPlanTokens,
        GrantResult,
        SweepExpiredHolds,
        SweepResult,
    )
    from workflows.contracts.errors import NON_RETRYABLE_ERROR_TYPES
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
        # Nothing logged here: this runs every minute, and the activity logs what expired.
        return result


# Set by Temporal on every run a Schedule starts: the time the run was due, also when it runs
# late (a catch-up after the scheduler or the workers were down).
SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


@workflow.defn
class PlanGrantWorkflow:
    @workflow.run
    async def run(self, submitted: Submitted[GrantPlanTokens] = None) -> GrantResult:
        request = (
            GrantPlanTokens() if submitted is None else parse_input(GrantPlanTokens, submitted)
        )
        # The period the run was due in, not the one it happens to run in: a missed month's
        # catch-up grants that month, once.
        period = request.period or _month(
            workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME) or workflow.now()
        )
        result = await workflow.execute_activity_method(
            BillingActivities.grant_plan_tokens,
            GrantPlanTokens(period=period),
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(
                maximum_attempts=10, non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES
            ),
        )
        workflow.logger.info("granted %s to %d accounts", result.period, result.accounts)
        return result


def _month(moment: datetime) -> str:
    return moment.strftime("%Y-%m")
