"""Every workflow id and schedule id of the product, built and parsed here only.

Ids are deterministic so that starting a workflow twice finds the first one (id reuse
policies, update-with-start) and so that anyone holding the domain id can find its workflow.
"""

import uuid
from datetime import date
from urllib.parse import quote

PROMPT_REQUEST_PREFIX = "prompt-request-"
DEPLOYMENT_PREFIX = "deployment-"
ROLLBACK_PREFIX = "rollback-"
ORDER_SYNC_PREFIX = "order-sync-"
REPORT_PREFIX = "report-"
ORDER_IMPORT_PREFIX = "order-import-"
NOTIFICATION_PREFIX = "notification-"
ORDER_SYNC_SCHEDULE_PREFIX = "changeflow-order-sync-"
REPORT_SCHEDULE_PREFIX = "changeflow-report-"

LEDGER_SWEEP_SCHEDULE_ID = "changeflow-ledger-sweep"
PLAN_GRANT_SCHEDULE_ID = "changeflow-plan-grants"


def prompt_request_workflow_id(prompt_request_id: uuid.UUID) -> str:
    return f"{PROMPT_REQUEST_PREFIX}{prompt_request_id}"


def deployment_workflow_id(deployment_id: uuid.UUID) -> str:
    return f"{DEPLOYMENT_PREFIX}{deployment_id}"


def rollback_workflow_id(deployment_id: uuid.UUID) -> str:
    return f"{ROLLBACK_PREFIX}{deployment_id}"


def deployment_id_of_rollback(workflow_id: str) -> uuid.UUID | None:
    """The rollback deployment's id in a rollback workflow id; None for any other id."""
    if not workflow_id.startswith(ROLLBACK_PREFIX):
        return None
    try:
        return uuid.UUID(workflow_id.removeprefix(ROLLBACK_PREFIX))
    except ValueError:
        return None


def order_sync_workflow_id(connector_id: uuid.UUID) -> str:
    """One sync of a connector at a time: every start of its sync uses this id."""
    return f"{ORDER_SYNC_PREFIX}{connector_id}"


def order_sync_schedule_id(connector_id: uuid.UUID) -> str:
    return f"{ORDER_SYNC_SCHEDULE_PREFIX}{connector_id}"


def report_workflow_id(tenant_id: uuid.UUID, first_day: date, last_day: date) -> str:
    """One report of a tenant and period at a time."""
    return f"{REPORT_PREFIX}{tenant_id}-{first_day.isoformat()}-{last_day.isoformat()}"


def order_import_workflow_id(tenant_id: uuid.UUID, source: str, sha256: str) -> str:
    """One import of a file's content per tenant and import source: the same file twice is
    one import."""
    return f"{ORDER_IMPORT_PREFIX}{tenant_id}-{source}-{sha256}"


def report_schedule_id(tenant_id: uuid.UUID) -> str:
    return f"{REPORT_SCHEDULE_PREFIX}{tenant_id}"


def module_run_key(workflow_id: str, first_run_id: str) -> str:
    """The ModuleExecution of one module run, across its continue-as-new runs and retries."""
    return f"{workflow_id}:{first_run_id}"


def scheduled_run_workflow_id(schedule_id: str) -> str:
    """The id of the runs a schedule starts (Temporal appends each run's time to it)."""
    return f"{schedule_id}-run"


def plan_job_key(workflow_id: str | None, revision: int) -> str:
    """The ChangeJob of planning one revision: a retried planning finds its job."""
    return f"{workflow_id}:plan:{revision}"


def apply_job_key(workflow_id: str | None, plan_id: uuid.UUID, round: int) -> str:
    """The ChangeJob of applying one plan in one round (round 1 keeps its historic key)."""
    key = f"{workflow_id}:apply:{plan_id}"
    return key if round == 1 else f"{key}:round-{round}"


def notification_workflow_id(prompt_request_id: uuid.UUID, event: str, sequence: int) -> str:
    """One tenant notification: also its event id, the same across delivery retries, so the
    receiver can de-duplicate. `sequence` tells apart the lifecycle's notices of one kind."""
    return f"{NOTIFICATION_PREFIX}{prompt_request_id}-{event}-{sequence}"


def web_ui_workflows_url(ui_url: str, namespace: str) -> str:
    """The Web UI's workflow list of a namespace; a workflow's page is below it."""
    return f"{ui_url.rstrip('/')}/namespaces/{namespace}/workflows"


def web_ui_workflow_url(ui_url: str, namespace: str, workflow_id: str) -> str:
    return f"{web_ui_workflows_url(ui_url, namespace)}/{quote(workflow_id, safe='')}"
