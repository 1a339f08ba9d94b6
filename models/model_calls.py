"""Calls of the model engine (activities.model_engine): each call's answer and usage, recorded
before the activity that made it returns, so a retried activity reuses the answer instead of
calling (and paying for) the model again."""

import enum
import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from models.base import created_at_field, enum_field, fk_field, id_field, tokens_field


class ModelCallOutcome(enum.StrEnum):
    ANSWERED = "answered"  # the stream ended with the server's usage
    BROKEN = "broken"  # the stream broke before the usage chunk: charged by its cap


class ModelCall(SQLModel, table=True):
    __tablename__ = "model_calls"
    __table_args__ = (
        sa.UniqueConstraint(
            "prompt_request_id", "revision", "call_number", name="uq_model_calls_step"
        ),
        sa.CheckConstraint("tokens_charged > 0", name="tokens_charged_positive"),
    )

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    prompt_request_id: uuid.UUID = fk_field("prompt_requests.id", ondelete="CASCADE")
    revision: int
    call_number: int  # 1, 2, ... within the plan of one revision
    # The commit the call's context was read from, and a digest of the messages sent: a retry
    # reuses the answer only for the same question.
    base_commit: str = Field(max_length=40)
    request_digest: str = Field(max_length=64)
    model: str = Field(max_length=200)
    max_tokens: int
    outcome: ModelCallOutcome = enum_field(ModelCallOutcome)
    answer: str = Field(default="", sa_type=sa.Text)  # type: ignore[call-overload]
    finish_reason: str | None = Field(default=None, max_length=32)
    prompt_tokens: int = tokens_field()
    completion_tokens: int = tokens_field()
    # What the tenant is charged for this call: the reported usage, or its cap when broken.
    tokens_charged: int = tokens_field()
    created_at: datetime = created_at_field()
