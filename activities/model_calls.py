"""The PostgreSQL record of the model engine's calls (models.model_calls): read before a call,
written as soon as it answered, before the activity that made it returns."""

import hashlib
import json

from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select

from activities.change_engine import ChangeStep
from models.base import utcnow
from models.db import SessionFactory
from models.model_calls import ModelCall, ModelCallOutcome


def request_digest(messages: list[dict[str, str]], max_tokens: int) -> str:
    """What a call asked: its messages and cap (the model is settings', the same per worker)."""
    payload = json.dumps({"messages": messages, "max_tokens": max_tokens}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class ModelCallRecord:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    async def calls(self, step: ChangeStep) -> list[ModelCall]:
        """The calls recorded for this revision's plan, in order."""
        async with self._sessions() as session:
            rows = await session.exec(
                select(ModelCall)
                .where(
                    ModelCall.prompt_request_id == step.prompt_request_id,
                    ModelCall.revision == step.revision,
                )
                .order_by(col(ModelCall.call_number))
            )
            return list(rows.all())

    async def latest_planned(self, step: ChangeStep) -> list[ModelCall]:
        """The calls of the latest revision up to `step`'s that called the model: a revision
        apply_change made (repriced or rebased) carries the work of the plan it came from."""
        async with self._sessions() as session:
            revision = (
                await session.exec(
                    select(ModelCall.revision)
                    .where(
                        ModelCall.prompt_request_id == step.prompt_request_id,
                        ModelCall.revision <= step.revision,
                    )
                    .order_by(col(ModelCall.revision).desc())
                    .limit(1)
                )
            ).one_or_none()
        if revision is None:
            return []
        return await self.calls(
            ChangeStep(step.tenant_id, step.prompt_request_id, revision=revision)
        )

    async def record(self, call: ModelCall) -> ModelCall:
        """Store `call`; when another attempt stored this call number first, theirs stands."""
        values = {
            column: getattr(call, column)
            for column in ModelCall.model_fields
            if column not in ("created_at",)
        }
        async with self._sessions() as session:
            connection = await session.connection()
            await connection.execute(
                insert(ModelCall)
                .values(**values, created_at=utcnow())
                .on_conflict_do_nothing(constraint="uq_model_calls_step")
            )
            await session.commit()
            stored = (
                await session.exec(
                    select(ModelCall).where(
                        ModelCall.prompt_request_id == call.prompt_request_id,
                        ModelCall.revision == call.revision,
                        ModelCall.call_number == call.call_number,
                    )
                )
            ).one()
            return stored


__all__ = ["ModelCallOutcome", "ModelCallRecord", "request_digest"]
