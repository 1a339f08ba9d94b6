"""Posting one signed notification to a tenant's webhook, and what its answer means.

2xx: delivered. 408, 429, 5xx, a timeout or a refused connection: the receiver may take it
later (WebhookUnavailable, retried). Any other 4xx: it never will (WebhookRejected). Messages
name neither the URL (it may carry a token) nor the secret.
"""

import httpx

from activities.webhook_signature import (
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    sign,
)
from workflows.contracts.notifications import TenantNotification

RETRYABLE_4XX = frozenset({408, 429})
# A receiver should answer at once and work later; one that takes longer is retried.
WEBHOOK_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class WebhookUnavailable(Exception):
    """The receiver did not take the event this time; a later attempt may succeed."""


class WebhookRejected(Exception):
    """The receiver refused the event for good (a 4xx other than 408/429)."""


class WebhookClient:
    def __init__(self, http: httpx.AsyncClient, *, url: str, secret: str) -> None:
        self._http = http
        self._url = url
        self._secret = secret

    async def send(self, notification: TenantNotification) -> int:
        """Post the event signed now; returns the receiver's status code on success."""
        body = notification.model_dump_json().encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "changeflow-webhooks/1",
            SIGNATURE_HEADER: sign(self._secret, body),
            EVENT_ID_HEADER: notification.id,
            EVENT_TYPE_HEADER: notification.type.value,
        }
        try:
            answer = await self._http.post(self._url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise WebhookUnavailable("the webhook did not answer in time") from None
        except httpx.TransportError as err:
            raise WebhookUnavailable(f"the webhook is unreachable ({type(err).__name__})") from None
        code = answer.status_code
        if 200 <= code < 300:
            return code
        if code in RETRYABLE_4XX or code >= 500:
            raise WebhookUnavailable(f"the webhook answered {code}")
        raise WebhookRejected(f"the webhook refused the event with {code}")
