"""The envelope sender each delivery was sent with (with VERP, its own return address).

``deliveries.envelope_sender`` is written in the statement that marks a delivery
``sending`` (``outbox.advance``), so it is kept before the message goes on the wire.
NULL: not sent yet, or sent before mailout kept it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("envelope_sender", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("envelope_sender")
