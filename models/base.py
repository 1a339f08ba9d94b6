"""Column helpers shared by every table module."""

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

# Deterministic constraint names, so migrations can name what they alter or drop.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def enum_type(enum_cls: type[enum.Enum]) -> sa.Enum:
    """Store enums as checked VARCHARs, not native PostgreSQL enums.

    Adding a state later is then a model change, not an ``ALTER TYPE`` that cannot run
    inside a transaction.
    """
    return sa.Enum(
        enum_cls,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
        name=f"{enum_cls.__name__.lower()}_enum",
    )


def id_field() -> Any:
    return Field(default_factory=uuid.uuid4, primary_key=True)


def created_at_field() -> Any:
    return Field(
        default_factory=utcnow,
        sa_type=sa.DateTime(timezone=True),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": sa.func.now()},
        nullable=False,
    )


def updated_at_field() -> Any:
    return Field(
        default_factory=utcnow,
        sa_type=sa.DateTime(timezone=True),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": sa.func.now(), "onupdate": utcnow},
        nullable=False,
    )


def timestamp_field(*, nullable: bool = True) -> Any:
    return Field(default=None, sa_type=sa.DateTime(timezone=True), nullable=nullable)  # type: ignore[call-overload]


OnDelete = Literal["CASCADE", "SET NULL", "RESTRICT"]


def fk_field(target: str, *, ondelete: OnDelete, nullable: bool = False, index: bool = True) -> Any:
    """A UUID foreign key whose delete rule is always stated, never left to the default."""
    return Field(
        default=None if nullable else ...,
        foreign_key=target,
        ondelete=ondelete,
        nullable=nullable,
        index=index,
    )


def json_field(default_factory: Any = dict) -> Any:
    return Field(default_factory=default_factory, sa_type=sa.JSON, nullable=False)  # type: ignore[call-overload]


def enum_field(
    enum_cls: type[enum.Enum], default: Any = ..., *, index: bool = False, nullable: bool = False
) -> Any:
    sa_type = enum_type(enum_cls)
    if nullable:
        # Otherwise the ORM treats an explicit None as "unset" and the default wins.
        sa_type = sa_type.evaluates_none()
    return Field(default=default, sa_type=sa_type, nullable=nullable, index=index)  # type: ignore[call-overload]


def tokens_field(default: int = 0) -> Any:
    """Token amounts are whole numbers that may exceed 2**31 over an account's life."""
    return Field(default=default, sa_type=sa.BigInteger, nullable=False)  # type: ignore[call-overload]
