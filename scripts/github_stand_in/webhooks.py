"""GitHub's webhook deliveries from the stand-in: the App's webhook, signed and labelled as
GitHub does (X-GitHub-Event, X-GitHub-Delivery, X-Hub-Signature-256 = "sha256=" + hex HMAC-SHA256
of the raw body under the webhook secret), posted one at a time from a thread of its own.

A test can hold deliveries and release them reordered and duplicated (same delivery id, as a
redelivery carries), or send one with a bad signature. GitHub does not retry a failed delivery
by itself; neither does the sender. Deliveries and the answers they got are kept.
"""

import hashlib
import hmac
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx


def signature_256(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Delivery:
    event: str
    body: bytes
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    forged: bool = False

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def action(self) -> str | None:
        return self.payload.get("action")


@dataclass
class Answer:
    delivery: Delivery
    status: int | None  # None: the receiver could not be reached


class WebhookSender:
    def __init__(self, secret: str, url: str | None = None, *, hook_id: int = 1) -> None:
        self.secret = secret
        self.url = url  # None: deliveries wait in the outbox until a url is set and released
        self.hook_id = hook_id
        self.held = False
        self.sent: list[Delivery] = []  # every delivery ever produced, in the order it happened
        self.answers: list[Answer] = []
        self._outbox: list[Delivery] = []
        self._wake = threading.Condition()
        self._busy = False
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, name="github-stand-in-webhooks", daemon=True
        )
        self._thread.start()

    # -- producing ------------------------------------------------------------------------

    def enqueue(self, event: str, payload: dict[str, Any]) -> Delivery:
        delivery = Delivery(event, json.dumps(payload, separators=(",", ":")).encode())
        with self._wake:
            self.sent.append(delivery)
            self._outbox.append(delivery)
            self._wake.notify_all()
        return delivery

    def of(self, event: str, action: str | None = None) -> list[Delivery]:
        return [d for d in self.sent if d.event == event and (action is None or d.action == action)]

    # -- a test's hand on the wire --------------------------------------------------------

    def hold(self) -> None:
        """Keep deliveries in the outbox until release()."""
        with self._wake:
            self.held = True

    def release(
        self, *, order: str = "as-produced", duplicate: bool = False, seed: int = 0
    ) -> None:
        """Send what was held: in order, reversed or shuffled, each twice if `duplicate` (the
        second with the same X-GitHub-Delivery, as a redelivery)."""
        with self._wake:
            batch = list(self._outbox)
            if order == "reversed":
                batch.reverse()
            elif order == "shuffled":
                random.Random(seed).shuffle(batch)
            elif order != "as-produced":
                raise ValueError(f"unknown order {order!r}")
            if duplicate:
                batch = [d for delivery in batch for d in (delivery, delivery)]
            self._outbox = batch
            self.held = False
            self._wake.notify_all()

    def redeliver(self, delivery: Delivery) -> None:
        with self._wake:
            self._outbox.append(delivery)
            self._wake.notify_all()

    def send_forged(self, event: str, payload: dict[str, Any]) -> Delivery:
        """A delivery whose signature was made with another secret."""
        delivery = Delivery(event, json.dumps(payload).encode(), forged=True)
        with self._wake:
            self._outbox.append(delivery)
            self._wake.notify_all()
        return delivery

    def deliver_to(self, url: str) -> None:
        with self._wake:
            self.url = url
            self._wake.notify_all()

    def wait_idle(self, timeout: float = 30) -> None:
        """Block until the outbox is empty (or held) and nothing is in flight."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while (self._outbox and not self.held and self.url is not None) or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("webhook deliveries still pending")
                self._wake.wait(remaining)

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        self._thread.join(timeout=5)

    # -- delivering -----------------------------------------------------------------------

    def headers(self, delivery: Delivery) -> dict[str, str]:
        secret = ("not-" + self.secret) if delivery.forged else self.secret
        return {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/stand-in",
            "X-GitHub-Event": delivery.event,
            "X-GitHub-Delivery": delivery.id,
            "X-GitHub-Hook-ID": str(self.hook_id),
            "X-GitHub-Hook-Installation-Target-Type": "integration",
            "X-Hub-Signature": "sha1="
            + hmac.new(secret.encode(), delivery.body, hashlib.sha1).hexdigest(),
            "X-Hub-Signature-256": signature_256(secret, delivery.body),
        }

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while True:
                with self._wake:
                    while not self._stopped and (self.held or not self._outbox or self.url is None):
                        self._wake.wait()
                    if self._stopped:
                        return
                    delivery = self._outbox.pop(0)
                    self._busy = True
                    url = self.url
                    assert url is not None
                try:
                    response = http.post(url, content=delivery.body, headers=self.headers(delivery))
                    status: int | None = response.status_code
                except httpx.HTTPError:
                    status = None
                with self._wake:
                    self.answers.append(Answer(delivery, status))
                    self._busy = False
                    self._wake.notify_all()
