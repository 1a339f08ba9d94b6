"""Verification of a decision token: a JWT the platform's identity service signs with an
asymmetric key, naming who decides what on which request (workflows.contracts.decisions).

RFC 8725 practice: the algorithms are an explicit list of asymmetric ones (EdDSA, ES256, RS256;
`none` and the HMAC family are refused before any key is looked at, so a public key can never
be used as an HMAC secret), the key is chosen by `kid` from a JWKS (a file, or an https URL),
issuer and audience are checked, every claim is required, the lifetime is short and the leeway
small. Each failure is a typed refusal; a message never repeats the token.
"""

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jwt
import structlog

from workers.settings import Settings
from workflows.contracts.decisions import ACTIONS_ON_A_PLAN, DECISION_CLAIMS, DecisionAction
from workflows.contracts.errors import ErrorType, refused

log = structlog.get_logger(__name__)

ALGORITHMS = ["EdDSA", "ES256", "RS256"]


@dataclass(frozen=True)
class DecisionClaims:
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    request: uuid.UUID
    action: DecisionAction
    plan_hash: str | None
    jti: str
    expires_at: datetime


class JwksKeys:
    """Public keys by kid, from a JWKS file (re-read when it changes) or an https URL (fetched
    and cached by PyJWT's client, refetched for a kid it does not know)."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._url_client = (
            jwt.PyJWKClient(source, cache_keys=True, lifespan=300, timeout=10)
            if source.startswith("https://")
            else None
        )
        self._file_keys: dict[str, jwt.PyJWK] = {}
        self._file_stamp: float | None = None

    def key(self, kid: str) -> jwt.PyJWK:
        if self._url_client is not None:
            try:
                return self._url_client.get_signing_key(kid)
            except jwt.PyJWKClientError as err:
                raise refused(ErrorType.BAD_TOKEN_SIGNATURE, f"no key {kid!r}: {err}") from None
        keys = self._read_file()
        if kid not in keys:
            raise refused(ErrorType.BAD_TOKEN_SIGNATURE, f"no key {kid!r} in the decision JWKS")
        return keys[kid]

    def _read_file(self) -> dict[str, jwt.PyJWK]:
        path = Path(self._source)
        try:
            stamp = path.stat().st_mtime
        except FileNotFoundError:
            raise refused(
                ErrorType.BAD_TOKEN_SIGNATURE, f"the decision JWKS {path} does not exist"
            ) from None
        if stamp != self._file_stamp:
            keyset = jwt.PyJWKSet.from_dict(json.loads(path.read_text()))
            self._file_keys = {key.key_id: key for key in keyset.keys if key.key_id}
            self._file_stamp = stamp
        return self._file_keys


class DecisionTokenVerifier:
    def __init__(
        self,
        keys: JwksKeys,
        *,
        issuer: str,
        audience: str,
        max_lifetime_seconds: int,
        leeway_seconds: int,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._max_lifetime = max_lifetime_seconds
        self._leeway = leeway_seconds

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
        )

    def verify(self, token: str) -> DecisionClaims:
        """The token's claims once signature, issuer, audience and times are good."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise refused(ErrorType.MALFORMED_TOKEN, "the decision token is not a JWT") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ALGORITHMS:  # `none` and HS*: no signature of the identity service
            raise refused(
                ErrorType.BAD_TOKEN_SIGNATURE,
                f"algorithm {algorithm!r} is not allowed; allowed: {', '.join(ALGORITHMS)}",
            )
        if not isinstance(kid, str):
            raise refused(ErrorType.MALFORMED_TOKEN, "the decision token names no key (kid)")
        key = self._keys.key(kid)
        try:
            claims = jwt.decode(
                token,
                key=key,
                # The key's own algorithm only: an RS256 key never checks an ES256 signature.
                algorithms=[key.algorithm_name] if key.algorithm_name in ALGORITHMS else [],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": DECISION_CLAIMS, "strict_aud": True},
            )
        except jwt.ExpiredSignatureError:
            raise refused(ErrorType.TOKEN_EXPIRED, "the decision token has expired") from None
        except jwt.MissingRequiredClaimError as err:
            raise refused(ErrorType.MALFORMED_TOKEN, f"decision token: {err}") from None
        except jwt.InvalidAudienceError:
            raise refused(
                ErrorType.WRONG_AUDIENCE, f"the decision token is not for {self._audience!r}"
            ) from None
        except jwt.InvalidIssuerError:
            raise refused(
                ErrorType.WRONG_ISSUER, f"the decision token was not issued by {self._issuer!r}"
            ) from None
        except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
            raise refused(
                ErrorType.BAD_TOKEN_SIGNATURE, "the decision token's signature does not verify"
            ) from None
        except jwt.InvalidTokenError as err:  # iat in the future, undecodable claims...
            raise refused(ErrorType.MALFORMED_TOKEN, f"decision token: {err}") from None
        return self._claims(claims)

    def _claims(self, claims: dict[str, object]) -> DecisionClaims:
        issued, expires = claims["iat"], claims["exp"]
        assert isinstance(issued, int | float) and isinstance(expires, int | float)
        if expires - issued > self._max_lifetime:
            raise refused(
                ErrorType.TOKEN_LIFETIME_TOO_LONG,
                f"the decision token lives {int(expires - issued)} s; "
                f"at most {self._max_lifetime} s are allowed",
            )
        try:
            action = DecisionAction(str(claims["action"]))
            plan_hash = claims.get("plan_hash")
            if action in ACTIONS_ON_A_PLAN and not isinstance(plan_hash, str):
                raise ValueError(f"a token to {action.value} names no plan_hash")
            return DecisionClaims(
                user_id=uuid.UUID(str(claims["sub"])),
                tenant_id=uuid.UUID(str(claims["tenant"])),
                request=uuid.UUID(str(claims["request"])),
                action=action,
                plan_hash=plan_hash if isinstance(plan_hash, str) else None,
                jti=_jti(claims["jti"]),
                expires_at=datetime.fromtimestamp(expires, UTC),
            )
        except ValueError as err:
            raise refused(ErrorType.MALFORMED_TOKEN, f"decision token: {err}") from None


def _jti(value: object) -> str:
    if not isinstance(value, str) or not 8 <= len(value) <= 200:
        raise ValueError("jti must be a string of 8 to 200 characters")
    return value


def check_claims(
    claims: DecisionClaims,
    *,
    tenant_id: uuid.UUID,
    request: uuid.UUID,
    action: DecisionAction,
    plan_hash: str | None,
    user_id: uuid.UUID | None,
) -> None:
    """Refuse a genuine token used for something it does not name."""
    checks: list[tuple[bool, ErrorType, str]] = [
        (claims.action == action, ErrorType.WRONG_ACTION, f"the token is to {claims.action}"),
        (claims.tenant_id == tenant_id, ErrorType.WRONG_TENANT, "the token is for another tenant"),
        (claims.request == request, ErrorType.WRONG_REQUEST, "the token is for another request"),
        (
            user_id is None or claims.user_id == user_id,
            ErrorType.WRONG_USER,
            f"the token names user {claims.user_id}, not {user_id}",
        ),
        (
            action not in ACTIONS_ON_A_PLAN or claims.plan_hash == plan_hash,
            ErrorType.STALE_PLAN_HASH,
            "the token was issued for another plan revision",
        ),
    ]
    for ok, kind, message in checks:
        if not ok:
            raise refused(kind, message)
