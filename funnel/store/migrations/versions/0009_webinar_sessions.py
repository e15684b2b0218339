"""webinar sessions: one enrollment per (contact, sequence, session)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 20:30:00

A webinar that runs every month is entered once per session (spec section
7), so `enrollments` gains `session` (the session's id, '' for every other
enrollment) and its unique constraint becomes (contact_id, sequence,
session). Every existing enrollment and its step runs stay as they are,
with session ''. `join_url` keeps a registrant's own link from the export
(None: the webinar's). `enrollment_tags` holds the tags that belong to one
session (attendance), beside the contact's own.

The migration cannot know the sessions (they are in sequences.yaml, which
it does not read), so an existing webinar enrollment gets its session id at
the first import after the upgrade (`funnel.signups.store.adopt_legacy_sessions`):
the configured session starting at its stored webinar start, else the
start's local date text in the webinar's zone. Until then it is found as
"the enrollment of this sequence with no session", so nobody is enrolled
twice for the session she already has.

SQLite cannot drop an unnamed constraint: the table is rebuilt from a copy
of its definition without it (`copy_from`), data and all, with the step
runs that point at it set aside meanwhile (`_step_runs_set_aside`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
import sqlmodel
from alembic import op

import funnel.store.models

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "uq_enrollments_contact_sequence_session"


def _enrollments_at_0008() -> sa.Table:
    """`enrollments` as revisions 0001-0008 left it, without its unnamed unique constraint."""
    return sa.Table(
        "enrollments",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("sequence", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("enrolled_at", funnel.store.models.UTCDateTime(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("webinar", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("webinar_start", funnel.store.models.UTCDateTime(), nullable=True),
        sa.Column("next_due_at", funnel.store.models.UTCDateTime(), nullable=True),
        sa.Column("ended_at", funnel.store.models.UTCDateTime(), nullable=True),
        sa.Column("end_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("paused_at", funnel.store.models.UTCDateTime(), nullable=True),
        sa.Column("pause_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.Index("ix_enrollments_due", "status", "next_due_at"),
    )


def _old_unique(columns: list[str]) -> str | None:
    found = sa.inspect(op.get_bind()).get_unique_constraints("enrollments")
    for constraint in found:
        if sorted(constraint["column_names"]) == sorted(columns):
            return constraint["name"]
    return None


@contextmanager
def _step_runs_set_aside() -> Iterator[None]:
    """SQLite: hold `step_runs` in a temporary table while `enrollments` is rebuilt, then put every row back.

    Funnel runs SQLite with foreign keys on, and the pragma cannot be turned
    off inside the migration's transaction; dropping the old `enrollments`
    would then fail on the step runs that point at it. Rows keep their ids.
    """
    op.execute("CREATE TEMPORARY TABLE step_runs_0009 AS SELECT * FROM step_runs")
    op.execute("DELETE FROM step_runs")
    yield
    op.execute("INSERT INTO step_runs SELECT * FROM step_runs_0009")
    op.execute("DROP TABLE step_runs_0009")


def upgrade() -> None:
    session = sa.Column("session", sqlmodel.sql.sqltypes.AutoString(), server_default="", nullable=False)
    join_url = sa.Column("join_url", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
    if op.get_bind().dialect.name == "sqlite":
        with _step_runs_set_aside():
            with op.batch_alter_table("enrollments", copy_from=_enrollments_at_0008(), recreate="always") as batch_op:
                batch_op.add_column(session)
                batch_op.add_column(join_url)
                batch_op.create_unique_constraint(_NAME, ["contact_id", "sequence", "session"])
    else:
        op.add_column("enrollments", session)
        op.add_column("enrollments", join_url)
        old = _old_unique(["contact_id", "sequence"])
        if old:
            op.drop_constraint(old, "enrollments", type_="unique")
        op.create_unique_constraint(_NAME, "enrollments", ["contact_id", "sequence", "session"])
    op.create_table(
        "enrollment_tags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("enrollment_id", sa.Integer(), nullable=False),
        sa.Column("tag", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("added_at", funnel.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["enrollment_id"], ["enrollments.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("enrollment_id", "tag"),
    )


def downgrade() -> None:
    op.drop_table("enrollment_tags")
    # a contact with enrollments for several sessions keeps her latest one of each sequence
    op.execute(
        "DELETE FROM step_runs WHERE enrollment_id IN (SELECT e.id FROM enrollments e WHERE EXISTS "
        "(SELECT 1 FROM enrollments f WHERE f.contact_id = e.contact_id AND f.sequence = e.sequence AND f.id > e.id))"
    )
    op.execute(
        "DELETE FROM enrollments WHERE id IN (SELECT e.id FROM enrollments e WHERE EXISTS "
        "(SELECT 1 FROM enrollments f WHERE f.contact_id = e.contact_id AND f.sequence = e.sequence AND f.id > e.id))"
    )
    if op.get_bind().dialect.name == "sqlite":
        with _step_runs_set_aside(), op.batch_alter_table("enrollments", recreate="always") as batch_op:
            batch_op.drop_constraint(_NAME, type_="unique")
            batch_op.drop_column("session")
            batch_op.drop_column("join_url")
            batch_op.create_unique_constraint("uq_enrollments_contact_id_sequence", ["contact_id", "sequence"])
        return
    op.drop_constraint(_NAME, "enrollments", type_="unique")
    op.drop_column("enrollments", "session")
    op.drop_column("enrollments", "join_url")
    op.create_unique_constraint(None, "enrollments", ["contact_id", "sequence"])
