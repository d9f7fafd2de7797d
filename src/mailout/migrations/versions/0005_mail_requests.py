"""Unsubscribe requests read from a mailbox, each kept once: a mailbox read again changes nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mail_requests",
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_mail_requests")),
    )


def downgrade() -> None:
    op.drop_table("mail_requests")
