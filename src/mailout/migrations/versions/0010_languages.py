"""Every reader's language: canonical language tags, and a variant per language frozen with a dispatch.

- ``subscribers.language`` holds canonical BCP 47 tags from now on (``fr``,
  ``fr-BE``, ``pt-BR``): the values stored before are rewritten so (``fr-be``
  becomes ``fr-BE``). A value that is no language tag mailout knows (``xx``,
  ``fr-a1``) becomes "": it could never choose a variant, such a reader gets the
  issue's default language either way, and after this upgrade every stored value
  is canonical or empty, which the dispatch's choice of variants (plain SQL, see
  ``outbox.language_choice``) relies on. The next import of the file it came
  from reports it, with its line.
- ``dispatches.language``: the language of the variant in the dispatch's own row;
  NULL for the dispatches written before (their newsletter's one language).
- ``dispatch_variants``: the dispatch's other languages, each one variant.
- ``deliveries.language``: which variant each recipient gets, chosen when the
  dispatch is written; NULL for the deliveries written before (the dispatch's own).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mailout.languages import canonical

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    stored = connection.execute(
        sa.text("SELECT id, language FROM subscribers WHERE language <> '' ORDER BY id")
    ).all()
    changes = [
        {"id": int(id_), "language": canonical(str(language)) or ""}
        for id_, language in stored
        if (canonical(str(language)) or "") != language
    ]
    if changes:
        connection.execute(sa.text("UPDATE subscribers SET language = :language WHERE id = :id"), changes)
    with op.batch_alter_table("dispatches") as batch:
        batch.add_column(sa.Column("language", sa.String(16), nullable=True))
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("language", sa.String(16), nullable=True))
    op.create_table(
        "dispatch_variants",
        sa.Column("dispatch_id", sa.Integer(), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("preheader", sa.String(500), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Text(), nullable=False),
        sa.Column("greeting_fallback", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("dispatch_id", "language", name=op.f("pk_dispatch_variants")),
        sa.ForeignKeyConstraint(
            ["dispatch_id"], ["dispatches.id"], ondelete="CASCADE",
            name=op.f("fk_dispatch_variants_dispatch_id_dispatches"),
        ),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("dispatch_variants")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("language")
    with op.batch_alter_table("dispatches") as batch:
        batch.drop_column("language")
