"""inbound replies say whether SendGrid's checks vouched for the sender

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 17:40:00

`inbound_messages.verified`: whether SPF or DKIM passed for the sender's own
domain (issue 16). Only a verified reply pauses anyone; `contacts show`
says which replies were not. Rows stored before this revision are marked
verified: they paused her already, and that is what they did.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verified", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_column("verified")
