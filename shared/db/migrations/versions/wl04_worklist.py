"""worklist_entry: the clinic's worklist, one row per current assessment in plain words

Revision ID: wl04
Revises: res04

Existing patients with current assessments are marked for re-evaluation, so the worker fills
their worklist rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.db.models

revision: str = "wl04"
down_revision: str | None = "res04"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ORDER = ["attention", "due", "key"]


def upgrade() -> None:
    op.create_table(
        "worklist_entry",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("patient_key", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=True),
        sa.Column("search", sa.String(length=1000), nullable=False),
        sa.Column("pathway", sa.String(length=40), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("verdict", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=300), nullable=False),
        sa.Column("attention", sa.Integer(), nullable=False),
        sa.Column("due", sa.Date(), nullable=False),
        sa.Column("alerts", sa.String(length=400), nullable=False),
        sa.Column("evaluated_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_worklist_entry_patient_key", "worklist_entry", ["patient_key"], unique=False)
    op.create_index("ix_worklist_order", "worklist_entry", _ORDER, unique=False)
    op.create_index("ix_worklist_pathway_order", "worklist_entry", ["pathway", *_ORDER], unique=False)
    op.create_index("ix_worklist_verdict_order", "worklist_entry", ["verdict", *_ORDER], unique=False)
    op.create_index("ix_worklist_source_order", "worklist_entry", ["source", *_ORDER], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.create_index(
        "ix_worklist_search",
        "worklist_entry",
        ["search"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"search": "gin_trgm_ops"},
    )
    # every patient judged before the worklist existed is judged again, which writes its rows
    op.execute(
        sa.text(
            "INSERT INTO evaluation_queue (patient_key, generation, dirty_since, attempts) "
            "SELECT DISTINCT a.patient_key, 1, CURRENT_TIMESTAMP, 0 FROM assessment a "
            "WHERE a.status = 'current' AND NOT EXISTS "
            "(SELECT 1 FROM evaluation_queue q WHERE q.patient_key = a.patient_key)"
        )
    )


def downgrade() -> None:
    for name in (
        "ix_worklist_search",
        "ix_worklist_source_order",
        "ix_worklist_verdict_order",
        "ix_worklist_pathway_order",
        "ix_worklist_order",
        "ix_worklist_entry_patient_key",
    ):
        op.drop_index(name, table_name="worklist_entry")
    op.drop_table("worklist_entry")
