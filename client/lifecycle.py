"""A typed client of the prompt lifecycle for other Python services.

    lifecycle = LifecycleClient(client, task_queue=settings.task_queue)
    request_id = await lifecycle.submit(tenant_id=..., project_id=..., user_id=..., prompt=...)
    status = await lifecycle.status(request_id)
    await lifecycle.approve(
        request_id, user_id=approver, content_hash=status.plan.content_hash, token=token
    )
    result = await lifecycle.wait_for_outcome(request_id)

Decisions (approve, reject, revise, cancel, roll_back) carry a signed decision token
(workflows/contracts/decisions.py) that the platform's identity service issued for that user,
tenant, request and action: pass it as `token=`. A client built with a `signer` (the
development signer, infra/decision_signer.py) issues one itself for a call without; it
signs for the request's tenant, which the client remembers from `submit` and `status` (or is
given as `tenant_id=`), so a decision costs no extra status query.
`status(..., tenant_id=...)` answers another tenant's request exactly as one that does not
exist: UnknownRequest.

A cancel's reason travels in the `authorize_cancel` update's encrypted payload; Temporal's own
cancel is sent without one (the server keeps that reason in plain text).

Refusals (a validator saying no, a request refused at start, a payload the workflow would
refuse, checked here before it is sent) raise `LifecycleRefused`, whose `error_type` is the
ApplicationError type (see workflows.contracts.errors.ErrorType). A decision on a
request that has ended is refused as `RequestClosed` (the server answers such an update with an
untyped "workflow execution already completed").

A plain `asyncio.run` script that used a Temporal client can abort at interpreter exit with
`Fatal Python error: PyGILState_Release` (temporalio/sdk-python#300); leave it through
`infra.entry_points.run_script(main())`, which flushes output and ends with `os._exit(code)`.
"""

import uuid
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode

from models.lifecycle import PromptStatus
from workflows.contracts.decisions import DecisionAction
from workflows.contracts.deployment import (
    DEFAULT_DEPLOY_TASK_QUEUE,
    DeploymentResult,
    RollbackRequest,
)
from workflows.contracts.errors import ErrorType, application_error
from workflows.contracts.ids import prompt_request_workflow_id, rollback_workflow_id
from workflows.contracts.lifecycle import (
    WORKFLOW_TYPE,
    ApproveRequest,
    CancelRequest,
    PromptRequestInput,
    PromptRequestResult,
    PromptRequestStatus,
    RejectRequest,
    ReviseRequest,
    check_prompt,
    check_reason,
)
from workflows.contracts.search_attributes import prompt_request_attributes
from workflows.contracts.submitted import parse_input


class LifecycleRefused(Exception):
    """The lifecycle said no; `error_type` tells which rule (e.g. "SelfApproval")."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


def _refusal(err: BaseException) -> LifecycleRefused | None:
    cause = application_error(err)
    if cause is None:
        return None
    return LifecycleRefused(cause.type or "ApplicationError", cause.message)


M = TypeVar("M", bound=BaseModel)
# How many requests' tenants a client keeps (the oldest is forgotten first).
TENANTS_REMEMBERED = 10_000


def _payload(model: type[M], *checks: Callable[[M], None], **fields: object) -> M:
    """The payload, refused here as the workflow would refuse it: never a raw ValidationError."""
    try:
        payload = parse_input(model, fields)
        for check in checks:
            check(payload)
    except ApplicationError as err:
        raise LifecycleRefused(err.type or "ApplicationError", err.message) from None
    return payload


class DecisionSigner(Protocol):
    """Issues decision tokens (infra.decision_signer.DevelopmentSigner is one)."""

    def issue(
        self,
        *,
        user: uuid.UUID,
        tenant: uuid.UUID,
        request: uuid.UUID,
        action: DecisionAction,
        plan_hash: str | None = None,
    ) -> str: ...


class LifecycleClient:
    def __init__(
        self,
        client: Client,
        *,
        task_queue: str = "changeflow-lifecycle",
        deploy_task_queue: str = DEFAULT_DEPLOY_TASK_QUEUE,
        signer: DecisionSigner | None = None,
    ) -> None:
        self._client = client
        self._task_queue = task_queue
        self._deploy_task_queue = deploy_task_queue
        self._signer = signer
        # Request -> its tenant (which never changes), for signing decisions.
        self._tenants: dict[uuid.UUID, uuid.UUID] = {}

    async def _token(
        self,
        token: str | None,
        *,
        user_id: uuid.UUID | None,
        action: DecisionAction,
        request: uuid.UUID,
        tenant_id: uuid.UUID | None = None,
        plan_hash: str | None = None,
    ) -> str | None:
        """The given token, or one from the signer (the request's own tenant), or None."""
        if token is not None or self._signer is None or user_id is None:
            return token
        if tenant_id is None:
            tenant_id = self._tenants.get(request) or (await self.status(request)).tenant_id
        return self._signer.issue(
            user=user_id, tenant=tenant_id, request=request, action=action, plan_hash=plan_hash
        )

    def _handle(self, prompt_request_id: uuid.UUID) -> WorkflowHandle[Any, PromptRequestResult]:
        return self._client.get_workflow_handle(
            prompt_request_workflow_id(prompt_request_id), result_type=PromptRequestResult
        )

    async def submit(
        self,
        *,
        tenant_id: uuid.UUID,
        project_id: uuid.UUID,
        user_id: uuid.UUID,
        prompt: str,
        prompt_request_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Start a lifecycle; returns the prompt request id. An empty or oversized prompt is
        refused here already; tenant, project and user are checked by the workflow."""
        request_id = prompt_request_id or uuid.uuid4()
        request = _payload(
            PromptRequestInput,
            lambda request: check_prompt(request.prompt),
            prompt_request_id=request_id,
            tenant_id=tenant_id,
            project_id=project_id,
            requested_by=user_id,
            prompt=prompt,
            deploy_task_queue=self._deploy_task_queue,
        )
        first_line = prompt.strip().splitlines()[0][:120]
        await self._client.start_workflow(
            WORKFLOW_TYPE,
            request,
            id=prompt_request_workflow_id(request_id),
            task_queue=self._task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=prompt_request_attributes(tenant_id, project_id),
            static_summary=f"Prompt request {request_id}: {first_line}",
        )
        self._remember(request_id, tenant_id)
        return request_id

    def _remember(self, request_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
        if len(self._tenants) >= TENANTS_REMEMBERED:
            self._tenants.pop(next(iter(self._tenants)))
        self._tenants[request_id] = tenant_id

    async def _update(
        self, prompt_request_id: uuid.UUID, name: str, payload: object
    ) -> PromptRequestStatus:
        try:
            return await self._handle(prompt_request_id).execute_update(
                name, payload, result_type=PromptRequestStatus
            )
        except WorkflowUpdateFailedError as err:
            raise (_refusal(err) or err) from err
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise LifecycleRefused(
                    ErrorType.REQUEST_CLOSED,
                    f"prompt request {prompt_request_id} has ended or does not exist: {err}",
                ) from err
            raise

    async def approve(
        self,
        prompt_request_id: uuid.UUID,
        *,
        user_id: uuid.UUID,
        content_hash: str,
        comment: str = "",
        token: str | None = None,
        tenant_id: uuid.UUID | None = None,
    ) -> PromptRequestStatus:
        token = await self._token(
            token,
            user_id=user_id,
            action=DecisionAction.APPROVE,
            request=prompt_request_id,
            tenant_id=tenant_id,
            plan_hash=content_hash,
        )
        return await self._update(
            prompt_request_id,
            "approve",
            _payload(
                ApproveRequest,
                user_id=user_id,
                content_hash=content_hash,
                comment=comment,
                token=token,
            ),
        )

    async def reject(
        self,
        prompt_request_id: uuid.UUID,
        *,
        user_id: uuid.UUID,
        content_hash: str,
        reason: str,
        token: str | None = None,
        tenant_id: uuid.UUID | None = None,
    ) -> PromptRequestStatus:
        token = await self._token(
            token,
            user_id=user_id,
            action=DecisionAction.REJECT,
            request=prompt_request_id,
            tenant_id=tenant_id,
            plan_hash=content_hash,
        )
        return await self._update(
            prompt_request_id,
            "reject",
            _payload(
                RejectRequest,
                lambda rejection: check_reason(rejection.reason),
                user_id=user_id,
                content_hash=content_hash,
                reason=reason,
                token=token,
            ),
        )

    async def revise(
        self,
        prompt_request_id: uuid.UUID,
        *,
        user_id: uuid.UUID,
        prompt: str,
        token: str | None = None,
        tenant_id: uuid.UUID | None = None,
    ) -> PromptRequestStatus:
        token = await self._token(
            token,
            user_id=user_id,
            action=DecisionAction.REVISE,
            request=prompt_request_id,
            tenant_id=tenant_id,
        )
        return await self._update(
            prompt_request_id,
            "revise",
            _payload(
                ReviseRequest,
                lambda revision: check_prompt(revision.prompt),
                user_id=user_id,
                prompt=prompt,
                token=token,
            ),
        )

    async def cancel(
        self,
        prompt_request_id: uuid.UUID,
        *,
        reason: str = "",
        user_id: uuid.UUID | None = None,
        token: str | None = None,
        tenant_id: uuid.UUID | None = None,
    ) -> None:
        """Ask the lifecycle to stop; it releases its hold and rolls back a half-done deploy.
        The workflow first verifies the signed cancel decision and keeps its reason (its
        `authorize_cancel` update); only then is Temporal's cancel sent, with no reason."""
        token = await self._token(
            token,
            user_id=user_id,
            action=DecisionAction.CANCEL,
            request=prompt_request_id,
            tenant_id=tenant_id,
        )
        await self._update(
            prompt_request_id,
            "authorize_cancel",
            _payload(CancelRequest, user_id=user_id, token=token, reason=reason),
        )
        await self._handle(prompt_request_id).cancel()

    async def status(
        self, prompt_request_id: uuid.UUID, *, tenant_id: uuid.UUID | None = None
    ) -> PromptRequestStatus:
        """Current state; also answers after the lifecycle ended. A request that does not
        exist is refused as UnknownRequest, and with tenant_id so is another tenant's, in the
        same words: the answer never says that it exists."""
        unknown = LifecycleRefused(
            ErrorType.UNKNOWN_REQUEST,
            f"tenant {tenant_id} has no prompt request {prompt_request_id}"
            if tenant_id is not None
            else f"there is no prompt request {prompt_request_id}",
        )
        try:
            status = await self._handle(prompt_request_id).query(
                "status", result_type=PromptRequestStatus
            )
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise unknown from None
            raise
        if tenant_id is not None and status.tenant_id != tenant_id:
            raise unknown
        self._remember(prompt_request_id, status.tenant_id)
        return status

    async def wait_for_outcome(self, prompt_request_id: uuid.UUID) -> PromptRequestResult:
        """The final result. A cancelled lifecycle answers CANCELLED; a request refused at
        start raises LifecycleRefused. Bound the wait with asyncio.timeout."""
        handle = self._handle(prompt_request_id)
        try:
            return await handle.result()
        except WorkflowFailureError as err:
            if isinstance(err.cause, CancelledError):
                status = await self.status(prompt_request_id)
                return PromptRequestResult(
                    prompt_request_id=prompt_request_id,
                    status=PromptStatus.CANCELLED,
                    reason=status.reason,
                    plan_id=status.plan.plan_id if status.plan else None,
                    content_hash=status.plan.content_hash if status.plan else None,
                    risk_level=status.plan.risk_level if status.plan else None,
                    commit_sha=status.commit_sha,
                    tokens_used=status.tokens_used,
                    tokens_settled=status.tokens_settled,
                    deployments=status.deployments,
                )
            raise (_refusal(err) or err) from err

    async def roll_back(
        self,
        *,
        tenant_id: uuid.UUID,
        target_deployment_id: uuid.UUID,
        requested_by: uuid.UUID | None = None,
        reason: str = "",
        token: str | None = None,
    ) -> uuid.UUID:
        """Start an operator's rollback to an earlier successful deployment; returns the new
        rollback deployment's id (its workflow id is ids.rollback_workflow_id). The token's
        request is the target deployment's id."""
        token = await self._token(
            token,
            user_id=requested_by,
            action=DecisionAction.ROLLBACK,
            request=target_deployment_id,
            tenant_id=tenant_id,
        )
        deployment_id = uuid.uuid4()
        await self._client.start_workflow(
            "RollbackWorkflow",
            RollbackRequest(
                tenant_id=tenant_id,
                target_deployment_id=target_deployment_id,
                requested_by=requested_by,
                reason=reason,
                token=token,
                deployment_id=deployment_id,
                deploy_task_queue=self._deploy_task_queue,
            ),
            id=rollback_workflow_id(deployment_id),
            task_queue=self._task_queue,
            static_summary=f"Rollback to deployment {target_deployment_id}",
        )
        return deployment_id

    async def rollback_result(self, deployment_id: uuid.UUID) -> DeploymentResult:
        handle = self._client.get_workflow_handle(
            rollback_workflow_id(deployment_id), result_type=DeploymentResult
        )
        try:
            return await handle.result()
        except WorkflowFailureError as err:
            raise (_refusal(err) or err) from err
