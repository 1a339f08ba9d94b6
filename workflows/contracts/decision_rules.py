"""Whether a decision may count, as far as that needs no database: pure rules, no I/O, no
Temporal, so that the lifecycle's update validators refuse with them (a refusal there writes
nothing to the history) and the verify activity applies the same ones.

- The token (RFC 8725 practice): a JWT whose algorithm is one of an explicit list of asymmetric
  ones (EdDSA, ES256, RS256; `none` and the HMAC family are refused before any key is looked
  at, so a public key can never serve as an HMAC secret), signed by the key its `kid` names in
  the identity service's JWKS, with the issuer, audience, every claim and a short lifetime; the
  time is given (`now`: the workflow's clock in a validator), never read here.
- The token names what is decided: action, tenant, request, user and (approve, reject) plan.
- Who may decide: not the requester on their own plan; approvers' roles for a plan, acting
  roles for a cancel or a rollback, any member of the tenant for a revision.

Each refusal is a typed ApplicationError (workflows.contracts.errors); a message never repeats
the token.
"""

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from workflows.contracts.decisions import (
    ACTIONS_ON_A_PLAN,
    DECISION_CLAIMS,
    DecisionAction,
    DecisionTrust,
)
from workflows.contracts.errors import ErrorType, refused

ALGORITHMS = ["EdDSA", "ES256", "RS256"]
# Who may cancel a request or roll back a release: a tenant's people who act, not viewers.
ACTING_ROLES = frozenset({"client_admin", "client_operator", "founder"})
# The members of a JWK that describe a public key; anything else (a private part) is dropped.
PUBLIC_JWK_MEMBERS = frozenset({"kty", "crv", "x", "y", "n", "e", "kid", "alg", "use"})


@dataclass(frozen=True)
class DecisionClaims:
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    request: uuid.UUID
    action: DecisionAction
    plan_hash: str | None
    jti: str
    expires_at: datetime


def public_jwks(keys: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """The public half of each asymmetric key with a kid (symmetric keys are left out)."""
    return [
        {name: str(value) for name, value in key.items() if name in PUBLIC_JWK_MEMBERS}
        for key in keys
        if key.get("kid") and key.get("kty") in ("OKP", "EC", "RSA")
    ]


class TrustedKeys:
    """The keys of a DecisionTrust by kid, parsed once."""

    def __init__(self, trust: DecisionTrust) -> None:
        self.trust = trust
        self._keys: dict[str, jwt.PyJWK] = {}
        for jwk in trust.keys:
            try:
                self._keys[jwk["kid"]] = jwt.PyJWK(jwk)
            except (jwt.PyJWKError, KeyError, ValueError):
                continue  # a key this library cannot use verifies nothing

    def get(self, kid: str) -> jwt.PyJWK | None:
        return self._keys.get(kid)

    @property
    def held(self) -> bool:
        """Whether there is any key at all."""
        return bool(self._keys)


def token_kid(token: str) -> str:
    """The key id a token names, once its header is readable and its algorithm allowed."""
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
    return kid


def no_such_key(kid: str) -> Exception:
    return refused(ErrorType.BAD_TOKEN_SIGNATURE, f"no key {kid!r} in the decision JWKS")


def verify_token(token: str, keys: TrustedKeys, now: datetime) -> DecisionClaims:
    """The token's claims once signature, issuer, audience and times are good at `now`."""
    trust = keys.trust
    kid = token_kid(token)
    key = keys.get(kid)
    if key is None:
        raise no_such_key(kid)
    try:
        claims = jwt.decode(
            token,
            key=key,
            # The key's own algorithm only: an RS256 key never checks an ES256 signature.
            algorithms=[key.algorithm_name] if key.algorithm_name in ALGORITHMS else [],
            audience=trust.audience,
            issuer=trust.issuer,
            # Times are judged below against `now`, not the clock of whoever runs this.
            options={
                "require": DECISION_CLAIMS,
                "strict_aud": True,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.MissingRequiredClaimError as err:
        raise refused(ErrorType.MALFORMED_TOKEN, f"decision token: {err}") from None
    except jwt.InvalidAudienceError:
        raise refused(
            ErrorType.WRONG_AUDIENCE, f"the decision token is not for {trust.audience!r}"
        ) from None
    except jwt.InvalidIssuerError:
        raise refused(
            ErrorType.WRONG_ISSUER, f"the decision token was not issued by {trust.issuer!r}"
        ) from None
    except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
        raise refused(
            ErrorType.BAD_TOKEN_SIGNATURE, "the decision token's signature does not verify"
        ) from None
    except jwt.InvalidTokenError as err:  # undecodable claims...
        raise refused(ErrorType.MALFORMED_TOKEN, f"decision token: {err}") from None
    return _claims(claims, trust, now)


def _claims(claims: dict[str, Any], trust: DecisionTrust, now: datetime) -> DecisionClaims:
    issued, expires = claims["iat"], claims["exp"]
    if not _is_time(issued) or not _is_time(expires):
        raise refused(ErrorType.MALFORMED_TOKEN, "decision token: iat and exp must be numbers")
    at, leeway = now.timestamp(), trust.leeway_seconds
    if expires <= at - leeway:
        raise refused(ErrorType.TOKEN_EXPIRED, "the decision token has expired")
    if issued > at + leeway:
        raise refused(ErrorType.MALFORMED_TOKEN, "decision token: issued in the future (iat)")
    not_before = claims.get("nbf")
    if not_before is not None and (not _is_time(not_before) or not_before > at + leeway):
        raise refused(ErrorType.MALFORMED_TOKEN, "decision token: not valid yet (nbf)")
    if expires - issued > trust.max_lifetime_seconds:
        raise refused(
            ErrorType.TOKEN_LIFETIME_TOO_LONG,
            f"the decision token lives {int(expires - issued)} s; "
            f"at most {trust.max_lifetime_seconds} s are allowed",
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


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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


def check_decider(
    *,
    action: DecisionAction,
    user_id: uuid.UUID,
    role: str | None,
    requested_by: uuid.UUID | None,
    approver_roles: Iterable[str],
) -> None:
    """Refuse a member of the tenant (`role`; None: not a member) who may not make this
    decision."""
    if role is None:
        raise refused(
            ErrorType.USER_OF_ANOTHER_TENANT,
            f"user {user_id} is not a member of this request's tenant",
        )
    if action in ACTIONS_ON_A_PLAN:
        if user_id == requested_by:
            raise refused(
                ErrorType.SELF_APPROVAL, "the requester cannot decide on their own request"
            )
        allowed = sorted(approver_roles)
    elif action is DecisionAction.REVISE:
        return  # any member of the tenant may amend the prompt
    else:
        allowed = sorted(ACTING_ROLES)
    if role not in allowed:
        raise refused(
            ErrorType.ROLE_MAY_NOT_APPROVE,
            f"role {role!r} may not {action}; allowed: {', '.join(allowed)}",
        )


# Refusals that judge the person (the roster as it is now), not their token.
DECIDER_REFUSALS = frozenset(
    {ErrorType.USER_OF_ANOTHER_TENANT, ErrorType.ROLE_MAY_NOT_APPROVE, ErrorType.SELF_APPROVAL}
)


@dataclass
class RefusedDecider:
    kind: ErrorType
    message: str
    times: int
    until: datetime


class DeciderRefusals:
    """People a decision's handler refused by the roster as it is now (which only the database
    knows): the validator refuses them again, without a trace, for a while that doubles with
    each refusal, so that one identity cannot grow a history without bound, while a role
    granted since is honoured once the while is over. A refusal of a role or of the requester
    holds for that kind of decision (a viewer may still revise); one of a user outside the
    tenant holds for all."""

    def __init__(self, first: timedelta, cap: timedelta) -> None:
        self._first = first
        self._cap = cap
        self._refused: dict[tuple[uuid.UUID, str], RefusedDecider] = {}

    def remember(
        self,
        user_id: uuid.UUID,
        action: DecisionAction,
        kind: ErrorType,
        message: str,
        now: datetime,
    ) -> None:
        key = (user_id, "*" if kind is ErrorType.USER_OF_ANOTHER_TENANT else _kind_of(action))
        earlier = self._refused.get(key)
        times = earlier.times + 1 if earlier else 1
        wait = min(self._first * 2 ** (times - 1), self._cap)
        self._refused[key] = RefusedDecider(kind, message, times, now + wait)

    def check(self, user_id: uuid.UUID, action: DecisionAction, now: datetime) -> None:
        """Refuse a person refused a moment ago, with the same typed error."""
        for key in ((user_id, "*"), (user_id, _kind_of(action))):
            earlier = self._refused.get(key)
            if earlier is not None and now < earlier.until:
                raise refused(
                    earlier.kind,
                    f"{earlier.message} (refused {earlier.times} time(s); "
                    f"asked again before {earlier.until.isoformat(timespec='seconds')})",
                )


def _kind_of(action: DecisionAction) -> str:
    """Approve and reject are judged by one rule (the approver roles)."""
    return "plan" if action in ACTIONS_ON_A_PLAN else action.value
