"""resource: drop the facts column (nothing read it; the engine normalises the raw resources)

Revision ID: res04
Revises: dl03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "res04"
down_revision: str | None = "dl03"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.drop_column("facts")


def downgrade() -> None:
    json_type = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.add_column(sa.Column("facts", json_type, nullable=True))
