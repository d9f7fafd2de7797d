"""Schema migrations and the database settings, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import Engine, event, inspect, select, text

from mailout.cli import cli
from mailout.config import load_settings
from mailout.db import (
    BUSY_TIMEOUT_MS,
    DatabaseUnavailable,
    WriteQueue,
    current_revision,
    head_revision,
    make_engine,
    open_engine,
    transaction,
    upgrade,
)
from mailout.errors import DatabaseError
from mailout.models import Base, ConsentEvent, EventKind, Source, Subscriber, Subscription
from mailout.tokens import PUBLIC_KEYS
from mailout.web import create_app
from tests.conftest import EXAMPLE_ISSUE, edit_config
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


#: What ``PRAGMA synchronous`` reads back for each value of ``database.sqlite_synchronous``.
SYNCHRONOUS = {"normal": 1, "full": 2}


@pytest.mark.parametrize("value", ["full", "normal"])
def test_every_sqlite_connection_takes_sqlite_synchronous(tmp_path: Path, value: str) -> None:
    url = f"sqlite:///{tmp_path / 'sync.db'}"
    upgrade(url, sqlite_synchronous=value)
    engine = open_engine(url, sqlite_synchronous=value)
    try:
        # Two at once: the pool opens a second connection, which takes it too. Read through
        # the driver: through SQLAlchemy, each would first begin a writing transaction.
        with engine.connect() as first, engine.connect() as second:
            for conn in (first, second):
                driver = conn.connection.driver_connection
                assert driver is not None
                assert driver.execute("PRAGMA synchronous").fetchone()[0] == SYNCHRONOUS[value]
    finally:
        engine.dispose()


def test_sqlite_commits_are_synced_to_disk_by_default(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'default.db'}"
    upgrade(url)
    for engine in (make_engine(url), open_engine(url)):
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == SYNCHRONOUS["full"]
        engine.dispose()


def test_an_unknown_sqlite_synchronous_is_refused_before_anything_opens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(DatabaseError, match=r"sqlite_synchronous must be 'full' or 'normal', got 'off'"):
        make_engine(url, sqlite_synchronous="off")
    # Interpolated into a PRAGMA: nothing but the two words may get there.
    with pytest.raises(DatabaseError, match="sqlite_synchronous must be"):
        make_engine(url, sqlite_synchronous="FULL; DROP TABLE lists")
    assert not (tmp_path / "never.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("value", [None, "normal", "full"])
def test_every_command_and_the_web_app_connect_with_the_workspaces_sqlite_synchronous(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is not None:
        edit_config(
            workspace,
            (
                'url = "sqlite:///mailout.db"\n',
                f'url = "sqlite:///mailout.db"\nsqlite_synchronous = "{value}"\n',
            ),
        )
    shutil.copytree(EXAMPLE_ISSUE.parent, workspace / "issues" / "2019-01")
    (workspace / "people.csv").write_text("email,name\nana@example.org,Ana\nzoe@example.org,Zoë\n")
    monkeypatch.setenv("MAILOUT_SECRET_KEY", sorted(PUBLIC_KEYS)[0])  # the local outbox takes it
    # A database at an old schema: `db upgrade` opens it to back it up first.
    upgrade(load_settings(workspace).database_url(), "0001")
    expected = SYNCHRONOUS[value or "full"]
    seen: list[int] = []

    # Whichever engine a command makes, each connection it takes from a pool reports here.
    def checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            seen.append(dbapi_connection.execute("PRAGMA synchronous").fetchone()[0])

    event.listen(Engine, "checkout", checkout)
    try:
        for command in (
            ["db", "upgrade"],
            ["subscribers", "import", "people.csv", "--list", "members"],
            ["send", "2019-01", "--list", "members", "--yes"],
            ["worker"],
            ["status"],
        ):
            result = CliRunner().invoke(cli, command, catch_exceptions=False)
            assert result.exit_code == 0, (command, result.output)
            assert command != ["db", "upgrade"] or "backed up to" in result.output, result.output
            assert seen and set(seen) == {expected}, (command, seen)
            seen.clear()
        app = create_app(load_settings(workspace), local=True)
        try:
            assert app.test_client().get("/issues/").status_code == 200
        finally:
            app.extensions["mailout"].engine.dispose()
        assert seen and set(seen) == {expected}, ("web", seen)
    finally:
        event.remove(Engine, "checkout", checkout)


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


def test_the_write_queue_lets_one_writer_at_a_time_through_on_sqlite(engine: Engine) -> None:
    queue = WriteQueue(engine)
    inside: list[int] = []
    most = 0
    guard = threading.Lock()

    def write(n: int) -> None:
        nonlocal most
        with queue.transaction() as conn:
            with guard:
                inside.append(n)
                most = max(most, len(inside))
            conn.execute(text("SELECT 1"))
            time.sleep(0.02)
            with guard:
                inside.remove(n)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # SQLite: queued in the process; PostgreSQL: no queue, its row locks decide.
    assert most == 1 if engine.dialect.name == "sqlite" else most > 1


def test_a_write_queue_that_does_not_move_gives_up_like_a_busy_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    upgrade(url)
    engine = make_engine(url)
    queue = WriteQueue(engine)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with queue.transaction():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="queue of writers"), queue.transaction(timeout=0.2):
            pass
        assert time.monotonic() - started < 5
    finally:
        release.set()
        holder.join()
    with queue.transaction() as conn:  # the queue moves again, and nothing was left locked
        assert conn.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


def test_a_writer_waits_at_most_its_deadline_for_the_queue_and_the_lock_together(engine: Engine) -> None:
    # Another process holds the write lock (an import): the writer on the queue and the one
    # behind it both give up by the deadline, not by the deadline twice over.
    queue = WriteQueue(engine)
    holder = make_engine(engine.url.render_as_string(hide_password=False))
    results: list[tuple[str, float]] = []

    def write() -> None:
        started = time.monotonic()
        try:
            with queue.transaction(timeout=1.0) as conn:
                conn.execute(text("UPDATE lists SET description = 'x'"))
            results.append(("done", time.monotonic() - started))
        except Exception as exc:
            results.append((type(exc).__name__, time.monotonic() - started))

    with holder.begin() as first:
        first.execute(
            text(
                "INSERT INTO lists (name, segment, description, created_at)"
                " VALUES ('held', 'public', '', CURRENT_TIMESTAMP)"
            )
        )
    with holder.begin() as held:
        held.execute(text("UPDATE lists SET description = 'held'"))  # the row locked on PostgreSQL too
        threads = [threading.Thread(target=write) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    holder.dispose()
    assert len(results) == 2 and all(what != "done" for what, _ in results), results
    assert all(took < 1.8 for _, took in results), results
    with queue.transaction() as conn:  # nothing was left locked, and the busy timeout is back
        conn.execute(text("UPDATE lists SET description = 'after'"))
        if engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == BUSY_TIMEOUT_MS
