"""evaluation_queue: the claim's order (dirty_since, patient_key) as one index

A worker claims the oldest marks first, ``ORDER BY dirty_since, patient_key LIMIT 64``. With
``dirty_since`` alone indexed, the patients marked at one instant (everyone, when all are marked for
a re-evaluation) were sorted again by every claim: on PostgreSQL ~125 ms a claim at 100,000 queued
patients, a cost per patient growing with the queue's depth. With both columns indexed, a claim
reads its batch off the index (~0.4 ms at any depth). The index on ``dirty_since`` alone is
replaced (the new one serves the oldest mark's age as well).

Revision ID: wk09
Revises: wk08
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "wk09"
down_revision: str | None = "wk08"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("evaluation_queue", schema=None) as batch_op:
        batch_op.create_index("ix_evaluation_queue_claim_order", ["dirty_since", "patient_key"], unique=False)
        batch_op.drop_index("ix_evaluation_queue_dirty_since")


def downgrade() -> None:
    with op.batch_alter_table("evaluation_queue", schema=None) as batch_op:
        batch_op.create_index("ix_evaluation_queue_dirty_since", ["dirty_since"], unique=False)
        batch_op.drop_index("ix_evaluation_queue_claim_order")
