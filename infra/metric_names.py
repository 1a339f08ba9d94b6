"""The product's metric names, their labels and histogram buckets: one catalogue that the worker
records under (workers/metrics.py), the Temporal runtime's Prometheus endpoint buckets by
(client/connection.py), and the alert rules and dashboard in ops/ use."""

LIFECYCLES_ENDED = "changeflow_lifecycles_ended"
APPROVAL_WAIT = "changeflow_approval_wait_seconds"
TOKENS_CHARGED = "changeflow_tokens_charged"
DEPLOYMENTS_ENDED = "changeflow_deployments_ended"
ROLLBACKS_ENDED = "changeflow_rollbacks_ended"
VERIFICATION_DURATION = "changeflow_verification_seconds"
LIFECYCLES_OPEN = "changeflow_lifecycles_open"
LIFECYCLE_OLDEST_AGE = "changeflow_lifecycle_oldest_age_seconds"
LEDGER_ACCOUNTS_DRIFTING = "changeflow_ledger_accounts_drifting"
LEDGER_RECONCILED_AT = "changeflow_ledger_reconciled_timestamp_seconds"

# Every product metric and its labels (the SDK adds namespace, task_queue, workflow_type).
PRODUCT_METRICS: dict[str, tuple[str, ...]] = {
    LIFECYCLES_ENDED: ("outcome", "risk_level"),
    APPROVAL_WAIT: ("decision",),
    TOKENS_CHARGED: ("kind",),
    DEPLOYMENTS_ENDED: ("environment", "status"),
    ROLLBACKS_ENDED: ("environment", "status", "trigger"),
    VERIFICATION_DURATION: ("environment", "outcome"),
    LIFECYCLES_OPEN: ("status",),
    LIFECYCLE_OLDEST_AGE: ("status",),
    LEDGER_ACCOUNTS_DRIFTING: (),
    LEDGER_RECONCILED_AT: (),
}
HISTOGRAMS = (APPROVAL_WAIT, VERIFICATION_DURATION)
# Seconds; people approve within minutes to days, checks run for seconds to minutes.
HISTOGRAM_BUCKETS: dict[str, list[float]] = {
    APPROVAL_WAIT: [30, 60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400],
    VERIFICATION_DURATION: [0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600],
}
