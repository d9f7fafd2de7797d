"""One dispatch per issue, list and generation; each sending process known by its identity.

``dispatches.generation`` numbers the dispatches of an issue to a list (1, then 2 for
``--again``, ...), unique with the issue and the list: two sends started together can
no longer both write a dispatch. Existing dispatches are numbered in id order.
``workers.process`` tells a dead process on the same machine at once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    with op.batch_alter_table("dispatches") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=True))
    # Several dispatches of one issue to one list exist after `send --again`: 1, 2, ... in
    # the order they were written.
    seen: dict[tuple[str, int], int] = {}
    numbered = []
    for id_, issue, list_id in connection.execute(
        sa.text("SELECT id, issue, list_id FROM dispatches ORDER BY id")
    ):
        key = (str(issue), int(list_id))
        seen[key] = seen.get(key, 0) + 1
        numbered.append({"generation": seen[key], "id": int(id_)})
    if numbered:
        connection.execute(sa.text("UPDATE dispatches SET generation = :generation WHERE id = :id"), numbered)
    with op.batch_alter_table("dispatches") as batch:
        batch.alter_column("generation", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint(
            "uq_dispatches_issue_list_id_generation", ["issue", "list_id", "generation"]
        )
        # The unique key starts with (issue, list_id): it serves the lookups this index served.
        batch.drop_index("ix_dispatches_issue_list")
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("process", sa.String(100), nullable=False, server_default=""))
    with op.batch_alter_table("workers") as batch:
        batch.alter_column("process", existing_type=sa.String(100), server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("process")
    with op.batch_alter_table("dispatches") as batch:
        batch.create_index("ix_dispatches_issue_list", ["issue", "list_id"])
        batch.drop_constraint("uq_dispatches_issue_list_id_generation", type_="unique")
        batch.drop_column("generation")
