"""Engines, sessions and schema migrations, for SQLite and PostgreSQL alike.

SQLite is the embedded default: a file in the workspace, in WAL mode, with
foreign keys enforced and a busy timeout so that two processes wait for each
other instead of failing. Transactions are begun explicitly, with ``BEGIN
IMMEDIATE`` (the driver's own implicit transactions are switched off), so that
a transaction that reads and then writes never fails half-way on a busy
database. The send loop's one statement per message runs outside any
transaction, in the driver's autocommit, where SQLite takes the write lock
before the statement reads, too (see ``outbox._driver``). Each commit waits for the disk as
``database.sqlite_synchronous`` says (docs/reliability.md: what survives what).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, event
from sqlalchemy import Engine as Engine  # re-exported: front ends name it without SQLAlchemy
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.exc import DatabaseError as SQLAlchemyDatabaseError
from sqlalchemy.exc import NoSuchModuleError as NoSuchDriver
from sqlalchemy.orm import Session

from .config import SQLITE_SYNCHRONOUS, Database
from .errors import DatabaseError

#: A database gone away, or locked for too long, in the middle of a command: front ends
#: catch it by this name and report it in one line.
DatabaseUnavailable = OperationalError

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, *, sqlite_synchronous: str = Database.sqlite_synchronous) -> Engine:
    """Return an engine for ``url``, configured for mailout's use of it.

    ``sqlite_synchronous`` is ``database.sqlite_synchronous``: every connection to a
    SQLite database takes it; PostgreSQL ignores it.
    """
    if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
        raise DatabaseError(
            f"sqlite_synchronous must be {' or '.join(map(repr, SQLITE_SYNCHRONOUS))}, got {sqlite_synchronous!r}"
        )
    try:
        engine = create_engine(url, pool_pre_ping=url.startswith("postgresql"))
    except (ArgumentError, NoSuchDriver, ValueError, ImportError) as exc:
        raise DatabaseError(f"cannot use database URL {safe_url(url)!r}: {exc}") from None
    if engine.dialect.name == "sqlite":

        def connect(dbapi_connection: Any, _record: Any) -> None:
            _sqlite_connect(dbapi_connection, sqlite_synchronous)

        event.listen(engine, "connect", connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, synchronous: str) -> None:
    # Let SQLAlchemy, not the driver, decide when a transaction begins.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # In WAL mode, FULL syncs the WAL at every commit: a commit then survives a power loss.
    # NORMAL syncs only at checkpoints: a power loss may undo the last commits (a crash of
    # the process loses none). Per connection: SQLite does not keep it in the file.
    cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")  # one of SQLITE_SYNCHRONOUS
    # Deleted and changed rows' old bytes are overwritten, not left in free space: an erased
    # person's address is not in the file (several builds, not all, have it on already).
    cursor.execute("PRAGMA secure_delete=ON")
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


def upgrade(
    url: str, revision: str = "head", *, sqlite_synchronous: str = Database.sqlite_synchronous
) -> tuple[str | None, str | None]:
    """Create or upgrade the schema at ``url``; return the revisions before and after.

    The whole upgrade is one transaction: an upgrade that fails changes nothing.
    """
    engine = make_engine(url, sqlite_synchronous=sqlite_synchronous)
    try:
        before = _checked(lambda: current_revision(engine), url)
        if before is not None and before not in _known_revisions():
            raise DatabaseError(_newer_schema(url, before))
        with engine.connect() as connection:
            _migrate(connection, url, revision)
        return before, current_revision(engine)
    finally:
        engine.dispose()


def _migrate(connection: Connection, url: str, revision: str) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # SQLite changes a table by copying it and dropping the old one; with foreign keys
        # on, that drop deletes, through ON DELETE CASCADE, every subscription and consent
        # event of every subscriber (or fails on a delivery). SQLite's own procedure for
        # such changes: foreign keys off, outside any transaction (inside, the PRAGMA does
        # nothing), check them before the commit, then on again.
        _sqlite_foreign_keys(connection, on=False)
    try:
        with connection.begin():
            config = alembic_config(url)
            config.attributes["connection"] = connection
            try:
                command.upgrade(config, revision)
            except SQLAlchemyDatabaseError as exc:
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                raise DatabaseError(
                    f"the upgrade of {safe_url(url)} failed and changed nothing: {reason}"
                ) from None
            if sqlite:
                broken = _broken_references(connection)
                if broken:
                    raise _BrokenReferences(broken)
    except _BrokenReferences as exc:
        # Rolled back by now: tell apart rows the database held already from a bad migration.
        with connection.begin():
            held = _broken_references(connection)
        raise DatabaseError(_broken_message(url, held or exc.rows, bool(held))) from None
    finally:
        if sqlite and not connection.invalidated:
            _sqlite_foreign_keys(connection, on=True)


def _sqlite_foreign_keys(connection: Connection, *, on: bool) -> None:
    assert not connection.in_transaction(), "PRAGMA foreign_keys does nothing inside a transaction"
    # The driver's own connection, in autocommit mode (see _sqlite_connect): through
    # SQLAlchemy, the statement would first begin a transaction.
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    if driver.execute("PRAGMA foreign_keys").fetchone()[0] != int(on):
        raise DatabaseError(f"cannot switch SQLite's foreign keys {'on' if on else 'off'}")


class _BrokenReferences(Exception):
    def __init__(self, rows: list[tuple[str, int, str]]) -> None:
        self.rows = rows


def _broken_references(connection: Connection) -> list[tuple[str, int, str]]:
    """Return (table, rowid, referred table) for each row whose foreign key finds no row."""
    rows = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    return [(str(table), int(rowid), str(parent)) for table, rowid, parent, _fkid in rows]


def _broken_message(url: str, rows: list[tuple[str, int, str]], held: bool) -> str:
    by_table: dict[tuple[str, str], list[int]] = {}
    for table, rowid, parent in rows:
        by_table.setdefault((table, parent), []).append(rowid)
    found = "; ".join(
        f"{table} rows {', '.join(map(str, ids[:10]))}{' ...' if len(ids) > 10 else ''} (no such {parent} row)"
        for (table, parent), ids in sorted(by_table.items())
    )
    if held:
        return (
            f"cannot upgrade {safe_url(url)}: rows refer to rows that do not exist: {found}; "
            "nothing was changed: delete those rows, or restore a backup, then run `mailout db upgrade` again"
        )
    return (
        f"the upgrade of {safe_url(url)} would leave rows that refer to rows that do not exist: "
        f"{found}; nothing was changed: this is a bug in mailout, please report it"
    )


def _checked(call: Any, url: str) -> Any:
    try:
        return call()
    except SQLAlchemyDatabaseError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(f"cannot open database {safe_url(url)}: {reason}") from None


def open_engine(url: str, *, sqlite_synchronous: str = Database.sqlite_synchronous) -> Engine:
    """Return an engine for a database whose schema is up to date, or say what to run."""
    engine = make_engine(url, sqlite_synchronous=sqlite_synchronous)
    revision = _checked(lambda: current_revision(engine), url)
    if revision != head_revision():
        engine.dispose()
        if revision is not None and revision not in _known_revisions():
            raise DatabaseError(_newer_schema(url, revision))
        state = (
            "has no mailout tables" if revision is None else f"is at schema {revision}, not {head_revision()}"
        )
        raise DatabaseError(f"the database {safe_url(url)} {state}: run `mailout db upgrade`")
    return engine


def _known_revisions() -> set[str]:
    return {r.revision for r in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()}


def _newer_schema(url: str, revision: str) -> str:
    return f"the database {safe_url(url)} is at schema {revision}, made by a newer mailout: upgrade mailout"


class WriteQueue:
    """The write transactions of one process on one database, one at a time on SQLite.

    SQLite has one writer at a time. Threads of one process that all ask for its
    write lock wait in SQLite's busy handler, which sleeps and polls: a writer can
    sleep on after the lock is free, and latency jumps. Queued here on a lock of the
    process instead, each writer starts as soon as the previous one commits. The
    busy timeout still covers other processes (a dispatch, a second web server).
    PostgreSQL has row locks and needs no queue: there it does nothing.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock() if engine.dialect.name == "sqlite" else None

    @contextmanager
    def transaction(self, *, timeout: float = BUSY_TIMEOUT_MS / 1000) -> Iterator[Connection]:
        """Yield a connection in a write transaction, committed at the end or rolled back on an error.

        ``timeout`` (by default the busy timeout) bounds the whole wait: for the queue,
        then for other processes' locks (SQLite's busy timeout, PostgreSQL's
        ``lock_timeout`` and ``statement_timeout``), so that a request waits at most
        that long in all. Past it, ``DatabaseUnavailable`` (queue) or
        ``OperationalError`` (lock, or the statement cancelled) is raised.
        """
        deadline = time.monotonic() + timeout
        if self._lock is not None and not self._lock.acquire(timeout=timeout):
            raise DatabaseUnavailable(
                "BEGIN IMMEDIATE", None, TimeoutError("database is locked: the queue of writers did not move")
            )
        try:
            with self.engine.connect() as connection:
                left_ms = max(1, int((deadline - time.monotonic()) * 1000))
                if self._lock is not None:
                    # Only what is left of the deadline for other processes' write lock.
                    shortened = left_ms < BUSY_TIMEOUT_MS - 50  # a few ms less: not worth two statements
                    # On the driver's connection, outside any transaction of SQLAlchemy's.
                    driver: Any = connection.connection.driver_connection
                    if shortened:
                        driver.execute(f"PRAGMA busy_timeout={left_ms}")
                    try:
                        with connection.begin():
                            yield connection
                    finally:
                        if shortened:
                            try:
                                driver.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                            except Exception:
                                connection.invalidate()  # never back to the pool with the short wait
                else:
                    with connection.begin():
                        # PostgreSQL: a row another transaction holds (an import) is waited for
                        # until the deadline, not for ever. lock_timeout bounds each lock wait
                        # alone: a writer queued behind another waits for the row's tuple lock,
                        # then for the holder's transaction, up to lock_timeout each, so twice
                        # the deadline; statement_timeout bounds the statement as a whole.
                        connection.exec_driver_sql(
                            f"SELECT set_config('lock_timeout', '{left_ms}', true),"
                            f" set_config('statement_timeout', '{left_ms}', true)"
                        )
                        yield connection
        finally:
            if self._lock is not None:
                self._lock.release()


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """Yield a session whose work is committed at the end, or rolled back on any error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def stored_time(conn: Connection, when: dt.datetime) -> object:
    """Return ``when`` as a parameter of plain SQL, as a ``DateTime`` column stores it.

    SQLAlchemy keeps a date-time on SQLite as text, ``YYYY-MM-DD HH:MM:SS.ffffff``
    in UTC with no offset; rows written with this compare and sort with the ORM's own.
    """
    if conn.dialect.name == "sqlite":
        return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return when


def copy_rows(conn: Connection, copy: str, rows: Iterable[tuple[object, ...]]) -> None:
    """Send ``rows`` to PostgreSQL's ``copy`` statement (``COPY ... FROM STDIN``), in ``conn``'s transaction."""
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(copy) as stream:
        for row in rows:
            stream.write_row(row)
