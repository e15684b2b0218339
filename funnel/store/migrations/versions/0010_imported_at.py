"""imported_at: when an enrollment was stored

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 20:40:00

(Each registrant's own `join_url` came with 0009, webinar sessions.)
`imported_at` is when funnel stored an enrollment. `enrolled_at` may now be
earlier (a source's `signed_up_at`: waits count from when she signed up), and
a step that already existed when she was stored must not count as "added
after its time" for her. Nullable: older enrollments were stored at enrolled_at.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import funnel.store.models

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("imported_at", funnel.store.models.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.drop_column("imported_at")
