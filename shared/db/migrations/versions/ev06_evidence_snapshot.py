"""evidence_snapshot: what each CDS card was drawn from, for its evidence link (issue 17)

Revision ID: ev06
Revises: wl04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import shared.db.models

revision: str = "ev06"
down_revision: str | None = "wl04"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "evidence_snapshot",
        sa.Column("card", sa.String(length=64), nullable=False),
        sa.Column("patient_key", sa.String(length=400), nullable=False),
        sa.Column("service_id", sa.String(length=100), nullable=False),
        sa.Column("created_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "snapshot",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("card"),
    )
    with op.batch_alter_table("evidence_snapshot", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evidence_snapshot_patient_key"), ["patient_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_evidence_snapshot_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("evidence_snapshot", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evidence_snapshot_expires_at"))
        batch_op.drop_index(batch_op.f("ix_evidence_snapshot_patient_key"))
    op.drop_table("evidence_snapshot")
