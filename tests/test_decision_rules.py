"""The rules of a decision that need no database (workflows/contracts/decision_rules.py), without
any server: what the lifecycle's validators refuse, at the time they are given."""

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from temporalio.exceptions import ApplicationError

from infra.decision_signer import DevelopmentSigner
from workflows.contracts.decision_rules import (
    DeciderRefusals,
    TrustedKeys,
    check_claims,
    check_decider,
    public_jwks,
    verify_token,
)
from workflows.contracts.decisions import DecisionAction, DecisionTrust
from workflows.contracts.errors import ErrorType

ISSUER = "https://id.example"
TENANT, REQUEST, USER = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
PLAN = "a" * 64


@pytest.fixture
def signer(tmp_path: Path) -> DevelopmentSigner:
    return DevelopmentSigner(tmp_path, issuer=ISSUER, audience="changeflow")


def trusted(signer: DevelopmentSigner, **changes: object) -> TrustedKeys:
    fields: dict[str, object] = {
        "tokens_required": True,
        "issuer": ISSUER,
        "audience": "changeflow",
        "max_lifetime_seconds": 600,
        "leeway_seconds": 5,
        "keys": public_jwks(json.loads(signer.jwks_path.read_text())["keys"]),
    }
    fields.update(changes)
    return TrustedKeys(DecisionTrust.model_validate(fields))


def issued(signer: DevelopmentSigner, at: datetime, **claims: object) -> str:
    fields: dict[str, object] = {
        "user": USER,
        "tenant": TENANT,
        "request": REQUEST,
        "action": DecisionAction.APPROVE,
        "plan_hash": PLAN,
        "issued_at": at.timestamp(),
    }
    fields.update(claims)
    return signer.issue(**fields)  # type: ignore[arg-type]


def refusal(call: object) -> str | None:
    assert callable(call)
    with pytest.raises(ApplicationError) as refused:
        call()
    assert refused.value.non_retryable
    return refused.value.type


def test_a_genuine_token_is_judged_at_the_time_given(signer: DevelopmentSigner) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    token = issued(signer, at)  # lives 300 s
    keys = trusted(signer)

    claims = verify_token(token, keys, at + timedelta(seconds=299))
    assert (claims.user_id, claims.tenant_id, claims.request) == (USER, TENANT, REQUEST)
    assert claims.action is DecisionAction.APPROVE and claims.plan_hash == PLAN
    # Within the leeway after exp, then expired; before iat (beyond the leeway) it is refused.
    verify_token(token, keys, at + timedelta(seconds=304))
    assert refusal(lambda: verify_token(token, keys, at + timedelta(seconds=306))) == (
        ErrorType.TOKEN_EXPIRED
    )
    assert refusal(lambda: verify_token(token, keys, at - timedelta(seconds=60))) == (
        ErrorType.MALFORMED_TOKEN
    )


def test_tokens_the_identity_service_did_not_sign_as_trusted_are_refused(
    signer: DevelopmentSigner, tmp_path: Path
) -> None:
    at = datetime.now(UTC)
    keys = trusted(signer)
    genuine = issued(signer, at)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    other_key = generate_private_key(SECP256R1())
    cases = {
        "not a JWT": ("nonsense", ErrorType.MALFORMED_TOKEN),
        "alg none": (
            jwt.encode(claims, None, algorithm="none", headers={"kid": signer.kid}),
            ErrorType.BAD_TOKEN_SIGNATURE,
        ),
        "HS256": (
            jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"kid": signer.kid}),
            ErrorType.BAD_TOKEN_SIGNATURE,
        ),
        "ES256 under the EdDSA key's kid": (
            jwt.encode(claims, other_key, algorithm="ES256", headers={"kid": signer.kid}),
            ErrorType.BAD_TOKEN_SIGNATURE,
        ),
        "another key": (
            issued(DevelopmentSigner(tmp_path / "b", issuer=ISSUER, audience="changeflow"), at),
            ErrorType.BAD_TOKEN_SIGNATURE,
        ),
        "no kid": (
            jwt.encode(claims, other_key, algorithm="ES256"),
            ErrorType.MALFORMED_TOKEN,
        ),
        "another audience": (issued(signer, at, aud="billing"), ErrorType.WRONG_AUDIENCE),
        "another issuer": (issued(signer, at, iss="https://evil"), ErrorType.WRONG_ISSUER),
        "too long a life": (
            issued(signer, at, lifetime_seconds=3600),
            ErrorType.TOKEN_LIFETIME_TOO_LONG,
        ),
        "no jti": (issued(signer, at, jti=None), ErrorType.MALFORMED_TOKEN),
        "a short jti": (issued(signer, at, jti="x"), ErrorType.MALFORMED_TOKEN),
        "exp as text": (issued(signer, at, exp="soon"), ErrorType.MALFORMED_TOKEN),
        "an unknown action": (issued(signer, at, action="delete"), ErrorType.MALFORMED_TOKEN),
        "approve without plan_hash": (
            issued(signer, at, plan_hash=None),
            ErrorType.MALFORMED_TOKEN,
        ),
    }
    outcomes = {
        name: refusal(lambda t=token: verify_token(t, keys, at))
        for name, (token, _) in cases.items()
    }  # type: ignore[misc]
    assert outcomes == {name: kind for name, (_, kind) in cases.items()}


def test_a_genuine_token_names_exactly_what_is_decided(signer: DevelopmentSigner) -> None:
    at = datetime.now(UTC)
    claims = verify_token(issued(signer, at), trusted(signer), at)
    expected = {
        "tenant_id": TENANT,
        "request": REQUEST,
        "action": DecisionAction.APPROVE,
        "plan_hash": PLAN,
        "user_id": USER,
    }
    check_claims(claims, **expected)  # type: ignore[arg-type]
    wrong = {
        "tenant_id": (uuid.uuid4(), ErrorType.WRONG_TENANT),
        "request": (uuid.uuid4(), ErrorType.WRONG_REQUEST),
        "action": (DecisionAction.REJECT, ErrorType.WRONG_ACTION),
        "plan_hash": ("b" * 64, ErrorType.STALE_PLAN_HASH),
        "user_id": (uuid.uuid4(), ErrorType.WRONG_USER),
    }
    for field, (value, kind) in wrong.items():
        given = {**expected, field: value}
        assert refusal(lambda g=given: check_claims(claims, **g)) == kind, field  # type: ignore[misc]


def test_who_may_decide() -> None:
    requester, other = uuid.uuid4(), uuid.uuid4()

    def judged(action: DecisionAction, user: uuid.UUID, role: str | None) -> str | None:
        try:
            check_decider(
                action=action,
                user_id=user,
                role=role,
                requested_by=requester,
                approver_roles=["client_admin"],
            )
        except ApplicationError as refused:
            return refused.type
        return None

    approve, revise, cancel = DecisionAction.APPROVE, DecisionAction.REVISE, DecisionAction.CANCEL
    assert judged(approve, other, "client_admin") is None
    assert judged(approve, other, None) == ErrorType.USER_OF_ANOTHER_TENANT
    assert judged(approve, requester, "client_admin") == ErrorType.SELF_APPROVAL
    assert judged(DecisionAction.REJECT, other, "client_operator") == (
        ErrorType.ROLE_MAY_NOT_APPROVE
    )
    assert judged(revise, other, "client_viewer") is None
    assert judged(revise, other, None) == ErrorType.USER_OF_ANOTHER_TENANT
    assert judged(cancel, requester, "client_operator") is None
    assert judged(cancel, other, "client_viewer") == ErrorType.ROLE_MAY_NOT_APPROVE
    assert judged(DecisionAction.ROLLBACK, other, "founder") is None


def test_a_refused_decider_waits_longer_each_time_up_to_the_cap() -> None:
    refusals = DeciderRefusals(timedelta(minutes=1), timedelta(minutes=5))
    viewer, admin, outsider = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    approve, reject = DecisionAction.APPROVE, DecisionAction.REJECT
    at = datetime(2026, 1, 1, tzinfo=UTC)
    refusals.check(viewer, approve, at)  # never refused: nothing to say

    waits = []
    now = at
    for _ in range(5):
        refusals.remember(
            viewer, approve, ErrorType.ROLE_MAY_NOT_APPROVE, "role 'client_viewer'", now
        )
        start = now
        while True:
            try:
                refusals.check(viewer, reject, now)  # approve and reject: one rule
                break
            except ApplicationError as refused:
                assert refused.type == ErrorType.ROLE_MAY_NOT_APPROVE
                assert "client_viewer" in refused.message
            now += timedelta(seconds=30)
        waits.append(now - start)
    assert waits == [timedelta(minutes=m) for m in (1, 2, 4, 5, 5)]
    refusals.remember(viewer, approve, ErrorType.ROLE_MAY_NOT_APPROVE, "role", now)
    refusals.check(viewer, DecisionAction.REVISE, now)  # a viewer may still revise
    refusals.check(admin, approve, now)  # one person's refusals are theirs only
    refusals.remember(outsider, approve, ErrorType.USER_OF_ANOTHER_TENANT, "not a member", at)
    assert refusal(lambda: refusals.check(outsider, DecisionAction.CANCEL, at)) == (
        ErrorType.USER_OF_ANOTHER_TENANT
    )


def test_only_the_public_half_of_asymmetric_keys_is_trusted() -> None:
    keys = public_jwks(
        [
            {"kty": "OKP", "crv": "Ed25519", "x": "abc", "d": "private", "kid": "a"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "n": "nn", "e": "AQAB", "p": "private", "kid": "r", "alg": "RS256"},
            {"kty": "EC", "crv": "P-256", "x": "x", "y": "y"},  # no kid: cannot be named
        ]
    )
    assert keys == [
        {"kty": "OKP", "crv": "Ed25519", "x": "abc", "kid": "a"},
        {"kty": "RSA", "n": "nn", "e": "AQAB", "kid": "r", "alg": "RS256"},
    ]
