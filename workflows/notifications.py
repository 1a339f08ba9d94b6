"""TenantNotificationWorkflow: deliver one event to a tenant's webhook, with retries.

A workflow of its own, started by the lifecycle as an abandoned child, because a delivery must
outlive the lifecycle: the plan may be approved and shipped (the lifecycle completed) while the
receiver is still down, and `request.ended` is sent as the lifecycle returns. An activity of
the lifecycle itself would be dropped when it completes, and awaiting one would block it.
Its id is the event's id, so a retried start finds the first delivery instead of a second.
"""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.notifications import NotificationActivities
    from workflows.contracts.errors import NON_RETRYABLE_ERROR_TYPES
    from workflows.contracts.notifications import (
        NOTIFICATION_WORKFLOW_TYPE,
        NotificationOutcome,
        TenantNotification,
    )
    from workflows.contracts.submitted import Submitted, parse_input

# A receiver down for a while gets the event once it is back: 1 s, 2 s, 4 s ... up to 30 s
# apart, for at most 5 minutes. A notice later than that is news nobody needs any more.
DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)
DELIVERY_DEADLINE = timedelta(minutes=5)
# One attempt: the HTTP timeouts (activities/webhook_client.py) and a margin.
ATTEMPT_TIMEOUT = timedelta(seconds=20)


@workflow.defn(name=NOTIFICATION_WORKFLOW_TYPE)
class TenantNotificationWorkflow:
    @workflow.run
    async def run(self, submitted: Submitted[TenantNotification] = None) -> NotificationOutcome:
        notification = parse_input(TenantNotification, submitted)
        return await workflow.execute_activity_method(
            NotificationActivities.notify_tenant,
            notification,
            start_to_close_timeout=ATTEMPT_TIMEOUT,
            schedule_to_close_timeout=DELIVERY_DEADLINE,
            retry_policy=DELIVERY_RETRY,
            summary=f"{notification.type.value} to the tenant's webhook",
        )
