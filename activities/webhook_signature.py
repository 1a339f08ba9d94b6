"""The one signing rule of tenant webhooks (Stripe's scheme), for the sender and for receivers.

    Changeflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{raw body}")>

The timestamp is signed with the body, so a receiver that also refuses old timestamps
(`tolerance_seconds`) refuses a captured request replayed later. Standard library only: a
receiver may copy this module as it is.
"""

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Changeflow-Signature"
EVENT_ID_HEADER = "Changeflow-Event-Id"
EVENT_TYPE_HEADER = "Changeflow-Event"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(ValueError):
    """A signature header that is missing, malformed, wrong, or too old."""


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """The Changeflow-Signature header value for `body`, signed now (or at `timestamp`)."""
    at = int(time.time()) if timestamp is None else timestamp
    return f"t={at},v1={_digest(secret, at, body)}"


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    *,
    now: float | None = None,
) -> int:
    """Return the signed timestamp, or raise SignatureError. `body` is the raw request body,
    exactly as received (before any JSON parsing)."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError("the signature has no valid t=<unix seconds>") from None
    candidates = parts.get("v1", [])
    if not candidates:
        raise SignatureError("the signature has no v1=<hex digest>")
    expected = _digest(secret, timestamp, body)
    # Several v1 entries are allowed (a receiver rotating its secret checks each).
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("the signature does not match the body")
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance:
        raise SignatureError(f"the signature is {age:.0f} s old; at most {tolerance:.0f} s")
    return timestamp
