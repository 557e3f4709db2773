"""audit_log: index on (action, target) — CDS feedback looks its card up by uuid

Revision ID: audit02
Revises: subs01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "audit02"
down_revision: str | None = "subs01"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_action_target", ["action", "target"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_action_target")
