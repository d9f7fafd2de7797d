"""What each dispatch was sent with: its DKIM signing identity and its envelope sender.

``dispatches.signing`` and ``dispatches.envelope_sender`` are written when a send
run of the dispatch starts (``outbox.record_run``). NULL: the dispatch was sent
before mailout recorded them, and ``mailout status`` says it does not know.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dispatches") as batch:
        batch.add_column(sa.Column("signing", sa.Text(), nullable=True))
        batch.add_column(sa.Column("envelope_sender", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dispatches") as batch:
        batch.drop_column("envelope_sender")
        batch.drop_column("signing")
