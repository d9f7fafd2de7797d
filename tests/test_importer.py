"""The importer's plain SQL on SQLite and PostgreSQL: what it stores, and other processes at the same time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from mailout import importer
from mailout import subscribers as people
from mailout.config import ListSettings
from mailout.db import transaction
from mailout.importer import import_file
from mailout.models import (
    ConsentEvent,
    Source,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
)

MEMBERS = ListSettings("members", "member", "Members")
PUBLIC = ListSettings("public", "public", "Public")


def write_csv(path: Path, header: str, lines: list[str]) -> Path:
    path.write_text(header + "\n" + "".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def how_many(engine: Engine, model: type, *where: Any) -> int:
    with transaction(engine) as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_imported_timestamps_read_back_like_those_the_orm_writes(engine: Engine, tmp_path: Path) -> None:
    with transaction(engine) as session:
        people.add(session, people.ensure_list(session, MEMBERS), "orm@example.org")
    time.sleep(0.01)
    import_file(engine, write_csv(tmp_path / "m.csv", "email", ["imported@example.org"]), MEMBERS)
    with transaction(engine) as session:
        orm = people.find(session, "orm@example.org")
        imported = people.find(session, "imported@example.org")
        assert type(imported.created_at) is type(orm.created_at)
        assert imported.created_at.tzinfo == orm.created_at.tzinfo
        assert orm.created_at < imported.created_at == imported.updated_at
        # Compared by the database, as stored: a later import sorts after the ORM's row.
        later = session.scalars(select(Subscriber.email).where(Subscriber.created_at > orm.created_at)).all()
        assert later == ["imported@example.org"]
        joined = [m.since for m in people.memberships(session, imported)]
        events = [e.created_at for e, _ in people.history(session, imported)]
        assert joined == events == [imported.created_at]
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT created_at FROM subscribers ORDER BY id")).scalars().all()
        stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
        assert len(stored) == 2 and all(stamp.fullmatch(value) for value in stored), stored


def test_a_bad_row_in_the_middle_of_a_chunk_is_reported_and_the_others_import(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mailout.importer.CHUNK", 5)
    lines = [f"p{n}@example.org,en" for n in range(9)]
    lines[2] = "p2@example.org,English"  # line 4, the third row of the first chunk
    lines[6] = "not an address,en"  # line 8, the second row of the second chunk
    report = import_file(engine, write_csv(tmp_path / "m.csv", "email,language", lines), MEMBERS)
    assert report.problems == [(4, report.problems[0][1]), (8, report.problems[1][1])]
    assert "language 'English'" in report.problems[0][1]
    assert (report.added, report.invalid) == (7, 2)
    assert (
        how_many(engine, Subscriber) == how_many(engine, Subscription) == how_many(engine, ConsentEvent) == 7
    )
    again = import_file(engine, write_csv(tmp_path / "m.csv", "email,language", lines), MEMBERS)
    assert (again.unchanged, again.invalid) == (7, 2)
    assert how_many(engine, ConsentEvent) == 7, "a re-import records no consent event"


def test_languages_are_stored_canonical_and_garbage_is_reported_with_its_line(
    engine: Engine, tmp_path: Path
) -> None:
    lines = [
        "a@example.org,fr",
        "b@example.org,FR",
        "c@example.org,fr_be",
        "d@example.org,fr-BE",
        "e@example.org,français",  # line 6
        "f@example.org,",
        "g@example.org,xx",  # line 8: no language CLDR knows
        "h@example.org, PT-br ",
    ]
    report = import_file(engine, write_csv(tmp_path / "m.csv", "email,language", lines), MEMBERS)
    assert [line for line, _ in report.problems] == [6, 8]
    assert "language 'français' is not a language tag" in report.problems[0][1]
    assert "language 'xx' is not a language tag" in report.problems[1][1]
    assert (report.added, report.invalid) == (6, 2), "the good rows import"
    with transaction(engine) as session:
        stored = dict(session.execute(select(Subscriber.email, Subscriber.language)).all())
    assert stored == {
        "a@example.org": "fr",
        "b@example.org": "fr",
        "c@example.org": "fr-BE",
        "d@example.org": "fr-BE",
        "f@example.org": "",
        "h@example.org": "pt-BR",
    }
    # Written again in another case: the same value, nothing to update.
    lines = ["a@example.org,Fr", "c@example.org,FR-be", "d@example.org,fr_BE"]
    again = import_file(engine, write_csv(tmp_path / "m.csv", "email,language", lines), MEMBERS)
    assert (again.unchanged, again.updated, again.invalid) == (3, 0, 0)


def test_an_error_in_a_later_chunk_leaves_the_database_as_it_was(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mailout.importer.CHUNK", 3)
    import_file(engine, write_csv(tmp_path / "a.csv", "email", ["old@example.org"]), MEMBERS)
    calls = []
    real = people.subscribe_many

    def failing(*args: Any) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the disk is full")
        return real(*args)

    monkeypatch.setattr(people, "subscribe_many", failing)
    path = write_csv(tmp_path / "b.csv", "email,name", [f"p{n}@example.org,P{n}" for n in range(7)])
    with pytest.raises(RuntimeError, match="disk is full"):
        import_file(engine, path, MEMBERS)
    assert how_many(engine, Subscriber) == how_many(engine, ConsentEvent) == 1, "the first chunk is gone too"
    monkeypatch.setattr(people, "subscribe_many", real)
    assert import_file(engine, path, MEMBERS).added == 7


def _overlapping(tmp_path: Path) -> tuple[Path, Path]:
    first = [f"p{n}@example.org,First {n}" for n in range(0, 6000)]
    # The shared rows in the other order and other case: each process meets them in turn.
    second = [f"P{n}@Example.org,Second {n}" for n in reversed(range(3000, 9000))]
    return write_csv(tmp_path / "a.csv", "email,name", first), write_csv(
        tmp_path / "b.csv", "email,name", second
    )


def test_two_processes_importing_overlapping_files_at_once(
    db_workspace: Path, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    files = _overlapping(tmp_path)
    env = {**os.environ, "MAILOUT_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "mailout", "subscribers", "import"]
    subprocess.run([*command, str(files[0]), "--list", "public"], env=env, check=True, capture_output=True)
    running = [
        subprocess.Popen(
            [*command, str(path), "--list", "members"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in files
    ]
    outputs = [process.communicate(timeout=300) for process in running]
    assert [process.returncode for process in running] == [0, 0], outputs
    added = [int(re.search(r"^  added +([\d,]+)$", out, re.M)[1].replace(",", "")) for out, _ in outputs]  # type: ignore[index]
    assert sum(added) == 9000, outputs
    assert how_many(engine, Subscriber) == 9000
    with transaction(engine) as session:
        keys = session.scalar(select(func.count(func.distinct(Subscriber.email_key))))
        members = people.ensure_list(session, MEMBERS)
    assert keys == 9000
    assert how_many(engine, Subscription, Subscription.list_id == members.id) == 9000
    assert how_many(engine, ConsentEvent, ConsentEvent.list_id == members.id) == 9000, "one event each"


def _in_another_thread(call: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


@pytest.mark.parametrize("moment", ["after the look-up", "after the subscriptions"])
def test_an_unsubscribe_at_the_same_time_as_an_import_wins(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    # Ana is on the public list only; the members' file adds her while she leaves everything.
    import_file(engine, write_csv(tmp_path / "p.csv", "email", ["ana@example.org"]), PUBLIC)
    import_file(engine, write_csv(tmp_path / "m.csv", "email", ["zoe@example.org"]), MEMBERS)

    def leave() -> None:
        with transaction(engine) as session:
            people.unsubscribe(session, people.find(session, "ana@example.org"), Source.ONE_CLICK)

    started: list[threading.Thread] = []
    errors: list[BaseException] = []

    def then_leave(real: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            if not started:
                thread, failed = _in_another_thread(leave)
                started.append(thread)
                errors.extend(failed)
                # Time to commit, or (SQLite, or PostgreSQL once the import holds Ana's
                # row) to wait for the import.
                thread.join(timeout=1)
            return result

        return step

    if moment == "after the look-up":
        monkeypatch.setattr(importer, "_stored", then_leave(importer._stored))
    else:
        monkeypatch.setattr(people, "subscribe_many", then_leave(people.subscribe_many))
    import_file(
        engine, write_csv(tmp_path / "m.csv", "email", ["ana@example.org", "zoe@example.org"]), MEMBERS
    )
    started[0].join(timeout=60)
    assert not started[0].is_alive() and not errors, errors
    with transaction(engine) as session:
        ana = people.find(session, "ana@example.org")
        assert ana.status is SubscriberStatus.UNSUBSCRIBED
        assert {m.list_name: m.status for m in people.memberships(session, ana)} in (
            {"public": "unsubscribed"},
            {"public": "unsubscribed", "members": "unsubscribed"},
        ), "no list may keep her subscribed"


def test_someone_added_by_another_process_during_an_import_is_added_once(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_file(engine, write_csv(tmp_path / "m.csv", "email", ["zoe@example.org"]), MEMBERS)

    def sign_up() -> None:
        with transaction(engine) as session:
            people.add(session, people.ensure_list(session, MEMBERS), "new@example.org", source=Source.SIGNUP)

    started: list[threading.Thread] = []
    errors: list[BaseException] = []
    real = importer._stored

    def stored_then_sign_up(*args: Any) -> Any:
        result = real(*args)
        thread, failed = _in_another_thread(sign_up)
        started.append(thread)
        errors.extend(failed)
        thread.join(timeout=1)  # PostgreSQL: committed by now; SQLite: waits for the import
        return result

    monkeypatch.setattr(importer, "_stored", stored_then_sign_up)
    report = import_file(
        engine,
        write_csv(tmp_path / "n.csv", "email,name", ["new@example.org,New", "zoe@example.org,"]),
        MEMBERS,
    )
    started[0].join(timeout=60)
    assert not started[0].is_alive() and not errors, errors
    assert report.added + report.unchanged == 2
    assert how_many(engine, Subscriber, Subscriber.email_key == "new@example.org") == 1
    with transaction(engine) as session:
        new = people.find(session, "new@example.org")
        assert [m.status for m in people.memberships(session, new)] == [SubscriptionStatus.SUBSCRIBED]
        assert len(people.history(session, new)) == 1, "one consent event, by whoever added her first"
