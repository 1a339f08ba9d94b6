"""Tenants (the isolation and billing boundary) and their users."""

import enum
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import Field, Relationship, SQLModel

from models.base import created_at_field, enum_field, fk_field, id_field, updated_at_field

if TYPE_CHECKING:
    from models.billing import TokenAccount
    from models.projects import Project


class PlanTier(enum.StrEnum):
    FREE = "free"
    STARTER = "starter"
    GROWTH = "growth"
    SCALE = "scale"


class UserRole(enum.StrEnum):
    """Client roles act inside one tenant; founder and system roles belong to the platform."""

    CLIENT_ADMIN = "client_admin"
    CLIENT_OPERATOR = "client_operator"
    CLIENT_VIEWER = "client_viewer"
    FOUNDER = "founder"
    SYSTEM = "system"


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"

    id: uuid.UUID = id_field()
    name: str = Field(max_length=200)
    slug: str = Field(max_length=100, unique=True)
    plan_tier: PlanTier = enum_field(PlanTier, PlanTier.FREE)
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()

    users: list["User"] = Relationship(back_populates="tenant", passive_deletes="all")
    projects: list["Project"] = Relationship(back_populates="tenant", passive_deletes="all")
    token_accounts: list["TokenAccount"] = Relationship(
        back_populates="tenant", passive_deletes="all"
    )


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (sa.UniqueConstraint("tenant_id", "email", name="uq_users_tenant_email"),)

    id: uuid.UUID = id_field()
    # A tenant's people go with the tenant.
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    email: str = Field(max_length=320)
    display_name: str = Field(default="", max_length=200)
    role: UserRole = enum_field(UserRole, UserRole.CLIENT_OPERATOR)
    created_at: datetime = created_at_field()

    tenant: Tenant = Relationship(back_populates="users")
