"""Backups of the database: SQLite's online backup, and the ``pg_dump`` line for PostgreSQL.

A SQLite backup is taken with SQLite's backup API in a single step: it reads one
consistent snapshot of the database, as any reader in WAL mode does, so a
dispatch, an import or the web app may write meanwhile and wait for nothing. The
copy is written beside its final name, checked, then moved into place: a backup
file is whole or absent, and an existing file is replaced only when asked.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.exc import DatabaseError as SQLAlchemyDatabaseError

from .config import Database
from .db import BUSY_TIMEOUT_MS, current_revision, head_revision, make_engine
from .errors import DatabaseError


def backup(url: str, target: Path | None = None, *, force: bool = False) -> Path:
    """Copy the SQLite database at ``url`` to ``target`` (default: beside it); return the copy's path.

    For PostgreSQL, raise ``DatabaseError`` with the ``pg_dump`` command to run instead.
    """
    database = _sqlite_file(url)
    if database is None:
        raise DatabaseError(
            "mailout backs up SQLite only; for PostgreSQL run "
            f"`{pg_dump_command(url, target)}` (it asks for the password, or reads PGPASSWORD or ~/.pgpass)"
        )
    if not database.is_file():
        raise DatabaseError(f"no database at {database}: run `mailout db upgrade` to create it")
    if target is None:
        target = default_target(database)
    if not target.parent.is_dir():
        raise DatabaseError(f"cannot back up to {target}: no folder {target.parent}")
    if target.exists() and not force:
        raise DatabaseError(f"{target} exists: name another file, or add --force to replace it")
    if target.exists() and target.resolve() == database.resolve():
        raise DatabaseError(f"{target} is the database itself: name another file")
    _copy(database, target, force=force)
    return target


def backup_before_upgrade(url: str, *, sqlite_synchronous: str = Database.sqlite_synchronous) -> Path | None:
    """Back up a SQLite database that has an upgrade pending; return where, or None if none was needed.

    A new or empty database, one already at the newest schema, and a PostgreSQL
    database (whose upgrade is one transaction) are left alone.
    """
    database = _sqlite_file(url)
    if database is None or not database.is_file():
        return None
    engine = make_engine(url, sqlite_synchronous=sqlite_synchronous)
    try:
        revision = current_revision(engine)
    except SQLAlchemyDatabaseError:
        return None  # not a database: the upgrade that follows says so
    finally:
        engine.dispose()
    if revision is None or revision == head_revision():
        return None
    return backup(url)


def default_target(database: Path, now: dt.datetime | None = None) -> Path:
    """Return a free name beside ``database``: ``mailout.backup-20261125T101500Z.db``."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    suffix = database.suffix or ".db"
    target = database.with_name(f"{database.stem}.backup-{stamp}{suffix}")
    n = 1
    while target.exists():
        n += 1
        target = database.with_name(f"{database.stem}.backup-{stamp}-{n}{suffix}")
    return target


def pg_dump_command(url: str, target: Path | None = None) -> str:
    """Return the ``pg_dump`` command line that backs up the PostgreSQL database at ``url``, without its password."""
    address = make_url(url)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    file = target or Path(f"{address.database or 'mailout'}.backup-{stamp}.dump")
    # libpq's own URL: no "+psycopg", and never the password.
    # (URL.set() takes None as "unchanged": the named tuple's _replace() removes it.)
    plain = address._replace(drivername="postgresql", password=None)
    conninfo = plain.render_as_string(hide_password=False)
    return shlex.join(["pg_dump", "--format=custom", f"--file={file}", f"--dbname={conninfo}"])


def _sqlite_file(url: str) -> Path | None:
    """Return the file of a SQLite URL, or None for another database."""
    try:
        address = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"not a database URL: {url!r}: {exc}") from None
    if address.get_backend_name() != "sqlite":
        return None
    name = address.database or ""
    if name in ("", ":memory:") or name.startswith("file:") or address.query.get("mode") == "memory":
        raise DatabaseError("an in-memory SQLite database cannot be backed up")
    return Path(name)


def _copy(database: Path, target: Path, *, force: bool) -> None:
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        source = sqlite3.connect(
            f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            copy = sqlite3.connect(partial)
            try:
                # pages=-1: the whole database in one step, hence from one snapshot. In steps,
                # every write of another process would start the copy again.
                source.backup(copy, pages=-1)
                # One self-contained file, whatever mode the database is in.
                copy.execute("PRAGMA journal_mode=DELETE")
                verdict = copy.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                copy.close()
        finally:
            source.close()
        if verdict != "ok":
            raise DatabaseError(f"the backup of {database} does not pass SQLite's check: {verdict}")
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        _place(partial, target, force=force)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot back up {database}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)


def _place(partial: Path, target: Path, *, force: bool) -> None:
    """Move the finished copy to ``target``, replacing a file there only if ``force``."""
    if force:
        os.replace(partial, target)
        return
    try:
        # A hard link never replaces a file, even one that appeared since the first check.
        os.link(partial, target)
    except FileExistsError:
        raise DatabaseError(f"{target} exists: name another file, or add --force to replace it") from None
    except OSError:
        # A file system without hard links.
        if target.exists():
            raise DatabaseError(f"{target} exists: name another file, or add --force to replace it") from None
        os.replace(partial, target)
