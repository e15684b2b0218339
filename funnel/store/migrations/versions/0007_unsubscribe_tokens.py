"""unsubscribe links name a random token key; opt-outs and opt-ins are kept as history

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 17:30:00

- `contacts.token_key`: 16 random bytes (hex) per contact, made with the row,
  which new unsubscribe links carry instead of the row id (a restored backup
  gives row ids again; see funnel.mail.unsubscribe). Existing rows get one here.
- the setting `legacy_token_contacts`: the highest contact id now. Links made
  before this revision name row ids; they stay valid only up to it.
- `subscription_changes`: every unsubscribe and resubscribe, append-only;
  each contact unsubscribed now gets its row, from what the contact holds.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import funnel.store.models

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_key", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    conn = op.get_bind()
    ids = [row[0] for row in conn.execute(sa.text("SELECT id FROM contacts"))]
    if ids:
        conn.execute(
            sa.text("UPDATE contacts SET token_key = :key WHERE id = :id"),
            [{"key": secrets.token_hex(16), "id": contact_id} for contact_id in ids],
        )
    # left nullable: making it NOT NULL on SQLite means rebuilding `contacts`, which the
    # foreign keys that point at it refuse inside the migration's transaction
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_contacts_token_key"), ["token_key"], unique=True)
    conn.execute(sa.text("DELETE FROM settings WHERE key = 'legacy_token_contacts'"))
    conn.execute(
        sa.text("INSERT INTO settings (key, value) VALUES ('legacy_token_contacts', :value)"),
        {"value": str(max(ids, default=0))},
    )

    op.create_table(
        "subscription_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("changed_at", funnel.store.models.UTCDateTime(), nullable=False),
        sa.Column("change", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("via", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("step_run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("subscription_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subscription_changes_contact_id"), ["contact_id"], unique=False)
    conn.execute(
        sa.text(
            "INSERT INTO subscription_changes (contact_id, changed_at, change, via, step_run_id) "
            "SELECT id, unsubscribed_at, 'unsubscribed', unsubscribed_via, unsubscribed_step_run_id "
            "FROM contacts WHERE unsubscribed_at IS NOT NULL ORDER BY unsubscribed_at, id"
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("subscription_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscription_changes_contact_id"))
    op.drop_table("subscription_changes")
    op.get_bind().execute(sa.text("DELETE FROM settings WHERE key = 'legacy_token_contacts'"))
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contacts_token_key"))
        batch_op.drop_column("token_key")
