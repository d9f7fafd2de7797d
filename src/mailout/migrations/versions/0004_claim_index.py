"""Deliveries indexed by (dispatch, status, id): claims read in id order without sorting.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deliveries_dispatch_id_status_id", "deliveries", ["dispatch_id", "status", "id"])
    op.drop_index("ix_deliveries_dispatch_id_status", table_name="deliveries")


def downgrade() -> None:
    op.create_index("ix_deliveries_dispatch_id_status", "deliveries", ["dispatch_id", "status"])
    op.drop_index("ix_deliveries_dispatch_id_status_id", table_name="deliveries")
