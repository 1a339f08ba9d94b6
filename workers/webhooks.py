"""`changeflow-webhooks`: the HTTP endpoint Shopify and GitHub deliver webhooks to, a Starlette
app on uvicorn in its own process, configured like the workers (DATABASE_URL, TEMPORAL_ADDRESS,
CHANGEFLOW_*; CHANGEFLOW_WEBHOOKS_HOST/PORT).

    POST /webhooks/shopify/<connector_id>
    POST /webhooks/github/<connector_id>    (activities/github_webhooks.py: the `github_event`
                                             signal to the request's lifecycle workflow)

It answers within Shopify's 5 s because it only hands the event on: signal-with-start of the
connector's OrderSyncWorkflow (its one id), so a burst of deliveries makes one sync and at
most one follow-up, never N syncs. app/uninstalled disables the connector and removes its
sync Schedule. The rules live in activities/shopify_webhooks.py; this module wires them.
"""

import argparse
import asyncio
import uuid
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TypeVar

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.connectors import ConnectorService
from activities.github_webhooks import GitHubDelivery, GitHubWebhooks
from activities.shopify_webhooks import DeliveryRefused, ShopifyDelivery, ShopifyWebhooks
from client.connection import connect
from infra.entry_points import run_entry_point
from infra.settings import ConfigurationError, Settings
from models.db import create_engine, session_factory
from models.projects import Connector
from workers.devstack import embedded_stack
from workers.registry import Dependencies, credential_store
from workers.schedules import apply_connector_schedule
from workers.worker import stop_on_signals
from workflows.commerce import OrderSyncWorkflow
from workflows.contracts.commerce import BulkOperationFinished, OrderSyncInput, SyncRequested
from workflows.contracts.github import GITHUB_EVENT_SIGNAL, GitHubEvent
from workflows.contracts.ids import order_sync_workflow_id, prompt_request_workflow_id

log = structlog.get_logger(__name__)

D = TypeVar("D")  # a source's delivery: what its endpoint reads off one request

SHOPIFY_ROUTE = "/webhooks/shopify/{connector_id}"
GITHUB_ROUTE = "/webhooks/github/{connector_id}"


class TemporalHandOff:
    """What a delivery sets going in Temporal; each call may be repeated without harm."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self._client = client
        self._task_queue = task_queue

    async def request_sync(self, connector_id: uuid.UUID, request: SyncRequested) -> None:
        # Signal-with-start: a running sync takes the signal (and runs once more at its end),
        # otherwise a sync starts with it.
        await self._client.start_workflow(
            OrderSyncWorkflow.run,
            OrderSyncInput(connector_id=connector_id, requested=True),
            id=order_sync_workflow_id(connector_id),
            task_queue=self._task_queue,
            start_signal=OrderSyncWorkflow.request_sync.__name__,
            start_signal_args=[request],
        )

    async def bulk_finished(self, connector_id: uuid.UUID, finished: BulkOperationFinished) -> None:
        # A plain signal: a sync waiting for the operation wakes; no sync, nothing to wake
        # (a finished operation is no reason to start one).
        handle = self._client.get_workflow_handle(order_sync_workflow_id(connector_id))
        try:
            await handle.signal(OrderSyncWorkflow.bulk_operation_finished, finished)
        except RPCError as err:
            if err.status is not RPCStatusCode.NOT_FOUND:
                raise

    async def connector_disabled(self, connector: Connector) -> None:
        await apply_connector_schedule(self._client, connector, self._task_queue)

    async def github_event(self, request_id: uuid.UUID, event: GitHubEvent) -> bool:
        """The `github_event` signal to the request's lifecycle; False when it is not running."""
        handle = self._client.get_workflow_handle(prompt_request_workflow_id(request_id))
        try:
            await handle.signal(GITHUB_EVENT_SIGNAL, event)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True


def shopify_webhooks(deps: Dependencies) -> ShopifyWebhooks:
    store, connections = credential_store(deps)
    hand_off = TemporalHandOff(deps.client, deps.settings.task_queue)
    return ShopifyWebhooks(
        deps.sessions,
        store,
        ConnectorService(deps.sessions, store, connections),
        request_sync=hand_off.request_sync,
        connector_disabled=hand_off.connector_disabled,
        bulk_finished=hand_off.bulk_finished,
    )


def github_webhooks(deps: Dependencies) -> GitHubWebhooks:
    store, _ = credential_store(deps)
    hand_off = TemporalHandOff(deps.client, deps.settings.task_queue)
    return GitHubWebhooks(deps.sessions, store, hand_off=hand_off.github_event)


def webhook_app(
    webhooks: ShopifyWebhooks, *, max_body_bytes: int, github: GitHubWebhooks | None = None
) -> Starlette:
    async def received(
        request: Request,
        delivery_of: Callable[[bytes], D],
        receive: Callable[[D], Awaitable[StrEnum]],
        about: Callable[[D], dict[str, str]],
    ) -> Response:
        """What every source's endpoint does around its own delivery: a bounded body, the
        receiver's outcome, and a refusal answered with its status and logged."""
        try:
            body = await _body(request, max_body_bytes)
        except ClientDisconnect:
            return Response(status_code=400)
        if body is None:
            return JSONResponse({"error": "the body is too large"}, status_code=413)
        delivery = delivery_of(body)
        try:
            outcome = await receive(delivery)
        except DeliveryRefused as err:
            log.warning("webhook_refused", status=err.status, reason=str(err), **about(delivery))
            return JSONResponse({"error": str(err)}, status_code=err.status)
        return JSONResponse({"outcome": outcome.value})

    async def shopify(request: Request) -> Response:
        headers = request.headers
        return await received(
            request,
            lambda body: ShopifyDelivery(
                connector_id=request.path_params["connector_id"],
                topic=headers.get("x-shopify-topic", ""),
                webhook_id=headers.get("x-shopify-webhook-id", ""),
                signature=headers.get("x-shopify-hmac-sha256", ""),
                shop_domain=headers.get("x-shopify-shop-domain", ""),
                body=body,
            ),
            webhooks.receive,
            lambda delivery: {"connector_id": delivery.connector_id, "topic": delivery.topic},
        )

    async def github_hook(request: Request) -> Response:
        if github is None:
            return JSONResponse({"error": "no such webhook endpoint"}, status_code=404)
        headers = request.headers
        return await received(
            request,
            lambda body: GitHubDelivery(
                connector_id=request.path_params["connector_id"],
                event=headers.get("x-github-event", ""),
                delivery_id=headers.get("x-github-delivery", ""),
                signature=headers.get("x-hub-signature-256", ""),
                body=body,
            ),
            github.receive,
            lambda delivery: {
                "connector_id": delivery.connector_id,
                "github_event": delivery.event,
            },
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route(SHOPIFY_ROUTE, shopify, methods=["POST"]),
            Route(GITHUB_ROUTE, github_hook, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )


async def _body(request: Request, limit: int) -> bytes | None:
    """The raw body, exactly as signed; None past `limit` bytes (read no further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def serve(settings: Settings) -> int:
    """Resolve the stack like a worker does, then serve until SIGTERM or Ctrl-C."""
    if settings.credential_keys is None:
        raise ConfigurationError(
            "CHANGEFLOW_CREDENTIAL_KEYS is not set: the webhooks endpoint cannot read the "
            "connectors' signing secrets"
        )
    # Its own metrics port: with the workers' environment on their host, theirs is taken.
    settings = settings.model_copy(
        update={"metrics_port": settings.webhooks_metrics_port, "metrics_port_span": 1}
    )
    async with embedded_stack(settings, migrate=settings.embedded_database) as stack:
        client = await connect(stack.settings)
        engine = create_engine(stack.database_url, pool_size=settings.db_pool_size)
        try:
            deps = Dependencies(
                settings=stack.settings, sessions=session_factory(engine), client=client
            )
            app = webhook_app(
                shopify_webhooks(deps),
                max_body_bytes=settings.webhooks_max_body_bytes,
                github=github_webhooks(deps),
            )
            server = uvicorn.Server(
                uvicorn.Config(
                    app,
                    host=settings.webhooks_host,
                    port=settings.webhooks_port,
                    # Our logging (infra/logging.py) is configured already; uvicorn's own
                    # access log would repeat each delivery without its outcome.
                    log_config=None,
                    access_log=False,
                    lifespan="off",
                )
            )
            log.info(
                "webhooks_started",
                url=f"http://{settings.webhooks_host}:{settings.webhooks_port}",
                routes=[SHOPIFY_ROUTE, GITHUB_ROUTE],
                task_queue=settings.task_queue,
            )
            # uvicorn handles SIGTERM/SIGINT while it serves and raises the signal again once
            # it has stopped; these handlers take that one, so the process leaves cleanly.
            stop_on_signals(asyncio.Event())
            await server.serve()
            log.info("webhooks_stopped")
        finally:
            await engine.dispose()
    return 0


def main() -> None:
    argparse.ArgumentParser(
        prog="changeflow-webhooks",
        description="Serve the webhooks endpoints, POST /webhooks/shopify/<connector_id> and "
        "POST /webhooks/github/<connector_id>, "
        "on CHANGEFLOW_WEBHOOKS_HOST:CHANGEFLOW_WEBHOOKS_PORT until SIGTERM or Ctrl-C. "
        "Configured by environment variables like the workers: DATABASE_URL, TEMPORAL_ADDRESS, "
        "CHANGEFLOW_CREDENTIAL_KEYS, CHANGEFLOW_TASK_QUEUE, CHANGEFLOW_*; metrics on "
        "CHANGEFLOW_WEBHOOKS_METRICS_PORT (never the workers' CHANGEFLOW_METRICS_PORT).",
    ).parse_args()
    run_entry_point(serve, prog="changeflow-webhooks")


if __name__ == "__main__":
    main()
