"""subscriptions: reconciliation watermark and gap counter on subscription_state

Revision ID: subs01
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.db.models

revision: str = "subs01"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscription_state", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("watermark", shared.db.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("gaps_detected", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("subscription_state", schema=None) as batch_op:
        batch_op.drop_column("gaps_detected")
        batch_op.drop_column("watermark")
