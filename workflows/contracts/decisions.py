"""Signed decisions: the actions a decision token may name and the verification activity's
payloads (activities/decisions.py verifies; infra/decision_tokens.py holds the JWT rules).

A decision token is a JWT signed by the platform's identity service (in development by
infra/decision_signer.py) with the claims of DECISION_CLAIMS. A workflow that receives
decisions holds the identity service's public keys (DecisionTrust, loaded by the
`decision_trust` activity) so that its update validators check a token without I/O
(workflows/contracts/decision_rules.py); the handler then has `verify_decision` check what needs the
database (the roster now, the token id unused) before the decision counts.
"""

import base64
import enum
import json
import uuid

from pydantic import BaseModel


class DecisionAction(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    REVISE = "revise"
    ROLLBACK = "rollback"
    CANCEL = "cancel"


# Every decision token carries these; plan_hash too for approve and reject.
DECISION_CLAIMS = ["iss", "aud", "sub", "tenant", "request", "action", "exp", "iat", "jti"]
ACTIONS_ON_A_PLAN = frozenset({DecisionAction.APPROVE, DecisionAction.REJECT})


class VerifyDecision(BaseModel):
    """One decision to verify: what the workflow expects the token to say."""

    tenant_id: uuid.UUID
    # The prompt request's id, or the target deployment's id for a rollback.
    request: uuid.UUID
    action: DecisionAction
    # Who the payload says decides; the token's `sub` must be this user. None for an operator's
    # rollback without a named user (accepted only with tokens off).
    user_id: uuid.UUID | None
    token: str | None = None
    # The plan's content hash for approve and reject.
    plan_hash: str | None = None
    # The requester, who may not decide on their own plan (approve, reject).
    requested_by: uuid.UUID | None = None
    # Where the token is used (workflow id and update id): a retry of the same use is not reuse.
    used_by: str
    # False: only check (the token is not spent); a rollback checks its decider first.
    spend: bool = True


class LoadDecisionTrust(BaseModel):
    # The key id a decision named that the workflow's keys lack (a key rotated in), if any.
    unknown_kid: str | None = None


class DecisionTrust(BaseModel):
    """What a workflow needs to judge a decision token by itself: the workers' settings and
    the identity service's public keys as they were when loaded."""

    tokens_required: bool
    issuer: str
    audience: str
    max_lifetime_seconds: int
    leeway_seconds: int
    # JWKS keys, public members only (decision_rules.public_jwks).
    keys: list[dict[str, str]]


class VerifiedDecision(BaseModel):
    user_id: uuid.UUID | None
    # The token's id; None when tokens are off and the decision carried none.
    jti: str | None = None


def unverified_tenant(token: str | None) -> str | None:
    """The `tenant` claim of a token, read WITHOUT verifying anything: only for a validator's
    cheap routing (no I/O there); the activity verifies before anything counts."""
    if not token or token.count(".") != 2:
        return None
    segment = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except ValueError:
        return None
    tenant = claims.get("tenant") if isinstance(claims, dict) else None
    return tenant if isinstance(tenant, str) else None
