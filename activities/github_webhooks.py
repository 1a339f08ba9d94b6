"""GitHub webhook deliveries of a `github` connector: checked, recorded once, handed on.

    POST /webhooks/github/<connector_id>   (workers/webhooks.py)

GitHub signs each delivery with the App's webhook secret (the connector's `webhook_secret`
credential): `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`. A delivery that
does not verify is answered 401 and changes nothing. A verified one is recorded by its
`X-GitHub-Delivery` id (a redelivery keeps the id, so it is recorded once and handed on once)
and, when it concerns a request, sent as the `github_event` signal to that request's lifecycle
workflow, which looks at its checks or its pull request again at once: a webhook only wakes
the workflow, it is never trusted as a verdict (the workflow reads GitHub itself), so a
reordered or lost delivery changes nothing but the wait. Polling with backoff stays the
fallback.

Which request a delivery concerns: the branch `changeflow/<request id>` of a pull request,
check run, check suite, commit status or deleted branch (`delete`); for a deployment status,
the request id changeflow put in the deployment's payload. Checks on the default branch after
a merge name no request: production verification learns of them by polling.
"""

import enum
import hashlib
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from activities.credentials import CredentialError, CredentialStore
from activities.shopify_webhooks import DeliveryRefused, record_delivery, webhook_connector
from models.base import utcnow
from models.db import SessionFactory
from models.projects import Connector, ConnectorKind
from workflows.contracts.github import GitHubEvent, GitHubEventKind, request_of_branch

log = structlog.get_logger(__name__)

MAX_DELIVERY_ID = 200  # webhook_deliveries.webhook_id
SIGNATURE_PREFIX = "sha256="
HANDLED_EVENTS = frozenset(kind.value for kind in GitHubEventKind)


class Outcome(enum.StrEnum):
    HANDED_ON = "handed_on"
    DUPLICATE = "duplicate"
    # Answered 2xx all the same: nothing to do, and nothing a redelivery would change.
    NO_REQUEST = "no_request"  # concerns no changeflow request
    NO_WAITING_WORKFLOW = "no_waiting_workflow"  # its request's workflow has ended
    IGNORED_EVENT = "ignored_event"  # ping, push and the other events


@dataclass(frozen=True)
class GitHubDelivery:
    connector_id: str  # as it came in the URL, not yet trusted
    event: str  # X-GitHub-Event
    delivery_id: str  # X-GitHub-Delivery
    signature: str  # X-Hub-Signature-256
    body: bytes


def signature_256(secret: str, body: bytes) -> str:
    """The X-Hub-Signature-256 value GitHub sends for `body` under `secret`."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, signature: str) -> bool:
    # Constant-time: the answer's timing tells nothing of how much of a guess was right.
    return hmac.compare_digest(signature_256(secret, body).encode(), signature.encode())


def event_of(
    connector_id: uuid.UUID, delivery: GitHubDelivery, body: dict[str, Any]
) -> GitHubEvent:
    """What the delivery says, reduced to what a waiting workflow needs."""
    kind = GitHubEventKind(delivery.event)
    event = GitHubEvent(
        delivery_id=delivery.delivery_id,
        event=kind,
        action=body.get("action"),
        connector_id=connector_id,
        actor=(body.get("sender") or {}).get("login"),
        received_at=utcnow(),
    )
    if kind is GitHubEventKind.PULL_REQUEST:
        pull = body.get("pull_request") or {}
        head = pull.get("head") or {}
        event.request_id = request_of_branch(head.get("ref"))
        event.sha, event.pull_number = head.get("sha"), pull.get("number")
        event.merged, event.state = pull.get("merged"), pull.get("state")
    elif kind is GitHubEventKind.CHECK_RUN:
        run = body.get("check_run") or {}
        event.request_id = request_of_branch((run.get("check_suite") or {}).get("head_branch"))
        event.sha, event.name = run.get("head_sha"), run.get("name")
        event.state = run.get("conclusion") or run.get("status")
    elif kind is GitHubEventKind.CHECK_SUITE:
        suite = body.get("check_suite") or {}
        event.request_id = request_of_branch(suite.get("head_branch"))
        event.sha, event.name = suite.get("head_sha"), (suite.get("app") or {}).get("slug")
        event.state = suite.get("conclusion") or suite.get("status")
    elif kind is GitHubEventKind.STATUS:
        branches = [b.get("name") for b in body.get("branches") or [] if isinstance(b, dict)]
        event.request_id = next(
            (r for r in map(request_of_branch, branches) if r is not None), None
        )
        event.sha, event.name, event.state = body.get("sha"), body.get("context"), body.get("state")
    elif kind is GitHubEventKind.DELETE:
        # `ref` is the branch's short name (no refs/heads/); a tag names no request.
        if body.get("ref_type") == "branch":
            event.request_id = request_of_branch(body.get("ref"))
    else:  # deployment_status
        deployment = body.get("deployment") or {}
        payload = deployment.get("payload")
        raw = payload.get("changeflow_request_id") if isinstance(payload, dict) else None
        try:
            event.request_id = uuid.UUID(str(raw)) if raw else None
        except ValueError:
            event.request_id = None
        event.sha, event.name = deployment.get("sha"), deployment.get("environment")
        event.state = (body.get("deployment_status") or {}).get("state")
    return event


# Signals the request's workflow; False when it is not running (ended, or never started).
HandOff = Callable[[uuid.UUID, GitHubEvent], Awaitable[bool]]


class GitHubWebhooks:
    """Receives deliveries; `hand_off` is given by the wiring (workers/webhooks.py)."""

    def __init__(self, sessions: SessionFactory, store: CredentialStore, *, hand_off: HandOff):
        self._sessions = sessions
        self._store = store
        self._hand_off = hand_off

    async def receive(self, delivery: GitHubDelivery) -> Outcome:
        connector = await webhook_connector(
            self._sessions, delivery.connector_id, ConnectorKind.GITHUB
        )
        secret = await self._signing_secret(connector)
        if secret is None or not signature_matches(secret, delivery.body, delivery.signature):
            raise DeliveryRefused(401, "the webhook signature does not verify")
        if not 0 < len(delivery.delivery_id) <= MAX_DELIVERY_ID:
            raise DeliveryRefused(400, "X-GitHub-Delivery is missing or too long")
        bound = log.bind(
            connector_id=str(connector.id),
            github_event=delivery.event,
            delivery_id=delivery.delivery_id,
        )
        if delivery.event not in HANDLED_EVENTS:
            bound.info("github_webhook_received", outcome=Outcome.IGNORED_EVENT.value)
            return Outcome.IGNORED_EVENT
        try:
            body = json.loads(delivery.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DeliveryRefused(400, "the webhook body is not JSON") from None
        if not isinstance(body, dict):
            raise DeliveryRefused(400, "the webhook body is not a JSON object")
        event = event_of(connector.id, delivery, body)
        # The record and the hand-off succeed together: when Temporal cannot be reached the
        # record is rolled back and the answer is an error, so a redelivery is not a duplicate.
        async with self._sessions() as session, session.begin():
            topic = f"{delivery.event}.{event.action}" if event.action else delivery.event
            if not await record_delivery(session, connector.id, delivery.delivery_id, topic[:100]):
                outcome = Outcome.DUPLICATE
            elif event.request_id is None:
                outcome = Outcome.NO_REQUEST
            elif await self._hand_off(event.request_id, event):
                outcome = Outcome.HANDED_ON
            else:
                outcome = Outcome.NO_WAITING_WORKFLOW
        bound.info(
            "github_webhook_received",
            outcome=outcome.value,
            request_id=str(event.request_id) if event.request_id else None,
        )
        return outcome

    async def _signing_secret(self, connector: Connector) -> str | None:
        try:
            secrets = await self._store.read(connector)
        except CredentialError:
            log.warning("webhook_secret_unavailable", connector_id=str(connector.id))
            return None
        return secrets.get("webhook_secret") or None
