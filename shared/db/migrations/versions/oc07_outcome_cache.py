"""outcome_cache: the practice outcomes summary's rows per patient, reused while unchanged (issue 19)

Revision ID: oc07
Revises: subs02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import shared.db.models

revision: str = "oc07"
down_revision: str | None = "subs02"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    op.create_table(
        "outcome_cache",
        sa.Column("patient_key", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("engine", sa.String(length=300), nullable=False),
        sa.Column("computed_for", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("valid_until", shared.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("refs", json_type, nullable=True),
        sa.Column("rows", json_type, nullable=True),
        sa.PrimaryKeyConstraint("patient_key"),
    )


def downgrade() -> None:
    op.drop_table("outcome_cache")
