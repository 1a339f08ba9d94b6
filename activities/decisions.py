"""The `verify_decision` activity: a decision counts only once its token verified, its user is
allowed to make it now (the roster as it is in the database at decision time, not as it was
when the plan was made), and its token id was never used before.

Run as a local activity of the workflow that receives the decision (lifecycle updates, the
operator's rollback). Order matters: everything that can refuse runs before the token id is
recorded, so a refused decision burns nothing; a retry of the same use (same workflow and
update) finds its own row and passes, a second use of the token is TokenReused.
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

from activities.lifecycle import load_policy
from models import User, UserRole
from models.base import utcnow
from models.db import SessionFactory
from models.lifecycle import UsedDecisionToken
from workers.decision_tokens import DecisionClaims, DecisionTokenVerifier, check_claims
from workers.settings import DecisionTokenMode
from workflows.contracts.decisions import (
    ACTIONS_ON_A_PLAN,
    DecisionAction,
    VerifiedDecision,
    VerifyDecision,
)
from workflows.contracts.errors import ErrorType, refused

log = structlog.get_logger(__name__)

# Who may cancel a request or roll back a release: a tenant's people who act, not viewers.
ACTING_ROLES = frozenset({UserRole.CLIENT_ADMIN, UserRole.CLIENT_OPERATOR, UserRole.FOUNDER})


class DecisionActivities:
    def __init__(
        self, sessions: SessionFactory, verifier: DecisionTokenVerifier, mode: DecisionTokenMode
    ) -> None:
        self._sessions = sessions
        self._verifier = verifier
        self._mode = mode

    def activities(self) -> list[Callable[..., Any]]:
        return [self.verify_decision]

    @activity.defn
    async def verify_decision(self, req: VerifyDecision) -> VerifiedDecision:
        claims: DecisionClaims | None = None
        if req.token is not None:
            # Reading the JWKS (a file, or an https fetch) blocks: off the event loop.
            claims = await asyncio.to_thread(self._verifier.verify, req.token)
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
            if claims is not None:
                await self._use_token(session, req, claims)
            await session.commit()
        return VerifiedDecision(user_id=user_id, jti=claims.jti if claims else None)

    async def _check_roster(
        self, session: AsyncSession, req: VerifyDecision, user_id: uuid.UUID
    ) -> None:
        user = (await session.exec(select(User).where(User.id == user_id))).one_or_none()
        if user is None or user.tenant_id != req.tenant_id:
            raise refused(
                ErrorType.USER_OF_ANOTHER_TENANT,
                f"user {user_id} is not a member of this request's tenant",
            )
        if req.action in ACTIONS_ON_A_PLAN:
            if user_id == req.requested_by:
                raise refused(
                    ErrorType.SELF_APPROVAL, "the requester cannot decide on their own request"
                )
            policy = await load_policy(session, req.tenant_id)
            allowed = policy.approver_roles
        elif req.action is DecisionAction.REVISE:
            return  # any member of the tenant may amend the prompt (as the validator says)
        else:
            allowed = sorted(ACTING_ROLES)
        if user.role.value not in allowed:
            raise refused(
                ErrorType.ROLE_MAY_NOT_APPROVE,
                f"role {user.role.value!r} may not {req.action}; allowed: {', '.join(allowed)}",
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
