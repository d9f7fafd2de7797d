"""One subscriber per address whatever its case: subscribers.email_key, unique.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mailout.errors import DatabaseError

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: How many groups of addresses the refusal names before it says how many more there are.
SHOWN = 5


def upgrade() -> None:
    connection = op.get_bind()
    people = [(int(i), str(e)) for i, e in connection.execute(sa.text("SELECT id, email FROM subscribers"))]
    _refuse_case_duplicates(people)
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("email_key", sa.String(320), nullable=True))
    if people:
        # Python's lower(), as mailout computes the key: SQLite's lower() leaves every
        # letter outside ASCII as it is.
        connection.execute(
            sa.text("UPDATE subscribers SET email_key = :key WHERE id = :id"),
            [{"key": email.lower(), "id": id_} for id_, email in people],
        )
    with op.batch_alter_table("subscribers") as batch:
        batch.alter_column("email_key", existing_type=sa.String(320), nullable=False)
        batch.create_unique_constraint("uq_subscribers_email_key", ["email_key"])


def _refuse_case_duplicates(people: Sequence[tuple[int, str]]) -> None:
    """Raise ``DatabaseError`` naming the addresses that differ only in case, if any."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for id_, email in sorted(people):
        groups.setdefault(email.lower(), []).append((id_, email))
    clashes = [group for _key, group in sorted(groups.items()) if len(group) > 1]
    if not clashes:
        return
    named = "; ".join(
        " and ".join(f"{email} (subscriber {id_})" for id_, email in group) for group in clashes[:SHOWN]
    )
    if len(clashes) > SHOWN:
        named += f"; and {len(clashes) - SHOWN} more"
    raise DatabaseError(
        "cannot upgrade to schema 0003, which keeps one subscriber per address whatever its case: "
        f"these addresses differ only in case: {named}; nothing was changed. Keep one subscriber of each: "
        "move the other's lists and history to it and delete it (the SQL is in mailout's docs/database.md, "
        '"Addresses that differ only in case"), then run `mailout db upgrade` again'
    )


def downgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_constraint("uq_subscribers_email_key", type_="unique")
        batch.drop_column("email_key")
