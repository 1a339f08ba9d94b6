"""Shopify webhook deliveries: checked against the connector's signing secret, recorded once by
their delivery id, and handed on (a sync request, or the connector disabled). Nothing here
reads the delivery's data: a webhook is only a trigger, the sync reads the shop itself, so a
duplicate, a burst or an out-of-order delivery ends in the same rows.

Deletions and privacy requests are the exception: orders/delete, customers/redact, shop/redact
and customers/data_request carry ids the sync cannot learn from the shop (the record is gone
there), so their bodies are read. Each is done in the transaction that records the delivery,
with a `privacy` ModuleExecution saying what was removed or found (ids and counts, never the
personal data itself). They are handled whatever the connector's status: shop/redact comes 48
hours after the app is uninstalled.

Shopify signs each delivery with the app's secret: X-Shopify-Hmac-Sha256 is the base64 of the
HMAC-SHA256 of the raw body. The secret is the connector's `webhook_secret` credential, else
its `client_secret` (an app with client credentials signs with it). It is decrypted here for
the comparison only and never logged, answered or handed to Temporal.
"""

import base64
import enum
import hashlib
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.connectors import Connections, ConnectorService
from activities.credentials import CredentialError, CredentialStore
from models.base import utcnow
from models.commerce import (
    Customer,
    ModuleExecution,
    ModuleExecutionStatus,
    ModuleKind,
    Order,
    OrderSource,
    WebhookDelivery,
)
from models.db import SessionFactory
from models.projects import Connector, ConnectorKind, ConnectorStatus
from workflows.contracts.commerce import BulkOperationFinished, SyncRequested

log = structlog.get_logger(__name__)

# The topics whose change the connector's sync reads: each asks for a sync.
SYNC_TOPICS = frozenset({"orders/create", "orders/updated", "customers/update", "refunds/create"})
APP_UNINSTALLED = "app/uninstalled"
ORDERS_DELETE = "orders/delete"
CUSTOMERS_REDACT = "customers/redact"
SHOP_REDACT = "shop/redact"
CUSTOMERS_DATA_REQUEST = "customers/data_request"
PRIVACY_TOPICS = frozenset({ORDERS_DELETE, CUSTOMERS_REDACT, SHOP_REDACT, CUSTOMERS_DATA_REQUEST})
# A Bulk Operation the app ran finished (completed, failed, canceled): the sync waiting for it
# reads it at once instead of at its next poll.
BULK_OPERATIONS_FINISH = "bulk_operations/finish"
# What the product subscribes a shop to (webhookSubscriptionCreate's WebhookSubscriptionTopic
# values). The three privacy topics cannot be subscribed by the API: they are set in the app's
# configuration (shopify.app.toml `compliance_topics`, or the Partner Dashboard).
SUBSCRIBED_TOPICS = (
    "ORDERS_CREATE",
    "ORDERS_UPDATED",
    "ORDERS_DELETE",
    "CUSTOMERS_UPDATE",
    "REFUNDS_CREATE",
    "APP_UNINSTALLED",
    "BULK_OPERATIONS_FINISH",
)
# The credential fields that may sign, the first stored one wins.
SIGNING_FIELDS = ("webhook_secret", "client_secret")
MAX_WEBHOOK_ID = 200  # webhook_deliveries.webhook_id


class Outcome(enum.StrEnum):
    SYNC_REQUESTED = "sync_requested"
    CONNECTOR_DISABLED = "connector_disabled"
    ORDER_DELETED = "order_deleted"
    CUSTOMER_REDACTED = "customer_redacted"
    SHOP_REDACTED = "shop_redacted"
    DATA_REQUEST_RECORDED = "data_request_recorded"
    BULK_OPERATION_FINISHED = "bulk_operation_finished"
    DUPLICATE = "duplicate"
    # Answered 2xx all the same: Shopify retries any other answer for two days.
    IGNORED_TOPIC = "ignored_topic"
    IGNORED_DISABLED_CONNECTOR = "ignored_disabled_connector"


class DeliveryRefused(Exception):
    """A delivery answered with `status` and nothing changed. The message says no more than
    the caller may know (an unknown connector and a bad id read the same)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ShopifyDelivery:
    connector_id: str  # as it came in the URL, not yet trusted
    topic: str
    webhook_id: str
    signature: str
    shop_domain: str
    body: bytes


def shopify_signature(secret: str, body: bytes) -> str:
    """The X-Shopify-Hmac-Sha256 value Shopify sends for `body` signed with `secret`."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def signature_matches(secret: str, body: bytes, signature: str) -> bool:
    # Constant-time, so the answer's timing tells nothing of how much of a guess was right.
    return hmac.compare_digest(shopify_signature(secret, body).encode(), signature.encode())


RequestSync = Callable[[uuid.UUID, SyncRequested], Awaitable[None]]
ConnectorDisabled = Callable[[Connector], Awaitable[None]]
BulkFinished = Callable[[uuid.UUID, BulkOperationFinished], Awaitable[None]]


def bulk_operation_finished(body: bytes) -> BulkOperationFinished:
    """The facts of a bulk_operations/finish body (admin_graphql_api_id, status, error_code);
    DeliveryRefused 400 when it has none."""
    try:
        payload = json.loads(body)
        operation_id = payload["admin_graphql_api_id"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise DeliveryRefused(400, "a bulk_operations/finish webhook names its operation") from None
    if not isinstance(operation_id, str) or not operation_id.startswith(
        "gid://shopify/BulkOperation/"
    ):
        raise DeliveryRefused(400, "a bulk_operations/finish webhook names its operation")
    error = payload.get("error_code")
    return BulkOperationFinished(
        operation_id=operation_id,
        status=str(payload.get("status") or ""),
        error_code=str(error) if error else None,
    )


class ShopifyWebhooks:
    """Receives deliveries. `request_sync` hands a sync request to Temporal and
    `connector_disabled` brings the connector's Schedule in line, `bulk_finished` wakes a
    sync waiting for a Bulk Operation; all are given by the wiring (workers/webhooks.py) and
    all may be repeated without harm."""

    def __init__(
        self,
        sessions: SessionFactory,
        store: CredentialStore,
        connectors: ConnectorService,
        *,
        request_sync: RequestSync,
        connector_disabled: ConnectorDisabled,
        bulk_finished: BulkFinished,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._connectors = connectors
        self._request_sync = request_sync
        self._connector_disabled = connector_disabled
        self._bulk_finished = bulk_finished

    async def receive(self, delivery: ShopifyDelivery) -> Outcome:
        connector = await webhook_connector(
            self._sessions, delivery.connector_id, ConnectorKind.SHOPIFY
        )
        secret = await self._signing_secret(connector)
        if secret is None or not signature_matches(secret, delivery.body, delivery.signature):
            raise DeliveryRefused(401, "the webhook signature does not verify")
        bound = log.bind(
            connector_id=str(connector.id),
            topic=delivery.topic,
            webhook_id=delivery.webhook_id,
            shop_domain=delivery.shop_domain,
        )
        if not 0 < len(delivery.webhook_id) <= MAX_WEBHOOK_ID:
            raise DeliveryRefused(400, "X-Shopify-Webhook-Id is missing or too long")
        if delivery.topic == APP_UNINSTALLED:
            outcome = await self._uninstalled(connector, delivery)
        elif delivery.topic in PRIVACY_TOPICS:
            outcome = await self._privacy(connector, delivery)
        elif delivery.topic == BULK_OPERATIONS_FINISH:
            outcome = await self._bulk_operation_finished(connector, delivery)
        elif delivery.topic not in SYNC_TOPICS:
            outcome = Outcome.IGNORED_TOPIC
        elif connector.status is ConnectorStatus.DISABLED:
            outcome = Outcome.IGNORED_DISABLED_CONNECTOR
        else:
            outcome = await self._sync_requested(connector, delivery)
        bound.info("webhook_received", outcome=outcome.value)
        return outcome

    async def _signing_secret(self, connector: Connector) -> str | None:
        try:
            secrets = await self._store.read(connector)
        except CredentialError:
            # Unreadable credentials cannot verify anything: refused like a bad signature.
            log.warning("webhook_secret_unavailable", connector_id=str(connector.id))
            return None
        return next((secrets[f] for f in SIGNING_FIELDS if secrets.get(f)), None)

    async def _sync_requested(self, connector: Connector, delivery: ShopifyDelivery) -> Outcome:
        # The record and the hand-off succeed together: when Temporal cannot be reached the
        # record is rolled back, the answer is an error, and Shopify's retry is not a duplicate.
        async with self._sessions() as session, session.begin():
            if not await _record(session, connector.id, delivery):
                return Outcome.DUPLICATE
            await self._request_sync(
                connector.id, SyncRequested(topic=delivery.topic, webhook_id=delivery.webhook_id)
            )
        return Outcome.SYNC_REQUESTED

    async def _bulk_operation_finished(
        self, connector: Connector, delivery: ShopifyDelivery
    ) -> Outcome:
        finished = bulk_operation_finished(delivery.body)
        async with self._sessions() as session, session.begin():
            if not await _record(session, connector.id, delivery):
                return Outcome.DUPLICATE
            await self._bulk_finished(connector.id, finished)
        return Outcome.BULK_OPERATION_FINISHED

    async def _privacy(self, connector: Connector, delivery: ShopifyDelivery) -> Outcome:
        try:
            body = json.loads(delivery.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DeliveryRefused(400, "the webhook body is not JSON") from None
        if not isinstance(body, dict):
            raise DeliveryRefused(400, "the webhook body is not a JSON object")
        async with self._sessions() as session, session.begin():
            if not await _record(session, connector.id, delivery):
                return Outcome.DUPLICATE
            outcome, facts = await _apply_privacy(session, connector, delivery.topic, body)
            session.add(
                ModuleExecution(
                    tenant_id=connector.tenant_id,
                    connector_id=connector.id,
                    module=ModuleKind.PRIVACY,
                    status=ModuleExecutionStatus.SUCCEEDED,
                    run_key=f"privacy-{connector.id}-{delivery.webhook_id}",
                    meta={"topic": delivery.topic, "webhook_id": delivery.webhook_id, **facts},
                    started_at=utcnow(),
                    finished_at=utcnow(),
                )
            )
        return outcome

    async def _uninstalled(self, connector: Connector, delivery: ShopifyDelivery) -> Outcome:
        # Disabling is repeatable, so it comes first and the record after: a crash between the
        # two leaves a retry that disables nothing more. (Recording first, in one transaction,
        # would hold the connector row's key lock that disabling waits for.)
        async with self._sessions() as session:
            seen = await session.exec(
                select(WebhookDelivery.id).where(
                    WebhookDelivery.connector_id == connector.id,
                    WebhookDelivery.webhook_id == delivery.webhook_id,
                )
            )
            if seen.first() is not None:
                return Outcome.DUPLICATE
        if connector.status is not ConnectorStatus.DISABLED:
            connector = await self._connectors.disable(connector.id)
        await self._connector_disabled(connector)
        async with self._sessions() as session, session.begin():
            await _record(session, connector.id, delivery)
        return Outcome.CONNECTOR_DISABLED


async def _record(
    session: AsyncSession, connector_id: uuid.UUID, delivery: ShopifyDelivery
) -> bool:
    return await record_delivery(session, connector_id, delivery.webhook_id, delivery.topic)


async def webhook_connector(
    sessions: SessionFactory, raw_id: str, kind: ConnectorKind
) -> Connector:
    """The connector a delivery's URL names, of the source that sent it; any other id is the same
    404, so a caller learns nothing of which connectors exist."""
    try:
        connector_id = uuid.UUID(raw_id)
    except ValueError:
        raise DeliveryRefused(404, "no such webhook endpoint") from None
    async with sessions() as session:
        connector = await session.get(Connector, connector_id)
    if connector is None or connector.kind is not kind:
        raise DeliveryRefused(404, "no such webhook endpoint")
    return connector


async def record_delivery(
    session: AsyncSession, connector_id: uuid.UUID, webhook_id: str, topic: str
) -> bool:
    """Insert the delivery unless its id was seen; True when this call inserted it. A
    concurrent redelivery waits on the unique key and then inserts nothing. Every webhook
    source's de-duplication (GitHub's X-GitHub-Delivery too)."""
    stmt = (
        insert(WebhookDelivery)
        .values(id=uuid.uuid4(), connector_id=connector_id, webhook_id=webhook_id, topic=topic)
        .on_conflict_do_nothing(index_elements=["connector_id", "webhook_id"])
        .returning(WebhookDelivery.id)  # type: ignore[call-overload]
    )
    inserted = (await (await session.connection()).execute(stmt)).first()
    return inserted is not None


def _gid(kind: str, value: object) -> str:
    """Shopify's GraphQL id of a webhook body's numeric id (how the sync stores it)."""
    return f"gid://shopify/{kind}/{int(str(value))}"


async def _apply_privacy(
    session: AsyncSession, connector: Connector, topic: str, body: dict[str, object]
) -> tuple[Outcome, dict[str, object]]:
    """Do what a deletion or privacy delivery asks, in the caller's transaction; the facts
    for its record (ids and counts only)."""
    tenant, shopify = connector.tenant_id, OrderSource.SHOPIFY
    connection = await session.connection()
    try:
        if topic == ORDERS_DELETE:
            order = _gid("Order", body["id"])
            deleted = await connection.execute(
                sa.delete(Order).where(
                    col(Order.tenant_id) == tenant,
                    col(Order.source) == shopify,
                    col(Order.external_id) == order,
                )
            )
            return Outcome.ORDER_DELETED, {"order": order, "orders_removed": deleted.rowcount}
        if topic == SHOP_REDACT:
            orders = await connection.execute(
                sa.delete(Order).where(col(Order.connector_id) == connector.id)
            )
            customers = await connection.execute(
                sa.delete(Customer).where(
                    col(Customer.tenant_id) == tenant, col(Customer.source) == shopify
                )
            )
            return Outcome.SHOP_REDACTED, {
                "orders_removed": orders.rowcount,
                "customers_removed": customers.rowcount,
            }
        customer_body = body.get("customer")
        if not isinstance(customer_body, dict):
            raise DeliveryRefused(400, f"a {topic} webhook names its customer")
        customer = _gid("Customer", customer_body["id"])
        stored = (
            await session.exec(
                select(Customer).where(
                    Customer.tenant_id == tenant,
                    Customer.source == shopify,
                    Customer.external_id == customer,
                )
            )
        ).first()
        orders_held = (
            list(
                (
                    await session.exec(
                        select(Order.external_id).where(
                            Order.tenant_id == tenant, Order.customer_id == stored.id
                        )
                    )
                ).all()
            )
            if stored is not None
            else []
        )
        if topic == CUSTOMERS_DATA_REQUEST:
            # What the merchant must hand the customer: which personal fields and orders are
            # held (the values are read from the tables, never copied into the record).
            held = [f for f in ("email", "name", "phone") if getattr(stored, f)] if stored else []
            request = body.get("data_request")
            return Outcome.DATA_REQUEST_RECORDED, {
                "customer": customer,
                "data_request_id": request.get("id") if isinstance(request, dict) else None,
                "customer_fields_held": held,
                "orders_held": sorted(orders_held),
            }
        # customers/redact: the customer's row goes (its orders stay as sales records,
        # unlinked by the foreign key): no name, email or phone is left.
        removed = 0
        if stored is not None:
            removed = (
                await connection.execute(sa.delete(Customer).where(col(Customer.id) == stored.id))
            ).rowcount
        return Outcome.CUSTOMER_REDACTED, {
            "customer": customer,
            "customers_removed": removed,
            "orders_unlinked": sorted(orders_held),
        }
    except (KeyError, ValueError, TypeError):
        raise DeliveryRefused(400, f"a {topic} webhook without the ids it needs") from None


async def register_webhooks(
    connections: Connections, connector: Connector, public_url: str
) -> dict[str, str]:
    """Subscribe the shop to every topic the product handles, at the connector's endpoint;
    topics already subscribed there are left alone. The subscriptions as the shop has them."""
    uri = f"{public_url.rstrip('/')}/webhooks/shopify/{connector.id}"
    async with connections.shopify(connector) as shop:
        existing = await shop.webhook_subscriptions()
        for topic in SUBSCRIBED_TOPICS:
            if existing.get(topic) != uri:
                await shop.subscribe(topic, uri)
        return await shop.webhook_subscriptions()
