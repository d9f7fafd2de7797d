"""Alembic's entry point: run the migrations on the connection mailout hands over."""

from __future__ import annotations

from alembic import context

from mailout.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - mailout always passes its connection
    raise RuntimeError("run migrations through `mailout db upgrade`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: let Alembic copy-and-move tables instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
