"""Subscribers on SQLite and PostgreSQL: import, sync, the everyday commands, the consent history."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, event, func, inspect, select

from mailout import subscribers as people
from mailout.cli import cli
from mailout.config import ListSettings
from mailout.db import transaction
from mailout.importer import import_file
from mailout.models import (
    ConsentEvent,
    EventKind,
    Source,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
)
from tests.conftest import REPO

MEMBERS = ListSettings("members", "member", "Members")
PUBLIC = ListSettings("public", "public", "Public")


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def state_of(engine: Engine) -> dict[str, tuple[str, str, str, str]]:
    """Every subscriber: email -> (name, organisation, language, status)."""
    with transaction(engine) as session:
        return {
            p.email: (p.name, p.organisation, p.language, str(p.status))
            for p in session.scalars(select(Subscriber))
        }


def count(engine: Engine, model: type) -> int:
    with transaction(engine) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


# --- normalisation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Ana.Silva@Example.ORG ", "Ana.Silva@example.org"),
        ("jo@Stadt-München.example", "jo@xn--stadt-mnchen-jlb.example"),
        ("x+tag@sub.example.net", "x+tag@sub.example.net"),
    ],
)
def test_addresses_are_normalised(raw: str, expected: str) -> None:
    assert people.normalise_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "no-at-sign.example.org", "two words@example.org", "a@b", "x@example.org\r\nBcc: y@example.org"],
)
def test_invalid_addresses_are_refused_with_a_reason(raw: str) -> None:
    with pytest.raises(people.InvalidSubscriber) as caught:
        people.normalise_email(raw)
    assert str(caught.value)


@pytest.mark.parametrize(
    ("name", "organisation", "language", "message"),
    [
        ("Eve\nBcc: x", "", "", "name contains a line break"),
        ("ok", "Org\rX", "", "organisation contains a line break"),
        ("x" * 201, "", "", "name is 201 characters long"),
        ("ok", "", "english please", "not a language tag"),
    ],
)
def test_fields_are_checked(name: str, organisation: str, language: str, message: str) -> None:
    with pytest.raises(people.InvalidSubscriber, match=message):
        people.clean_fields(name, organisation, language)


def test_the_longest_fields_accepted_are_those_the_database_stores(engine: Engine, tmp_path: Path) -> None:
    migrated = {c["name"]: c["type"] for c in inspect(engine).get_columns("subscribers")}
    assert {key: migrated[key].length for key in people.MAX_LENGTHS} == people.MAX_LENGTHS
    longest = ("山田太郎" * 50, "Câmara " * 28 + "Lisb", "sr-Latn-RS-12345")
    assert [len(value) for value in longest] == list(people.MAX_LENGTHS.values())
    path = write_csv(
        tmp_path / "m.csv", "email,name,organisation,language\nz@example.org,{},{},{}\n".format(*longest)
    )
    assert import_file(engine, path, MEMBERS).added == 1
    assert state_of(engine)["z@example.org"][:3] == longest
    for index, key in enumerate(people.MAX_LENGTHS):
        longer = [*longest]
        longer[index] += "x"
        with pytest.raises(people.InvalidSubscriber, match=f"{key} is .* at most {people.MAX_LENGTHS[key]}"):
            people.clean_fields(*longer)


@pytest.mark.parametrize("name", ["list", "export"])
def test_the_status_choices_are_every_subscriber_status(name: str) -> None:
    command = cli.commands["subscribers"].commands[name]  # type: ignore[attr-defined]
    option = next(p for p in command.params if p.name == "status")
    assert set(option.type.choices) == set(SubscriberStatus)


# --- import ------------------------------------------------------------------


def test_import_reports_every_row_and_normalises(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "members.csv",
        "email,name,organisation,language\n"
        "ana@example.org,Ana Silva,Câmara Municipal de Lisboa,pt\n"
        " ana@EXAMPLE.org ,,,\n"  # duplicate of line 2, differently spelt
        "not-an-address,Bad Row,,\n"
        "jo@Stadt-München.example,Jörg Müller,Stadt München,de\n"
        ",Empty,,\n"
        '"eve@example.org","Eve\nMultiline",,en\n'
        "zoe@example.org,Zoë,,fr\n",
    )
    report = import_file(engine, path, MEMBERS)
    assert (report.rows, report.added, report.duplicates, report.invalid) == (7, 3, 1, 3)
    assert added_up(report) == report.rows
    lines = dict(report.problems)
    assert set(lines) == {4, 6, 7}, "each invalid row is reported with the line it starts on"
    assert "invalid address 'not-an-address'" in lines[4]
    assert "empty address" in lines[6]
    assert "name contains a line break" in lines[7]
    stored = state_of(engine)
    assert set(stored) == {"ana@example.org", "jo@xn--stadt-mnchen-jlb.example", "zoe@example.org"}
    assert stored["jo@xn--stadt-mnchen-jlb.example"][:3] == ("Jörg Müller", "Stadt München", "de")
    with transaction(engine) as session:
        details = set(session.scalars(select(ConsentEvent.detail)))
    assert details == {f"{report.file}:2", f"{report.file}:5", f"{report.file}:9"}, (
        "line 9: after a two-line row"
    )


def test_reimport_is_unchanged_and_updates_only_what_changed(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", "email,name,language\na@example.org,A,en\nb@example.org,B,fr\n")
    import_file(engine, path, MEMBERS)
    again = import_file(engine, path, MEMBERS)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 2)
    write_csv(path, "email,name,language\na@example.org,A Changed,en\nb@example.org,,\n")
    changed = import_file(engine, path, MEMBERS)
    assert (changed.added, changed.updated, changed.unchanged) == (0, 1, 1)
    stored = state_of(engine)
    assert stored["a@example.org"][0] == "A Changed"
    assert stored["b@example.org"][0] == "B", "an empty cell never blanks a stored value"
    assert count(engine, ConsentEvent) == 2, "updates are not consent changes"


def test_duplicates_across_chunks_are_merged(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mailout.importer.CHUNK", 2)
    path = write_csv(
        tmp_path / "m.csv",
        "email,name,organisation\na@example.org,A,\nb@example.org,B,\nc@example.org,C,\na@EXAMPLE.org,,Org A\n",
    )
    report = import_file(engine, path, MEMBERS)
    assert (report.added, report.duplicates) == (3, 1)
    assert state_of(engine)["a@example.org"][:2] == ("A", "Org A")


def test_bom_semicolons_and_windows_1252(engine: Engine, tmp_path: Path) -> None:
    bom = write_csv(tmp_path / "bom.csv", "\ufeffE-mail,Name\nana@example.org,Ana Conceição\n")
    excel = write_csv(
        tmp_path / "excel.csv",
        "Email Address;Name;Organisation\r\nzoe@example.org;Zoë Müller;Mairie de Saint-Étienne\r\n",
        "cp1252",
    )
    first = import_file(engine, bom, MEMBERS)
    second = import_file(engine, excel, MEMBERS)
    assert first.added == second.added == 1
    assert second.format is not None and (second.format.encoding, second.format.delimiter) == ("cp1252", ";")
    stored = state_of(engine)
    assert stored["ana@example.org"][0] == "Ana Conceição"
    assert stored["zoe@example.org"][:2] == ("Zoë Müller", "Mairie de Saint-Étienne")


def test_unsubscribed_and_bounced_people_are_never_resubscribed(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "m.csv",
        "email\nleft@example.org\nbounced@example.org\nall@example.org\nstays@example.org\n",
    )
    import_file(engine, path, MEMBERS)
    import_file(engine, path, PUBLIC)
    with transaction(engine) as session:
        members = people.ensure_list(session, MEMBERS)
        people.unsubscribe(session, people.find(session, "left@example.org"), Source.LINK, lst=members)
        people.unsubscribe(session, people.find(session, "all@example.org"), Source.ONE_CLICK)
        people.find(session, "bounced@example.org").status = SubscriberStatus.BOUNCED
    again = import_file(engine, path, MEMBERS)
    assert (again.kept_out, again.unchanged, again.added) == (3, 1, 0)
    reasons = {email: reason for _, email, reason in again.kept_out_rows}
    assert "unsubscribed from 'members'" in reasons["left@example.org"]
    assert reasons["bounced@example.org"].startswith("bounced")
    # unsubscribed from members only: still on public, and a public import keeps them
    assert import_file(engine, path, PUBLIC).kept_out == 2
    with transaction(engine) as session:
        statuses = dict(
            session.execute(
                select(Subscriber.email, Subscription.status)
                .join(Subscription, Subscription.subscriber_id == Subscriber.id)
                .where(Subscription.list_id == people.ensure_list(session, MEMBERS).id)
            ).all()
        )
    assert statuses["left@example.org"] is SubscriptionStatus.UNSUBSCRIBED
    assert statuses["all@example.org"] is SubscriptionStatus.UNSUBSCRIBED
    with pytest.raises(people.InvalidSubscriber, match="resubscribe"), transaction(engine) as session:
        people.add(session, people.ensure_list(session, MEMBERS), "left@example.org")


def test_dry_run_reports_the_same_and_writes_nothing(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", "email,name\na@example.org,A\nbad,B\nb@example.org,B\n")
    dry = import_file(engine, path, MEMBERS, dry_run=True)
    assert count(engine, Subscriber) == 0 and count(engine, ConsentEvent) == 0
    real = import_file(engine, path, MEMBERS)
    assert (
        (dry.added, dry.invalid, dry.problems)
        == (real.added, real.invalid, real.problems)
        == (2, 1, dry.problems)
    )
    assert count(engine, Subscriber) == 2


def test_sync_reports_missing_and_removes_only_when_asked(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "members.csv", "email\na@example.org\nb@example.org\nc@example.org\n")
    import_file(engine, path, MEMBERS)
    write_csv(path, "email\na@example.org\n")
    report = import_file(engine, path, MEMBERS, report_missing=True)
    assert (report.missing, report.removed, report.missing_sample) == (
        2,
        0,
        ["b@example.org", "c@example.org"],
    )
    removed = import_file(engine, path, MEMBERS, remove_missing=True)
    assert (removed.missing, removed.removed) == (2, 2)
    with transaction(engine) as session:
        events = session.execute(
            select(ConsentEvent.kind, ConsentEvent.source, ConsentEvent.detail).where(
                ConsentEvent.source == Source.SYNC
            )
        ).all()
    assert sorted(events) == [(EventKind.UNSUBSCRIBED, Source.SYNC, f"not in {removed.file}")] * 2
    assert import_file(engine, path, MEMBERS, report_missing=True).missing == 0
    assert count(engine, Subscriber) == 3, "sync never deletes anyone"


def test_consent_history_explains_every_change(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "members.csv", "email\nana@example.org\n")
    report = import_file(engine, path, MEMBERS)
    with transaction(engine) as session:
        members = people.ensure_list(session, MEMBERS)
        ana = people.find(session, "ana@example.org")
        people.unsubscribe(session, ana, Source.ONE_CLICK, lst=members, detail="issue 2019-01")
        with pytest.raises(people.InvalidSubscriber, match="needs a reason"):
            people.resubscribe(session, ana, members, reason=" ")
        people.resubscribe(session, ana, members, reason="asked at the General Assembly")
        steps = [(e.kind, e.source, e.detail, name) for e, name in people.history(session, ana)]
    assert steps == [
        (EventKind.SUBSCRIBED, Source.IMPORT, f"{report.file}:2", "members"),
        (EventKind.UNSUBSCRIBED, Source.ONE_CLICK, "issue 2019-01", "members"),
        (EventKind.RESUBSCRIBED, Source.MANUAL, "asked at the General Assembly", "members"),
    ]


def test_export_neutralises_formulas_and_round_trips(
    engine: Engine, tmp_path: Path, database_url: str
) -> None:
    tricky = ["=1+1", "+33 1 23", "-minus", "@at", "'quoted", 'Zoë, "the" Müller']
    lines = "".join(
        f'p{n}@example.org,"{name.replace(chr(34), chr(34) * 2)}",Org {n},fr\n'
        for n, name in enumerate(tricky)
    )
    import_file(engine, write_csv(tmp_path / "in.csv", "email,name,organisation,language\n" + lines), MEMBERS)
    out = tmp_path / "export.csv"
    runner_env = {"MAILOUT_DATABASE_URL": database_url}
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "mailout.toml").write_text("", encoding="utf-8")
    result = CliRunner(env=runner_env).invoke(
        cli,
        ["-C", str(tmp_path / "ws"), "subscribers", "export", "--list", "members", "-o", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert "'=1+1" in text and "'+33 1 23" in text and "'-minus" in text and "'@at" in text
    before = state_of(engine)
    with transaction(engine) as session:
        session.execute(Subscriber.__table__.delete())
    assert import_file(engine, out, MEMBERS).added == len(tricky)
    assert state_of(engine) == before


def test_interrupted_import_leaves_the_database_as_it_was(
    db_workspace: Path, database_url: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.csv"
    with big.open("w", encoding="utf-8") as handle:
        handle.write("email,name\n")
        for n in range(60_000):
            handle.write(f"person{n}@example.org,Person {n}\n")
    before = subprocess.run(
        [sys.executable, "-m", "mailout", "subscribers", "count"], capture_output=True, text=True, check=True
    ).stdout
    with subprocess.Popen(
        [sys.executable, "-m", "mailout", "subscribers", "import", str(big), "--list", "members"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MAILOUT_DATABASE_URL": database_url},
    ) as process:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert "rows read" in first, first
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    time.sleep(0.2)
    after = subprocess.run(
        [sys.executable, "-m", "mailout", "subscribers", "count"], capture_output=True, text=True, check=True
    ).stdout
    assert after == before, "a killed import must leave nothing behind"
    done = subprocess.run(
        [sys.executable, "-m", "mailout", "subscribers", "import", str(big), "--list", "members"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^  added +60,000$", done.stdout, re.M), done.stdout


# --- the command line --------------------------------------------------------


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_sync_of_the_sample_files_prints_a_clear_report(db_workspace: Path) -> None:
    for name in ("members.csv", "public.csv"):
        (db_workspace / "subscribers" / name).write_bytes((REPO / "subscribers" / name).read_bytes())
    code, out = run("subscribers", "sync")
    assert code == 0, out
    for label in ("added", "updated", "unchanged", "kept out", "duplicates", "invalid"):
        assert label in out
    assert "subscribers/members.csv" in out and "subscribers/public.csv" in out
    assert "into list 'members'" in out and "into list 'public'" in out
    assert ":" in out and "invalid address" in out, "bad sample rows are reported with their line"
    code, again = run("subscribers", "sync")
    assert code == 0 and re.search(r"^  added +0$", again, re.M)
    code, counted = run("subscribers", "count")
    assert code == 0 and "members" in counted and "public" in counted


def test_everyday_commands(db_workspace: Path) -> None:
    assert run("subscribers", "add", "ana@Example.ORG", "--list", "public", "--name", "Ana Silva")[0] == 0
    code, out = run("subscribers", "add", "ana@example.org", "--list", "public")
    assert code == 0 and "already on 'public'" in out
    code, out = run("subscribers", "list", "--list", "public")
    assert out.startswith("ana@example.org\tsubscribed\tAna Silva")
    code, out = run("subscribers", "unsubscribe", "ana@example.org", "--all", "--reason", "asked by email")
    assert code == 0 and "unsubscribed from every list" in out
    code, out = run("subscribers", "add", "ana@example.org", "--list", "public")
    assert code == 1 and "resubscribe" in out
    code, out = run(
        "subscribers", "resubscribe", "ana@example.org", "--list", "public", "--reason", "asked again"
    )
    assert code == 2 and "--confirm-consent" in out
    code, out = run(
        "subscribers",
        "resubscribe",
        "ana@example.org",
        "--list",
        "public",
        "--reason",
        "asked again",
        "--confirm-consent",
    )
    assert code == 0
    code, out = run("subscribers", "show", "ana@example.org")
    assert code == 0
    history = out.split("history:")[1]
    assert history.index("subscribed ") < history.index("unsubscribed") < history.index("resubscribed")
    assert "asked by email" in history and "asked again" in history and "by manual" in history
    code, out = run("subscribers", "show", "nobody@example.org")
    assert code == 1 and "no subscriber" in out and "Traceback" not in out
    code, out = run("subscribers", "add", "x@example.org", "--list", "nosuchlist")
    assert code == 1 and "no list 'nosuchlist'" in out


def test_commands_say_to_upgrade_a_new_database(workspace: Path) -> None:
    code, out = run("subscribers", "count")
    assert code == 1 and "run `mailout db upgrade`" in out
    code, out = run("db", "upgrade")
    assert code == 0 and "created" in out
    code, out = run("db", "upgrade")
    assert code == 0 and "up to date" in out
    code, out = run("subscribers", "count")
    assert code == 0


def test_import_of_a_missing_or_unusable_file_is_a_clean_error(db_workspace: Path, tmp_path: Path) -> None:
    code, out = run("subscribers", "import", str(tmp_path / "none.csv"), "--list", "members")
    assert code == 1 and "none.csv" in out and "Traceback" not in out
    write_csv(tmp_path / "nomail.csv", "name,organisation\nAna,X\n")
    code, out = run("subscribers", "import", str(tmp_path / "nomail.csv"), "--list", "members")
    assert code == 1 and "email" in out


def added_up(report: object) -> int:
    r = report
    return r.added + r.updated + r.unchanged + r.kept_out + r.duplicates + r.invalid  # type: ignore[attr-defined]


def test_a_chunk_of_only_duplicates_imports(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mailout.importer.CHUNK", 2)
    path = write_csv(
        tmp_path / "m.csv", "email\na@example.org\nb@example.org\nA@example.org\nb@EXAMPLE.org\n"
    )
    report = import_file(engine, path, MEMBERS)
    assert (report.added, report.duplicates) == (2, 2)
    assert added_up(report) == report.rows == 4


def test_each_chunk_is_written_with_the_same_few_statements(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every chunk holds each kind of row: a new person, someone on another list who
    # joins this one (and changes a name), a member whose name changed.
    monkeypatch.setattr("mailout.importer.CHUNK", 3)
    for n in range(4):
        import_file(engine, write_csv(tmp_path / "p.csv", f"email,name\npub{n}@example.org,P\n"), PUBLIC)
        import_file(engine, write_csv(tmp_path / "m.csv", f"email,name\nmem{n}@example.org,M\n"), MEMBERS)

    def statements(chunks: range) -> int:
        rows = "".join(
            f"new{n}@example.org,N\npub{n}@example.org,P2\nmem{n}@example.org,M2\n" for n in chunks
        )
        seen: list[str] = []

        def listener(conn: object, cursor: object, statement: str, *rest: object) -> None:
            seen.append(statement)

        event.listen(engine, "before_cursor_execute", listener)
        try:
            report = import_file(engine, write_csv(tmp_path / "x.csv", f"email,name\n{rows}"), MEMBERS)
        finally:
            event.remove(engine, "before_cursor_execute", listener)
        assert (report.added, report.updated) == (2 * len(chunks), len(chunks))
        return len(seen)

    # Look up what the file held and who is stored; remember the addresses seen; insert
    # people (SQLite: then read back their ids), subscriptions and consent events; update
    # the changed names. PostgreSQL copies the addresses seen and the new people (COPY,
    # which these events do not see; the people's temporary table made if need be and
    # emptied first) and adds subscriptions and events in one statement.
    per_chunk = 8 if engine.dialect.name == "sqlite" else 7
    assert statements(range(1, 4)) - statements(range(0, 1)) == 2 * per_chunk


def test_the_case_of_an_address_never_makes_a_second_person(engine: Engine, tmp_path: Path) -> None:
    import_file(engine, write_csv(tmp_path / "a.csv", "email\nana@example.org\n"), MEMBERS)
    with transaction(engine) as session:
        people.unsubscribe(session, people.find(session, "ANA@Example.org"), Source.LINK)
    again = import_file(engine, write_csv(tmp_path / "b.csv", "email\nAna@EXAMPLE.ORG\n"), MEMBERS)
    assert (again.added, again.kept_out) == (0, 1)
    assert count(engine, Subscriber) == 1


def test_sync_never_removes_on_the_word_of_a_file_with_bad_rows(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "members.csv", "email,language\na@example.org,en\nbob@example.org,en\nc@example.org,en\n"
    )
    import_file(engine, path, MEMBERS)
    write_csv(path, "email,language\na@example.org,en\nbob@example.org,English\n")
    report = import_file(engine, path, MEMBERS, remove_missing=True)
    assert report.invalid == 1 and report.removal_refused
    assert report.missing_sample == ["c@example.org"], "bob is in the file, only his language is wrong"
    assert report.removed == 0
    with transaction(engine) as session:
        assert {m.status for m in people.memberships(session, people.find(session, "c@example.org"))} == {
            "subscribed"
        }


def test_a_bounce_ends_every_list_and_resubscribing_brings_back_one(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", "email\nana@example.org\n")
    import_file(engine, path, MEMBERS)
    import_file(engine, path, PUBLIC)
    with transaction(engine) as session:
        ana = people.find(session, "ana@example.org")
        people.mark_bounced(session.connection(), ana.id, "550 5.1.1 no such mailbox")
    with transaction(engine) as session:
        ana = people.find(session, "ana@example.org")
        assert ana.status is SubscriberStatus.BOUNCED
        assert {m.status for m in people.memberships(session, ana)} == {"unsubscribed"}
        people.resubscribe(session, ana, people.ensure_list(session, PUBLIC), reason="asked for public only")
    with transaction(engine) as session:
        ana = people.find(session, "ana@example.org")
        assert {m.list_name: m.status for m in people.memberships(session, ana)} == {
            "members": "unsubscribed",
            "public": "subscribed",
        }
        with pytest.raises(people.InvalidSubscriber, match="already"):
            people.resubscribe(session, ana, people.ensure_list(session, PUBLIC), reason="again")


def test_every_kind_of_bad_row_is_reported_with_its_line(engine: Engine, tmp_path: Path) -> None:
    long_name = "N" * 201
    path = tmp_path / "bad.csv"
    path.write_bytes(
        (
            "email,name,organisation,language\n"
            "ok@example.org,Ok,,en\n"  # 2
            "lang@example.org,L,,English\n"  # 3
            f"long@example.org,{long_name},,en\n"  # 4
            "nul@example.org,Nu\0l,,en\n"  # 5
            'lf@example.org,C,"Org\nX",en\n'  # 6-7: a line break inside quotes
            "@example.org,No local part,,en\n"  # 8
            "good@example.org,Good,,fr\n"  # 9
        ).encode()
    )
    report = import_file(engine, path, MEMBERS)
    reasons = dict(report.problems)
    assert set(reasons) == {3, 4, 5, 6, 8}
    assert "not a language tag" in reasons[3]
    assert "name is 201 characters long" in reasons[4]
    assert "NUL" in reasons[5]
    assert "organisation contains a line break" in reasons[6]
    assert "invalid address" in reasons[8]
    assert report.added == 2 and added_up(report) == report.rows == 7


# What a terminal obeys rather than shows: C0 and C1 controls, line separators, bidi controls.
TERMINAL_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def test_values_from_a_file_cannot_drive_the_terminal(db_workspace: Path, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "hostile.csv",
        "email,name,organisation\n"
        'eve@example.org,"Eve\x1b[2J\x1b]0;pwned\x07","Bank\x08\x08\x08\x08Evil\x9b31m"\n'
        'rtl@example.org,"Mallory \u202egro.elpmaxe@ \u2066x\u2069","Acme\x1b[8m\x85hidden"\n'
        '"bad\x1b[31m@@example.org",Nobody,\n',
    )
    code, imported = run("subscribers", "import", str(path), "--list", "public")
    assert code == 0, imported
    assert "added" in imported and "bad\\x1b[31m@@example.org" in imported
    code, listed = run("subscribers", "list")
    assert code == 0
    rows = [line.split("\t") for line in listed.splitlines()]
    assert [row[0] for row in rows] == ["eve@example.org", "rtl@example.org"]
    assert rows[0][2:4] == ["Eve\\x1b[2J\\x1b]0;pwned\\x07", "Bank\\x08\\x08\\x08\\x08Evil\\x9b31m"]
    assert rows[1][2:4] == ["Mallory \\u202egro.elpmaxe@ \\u2066x\\u2069", "Acme\\x1b[8m\\x85hidden"]
    outputs = [imported, listed]
    for address in ("eve@example.org", "rtl@example.org"):
        code, shown = run("subscribers", "show", address)
        assert code == 0 and ("Eve\\x1b[2J" in shown or "Mallory \\u202e" in shown)
        outputs.append(shown)
    code, error = run("subscribers", "show", "x\x1b[2J@example.org")
    assert code == 1 and "x\\x1b[2J@example.org" in error
    outputs.append(error)
    for output in outputs:
        assert not TERMINAL_CONTROL.search(output), repr(output)


@pytest.mark.parametrize("command", ["list", "export"])
def test_a_reader_that_leaves_early_ends_the_command_quietly(
    db_workspace: Path, tmp_path: Path, command: str
) -> None:
    rows = "".join(f"person{n}@example.org,Person number {n},Organisation {n}\n" for n in range(5000))
    path = write_csv(tmp_path / "many.csv", "email,name,organisation\n" + rows)
    assert run("subscribers", "import", str(path), "--list", "public")[0] == 0
    # More than a pipe holds (64 KiB on Linux), so the command is still writing when `head` leaves.
    with subprocess.Popen(
        [sys.executable, "-m", "mailout", "subscribers", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()
        error = process.stderr.read()
        status = process.wait(timeout=60)
    assert first.startswith((b"email,", b"person"))
    assert error == b""
    assert status == 141, "the status a shell reports for `yes | head`"
