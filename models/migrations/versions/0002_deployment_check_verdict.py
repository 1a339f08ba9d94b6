"""deployments.check_verdict: a check's verdict kept in the database, not on a worker's disk

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("deployments", sa.Column("check_verdict", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("deployments", "check_verdict")
