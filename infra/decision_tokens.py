"""The identity service's public keys, read where the settings say (a JWKS file, or an https
URL), and the verification of a decision token against them now: the I/O around the pure rules
of workflows/contracts/decision_rules.py.

A workflow that receives decisions holds a copy of the keys (`trust()`, handed to it by the
`decision_trust` activity) and judges tokens in its validators with the same rules; the verify
activity checks a token again against the keys as they are now, so a key withdrawn from the
JWKS decides nothing even where a workflow still holds it.
"""

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import structlog
from temporalio.exceptions import ApplicationError

from infra.settings import DecisionTokenMode, Settings
from workflows.contracts.decision_rules import (
    DecisionClaims,
    TrustedKeys,
    no_such_key,
    public_jwks,
    token_kid,
    verify_token,
)
from workflows.contracts.decisions import DecisionTrust
from workflows.contracts.errors import ErrorType, refused

log = structlog.get_logger(__name__)

# An https JWKS is fetched again after this long, or at once for a kid it does not know (at
# most once per MIN_REFETCH_SECONDS, so unknown kids cannot make it fetch in a loop).
URL_LIFESPAN_SECONDS = 300
MIN_REFETCH_SECONDS = 30


class JwksKeys:
    """Public keys from a JWKS file (re-read when it changes) or an https URL."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._is_url = source.startswith("https://")
        self._url_client = (
            jwt.PyJWKClient(source, cache_jwk_set=False, timeout=10) if self._is_url else None
        )
        self._keys: list[dict[str, str]] = []
        self._stamp: float | None = None  # the file's mtime, or when the URL was fetched

    @property
    def blocks(self) -> bool:
        """Whether reading the keys may wait on the network (then: off the event loop)."""
        return self._is_url

    def keys(self, *, unknown_kid: str | None = None) -> list[dict[str, str]]:
        """The public keys; an https JWKS is fetched again when stale or when it lacks
        unknown_kid."""
        if self._url_client is not None:
            age = time.monotonic() - self._stamp if self._stamp is not None else None
            lacks = unknown_kid is not None and all(k["kid"] != unknown_kid for k in self._keys)
            if age is None or age > URL_LIFESPAN_SECONDS or (lacks and age > MIN_REFETCH_SECONDS):
                try:
                    data: Any = self._url_client.fetch_data()
                except jwt.PyJWKClientError as err:
                    if self._stamp is None:
                        raise refused(
                            ErrorType.BAD_TOKEN_SIGNATURE,
                            f"the decision JWKS is unavailable: {err}",
                        ) from None
                    log.warning("decision_jwks_refresh_failed", error=str(err))
                    return self._keys
                self._keys = public_jwks(data.get("keys", []) if isinstance(data, dict) else [])
                self._stamp = time.monotonic()
            return self._keys
        path = Path(self._source)
        try:
            stamp = path.stat().st_mtime
        except FileNotFoundError:
            raise refused(
                ErrorType.BAD_TOKEN_SIGNATURE, f"the decision JWKS {path} does not exist"
            ) from None
        if stamp != self._stamp:
            data = json.loads(path.read_text())
            self._keys = public_jwks(data.get("keys", []) if isinstance(data, dict) else [])
            self._stamp = stamp
        return self._keys


class DecisionTokenVerifier:
    def __init__(
        self,
        keys: JwksKeys,
        *,
        issuer: str,
        audience: str,
        max_lifetime_seconds: int,
        leeway_seconds: int,
        tokens_required: bool = True,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._max_lifetime = max_lifetime_seconds
        self._leeway = leeway_seconds
        self._tokens_required = tokens_required
        self._trusted: TrustedKeys | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "DecisionTokenVerifier":
        if settings.uses_dev_decision_signer and settings.decision_tokens == "required":
            log.warning(
                "decision_tokens_trust_the_development_signer",
                jwks=settings.resolved_decision_jwks,
                hint="set CHANGEFLOW_DECISION_JWKS to the identity service's keys in production",
            )
        return cls(
            JwksKeys(settings.resolved_decision_jwks),
            issuer=settings.decision_issuer,
            audience=settings.decision_audience,
            max_lifetime_seconds=settings.decision_token_max_lifetime_seconds,
            leeway_seconds=settings.decision_token_leeway_seconds,
            tokens_required=settings.decision_tokens is DecisionTokenMode.REQUIRED,
        )

    @property
    def blocks(self) -> bool:
        return self._keys.blocks

    def trust(self, *, unknown_kid: str | None = None) -> DecisionTrust:
        """The settings and keys a workflow judges tokens with; no keys while the JWKS cannot
        be read (every token is then refused, as verify would refuse it)."""
        try:
            keys = self._keys.keys(unknown_kid=unknown_kid)
        except ApplicationError as err:
            log.warning("decision_jwks_unavailable", reason=err.message)
            keys = []
        return self._trust(keys)

    def _trust(self, keys: list[dict[str, str]]) -> DecisionTrust:
        return DecisionTrust(
            tokens_required=self._tokens_required,
            issuer=self._issuer,
            audience=self._audience,
            max_lifetime_seconds=self._max_lifetime,
            leeway_seconds=self._leeway,
            keys=keys,
        )

    def verify(self, token: str) -> DecisionClaims:
        """The token's claims once signature, issuer, audience and times are good now, by
        the keys as they are now."""
        kid = token_kid(token)
        trust = self._trust(self._keys.keys(unknown_kid=kid))
        if self._trusted is None or self._trusted.trust != trust:
            self._trusted = TrustedKeys(trust)
        if self._trusted.get(kid) is None:
            raise no_such_key(kid)
        return verify_token(token, self._trusted, datetime.now(UTC))
