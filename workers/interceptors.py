"""Bind log context around every activity, so each line an activity (or the libraries it calls)
logs says which workflow, activity, attempt and tenant it belongs to, without the activity
formatting any of that into its messages."""

from typing import Any

import structlog
from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)


def tenant_of(args: Any) -> str | None:
    """The tenant id carried by an activity's input, when its payload names one."""
    for arg in args:
        tenant_id = (
            arg.get("tenant_id") if isinstance(arg, dict) else getattr(arg, "tenant_id", None)
        )
        if tenant_id is not None:
            return str(tenant_id)
    return None


class _BindActivityContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        context: dict[str, Any] = {
            "workflow_id": info.workflow_id,
            "workflow_type": info.workflow_type,
            "activity": info.activity_type,
            "attempt": info.attempt,
        }
        if (tenant_id := tenant_of(input.args)) is not None:
            context["tenant_id"] = tenant_id
        # Each activity runs in its own task (own context copy); the reset on exit keeps the
        # worker's own lines free of a finished activity's context.
        with structlog.contextvars.bound_contextvars(**context):
            return await self.next.execute_activity(input)


class LogContextInterceptor(Interceptor):
    """Worker interceptor: structlog contextvars bound around each activity execution."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _BindActivityContext(next)
