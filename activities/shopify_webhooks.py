"""Shopify webhook deliveries: checked against the connector's signing secret, recorded once by
their delivery id, and handed on (a sync request, or the connector disabled). Nothing here
reads the delivery's data: a webhook is only a trigger, the sync reads the shop itself, so a
duplicate, a burst or an out-of-order delivery ends in the same rows.

Shopify signs each delivery with the app's secret: X-Shopify-Hmac-Sha256 is the base64 of the
HMAC-SHA256 of the raw body. The secret is the connector's `webhook_secret` credential, else
its `client_secret` (an app with client credentials signs with it). It is decrypted here for
the comparison only and never logged, answered or handed to Temporal.
"""

import base64
import enum
import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.connectors import ConnectorService
from activities.credentials import CredentialError, CredentialStore
from models.commerce import WebhookDelivery
from models.db import SessionFactory
from models.projects import Connector, ConnectorKind, ConnectorStatus
from workflows.contracts.commerce import SyncRequested

log = structlog.get_logger(__name__)

# The topics whose change the connector's sync reads: each asks for a sync.
SYNC_TOPICS = frozenset({"orders/create", "orders/updated", "customers/update", "refunds/create"})
APP_UNINSTALLED = "app/uninstalled"
# The credential fields that may sign, the first stored one wins.
SIGNING_FIELDS = ("webhook_secret", "client_secret")
MAX_WEBHOOK_ID = 200  # webhook_deliveries.webhook_id


class Outcome(enum.StrEnum):
    SYNC_REQUESTED = "sync_requested"
    CONNECTOR_DISABLED = "connector_disabled"
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


class ShopifyWebhooks:
    """Receives deliveries. `request_sync` hands a sync request to Temporal and
    `connector_disabled` brings the connector's Schedule in line; both are given by the
    wiring (workers/webhooks.py) and both may be repeated without harm."""

    def __init__(
        self,
        sessions: SessionFactory,
        store: CredentialStore,
        connectors: ConnectorService,
        *,
        request_sync: RequestSync,
        connector_disabled: ConnectorDisabled,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._connectors = connectors
        self._request_sync = request_sync
        self._connector_disabled = connector_disabled

    async def receive(self, delivery: ShopifyDelivery) -> Outcome:
        connector = await self._connector(delivery.connector_id)
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
        elif delivery.topic not in SYNC_TOPICS:
            outcome = Outcome.IGNORED_TOPIC
        elif connector.status is ConnectorStatus.DISABLED:
            outcome = Outcome.IGNORED_DISABLED_CONNECTOR
        else:
            outcome = await self._sync_requested(connector, delivery)
        bound.info("webhook_received", outcome=outcome.value)
        return outcome

    async def _connector(self, raw_id: str) -> Connector:
        try:
            connector_id = uuid.UUID(raw_id)
        except ValueError:
            raise DeliveryRefused(404, "no such webhook endpoint") from None
        async with self._sessions() as session:
            connector = await session.get(Connector, connector_id)
        if connector is None or connector.kind is not ConnectorKind.SHOPIFY:
            raise DeliveryRefused(404, "no such webhook endpoint")
        return connector

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
    """Insert the delivery unless its id was seen; True when this call inserted it. A
    concurrent redelivery waits on the unique key and then inserts nothing."""
    stmt = (
        insert(WebhookDelivery)
        .values(
            id=uuid.uuid4(),
            connector_id=connector_id,
            webhook_id=delivery.webhook_id,
            topic=delivery.topic,
        )
        .on_conflict_do_nothing(index_elements=["connector_id", "webhook_id"])
        .returning(WebhookDelivery.id)  # type: ignore[call-overload]
    )
    inserted = (await (await session.connection()).execute(stmt)).first()
    return inserted is not None
