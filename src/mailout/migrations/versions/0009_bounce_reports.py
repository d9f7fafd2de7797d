"""Bounce and complaint reports, each handled once, and the soft-bounce score of each subscriber.

``handled_reports`` keeps one row per report read from the bounce mailbox (its
Message-ID and the SHA-256 of its bytes, both unique: seen again by either, it is
not handled again); ``report_recipients`` what was done for each recipient it
names. ``subscribers`` gains the soft-bounce score and what its daily rule needs.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

MATCHED_BY = ("verp", "message-id", "list-id", "recipient", "none")
ACTION = ("bounced", "soft", "suppressed", "unsubscribed", "complained", "none")


def _enum(name: str, values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=16)


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        # A default in the schema too: the importer's plain INSERTs leave the column out.
        batch.add_column(sa.Column("soft_score", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("soft_day", sa.Date(), nullable=True))
        batch.add_column(sa.Column("soft_bounced_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "handled_reports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("message_id", sa.String(250), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("matched_by", _enum("matchedby", MATCHED_BY), nullable=False),
        sa.Column("settled", sa.Boolean(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handled_reports")),
        sa.UniqueConstraint("message_id", name=op.f("uq_handled_reports_message_id")),
        sa.UniqueConstraint("sha256", name=op.f("uq_handled_reports_sha256")),
    )
    op.create_table(
        "report_recipients",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("dispatch_id", sa.Integer(), nullable=True),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.Column("list_id", sa.Integer(), nullable=True),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("diagnostic", sa.Text(), nullable=False),
        sa.Column("matched_by", _enum("matchedby", MATCHED_BY), nullable=False),
        sa.Column("action", _enum("reportaction", ACTION), nullable=False),
        sa.Column("note", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_recipients")),
        sa.ForeignKeyConstraint(
            ["report_id"], ["handled_reports.id"], ondelete="CASCADE",
            name=op.f("fk_report_recipients_report_id_handled_reports"),
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["subscribers.id"], ondelete="SET NULL",
            name=op.f("fk_report_recipients_subscriber_id_subscribers"),
        ),
        sa.ForeignKeyConstraint(
            ["dispatch_id"], ["dispatches.id"], ondelete="SET NULL",
            name=op.f("fk_report_recipients_dispatch_id_dispatches"),
        ),
        sa.ForeignKeyConstraint(
            ["delivery_id"], ["deliveries.id"], ondelete="SET NULL",
            name=op.f("fk_report_recipients_delivery_id_deliveries"),
        ),
        sa.ForeignKeyConstraint(
            ["list_id"], ["lists.id"], ondelete="SET NULL", name=op.f("fk_report_recipients_list_id_lists")
        ),
    )  # fmt: skip
    op.create_index("ix_report_recipients_report_id", "report_recipients", ["report_id"])
    op.create_index("ix_report_recipients_subscriber_id", "report_recipients", ["subscriber_id"])
    op.create_index("ix_report_recipients_dispatch_id_action", "report_recipients", ["dispatch_id", "action"])


def downgrade() -> None:
    op.drop_table("report_recipients")
    op.drop_table("handled_reports")
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("soft_bounced_at")
        batch.drop_column("soft_day")
        batch.drop_column("soft_score")
