"""Schema migrations and the database settings, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, select

from mailout.db import (
    current_revision,
    head_revision,
    make_engine,
    open_engine,
    transaction,
    upgrade,
)
from mailout.errors import DatabaseError
from mailout.models import Base, ConsentEvent, EventKind, Source, Subscriber, Subscription
from tests.postgres import PostgresServer


def empty_url(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'new.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"empty_{uuid.uuid4().hex[:16]}")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_upgrade_creates_the_schema_on_an_empty_database(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    url = empty_url(request, tmp_path, kind)
    assert upgrade(url) == (None, head_revision())
    assert upgrade(url) == (head_revision(), head_revision()), "a second upgrade changes nothing"
    engine = make_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"subscribers", "lists", "subscriptions", "consent_events", "alembic_version"} <= tables
    finally:
        engine.dispose()


def test_models_match_the_migrated_schema(engine: Engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], "a model changed without a migration"


def test_open_engine_refuses_a_database_that_needs_an_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with pytest.raises(DatabaseError, match=r"has no mailout tables: run `mailout db upgrade`"):
        open_engine(url)
    upgrade(url)
    engine = open_engine(url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_unreachable_database_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="cannot open database"):
        open_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'x.db'}")
    with pytest.raises(DatabaseError, match=r"cannot open database .*127\.0\.0\.1:1/"):
        open_engine("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    with pytest.raises(DatabaseError) as caught:
        open_engine("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    assert "secret" not in str(caught.value), "the password never appears in a message"


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    engine.dispose()


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), transaction(engine) as session:
        session.add(Subscription(subscriber_id=999, list_id=999))
        session.flush()
    with transaction(engine) as session:
        person = Subscriber(email="x@example.org")
        session.add(person)
        session.flush()
        session.add(ConsentEvent(subscriber_id=person.id, kind=EventKind.SUBSCRIBED, source=Source.MANUAL))
    with transaction(engine) as session:
        assert session.scalars(select(ConsentEvent.kind)).all() == [EventKind.SUBSCRIBED]
