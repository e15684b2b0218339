"""optin: form posts waiting for confirmation, and both halves of the consent evidence

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 17:30:00

A form post is no longer applied at once: it waits in `pending_signups` until
the mailbox owner clicks the emailed link (spec section 9). `consents` gains
the confirming click's time, IP address and user agent.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import funnel.store.models

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pending_signups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("email_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("discreet", sa.Boolean(), nullable=False),
        sa.Column("posted_at", funnel.store.models.UTCDateTime(), nullable=False),
        sa.Column("ip", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("user_agent", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("expires_at", funnel.store.models.UTCDateTime(), nullable=False),
        sa.Column("mail_status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("confirmation_sent_at", funnel.store.models.UTCDateTime(), nullable=True),
        sa.Column("mail_error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("confirmed_at", funnel.store.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("pending_signups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pending_signups_email_hash"), ["email_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_pending_signups_expires_at"), ["expires_at"], unique=False)
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("confirmed_at", funnel.store.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("confirm_ip", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("confirm_user_agent", sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.drop_column("confirm_user_agent")
        batch_op.drop_column("confirm_ip")
        batch_op.drop_column("confirmed_at")
    with op.batch_alter_table("pending_signups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pending_signups_expires_at"))
        batch_op.drop_index(batch_op.f("ix_pending_signups_email_hash"))
    op.drop_table("pending_signups")
