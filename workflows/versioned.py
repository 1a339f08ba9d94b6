"""The workflow types as a versioned worker registers them: each with its Worker Versioning
behaviour, the one thing that differs from the plain classes.

The server refuses a behaviour from a worker that is not versioned, so it cannot sit on the
classes' own `@workflow.defn`; these subclasses carry it instead, under the same type names,
and the registry picks them when CHANGEFLOW_WORKER_VERSIONING is on (workers/registry.py).
They live in a module of their own because the workflow sandbox re-imports a workflow class
by module and name.

- PINNED: a run stays on the version it started on, so it never meets code other than its own
  and needs no patch. For runs that end within minutes; the old version drains as they finish.
- AUTO_UPGRADE: a run moves to the current version at its next task. For a change request,
  which waits days for approval: pinning it would keep every old version alive for as long as
  the slowest approver. Its code changes need `workflow.patched` or must replay the recorded
  histories (tests/test_replay.py, run by `make test`).
"""

import dataclasses

from temporalio.common import VersioningBehavior
from temporalio.workflow import _Definition

from workflows import billing, commerce, deployment, lifecycle, notifications, order_import

BEHAVIOURS: dict[type, VersioningBehavior] = {
    lifecycle.PromptRequestWorkflow: VersioningBehavior.AUTO_UPGRADE,
    # A release and its check never change code mid-run.
    deployment.DeploymentWorkflow: VersioningBehavior.PINNED,
    deployment.RollbackWorkflow: VersioningBehavior.PINNED,
    # A sync run is bounded (windows_per_run); its continue-as-new starts on the current one.
    commerce.OrderSyncWorkflow: VersioningBehavior.PINNED,
    commerce.OrderSyncTriggerWorkflow: VersioningBehavior.PINNED,
    commerce.ReportWorkflow: VersioningBehavior.PINNED,
    order_import.OrderImportWorkflow: VersioningBehavior.PINNED,
    # One notice, retried for minutes at most.
    notifications.TenantNotificationWorkflow: VersioningBehavior.PINNED,
    billing.LedgerSweepWorkflow: VersioningBehavior.PINNED,
    billing.PlanGrantWorkflow: VersioningBehavior.PINNED,
}


def _versioned(cls: type) -> type:
    """A subclass registered under the same workflow type, with the behaviour attached."""
    subclass = type(cls.__name__, (cls,), {"__module__": __name__, "__qualname__": cls.__name__})
    definition = dataclasses.replace(
        _Definition.must_from_class(cls), cls=subclass, versioning_behavior=BEHAVIOURS[cls]
    )
    setattr(subclass, "__temporal_workflow_definition", definition)
    return subclass


VERSIONED = {base: _versioned(base) for base in BEHAVIOURS}
# The sandbox imports a workflow class from its module by the class's name.
globals().update({cls.__name__: cls for cls in VERSIONED.values()})
