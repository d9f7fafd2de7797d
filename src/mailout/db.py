"""Engines, sessions and schema migrations, for SQLite and PostgreSQL alike.

SQLite is the embedded default: a file in the workspace, in WAL mode, with
foreign keys enforced and a busy timeout so that two processes wait for each
other instead of failing. Transactions are begun explicitly, with ``BEGIN
IMMEDIATE`` (the driver's own implicit transactions are switched off), so that
a transaction that reads and then writes never fails half-way on a busy
database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine as Engine  # re-exported: front ends name it without SQLAlchemy
from sqlalchemy import create_engine, event
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.exc import DatabaseError as SQLAlchemyDatabaseError
from sqlalchemy.exc import NoSuchModuleError as NoSuchDriver
from sqlalchemy.orm import Session

from .errors import DatabaseError

#: A database gone away, or locked for too long, in the middle of a command: front ends
#: catch it by this name and report it in one line.
DatabaseUnavailable = OperationalError

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """Return an engine for ``url``, configured for mailout's use of it."""
    try:
        engine = create_engine(url, pool_pre_ping=url.startswith("postgresql"))
    except (ArgumentError, NoSuchDriver, ValueError, ImportError) as exc:
        raise DatabaseError(f"cannot use database URL {safe_url(url)!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, decide when a transaction begins.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode up to the last checkpointed commit
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    if connection.get_execution_options().get(READ_ONLY):
        # A reader in WAL mode takes no lock: it waits for no writer and blocks none.
        connection.exec_driver_sql("BEGIN")
        return
    # IMMEDIATE: take the write lock up front. A transaction that reads and then writes
    # would otherwise fail at once with SQLITE_BUSY when another process wrote in
    # between (WAL mode cannot upgrade a stale snapshot, and no busy timeout helps).
    connection.exec_driver_sql("BEGIN IMMEDIATE")


#: The execution option of an engine whose transactions only read (see ``reader``).
READ_ONLY = "mailout_read_only"


def reader(engine: Engine) -> Engine:
    """Return ``engine`` for transactions that only read: on SQLite they take no write lock.

    For the web pages: a mail scanner fetching every link must not queue behind a
    dispatch, nor hold it up. Writing through it is a bug, and SQLite may refuse it.
    """
    return engine.execution_options(**{READ_ONLY: True})


def safe_url(url: str) -> str:
    """Return ``url`` without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def alembic_config(url: str) -> Config:
    """Return an Alembic configuration for ``url``; no alembic.ini is needed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """Return the newest migration's revision."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """Return the revision the database is at, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Create or upgrade the schema at ``url``; return the revisions before and after."""
    engine = make_engine(url)
    try:
        before = _checked(lambda: current_revision(engine), url)
        with engine.begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        return before, current_revision(engine)
    finally:
        engine.dispose()


def _checked(call: Any, url: str) -> Any:
    try:
        return call()
    except SQLAlchemyDatabaseError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(f"cannot open database {safe_url(url)}: {reason}") from None


def open_engine(url: str) -> Engine:
    """Return an engine for a database whose schema is up to date, or say what to run."""
    engine = make_engine(url)
    revision = _checked(lambda: current_revision(engine), url)
    if revision != head_revision():
        engine.dispose()
        known = {r.revision for r in ScriptDirectory.from_config(alembic_config(url)).walk_revisions()}
        if revision is not None and revision not in known:
            raise DatabaseError(
                f"the database {safe_url(url)} is at schema {revision}, made by a newer mailout: upgrade mailout"
            )
        state = (
            "has no mailout tables" if revision is None else f"is at schema {revision}, not {head_revision()}"
        )
        raise DatabaseError(f"the database {safe_url(url)} {state}: run `mailout db upgrade`")
    return engine


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """Yield a session whose work is committed at the end, or rolled back on any error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session
