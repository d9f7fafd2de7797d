"""Dispatches, their deliveries, and the processes sending them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DELIVERY_STATUS = ("queued", "claimed", "sending", "sent", "deferred", "failed", "skipped", "unknown")


def upgrade() -> None:
    op.create_table(
        "dispatches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(40), nullable=False),
        sa.Column("issue", sa.String(200), nullable=False),
        sa.Column("list_id", sa.Integer(), nullable=False),
        sa.Column("segment", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("preheader", sa.String(500), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Text(), nullable=False),
        sa.Column("greeting_fallback", sa.String(200), nullable=False),
        sa.Column("from_name", sa.String(200), nullable=False),
        sa.Column("from_address", sa.String(320), nullable=False),
        sa.Column("reply_to", sa.String(320), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("paused_reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_dispatches"),
        sa.UniqueConstraint("key", name="uq_dispatches_key"),
        sa.ForeignKeyConstraint(
            ["list_id"], ["lists.id"], name="fk_dispatches_list_id_lists", ondelete="RESTRICT"
        ),
    )
    op.create_index("ix_dispatches_issue_list", "dispatches", ["issue", "list_id"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dispatch_id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*DELIVERY_STATUS, name="deliverystatus", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("worker", sa.String(100), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reply", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.UniqueConstraint("dispatch_id", "subscriber_id", name="uq_deliveries_dispatch_id_subscriber_id"),
        sa.ForeignKeyConstraint(
            ["dispatch_id"],
            ["dispatches.id"],
            name="fk_deliveries_dispatch_id_dispatches",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name="fk_deliveries_subscriber_id_subscribers",
            ondelete="RESTRICT",
        ),
    )
    op.create_index("ix_deliveries_dispatch_id_status", "deliveries", ["dispatch_id", "status"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(100), nullable=False),
        sa.Column("dispatch_id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_workers"),
        sa.ForeignKeyConstraint(
            ["dispatch_id"], ["dispatches.id"], name="fk_workers_dispatch_id_dispatches", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_index("ix_deliveries_dispatch_id_status", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_index("ix_dispatches_issue_list", table_name="dispatches")
    op.drop_table("dispatches")
