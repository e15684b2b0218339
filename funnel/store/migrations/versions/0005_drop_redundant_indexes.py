"""drop the indexes that a unique constraint already gives

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 02:10:00

`tags.contact_id`, `enrollments.contact_id` and `step_runs.enrollment_id`
each had an index of their own beside a unique constraint that starts with
the same column ((contact_id, tag), (contact_id, sequence), (enrollment_id,
step_id)). Both databases look a column up through the constraint's index
as well, so the extra ones only cost a write per row: an import of 100,000
people, or 100,000 sends, kept three B-trees more up to date for nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (index, table, column) dropped here
_REDUNDANT = (
    ("ix_tags_contact_id", "tags", "contact_id"),
    ("ix_enrollments_contact_id", "enrollments", "contact_id"),
    ("ix_step_runs_enrollment_id", "step_runs", "enrollment_id"),
)


def upgrade() -> None:
    # if_exists: an index someone already dropped by hand must not stop every later start
    for index, table, _ in _REDUNDANT:
        op.drop_index(index, table_name=table, if_exists=True)


def downgrade() -> None:
    for index, table, column in _REDUNDANT:
        op.create_index(index, table, [column], unique=False)
