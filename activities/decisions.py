"""The decision activities of a workflow that receives decisions (lifecycle updates, the
operator's rollback), run as local activities:

- `decision_trust`: the settings and public keys the workflow judges tokens with in its
  validators (workflows/contracts/decision_rules.py), so that a token that is not genuine, or
  not for this decision, is refused without a trace in the history;
- `verify_decision`: what needs I/O, before a decision counts: the token checked again against
  the keys as they are now, the user allowed to decide now (the roster as it is in the database
  at decision time, not as it was when the plan was made), and the token id never used before.

Order matters: everything that can refuse runs before the token id is recorded, so a refused
decision burns nothing; a retry of the same use (same workflow and update) finds its own row
and passes, a second use of the token is TokenReused.
"""

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from infra.decision_tokens import DecisionTokenVerifier
from infra.settings import DecisionTokenMode
from models import ApprovalPolicy, User
from models.base import utcnow
from models.db import SessionFactory
from models.lifecycle import UsedDecisionToken
from workflows.contracts.decision_rules import DecisionClaims, check_claims, check_decider
from workflows.contracts.decisions import (
    DecisionTrust,
    LoadDecisionTrust,
    VerifiedDecision,
    VerifyDecision,
)
from workflows.contracts.errors import ErrorType, refused

log = structlog.get_logger(__name__)

# A tenant without an ApprovalPolicy row has the model's default approver roles.
DEFAULT_APPROVER_ROLES = ApprovalPolicy.model_fields["approver_roles"].get_default(
    call_default_factory=True
)


class DecisionActivities:
    def __init__(
        self, sessions: SessionFactory, verifier: DecisionTokenVerifier, mode: DecisionTokenMode
    ) -> None:
        self._sessions = sessions
        self._verifier = verifier
        self._mode = mode

    def activities(self) -> list[Callable[..., Any]]:
        return [self.verify_decision, self.decision_trust]

    @activity.defn
    async def decision_trust(self, req: LoadDecisionTrust) -> DecisionTrust:
        if req.unknown_kid is not None:
            log.info("decision_keys_reloaded", unknown_kid=req.unknown_kid)
        if self._verifier.blocks:  # an https fetch: off the event loop
            return await asyncio.to_thread(self._verifier.trust, unknown_kid=req.unknown_kid)
        return self._verifier.trust(unknown_kid=req.unknown_kid)

    @activity.defn
    async def verify_decision(self, req: VerifyDecision) -> VerifiedDecision:
        claims: DecisionClaims | None = None
        if req.token is not None:
            if self._verifier.blocks:  # the JWKS may be fetched: off the event loop
                claims = await asyncio.to_thread(self._verifier.verify, req.token)
            else:
                claims = self._verifier.verify(req.token)
            check_claims(
                claims,
                tenant_id=req.tenant_id,
                request=req.request,
                action=req.action,
                plan_hash=req.plan_hash,
                user_id=req.user_id,
            )
        elif self._mode is DecisionTokenMode.REQUIRED:
            raise refused(
                ErrorType.TOKEN_REQUIRED, f"a decision to {req.action} needs a signed token"
            )
        user_id = claims.user_id if claims is not None else req.user_id
        if user_id is None:
            return VerifiedDecision(user_id=None)  # tokens off: an anonymous operator rollback
        async with self._sessions() as session:
            await self._check_roster(session, req, user_id)
            if claims is not None and req.spend:
                await self._use_token(session, req, claims)
            await session.commit()
        return VerifiedDecision(user_id=user_id, jti=claims.jti if claims else None)

    async def _check_roster(
        self, session: AsyncSession, req: VerifyDecision, user_id: uuid.UUID
    ) -> None:
        """The user's role now and the tenant's approver roles, in one query."""
        found = (
            await session.exec(
                select(User.tenant_id, User.role, ApprovalPolicy.approver_roles)
                .outerjoin(ApprovalPolicy, col(ApprovalPolicy.tenant_id) == req.tenant_id)
                .where(User.id == user_id)
            )
        ).one_or_none()
        tenant, role, approver_roles = found if found is not None else (None, None, None)
        check_decider(
            action=req.action,
            user_id=user_id,
            role=str(role) if role is not None and tenant == req.tenant_id else None,
            requested_by=req.requested_by,
            approver_roles=DEFAULT_APPROVER_ROLES if approver_roles is None else approver_roles,
        )

    async def _use_token(
        self, session: AsyncSession, req: VerifyDecision, claims: DecisionClaims
    ) -> None:
        """Record the token id: one statement, the unique jti decides between two uses."""
        connection = await session.connection()
        inserted = await connection.execute(
            insert(UsedDecisionToken)
            .values(
                jti=claims.jti,
                tenant_id=claims.tenant_id,
                user_id=claims.user_id,
                action=claims.action.value,
                request=claims.request,
                used_by=req.used_by,
                expires_at=claims.expires_at,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["jti"])
            .returning(col(UsedDecisionToken.jti))
        )
        if inserted.first() is not None:
            return
        earlier = (
            await session.exec(
                select(UsedDecisionToken.used_by).where(UsedDecisionToken.jti == claims.jti)
            )
        ).one()
        if earlier != req.used_by:
            log.warning("decision_token_reused", action=claims.action.value, jti=claims.jti)
            raise refused(ErrorType.TOKEN_REUSED, "this decision token was already used")
