"""session moves: where an enrollment's session was before its latest move, and how often it moved

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 22:00:00

`previous_start` fills `webinar.previous_start` in an `on: rescheduled` step
(a session moved twice: the start before the latest move). `moves` counts the
moves the run applied, so the calendar event's SEQUENCE rises with each one
(`was:` in sequences.yaml keeps only where a session was first). Nullable /
zero for enrollments that never moved.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import funnel.store.models

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("previous_start", funnel.store.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("moves", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.drop_column("moves")
        batch_op.drop_column("previous_start")
