"""pending tags: tags for addresses that are not contacts yet (attendance read before registration)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 14:15:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import funnel.store.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pending_tags",
        sa.Column("email_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("tag", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("origin", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("received_at", funnel.store.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("email_hash", "tag"),
    )
    with op.batch_alter_table("pending_tags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pending_tags_received_at"), ["received_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pending_tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pending_tags_received_at"))
    op.drop_table("pending_tags")
