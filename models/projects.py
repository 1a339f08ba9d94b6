"""Projects (a tenant's codebase and its deployments) and third-party connectors."""

import enum
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Field, Relationship, SQLModel

from models.base import (
    created_at_field,
    enum_field,
    fk_field,
    id_field,
    json_field,
    timestamp_field,
    updated_at_field,
)

if TYPE_CHECKING:
    from models.lifecycle import PromptRequest
    from models.tenancy import Tenant


class ChangeEngineKind(enum.StrEnum):
    """Which change engine plans a project's requests (activities.change_engine)."""

    RULE = "rule"  # the built-in, offline rule engine
    MODEL = "model"  # an OpenAI-compatible model endpoint (activities.model_engine)


class ConnectorKind(enum.StrEnum):
    SHOPIFY = "shopify"
    GITHUB = "github"
    WOOCOMMERCE = "woocommerce"
    STRIPE = "stripe"
    WEBHOOK = "webhook"
    # Credentials of a project's git remote (activities.remote_repository): a token or a user
    # name and password for https, a deploy key for ssh.
    GIT = "git"

    @property
    def syncs_orders(self) -> bool:
        """Whether connectors of this kind have an order sync (and so a sync Schedule); a
        notification webhook only receives events."""
        return self in ORDER_SYNC_KINDS


# The kinds with an order sync (workflows/commerce.py): Shopify only, so far.
ORDER_SYNC_KINDS = frozenset({ConnectorKind.SHOPIFY})


class ConnectorStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    ERROR = "error"
    DISABLED = "disabled"


class Project(SQLModel, table=True):
    __tablename__ = "projects"
    __table_args__ = (sa.UniqueConstraint("tenant_id", "slug", name="uq_projects_tenant_slug"),)

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    name: str = Field(max_length=200)
    slug: str = Field(max_length=100)
    # A local path or URL of the git repository the change engine edits and the target releases.
    repo_url: str = Field(default="", max_length=1000)
    default_branch: str = Field(default="main", max_length=200)
    # Run in a checkout of the released commit to verify a deployment; exit 0 means healthy.
    check_command: str = Field(default="", max_length=1000)
    # Unset: the deployment's default (Settings.change_engine).
    change_engine: ChangeEngineKind | None = enum_field(ChangeEngineKind, None, nullable=True)
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()

    tenant: "Tenant" = Relationship(back_populates="projects")
    connectors: list["Connector"] = Relationship(back_populates="project", passive_deletes="all")
    prompt_requests: list["PromptRequest"] = Relationship(
        back_populates="project", passive_deletes="all"
    )


class Connector(SQLModel, table=True):
    __tablename__ = "connectors"

    id: uuid.UUID = id_field()
    tenant_id: uuid.UUID = fk_field("tenants.id", ondelete="CASCADE")
    # A connector outlives the project it was scoped to; it becomes tenant-wide.
    project_id: uuid.UUID | None = fk_field("projects.id", ondelete="SET NULL", nullable=True)
    kind: ConnectorKind = enum_field(ConnectorKind)
    name: str = Field(default="", max_length=200)
    status: ConnectorStatus = enum_field(ConnectorStatus, ConnectorStatus.PENDING)
    # Non-secret settings (a shop's domain); secrets live in connector_credentials, encrypted.
    config: dict[str, Any] = json_field()
    # A reference into a secret store, never the secret itself.
    secret_ref: str | None = Field(default=None, max_length=500)
    # How often the connector's scheduled sync runs.
    sync_interval_seconds: int = Field(default=900, ge=60)
    last_error: str | None = Field(default=None)
    last_synced_at: datetime | None = timestamp_field()
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()

    project: Project | None = Relationship(back_populates="connectors")
