"""Sign-ups with double opt-in, the consent texts shown, and erasures.

- ``signups``: a sign-up waiting for its confirmation, one per address.
- ``consent_texts``: each consent text shown on a form, by its SHA-256.
- ``consent_events`` gains what a confirmed sign-up proves: ``requested_at`` (when
  the form was sent; the event's ``created_at`` is the confirmation), ``page``
  (the form's page), ``consent_sha256`` (the text shown) and ``ip`` (only with
  ``signup.store_ip``). The events written before have none of them: NULL, and ""
  for ``page``.
- ``erasures``: who was erased and when, by a keyed hash of the address only.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _stamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("consent_events") as batch:
        batch.add_column(_stamp("requested_at", nullable=True))
        batch.add_column(sa.Column("page", sa.String(500), nullable=False, server_default=""))
        batch.add_column(sa.Column("consent_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("ip", sa.String(64), nullable=True))
    op.create_table(
        "consent_texts",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        _stamp("created_at"),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_consent_texts")),
    )
    op.create_table(
        "signups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("email_key", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("lists", sa.Text(), nullable=False),
        sa.Column("page", sa.String(500), nullable=False),
        sa.Column("consent_sha256", sa.String(64), nullable=False),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        _stamp("created_at"),
        _stamp("sent_at", nullable=True),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.Column("reply", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signups")),
        sa.UniqueConstraint("email_key", name=op.f("uq_signups_email_key")),
    )
    op.create_table(
        "erasures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        _stamp("erased_at"),
        sa.Column("erased_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasures")),
        sa.UniqueConstraint("address_hash", name=op.f("uq_erasures_address_hash")),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["subscribers.id"], ondelete="SET NULL",
            name=op.f("fk_erasures_subscriber_id_subscribers"),
        ),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("erasures")
    op.drop_table("signups")
    op.drop_table("consent_texts")
    with op.batch_alter_table("consent_events") as batch:
        batch.drop_column("ip")
        batch.drop_column("consent_sha256")
        batch.drop_column("page")
        batch.drop_column("requested_at")
