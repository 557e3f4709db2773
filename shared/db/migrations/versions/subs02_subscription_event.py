"""subscriptions: the insert-only log of event numbers received (subscription_event);
subscription_state.last_event_number as a 64-bit integer (event numbers are integer64)

Revision ID: subs02
Revises: ev06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import shared.db.models

revision: str = "subs02"
down_revision: str | None = "ev06"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subscription_event",
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("subscription", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("event_number", sa.BigInteger(), nullable=False),
        sa.Column("received_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "subscription", "event_number"),
    )
    with op.batch_alter_table("subscription_state", schema=None) as batch_op:
        batch_op.alter_column(
            "last_event_number", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=True
        )


def downgrade() -> None:
    with op.batch_alter_table("subscription_state", schema=None) as batch_op:
        batch_op.alter_column(
            "last_event_number", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=True
        )
    op.drop_table("subscription_event")
