"""join_url: each registrant's own join link, as the export gives it; and when an enrollment was stored

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 20:40:00

Zoom gives every registrant her own link (the registration report's "Join
URL"); a source may map it as `join_url`. It is kept on the enrollment, where
the webinar it opens is, and a letter uses it in place of the webinar's
shared `join_url` (spec section 8). Nullable: enrollments from before, and
rows without a link, keep the webinar's own.

`imported_at` is when funnel stored an enrollment. `enrolled_at` may now be
earlier (a source's `signed_up_at`: waits count from when she signed up), and
a step that already existed when she was stored must not count as "added
after its time" for her. Nullable: older enrollments were stored at enrolled_at.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import funnel.models

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("join_url", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("imported_at", funnel.models.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.drop_column("imported_at")
        batch_op.drop_column("join_url")
