"""The initial schema: subscribers, lists, subscriptions, consent events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SUBSCRIBER_STATUS = ("subscribed", "unsubscribed", "bounced", "complained")
SUBSCRIPTION_STATUS = ("subscribed", "unsubscribed")
EVENT_KIND = ("subscribed", "unsubscribed", "resubscribed", "bounced", "complained")
SOURCE = ("import", "sign-up", "manual", "link", "one-click", "sync", "bounce")


def _enum(name: str, values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=16)


def _stamp(name: str) -> sa.Column[dt.datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "subscribers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("organisation", sa.String(200), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("status", _enum("subscriberstatus", SUBSCRIBER_STATUS), nullable=False),
        _stamp("created_at"),
        _stamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_subscribers"),
        sa.UniqueConstraint("email", name="uq_subscribers_email"),
    )
    op.create_table(
        "lists",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("segment", sa.String(16), nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        _stamp("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_lists"),
        sa.UniqueConstraint("name", name="uq_lists_name"),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("list_id", sa.Integer(), nullable=False),
        sa.Column("status", _enum("subscriptionstatus", SUBSCRIPTION_STATUS), nullable=False),
        _stamp("created_at"),
        _stamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_subscriptions"),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name="fk_subscriptions_subscriber_id_subscribers",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["list_id"], ["lists.id"], name="fk_subscriptions_list_id_lists", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("subscriber_id", "list_id", name="uq_subscriptions_subscriber_id_list_id"),
    )
    op.create_index("ix_subscriptions_list_id_status", "subscriptions", ["list_id", "status"])
    op.create_table(
        "consent_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("list_id", sa.Integer(), nullable=True),
        sa.Column("kind", _enum("eventkind", EVENT_KIND), nullable=False),
        sa.Column("source", _enum("source", SOURCE), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        _stamp("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_consent_events"),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name="fk_consent_events_subscriber_id_subscribers",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["list_id"], ["lists.id"], name="fk_consent_events_list_id_lists", ondelete="SET NULL"
        ),
    )
    op.create_index("ix_consent_events_subscriber_id", "consent_events", ["subscriber_id"])


def downgrade() -> None:
    op.drop_table("consent_events")
    op.drop_index("ix_subscriptions_list_id_status", table_name="subscriptions")
    op.drop_table("subscriptions")
    op.drop_table("lists")
    op.drop_table("subscribers")
