"""Signed decisions: a decision counts only when its token verifies, names this user, tenant,
request, action and plan, was never used, and the user may decide now (the roster in the
database at decision time). Every refusal is typed and records nothing."""

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import jwt
import pytest
import pytest_asyncio
from sqlmodel import func, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from client.lifecycle import LifecycleClient, LifecycleRefused
from infra.decision_signer import DevelopmentSigner
from infra.settings import ConfigurationError, DecisionTokenMode, Settings, load_settings
from models import Approval, DeploymentEnvironment, DeploymentStatus, PromptStatus, User, UserRole
from models.db import SessionFactory
from models.lifecycle import UsedDecisionToken
from scripts.sample_repo import SAFE_PROMPT
from tests.factories import make_user
from tests.lifecycle_support import (
    Shop,
    human_policy,
    make_shop,
    plan_awaiting_approval,
    submit,
    wait_for_status,
)
from tests.workers import running_workers, test_settings
from workers.registry import Dependencies
from workflows.contracts.decisions import DecisionAction
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import prompt_request_workflow_id

pytestmark = pytest.mark.asyncio(loop_scope="session")

ISSUER = "https://id.corner.example"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> DevelopmentSigner:
    return DevelopmentSigner(
        tmp_path_factory.mktemp("signer"), issuer=ISSUER, audience="changeflow"
    )


@pytest.fixture
def settings(
    signer: DevelopmentSigner, task_queue: str, deploy_queue: str, tmp_path: Path
) -> Settings:
    """Tokens required, the signer's JWKS as the identity service's keys."""
    return test_settings(
        task_queue=task_queue, deploy_task_queue=deploy_queue, workspace_dir=tmp_path / "ws"
    ).model_copy(
        update={
            "decision_tokens": DecisionTokenMode.REQUIRED,
            "decision_jwks": str(signer.jwks_path),
            "decision_issuer": ISSUER,
        }
    )


@pytest_asyncio.fixture
async def workers(
    client: Client, sessions: SessionFactory, settings: Settings
) -> AsyncIterator[Dependencies]:
    async with running_workers(client, sessions, settings) as deps:
        yield deps


async def decision_rows(sessions: SessionFactory) -> tuple[int, int]:
    """(Approval rows, used token rows)."""
    async with sessions() as session:
        approvals = (await session.exec(select(func.count()).select_from(Approval))).one()
        used = (await session.exec(select(func.count()).select_from(UsedDecisionToken))).one()
    return approvals, used


async def accepted_updates(client: Client, request_id: uuid.UUID) -> list[str]:
    """Names of the updates whose handler answered successfully."""
    history = await client.get_workflow_handle(
        prompt_request_workflow_id(request_id)
    ).fetch_history()
    names: dict[str, str] = {}
    succeeded = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            attributes = event.workflow_execution_update_accepted_event_attributes
            names[attributes.protocol_instance_id] = attributes.accepted_request.input.name
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
            attributes = event.workflow_execution_update_completed_event_attributes
            if attributes.outcome.HasField("success"):
                succeeded.append(names.get(attributes.meta.update_id, "?"))
    return succeeded


async def history_length(client: Client, request_id: uuid.UUID) -> int:
    history = await client.get_workflow_handle(
        prompt_request_workflow_id(request_id)
    ).fetch_history()
    return len(history.events)


def hs256(token: str, *, secret: bytes, kid: str) -> str:
    """The token's claims re-signed with HMAC under a public value: the key confusion attack
    (PyJWT itself refuses to make one)."""

    def segment(value: object) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = jwt.decode(token, options={"verify_signature": False})
    signed = f"{segment({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{segment(claims)}"
    mac = hmac.new(secret, signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


async def awaiting(
    lifecycle: LifecycleClient, shop: Shop, prompt: str = SAFE_PROMPT
) -> tuple[uuid.UUID, str]:
    request_id = await submit(lifecycle, shop, prompt)
    _, plan = await plan_awaiting_approval(lifecycle, request_id)
    return request_id, plan.content_hash


async def test_each_bad_token_is_a_typed_refusal_that_records_nothing(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    signer: DevelopmentSigner,
    workers: Dependencies,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    request_id, plan_hash = await awaiting(lifecycle, shop)
    admin, other_admin = shop.admins

    def token(**claims: object) -> str:
        fields: dict[str, object] = {
            "user": admin.id,
            "tenant": shop.tenant.id,
            "request": request_id,
            "action": DecisionAction.APPROVE,
            "plan_hash": plan_hash,
        }
        fields.update(claims)
        return signer.issue(**fields)  # type: ignore[arg-type]

    stranger = DevelopmentSigner(tmp_path / "stranger", issuer=ISSUER, audience="changeflow")
    genuine = token()
    header, _, signature = genuine.split(".")
    _, forged_body, _ = token(user=other_admin.id).split(".")
    public_jwk = signer.jwks_path.read_text()
    cases: dict[str, tuple[str | None, ErrorType]] = {
        "no token": (None, ErrorType.TOKEN_REQUIRED),
        "not a JWT": ("not-a-token", ErrorType.MALFORMED_TOKEN),
        "another key": (
            stranger.issue(
                user=admin.id,
                tenant=shop.tenant.id,
                request=request_id,
                action=DecisionAction.APPROVE,
                plan_hash=plan_hash,
            ),
            ErrorType.BAD_TOKEN_SIGNATURE,
        ),
        "claims swapped under a signature": (
            f"{header}.{forged_body}.{signature}",
            ErrorType.BAD_TOKEN_SIGNATURE,
        ),
        "alg none": (
            jwt.encode(
                jwt.decode(genuine, options={"verify_signature": False}),
                key=None,
                algorithm="none",
                headers={"kid": signer.kid},
            ),
            ErrorType.BAD_TOKEN_SIGNATURE,
        ),
        "HS256 keyed with the public JWKS": (
            hs256(genuine, secret=public_jwk.encode(), kid=signer.kid),
            ErrorType.BAD_TOKEN_SIGNATURE,
        ),
        "expired": (token(issued_at=time.time() - 400), ErrorType.TOKEN_EXPIRED),
        "lives an hour": (token(lifetime_seconds=3600), ErrorType.TOKEN_LIFETIME_TOO_LONG),
        "for another audience": (token(aud="billing"), ErrorType.WRONG_AUDIENCE),
        "from another issuer": (token(iss="https://evil.example"), ErrorType.WRONG_ISSUER),
        "to reject": (token(action=DecisionAction.REJECT), ErrorType.WRONG_ACTION),
        "for another request": (token(request=uuid.uuid4()), ErrorType.WRONG_REQUEST),
        "for another plan": (token(plan_hash="0" * 64), ErrorType.STALE_PLAN_HASH),
        "naming another user": (token(user=other_admin.id), ErrorType.WRONG_USER),
        "for another tenant": (token(tenant=uuid.uuid4()), ErrorType.WRONG_TENANT),
        "without a jti": (token(jti=None), ErrorType.MALFORMED_TOKEN),
        "issued in the future": (token(issued_at=time.time() + 120), ErrorType.MALFORMED_TOKEN),
    }
    events = await history_length(client, request_id)
    refusals, grew = {}, {}
    for name, (bad, _) in cases.items():
        with pytest.raises(LifecycleRefused) as refusal:
            await lifecycle.approve(request_id, user_id=admin.id, content_hash=plan_hash, token=bad)
        refusals[name] = refusal.value.error_type
        assert bad is None or bad not in refusal.value.message  # a token is never echoed
        grew[name] = await history_length(client, request_id) - events
    assert refusals == {name: kind for name, (_, kind) in cases.items()}
    # Each refusal came from the validator: not one event in the history.
    assert grew == dict.fromkeys(cases, 0)

    status = await lifecycle.status(request_id)
    assert status.status is PromptStatus.AWAITING_APPROVAL
    assert status.approvals == []
    assert await decision_rows(sessions) == (0, 0)
    assert await accepted_updates(client, request_id) == []

    # The genuine token counts, once.
    status = await lifecycle.approve(
        request_id, user_id=admin.id, content_hash=plan_hash, token=genuine
    )
    assert [a.user_id for a in status.approvals] == [admin.id]
    assert await decision_rows(sessions) == (1, 1)


async def test_one_identity_cannot_grow_a_history_with_refused_decisions(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    signer: DevelopmentSigner,
    workers: Dependencies,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())  # two approvals
    request_id, plan_hash = await awaiting(lifecycle, shop)
    admin = shop.admins[0]

    def approval(user: User) -> str:
        return signer.issue(
            user=user.id,
            tenant=shop.tenant.id,
            request=request_id,
            action=DecisionAction.APPROVE,
            plan_hash=plan_hash,
        )

    async def refusal_of(decision: Awaitable[object]) -> str:
        with pytest.raises(LifecycleRefused) as refusal:
            await decision
        return refusal.value.error_type

    # A viewer sends one genuine token 40 times, then a fresh one: the roster as it is now is
    # the database's, so the first reaches the handler; every later one is refused unseen.
    before = await history_length(client, request_id)
    once = approval(shop.viewer)
    kinds = [
        await refusal_of(
            lifecycle.approve(
                request_id, user_id=shop.viewer.id, content_hash=plan_hash, token=once
            )
        )
    ]
    after_first = await history_length(client, request_id)
    for token in [once] * 39 + [approval(shop.viewer)]:
        kinds.append(
            await refusal_of(
                lifecycle.approve(
                    request_id, user_id=shop.viewer.id, content_hash=plan_hash, token=token
                )
            )
        )
    assert kinds == [ErrorType.ROLE_MAY_NOT_APPROVE] * 41
    assert after_first > before
    assert await history_length(client, request_id) == after_first

    # Bad tokens on the other decisions leave nothing either.
    stranger = DevelopmentSigner(tmp_path / "stranger", issuer=ISSUER, audience="changeflow")

    def forged(action: DecisionAction) -> str:
        return stranger.issue(
            user=admin.id,
            tenant=shop.tenant.id,
            request=request_id,
            action=action,
            plan_hash=plan_hash,
        )

    others = [
        await refusal_of(
            lifecycle.reject(
                request_id,
                user_id=admin.id,
                content_hash=plan_hash,
                reason="no",
                token=forged(DecisionAction.REJECT),
            )
        ),
        await refusal_of(
            lifecycle.revise(
                request_id,
                user_id=admin.id,
                prompt="set store_name to Forged",
                token=forged(DecisionAction.REVISE),
            )
        ),
        await refusal_of(
            lifecycle.cancel(request_id, user_id=admin.id, token=forged(DecisionAction.CANCEL))
        ),
        await refusal_of(lifecycle.cancel(request_id, user_id=admin.id, token=approval(admin))),
    ]
    assert others == [ErrorType.BAD_TOKEN_SIGNATURE] * 3 + [ErrorType.WRONG_ACTION]
    assert await history_length(client, request_id) == after_first

    # An approver approves once; the same token again, or a fresh one, is AlreadyApproved.
    first = approval(admin)
    status = await lifecycle.approve(
        request_id, user_id=admin.id, content_hash=plan_hash, token=first
    )
    assert [a.user_id for a in status.approvals] == [admin.id]
    approved = await history_length(client, request_id)
    again = [
        await refusal_of(
            lifecycle.approve(request_id, user_id=admin.id, content_hash=plan_hash, token=token)
        )
        for token in (first, approval(admin))
    ]
    assert again == [ErrorType.ALREADY_APPROVED] * 2
    assert await history_length(client, request_id) == approved
    assert await decision_rows(sessions) == (1, 1)
    status = await lifecycle.status(request_id)
    assert status.status is PromptStatus.AWAITING_APPROVAL
    assert [a.user_id for a in status.approvals] == [admin.id]


async def test_a_token_works_once(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    signer: DevelopmentSigner,
    workers: Dependencies,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    request_id, _ = await awaiting(lifecycle, shop)
    reviser = shop.admins[0]
    once = signer.issue(
        user=reviser.id, tenant=shop.tenant.id, request=request_id, action=DecisionAction.REVISE
    )
    await lifecycle.revise(
        request_id, user_id=reviser.id, prompt="set store_name to Revised", token=once
    )
    revised = await wait_for_status(
        lifecycle,
        request_id,
        lambda s: (
            s.status is PromptStatus.AWAITING_APPROVAL
            and s.plan is not None
            and s.plan.revision == 2
        ),
    )
    with pytest.raises(LifecycleRefused) as refusal:
        await lifecycle.revise(
            request_id, user_id=reviser.id, prompt="set store_name to Again", token=once
        )

    assert refusal.value.error_type == ErrorType.TOKEN_REUSED
    after = await lifecycle.status(request_id)
    assert after.plan is not None and revised.plan is not None
    assert after.plan.revision == 2 and after.plan.content_hash == revised.plan.content_hash
    assert await accepted_updates(client, request_id) == ["revise"]


async def test_the_roster_is_read_at_decision_time(
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    signer: DevelopmentSigner,
    workers: Dependencies,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy(approvals_required={"low": 1}))
    request_id, plan_hash = await awaiting(lifecycle, shop)
    revoked = shop.admins[0]
    async with sessions() as session:
        user = await session.get(User, revoked.id)
        assert user is not None
        user.role = UserRole.CLIENT_VIEWER
        await session.commit()
    newcomer = await make_user(sessions, tenant=shop.tenant, role=UserRole.CLIENT_ADMIN)

    def approval_token(user: User) -> str:
        return signer.issue(
            user=user.id,
            tenant=shop.tenant.id,
            request=request_id,
            action=DecisionAction.APPROVE,
            plan_hash=plan_hash,
        )

    with pytest.raises(LifecycleRefused) as refusal:
        await lifecycle.approve(
            request_id, user_id=revoked.id, content_hash=plan_hash, token=approval_token(revoked)
        )
    assert refusal.value.error_type == ErrorType.ROLE_MAY_NOT_APPROVE
    assert await decision_rows(sessions) == (0, 0)

    status = await lifecycle.approve(
        request_id, user_id=newcomer.id, content_hash=plan_hash, token=approval_token(newcomer)
    )
    assert status.status is PromptStatus.APPROVED
    assert [a.user_id for a in status.approvals] == [newcomer.id]
    result = await lifecycle.wait_for_outcome(request_id)
    assert result.status is PromptStatus.COMPLETED, result.reason


async def test_no_decision_on_another_tenants_request_succeeds(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    signer: DevelopmentSigner,
    settings: Settings,
    workers: Dependencies,
    tmp_path: Path,
) -> None:
    victim = await make_shop(sessions, tmp_path, policy=human_policy(approvals_required={"low": 1}))
    attacker_shop = await make_shop(sessions, tmp_path, name="Rival Shop")
    attacker = attacker_shop.admins[0]
    signed = LifecycleClient(
        client,
        task_queue=settings.task_queue,
        deploy_task_queue=settings.deploy_task_queue,
        signer=signer,
    )
    # The victim ships twice (an earlier production release to roll back to), then waits.
    shipped = []
    for prompt in (SAFE_PROMPT, "set store_name to Victim Two"):
        shipped_id, shipped_hash = await awaiting(signed, victim, prompt)
        await signed.approve(shipped_id, user_id=victim.admins[0].id, content_hash=shipped_hash)
        shipped.append(await signed.wait_for_outcome(shipped_id))
        assert shipped[-1].status is PromptStatus.COMPLETED, shipped[-1].reason
    [production] = [
        d for d in shipped[0].deployments if d.environment is DeploymentEnvironment.PRODUCTION
    ]
    request_id, plan_hash = await awaiting(signed, victim, "set store_name to Victim Three")
    rows_before = await decision_rows(sessions)

    def token(tenant: uuid.UUID, action: DecisionAction, request: uuid.UUID = request_id) -> str:
        return signer.issue(
            user=attacker.id, tenant=tenant, request=request, action=action, plan_hash=plan_hash
        )

    attempts = []
    # Each attempt twice: with the attacker's own tenant in the token (what an identity
    # service signs), and with the victim's (a forged claim the roster check still refuses).
    for tenant in (attacker_shop.tenant.id, victim.tenant.id):
        attempts += [
            lifecycle.approve(
                request_id,
                user_id=attacker.id,
                content_hash=plan_hash,
                token=token(tenant, DecisionAction.APPROVE),
            ),
            lifecycle.reject(
                request_id,
                user_id=attacker.id,
                content_hash=plan_hash,
                reason="mine now",
                token=token(tenant, DecisionAction.REJECT),
            ),
            lifecycle.revise(
                request_id,
                user_id=attacker.id,
                prompt="set store_name to Pwned",
                token=token(tenant, DecisionAction.REVISE),
            ),
            lifecycle.cancel(
                request_id, user_id=attacker.id, token=token(tenant, DecisionAction.CANCEL)
            ),
            _rolled_back(
                lifecycle,
                tenant_id=tenant,
                target=production.deployment_id,
                requested_by=attacker.id,
                token=token(tenant, DecisionAction.ROLLBACK, production.deployment_id),
            ),
            lifecycle.status(request_id, tenant_id=tenant),
        ]
    # The last one is the victim's own tenant asking for its own request's status: allowed.
    *cross_tenant, own_status = attempts
    outcomes = []
    for attempt in cross_tenant:
        try:
            await attempt
            outcomes.append("succeeded")
        except LifecycleRefused as refusal:
            outcomes.append(refusal.error_type)
    await own_status

    assert "succeeded" not in outcomes, outcomes
    assert len(outcomes) == 11
    assert set(outcomes) <= {
        ErrorType.USER_OF_ANOTHER_TENANT,
        ErrorType.UNKNOWN_REQUEST,
        ErrorType.DEPLOYMENT_NOT_FOUND,
    }, outcomes
    status = await lifecycle.status(request_id, tenant_id=victim.tenant.id)
    assert status.status is PromptStatus.AWAITING_APPROVAL and status.approvals == []
    assert status.plan is not None and status.plan.content_hash == plan_hash
    assert await decision_rows(sessions) == rows_before
    assert await accepted_updates(client, request_id) == []

    # The tenant is checked before anything else: the victim's live release and a deployment
    # that does not exist get one answer, as do the victim's request and one that does not.
    [live] = [
        d for d in shipped[1].deployments if d.environment is DeploymentEnvironment.PRODUCTION
    ]
    answers: dict[tuple[str, uuid.UUID], tuple[str, str]] = {}
    for name, target in (("live", live.deployment_id), ("none", uuid.uuid4())):
        for tenant in (attacker_shop.tenant.id, victim.tenant.id):
            with pytest.raises(LifecycleRefused) as refusal:
                await _rolled_back(
                    lifecycle,
                    tenant_id=tenant,
                    target=target,
                    requested_by=attacker.id,
                    token=token(tenant, DecisionAction.ROLLBACK, target),
                )
            message = refusal.value.message.replace(str(target), "<target>")
            answers[name, tenant] = (refusal.value.error_type, message)
            assert shipped[1].commit_sha is not None and shipped[1].commit_sha not in message
    for tenant in (attacker_shop.tenant.id, victim.tenant.id):
        assert answers["live", tenant] == answers["none", tenant]
        assert answers["live", tenant][0] == ErrorType.DEPLOYMENT_NOT_FOUND
    statuses = []
    for unknown in (request_id, uuid.uuid4()):
        with pytest.raises(LifecycleRefused) as refusal:
            await lifecycle.status(unknown, tenant_id=attacker_shop.tenant.id)
        statuses.append(
            (refusal.value.error_type, refusal.value.message.replace(str(unknown), "<id>"))
        )
    assert statuses[0] == statuses[1]
    assert statuses[0][0] == ErrorType.UNKNOWN_REQUEST
    with pytest.raises(LifecycleRefused) as refusal:
        await lifecycle.status(uuid.uuid4())
    assert refusal.value.error_type == ErrorType.UNKNOWN_REQUEST
    # The victim's own operator is still told what is live.
    with pytest.raises(LifecycleRefused) as refusal:
        await _rolled_back(
            signed,
            tenant_id=victim.tenant.id,
            target=live.deployment_id,
            requested_by=victim.admins[0].id,
            token=None,
        )
    assert refusal.value.error_type == ErrorType.ROLLBACK_TARGET_IS_LIVE
    assert await decision_rows(sessions) == rows_before

    await signed.cancel(request_id, user_id=victim.admins[0].id, reason="done testing")
    assert (await signed.wait_for_outcome(request_id)).status is PromptStatus.CANCELLED


async def _rolled_back(
    lifecycle: LifecycleClient,
    *,
    tenant_id: uuid.UUID,
    target: uuid.UUID,
    requested_by: uuid.UUID,
    token: str | None,
) -> None:
    rollback_id = await lifecycle.roll_back(
        tenant_id=tenant_id, target_deployment_id=target, requested_by=requested_by, token=token
    )
    result = await lifecycle.rollback_result(rollback_id)
    assert result.status is DeploymentStatus.SUCCEEDED


async def test_an_operators_rollback_needs_its_token_and_uses_it_once(
    client: Client,
    sessions: SessionFactory,
    signer: DevelopmentSigner,
    settings: Settings,
    workers: Dependencies,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)  # low risk ships by policy
    signed = LifecycleClient(
        client,
        task_queue=settings.task_queue,
        deploy_task_queue=settings.deploy_task_queue,
        signer=signer,
    )
    first = await signed.wait_for_outcome(await submit(signed, shop, SAFE_PROMPT))
    second = await signed.wait_for_outcome(
        await submit(signed, shop, "set store_name to Corner Shop Two")
    )
    assert second.status is PromptStatus.COMPLETED, second.reason
    [target] = [d for d in first.deployments if d.environment is DeploymentEnvironment.PRODUCTION]
    operator = shop.admins[0]
    unsigned = LifecycleClient(
        client, task_queue=settings.task_queue, deploy_task_queue=settings.deploy_task_queue
    )
    with pytest.raises(LifecycleRefused) as refusal:
        await unsigned.rollback_result(
            await unsigned.roll_back(
                tenant_id=shop.tenant.id,
                target_deployment_id=target.deployment_id,
                requested_by=operator.id,
            )
        )
    assert refusal.value.error_type == ErrorType.TOKEN_REQUIRED

    once = signer.issue(
        user=operator.id,
        tenant=shop.tenant.id,
        request=target.deployment_id,
        action=DecisionAction.ROLLBACK,
    )
    await _rolled_back(
        unsigned,
        tenant_id=shop.tenant.id,
        target=target.deployment_id,
        requested_by=operator.id,
        token=once,
    )
    # Another change ships, so restoring the same target again is a rollback to plan...
    third = await signed.wait_for_outcome(
        await submit(signed, shop, "set store_name to Corner Shop Three")
    )
    assert third.status is PromptStatus.COMPLETED, third.reason
    # ...which the spent token cannot make.
    with pytest.raises(LifecycleRefused) as refusal:
        await _rolled_back(
            unsigned,
            tenant_id=shop.tenant.id,
            target=target.deployment_id,
            requested_by=operator.id,
            token=once,
        )
    assert refusal.value.error_type == ErrorType.TOKEN_REUSED


async def test_decision_keys_over_plain_http_are_refused_at_start() -> None:
    with pytest.raises(ConfigurationError) as refusal:
        load_settings(decision_jwks="http://id.corner.example/jwks.json")
    assert "CHANGEFLOW_DECISION_JWKS" in str(refusal.value)
    assert "https" in str(refusal.value)
