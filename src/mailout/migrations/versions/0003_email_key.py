"""One subscriber per address whatever its case: subscribers.email_key, unique.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("email_key", sa.String(320), nullable=True))
    op.execute("UPDATE subscribers SET email_key = lower(email)")
    # Fails, and changes nothing, if two stored addresses differ only in case: merge them first.
    with op.batch_alter_table("subscribers") as batch:
        batch.alter_column("email_key", existing_type=sa.String(320), nullable=False)
        batch.create_unique_constraint("uq_subscribers_email_key", ["email_key"])


def downgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_constraint("uq_subscribers_email_key", type_="unique")
        batch.drop_column("email_key")
