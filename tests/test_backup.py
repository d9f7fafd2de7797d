"""`mailout db backup` and the backup `db upgrade` takes: real SQLite files, real concurrent writers."""

from __future__ import annotations

import re
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailout.cli import cli
from mailout.db import head_revision, upgrade
from mailout.models import EventKind, Source, SubscriberStatus

STAMPED = re.compile(r"backed up to (.*mailout\.backup-\d{8}T\d{6}Z(?:-\d+)?\.db)$", re.M)


def mailout(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def add_people(path: Path, start: int, count: int) -> None:
    """Add ``count`` subscribers, each with their consent event, in one transaction."""
    with sqlite3.connect(path, isolation_level=None, timeout=30) as raw:
        raw.execute("BEGIN IMMEDIATE")
        write_people(raw, start, count)
        raw.execute("COMMIT")
    raw.close()


def write_people(raw: sqlite3.Connection, start: int, count: int) -> None:
    for n in range(start, start + count):
        email = f"person{n}@example.org"
        cursor = raw.execute(
            "INSERT INTO subscribers (email, email_key, name, organisation, language, status, created_at, updated_at)"
            " VALUES (?, ?, ?, 'Efus', 'fr', ?, '2026-01-05 10:00:00.000000', '2026-01-05 10:00:00.000000')",
            (email, email, f"Zoë {n} " + "x" * 200, SubscriberStatus.SUBSCRIBED.value),
        )
        raw.execute(
            "INSERT INTO consent_events (subscriber_id, list_id, kind, source, detail, created_at)"
            " VALUES (?, NULL, ?, ?, ?, '2026-01-05 10:00:00.000000')",
            (
                cursor.lastrowid,
                EventKind.SUBSCRIBED.value,
                Source.IMPORT.value,
                f"subscribers/members.csv:{n}",
            ),
        )


def counts(path: Path) -> tuple[str, int, int]:
    """Return what SQLite's integrity check says of ``path``, and its subscribers and consent events."""
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as raw:
        verdict = raw.execute("PRAGMA integrity_check").fetchone()[0]
        people = raw.execute("SELECT count(*) FROM subscribers").fetchone()[0]
        events = raw.execute("SELECT count(*) FROM consent_events").fetchone()[0]
    raw.close()
    return verdict, people, events


@pytest.fixture
def database(workspace: Path) -> Path:
    """The workspace's SQLite database, at the newest schema, with 2,000 subscribers."""
    path = workspace / "mailout.db"
    upgrade(f"sqlite:///{path}")
    add_people(path, 0, 2000)
    return path


def test_backup_while_a_write_transaction_is_open(database: Path, workspace: Path) -> None:
    writer = sqlite3.connect(database, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        write_people(writer, 5000, 100)
        result = mailout("db", "backup", "copy.db")
        assert result.exit_code == 0, result.output
        assert "backed up to copy.db" in result.output
        assert counts(workspace / "copy.db") == ("ok", 2000, 2000), "what was committed, and only that"
        writer.execute("COMMIT")
    finally:
        writer.close()
    assert counts(database) == ("ok", 2100, 2100)


def test_backup_while_rows_are_being_inserted(database: Path, workspace: Path) -> None:
    """Each backup is one consistent moment: every subscriber there has their consent event."""
    stop = threading.Event()
    written = [2000]

    def keep_writing() -> None:
        while not stop.is_set():
            add_people(database, written[0], 5)
            written[0] += 5

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        seen = []
        for n in range(4):
            result = mailout("db", "backup", f"copy{n}.db")
            assert result.exit_code == 0, result.output
            verdict, people, events = counts(workspace / f"copy{n}.db")
            assert verdict == "ok"
            assert people == events, "a transaction is in a backup whole or not at all"
            seen.append(people)
    finally:
        stop.set()
        writer.join()
    assert seen == sorted(seen) and seen[0] >= 2000
    assert seen[-1] > 2000, "the writer was writing during the backups"
    assert list(workspace.glob(".*partial")) == [], "no partial file is left behind"
    with sqlite3.connect(workspace / "copy3.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete", "one self-contained file"
    raw.close()


def test_default_name_beside_the_database_and_never_overwritten(database: Path, workspace: Path) -> None:
    first = mailout("db", "backup")
    assert first.exit_code == 0, first.output
    found = STAMPED.search(first.output)
    assert found, first.output
    made = Path(found.group(1))
    assert made.parent == workspace and made.is_file()
    assert counts(made) == ("ok", 2000, 2000)
    second = mailout("db", "backup")
    assert second.exit_code == 0
    again = STAMPED.search(second.output)
    assert again and Path(again.group(1)) != made, "a second backup in the same second has its own name"

    (workspace / "keep.db").write_bytes(b"precious")
    refused = mailout("db", "backup", "keep.db")
    assert refused.exit_code == 1
    assert "keep.db exists: name another file, or add --force" in refused.output
    assert "Traceback" not in refused.output
    assert (workspace / "keep.db").read_bytes() == b"precious"
    replaced = mailout("db", "backup", "keep.db", "--force")
    assert replaced.exit_code == 0, replaced.output
    assert counts(workspace / "keep.db") == ("ok", 2000, 2000)


def test_restore_as_documented(database: Path, workspace: Path) -> None:
    assert mailout("db", "backup", "saved.db").exit_code == 0
    # Rows written after the backup, still in the -wal file (as after a crash).
    keep_open = sqlite3.connect(database, isolation_level=None)
    keep_open.execute("PRAGMA wal_autocheckpoint=0")
    write_people(keep_open, 9000, 10)
    assert Path(f"{database}-wal").stat().st_size > 0
    replaced = workspace / "replaced"
    replaced.mkdir()
    for name in ("mailout.db", "mailout.db-wal", "mailout.db-shm"):
        if (workspace / name).exists():
            shutil.move(workspace / name, replaced / name)
    keep_open.close()
    shutil.copyfile(workspace / "saved.db", database)
    result = mailout("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    assert counts(database) == ("ok", 2000, 2000)


def test_postgresql_is_told_to_use_pg_dump(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILOUT_DATABASE_URL", "postgresql+psycopg://mailout:s3cret@db.example.org:5433/news")
    result = mailout("db", "backup", "news.dump")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1
    assert (
        "pg_dump --format=custom --file=news.dump --dbname=postgresql://mailout@db.example.org:5433/news"
        in line
    )
    assert "s3cret" not in result.output, "the password is never printed"
    assert "Traceback" not in result.output


def test_missing_database_and_folder(workspace: Path) -> None:
    result = mailout("db", "backup")
    assert result.exit_code == 1
    assert "no database at" in result.output and "run `mailout db upgrade`" in result.output
    upgrade(f"sqlite:///{workspace / 'mailout.db'}")
    result = mailout("db", "backup", "no-such-folder/copy.db")
    assert result.exit_code == 1
    assert "no folder no-such-folder" in result.output


def test_upgrade_backs_up_first_when_there_is_an_upgrade_to_make(workspace: Path) -> None:
    path = workspace / "mailout.db"
    created = mailout("db", "upgrade")
    assert created.exit_code == 0, created.output
    assert "backed up" not in created.output, "a new database needs no backup"
    again = mailout("db", "upgrade")
    assert "backed up" not in again.output and "up to date" in again.output
    assert sorted(p.name for p in workspace.glob("mailout.backup-*")) == []

    path.unlink()
    upgrade(f"sqlite:///{path}", "0004")
    with sqlite3.connect(path) as raw:
        raw.execute(
            "INSERT INTO subscribers (email, email_key, name, organisation, language, status, created_at, updated_at)"
            " VALUES ('ana@example.org', 'ana@example.org', 'Ana', '', 'pt', ?,"
            " '2026-01-05 10:00:00.000000', '2026-01-05 10:00:00.000000')",
            (SubscriberStatus.SUBSCRIBED.value,),
        )
    raw.close()
    result = mailout("db", "upgrade")
    assert result.exit_code == 0, result.output
    found = STAMPED.search(result.output)
    assert found, result.output
    assert result.output.index("backed up") < result.output.index(
        f"upgraded from schema 0004 to {head_revision()}"
    )
    with sqlite3.connect(found.group(1)) as raw:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0004"
        assert raw.execute("SELECT email FROM subscribers").fetchall() == [("ana@example.org",)]
    raw.close()
