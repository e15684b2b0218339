"""zoom: how far each zoom source has read, and webhook posts stored once

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 23:50:00

`zoom_cursors` lets a run that finds nothing new in Zoom stop after one page
per occurrence; `zoom_events` keeps each webhook event once, and the
signature of each post, so a replayed post is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import funnel.store.models

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "zoom_cursors",
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("occurrence", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("registrants", sa.Integer(), nullable=False),
        sa.Column("full_read_at", funnel.store.models.UTCDateTime(), nullable=True),
        sa.Column("attendance_done", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("source", "occurrence"),
    )
    op.create_table(
        "zoom_events",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("received_at", funnel.store.models.UTCDateTime(), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("zoom_events")
    op.drop_table("zoom_cursors")
