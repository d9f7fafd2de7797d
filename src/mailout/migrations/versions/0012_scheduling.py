"""Scheduled and approved dispatches, and routes with quotas.

- ``dispatches`` gains ``scheduled_at`` (the instant a scheduled dispatch starts, in
  UTC; NULL: sent when written), ``started_at`` (when sending was allowed to begin:
  the worker's one conditional UPDATE for a scheduled dispatch, the write itself
  otherwise), ``cancelled_at``, ``missed_at`` (its instant passed by more than
  ``sending.max_lateness`` before any worker started it), ``created_by`` (who wrote
  it, for the approval's second pair of eyes) and ``route`` (the route it sends
  through now, "" for ``[smtp]``; a failover changes it, and adds a line to
  ``route_changes``: when, from which route to which, and why). The dispatches written
  before were started when written: ``started_at`` is their ``created_at``.
- ``deliveries`` gains ``route``: the route its message went through (NULL before).
- ``approvals``: who approved an issue for a list, when, and the SHA-256 of every
  variant they approved.
- ``routes`` (one row per route, locked while a slot of its quota is taken) and
  ``route_usage`` (messages per route, unit and time bucket).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _stamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("dispatches") as batch:
        batch.add_column(_stamp("scheduled_at", nullable=True))
        batch.add_column(_stamp("started_at", nullable=True))
        batch.add_column(_stamp("cancelled_at", nullable=True))
        batch.add_column(_stamp("missed_at", nullable=True))
        batch.add_column(sa.Column("created_by", sa.String(320), nullable=False, server_default=""))
        batch.add_column(sa.Column("route", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("route_changes", sa.Text(), nullable=True))
    # Every dispatch written before could send from the moment it was written.
    op.execute("UPDATE dispatches SET started_at = created_at")
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("route", sa.String(64), nullable=True))
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issue", sa.String(200), nullable=False),
        sa.Column("list_id", sa.Integer(), nullable=False),
        sa.Column("dispatch_id", sa.Integer(), nullable=True),
        sa.Column("approved_by", sa.String(320), nullable=False),
        _stamp("approved_at"),
        sa.Column("variants", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["list_id"], ["lists.id"], name=op.f("fk_approvals_list_id_lists"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["dispatch_id"],
            ["dispatches.id"],
            name=op.f("fk_approvals_dispatch_id_dispatches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
    )
    op.create_index("ix_approvals_issue_list_id", "approvals", ["issue", "list_id"])
    op.create_table(
        "routes",
        sa.Column("name", sa.String(64), nullable=False),
        _stamp("created_at"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_routes")),
    )
    op.create_table(
        "route_usage",
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("unit", sa.String(8), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("route", "unit", "bucket", name=op.f("pk_route_usage")),
    )


def downgrade() -> None:
    op.drop_table("route_usage")
    op.drop_table("routes")
    op.drop_index("ix_approvals_issue_list_id", table_name="approvals")
    op.drop_table("approvals")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("route")
    with op.batch_alter_table("dispatches") as batch:
        for name in (
            "route_changes",
            "route",
            "created_by",
            "missed_at",
            "cancelled_at",
            "started_at",
            "scheduled_at",
        ):
            batch.drop_column(name)
