"""A person's data: export, erasure that leaves no trace in a dump, and the keep-out that follows it."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from mailout import outbox, privacy, signup, unsubmail
from mailout.cli import cli
from mailout.config import load_settings
from mailout.db import make_engine, transaction, upgrade
from mailout.models import Erasure, MailRequest, ReportRecipient, Subscriber, SubscriberStatus
from mailout.tokens import Signer
from tests.conftest import SECRET_KEY, edit_config
from tests.postgres import find_pg_bin
from tests.smtpserver import SMTPServer
from tests.test_bounces import Sent, dsn, maildir, send_dispatch
from tests.test_bounces import run as read_reports
from tests.test_migrations import at, contents, fill, rows
from tests.test_sending import add_subscribers, assert_adds_up, people, report_of, start_send, statuses

#: The person: stored with the domain in IDNA; free text names them in every spelling.
ADDRESS = "Ana.Secret@xn--exmple-cua.org"
UNICODE = "ana.secret@exämple.org"
NAME = "Ana Sécrète"
KEY = ADDRESS.lower()
PID = 100  # their subscriber id
#: What no dump may hold once they are erased (compared lower-cased).
TRACES = ("ana.secret", "sécrète", "secrete")

OLD_KEY = "an-older-key-of-the-team-0123456789"


def signer(*keys: str) -> Signer:
    return Signer(list(keys) or [SECRET_KEY])


def with_person(data: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Add the person to ``rows()``: a row in every table that can hold them."""
    data["subscribers"].append(
        {**data["subscribers"][0], "id": PID, "email": ADDRESS, "email_key": KEY, "name": NAME,
         "organisation": "Ville de Secret", "status": "subscribed"}
    )  # fmt: skip
    for n, list_id in enumerate((1, 2)):
        data["subscriptions"].append(
            {**data["subscriptions"][0], "id": 900 + n, "subscriber_id": PID, "list_id": list_id,
             "status": "subscribed"}
        )  # fmt: skip
    event = data["consent_events"][0]
    data["consent_events"] += [
        {**event, "id": 900, "subscriber_id": PID, "list_id": 1, "detail": "subscribers/members.csv:77"},
        {  # a confirmed sign-up, with its proof
            **event, "id": 901, "subscriber_id": PID, "list_id": 2, "source": "sign-up",
            "detail": f"form of {NAME}", "requested_at": at(8000), "created_at": at(8001),
            "page": f"/subscribe/public?from={UNICODE}", "consent_sha256": "e3" * 32, "ip": "203.0.113.9",
        },
        {**event, "id": 902, "subscriber_id": PID, "list_id": 1, "kind": "resubscribed", "source": "manual",
         "detail": f"asked by {NAME.upper()} <{ADDRESS.upper()}>"},
    ]  # fmt: skip
    delivery = data["deliveries"][0]
    data["deliveries"] += [
        {**delivery, "id": 900, "dispatch_id": 1, "subscriber_id": PID, "email": ADDRESS, "name": NAME,
         "status": "sent", "reply": f"250 2.1.5 <{UNICODE.upper()}> ok, {NAME}"},
        {**delivery, "id": 901, "dispatch_id": 2, "subscriber_id": PID, "email": ADDRESS, "name": NAME,
         "status": "queued", "reply": "", "worker": ""},
    ]  # fmt: skip
    data["handled_reports"].append(
        {**data["handled_reports"][0], "id": 3, "message_id": "<dsn.3@mx.example>", "sha256": "ef" * 32,
         "summary": f"dsn: 1 bounced ({ADDRESS})"}
    )  # fmt: skip
    data["report_recipients"].append(
        {**data["report_recipients"][0], "id": 2, "report_id": 3, "subscriber_id": PID, "delivery_id": 900,
         "address": UNICODE, "diagnostic": f"550 5.1.1 <mailto:{ADDRESS}>: user unknown"}
    )  # fmt: skip
    data["mail_requests"].append(
        {"key": "<ana.1@mail.example>", "sender": ADDRESS.upper(), "outcome": "unsubscribed",
         "detail": f"Subject: unsubscribe {NAME}", "created_at": at(9600)}
    )  # fmt: skip
    data["signups"].append(
        {**data["signups"][0], "id": 2, "email": ADDRESS, "email_key": KEY, "name": NAME, "nonce": 77}
    )
    return data


def filled(url: str) -> sa.Engine:
    engine = make_engine(url)
    with engine.begin() as connection:
        fill(connection, with_person(rows()))
    return engine


def is_theirs(table: str, row: dict[str, Any]) -> bool:
    """Whether ``row`` is one of the rows the erasure may change (the person's, or naming them)."""
    if table == "subscribers":
        return bool(row["id"] == PID)
    if table in ("subscriptions", "consent_events", "deliveries"):
        return bool(row["subscriber_id"] == PID)
    return (table, row.get("id", row.get("key"))) in {
        ("handled_reports", 3), ("report_recipients", 2), ("mail_requests", "<ana.1@mail.example>"),
        ("signups", 2),
    }  # fmt: skip


def dump(engine: sa.Engine) -> str:
    """Return a full SQL dump of the database, as its own tools write it."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        with sqlite3.connect(str(url.database)) as connection:
            return "\n".join(connection.iterdump())
    bin_dir = find_pg_bin()
    assert bin_dir is not None
    result = subprocess.run(
        [str(bin_dir / "pg_dump"), "-h", str(url.host), "-p", str(url.port), "-U", str(url.username),
         "--no-owner", str(url.database)],
        capture_output=True, text=True, check=True, env={**os.environ, "PGCLIENTENCODING": "UTF8"},
    )  # fmt: skip
    return result.stdout


def raw_sqlite_bytes(engine: sa.Engine) -> bytes:
    """Return the bytes of the SQLite file (and its WAL) after VACUUM and a checkpoint."""
    path = Path(str(engine.url.database))
    engine.dispose()
    with sqlite3.connect(path) as connection:
        connection.execute("VACUUM")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def traces(text: str) -> list[str]:
    lowered = text.lower()
    return [trace for trace in TRACES if trace in lowered]


# --- erasure, in the database ---------------------------------------------------------------


def test_erasure_leaves_no_trace_in_a_dump_and_changes_nobody_else(database_url: str) -> None:
    engine = filled(database_url)
    try:
        assert traces(dump(engine)) == ["ana.secret", "sécrète"], "the dump shows them before"
        before = contents(engine)
        with transaction(engine) as session:
            counts_before = {d: outbox.counts(session, d) for d in (1, 2)}

        result = privacy.erase(engine, signer(), UNICODE.upper(), by="Zoë")

        assert result.done_now and result.subscriber_id == PID
        assert result.counts == {
            "deliveries": 2, "skipped": 1, "subscribers": 1, "subscriptions": 2, "consent_events": 2,
            "report_recipients": 1, "handled_reports": 1, "mail_requests": 1, "signups": 1,
        }  # fmt: skip
        assert traces(dump(engine)) == []
        after = contents(engine)
        for table, records in before.items():
            others = [row for row in records if not is_theirs(table, row)]
            if table == "erasures":
                assert after[table][: len(others)] == others and len(after[table]) == len(others) + 1
                continue
            assert [row for row in after[table] if not is_theirs(table, row)] == others, table
        tombstone = next(row for row in after["subscribers"] if row["id"] == PID)
        assert (tombstone["email"], tombstone["email_key"], tombstone["name"], tombstone["status"]) == (
            f"erased-{PID}",
            f"erased-{PID}",
            "",
            "erased",
        )
        mine = [row for row in after["deliveries"] if row["subscriber_id"] == PID]
        assert [(row["email"], row["name"], row["status"]) for row in mine] == [
            ("", "", "sent"),
            ("", "", "skipped"),
        ]
        assert mine[0]["reply"] == "250 2.1.5 [erased] ok, [erased]"
        events = [row for row in after["consent_events"] if row["subscriber_id"] == PID]
        assert events[1]["page"] == "/subscribe/public?from=[erased]" and events[1]["ip"] is None
        assert events[1]["consent_sha256"] == "e3" * 32, "the proof of what they agreed to stays"
        assert events[2]["detail"] == "asked by [erased] [erased]"
        assert events[-1]["detail"] == "erased on request"
        # The dispatches still add up: one queued became skipped, nothing else moved.
        with transaction(engine) as session:
            counts_after = {d: outbox.counts(session, d) for d in (1, 2)}
        assert counts_after[1] == counts_before[1]
        assert sum(counts_after[2].values()) == sum(counts_before[2].values())
        assert counts_after[2]["skipped"] == counts_before[2].get("skipped", 0) + 1
        erasure = after["erasures"][-1]
        assert erasure["address_hash"] == signer().address_hashes(ADDRESS)[0]
        assert (erasure["subscriber_id"], erasure["erased_by"]) == (PID, "Zoë")

        again = privacy.erase(engine, signer(), ADDRESS, by="someone else")
        assert not again.done_now and again.erased_by == "Zoë"
        assert contents(engine) == after, "erasing twice changes nothing"

        if engine.dialect.name == "sqlite":
            # The erasure compacted the file itself: its raw bytes (and its WAL's), as they
            # are, hold no old copy of the rows it changed or deleted.
            assert result.compacted is True
            path = Path(str(engine.url.database))
            engine.dispose()
            wal = path.with_name(path.name + "-wal")
            as_is = (path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")).lower()
            assert b"ana.secret" not in as_is and "sécrète".encode() not in as_is
            raw = raw_sqlite_bytes(engine)
            assert b"ana.secret" not in raw.lower()
            assert "sécrète".encode() not in raw.lower() and "Sécrète".encode() not in raw
    finally:
        engine.dispose()


def test_on_sqlite_the_raw_file_keeps_no_old_copy_even_without_secure_delete(tmp_path: Path) -> None:
    # Debian's SQLite zeroes freed bytes (SECURE_DELETE built in); other builds, and a file
    # written by an older mailout, may not: `erase --vacuum` makes the raw file clean anyway.
    url = f"sqlite:///{tmp_path / 'mailout.db'}"
    upgrade(url)
    engine = filled(url)

    def insecure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA secure_delete=OFF")

    sa.event.listen(engine, "connect", insecure)
    engine.dispose()  # the next connections are made with it off
    try:
        result = privacy.erase(engine, signer(), ADDRESS, by="t", vacuum=True)
        assert result.compacted is True
    finally:
        engine.dispose()
    path = tmp_path / "mailout.db"
    wal = path.with_name(path.name + "-wal")
    raw = (path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")).lower()
    assert b"ana.secret" not in raw and "sécrète".encode() not in raw


def test_scrubber_finds_every_spelling() -> None:
    scrub = privacy.scrubber([ADDRESS], [NAME, "A"])
    assert scrub(f"<{UNICODE.upper()}>, mailto:{ADDRESS.replace('@', '%40')} and {NAME.lower()}") == (
        "[erased], mailto:[erased] and [erased]"
    )
    assert scrub("Banana Sécrètes, A. Secret") == "Banana Sécrètes, A. Secret", "whole words only"


def test_an_address_never_seen_is_recorded_and_kept_out(engine: sa.Engine) -> None:
    result = privacy.erase(engine, signer(), "someone.new@example.org", by="t")
    assert result.done_now and not result.held_anything and result.subscriber_id is None
    with transaction(engine) as session:
        assert privacy.is_erased(session.connection(), signer(), "SOMEONE.new@EXAMPLE.org")
        assert not privacy.is_erased(session.connection(), signer(), "someone.else@example.org")


def test_key_rotation_keeps_out_what_the_old_key_erased(engine: sa.Engine) -> None:
    privacy.erase(engine, signer(OLD_KEY), ADDRESS, by="t")
    with transaction(engine) as session:
        conn = session.connection()
        assert privacy.is_erased(conn, signer(SECRET_KEY, OLD_KEY), UNICODE)
        assert not privacy.is_erased(conn, signer(SECRET_KEY), UNICODE), "without the old key: unknown"
        with pytest.raises(privacy.ErasedAddress):
            privacy.keep_out(conn, signer(SECRET_KEY, OLD_KEY), ADDRESS)
    again = privacy.erase(engine, signer(SECRET_KEY, OLD_KEY), ADDRESS, by="t")
    assert not again.done_now


def test_an_upgraded_database_with_rows_is_erased_too(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade(url, "0010")
    engine = make_engine(url)
    data = with_person(rows())
    try:
        with engine.begin() as connection:
            fill(connection, data)
        upgrade(url)
        result = privacy.erase(engine, signer(), ADDRESS, by="t")
        assert result.counts["deliveries"] == 2 and result.counts["signups"] == 0
        assert traces(dump(engine)) == []
    finally:
        engine.dispose()


# --- the command line, on a workspace ----------------------------------------------------------


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.output


def workspace_engine(workspace: Path) -> sa.Engine:
    return make_engine(load_settings(workspace).database_url())


def test_export_person_round_trip_then_erase_then_import_keeps_out(
    sending_workspace: Path, tmp_path: Path
) -> None:
    engine = workspace_engine(sending_workspace)
    with engine.begin() as connection:
        fill(connection, with_person(rows()))
    engine.dispose()
    out = tmp_path / "ana.json"
    code, output = run("subscribers", "export-person", UNICODE, "--json", "--output", str(out))
    assert code == 0, output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["subscriber"]["email"] == ADDRESS and data["subscriber"]["name"] == NAME
    assert [s["list"] for s in data["subscriptions"]] == ["members", "public"]
    signed_up = data["consent_events"][1]
    assert signed_up["consent_text"]["text"].startswith("Oui, envoyez-moi")
    assert signed_up["requested_at"] == at(8000).isoformat()
    assert [(d["issue"], d["status"]) for d in data["deliveries"]] == [
        ("2019-01", "sent"),
        ("2019-02", "queued"),
    ]
    assert data["reports"][0]["summary"] == f"dsn: 1 bounced ({ADDRESS})"
    assert [m["key"] for m in data["mail_requests"]] == ["<ana.1@mail.example>"]
    assert [s["name"] for s in data["signups"]] == [NAME] and "nonce" not in data["signups"][0]
    assert data["erased"] is None
    assert json.loads(privacy.to_json(data)) == data

    code, output = run("subscribers", "erase", ADDRESS, input="n\n")
    assert code == 1 and "Aborted" in output
    code, output = run("subscribers", "erase", ADDRESS, "--yes", "--by", "Zoë")
    assert code == 0, output
    assert "signups" in output and ADDRESS.lower() not in output.lower().split("\n", 1)[1]
    code, output = run("subscribers", "erase", ADDRESS, "--yes")
    assert code == 0 and "erased already" in output and "nothing changed" in output

    code, output = run("subscribers", "export-person", ADDRESS, "--json")
    assert code == 1
    assert "erased on request" in output

    csv = sending_workspace / "back.csv"
    csv.write_text(f"email,name\nnew@example.org,New\n{UNICODE.upper()},{NAME}\n", encoding="utf-8")
    code, output = run("subscribers", "import", str(csv), "--list", "public")
    assert code == 0, output
    today = dt.datetime.now(dt.UTC)
    assert "back.csv:3: kept out" in output and f"erased on request on {today:%Y-%m-%d}: kept out" in output
    assert "added             1" in output
    code, output = run("subscribers", "add", UNICODE, "--list", "public")
    assert code == 1 and "erased on request" in output
    code, output = run(
        "subscribers", "resubscribe", ADDRESS, "--list", "public", "--reason", "x", "--confirm-consent"
    )
    assert code == 1 and "erased on request" in output
    (sending_workspace / "subscribers").mkdir(exist_ok=True)
    (sending_workspace / "subscribers" / "members.csv").write_text(
        "email\nnew2@example.org\n", encoding="utf-8"
    )
    code, output = run("subscribers", "sync", "--remove-missing")
    assert code == 0, output
    assert "erased" not in output, "the tombstone is nobody on the list"

    edit_config(sending_workspace, ('description = "Public"', 'description = "Public"\npublic_signup = true'))
    settings = load_settings(sending_workspace)
    form = signup.SignupRequest(UNICODE, NAME, "fr", ("public",), "/subscribe/public", "Oui", "fr")
    engine = workspace_engine(sending_workspace)
    try:
        with transaction(engine) as session:
            conn = session.connection()
            assert signup.request(conn, settings, signer(), form, now=dt.datetime.now(dt.UTC)) is None
            assert signup.of_person(conn, KEY) == [], "an erased address is never written down again"
        assert traces(dump(engine)) == []
    finally:
        engine.dispose()


def test_without_a_key_imports_work_until_someone_is_erased(
    sending_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILOUT_SECRET_KEY")
    csv = sending_workspace / "in.csv"
    csv.write_text("email\nana@example.org\n", encoding="utf-8")
    code, output = run("subscribers", "import", str(csv), "--list", "members")
    assert code == 0 and "added             1" in output
    code, output = run("subscribers", "erase", "bob@example.org", "--yes")
    assert code == 1 and "MAILOUT_SECRET_KEY" in output
    monkeypatch.setenv("MAILOUT_SECRET_KEY", SECRET_KEY)
    code, output = run("subscribers", "erase", "bob@example.org", "--yes")
    assert code == 0 and "held nothing" in output and "keep it out" in output
    monkeypatch.delenv("MAILOUT_SECRET_KEY")
    code, output = run("subscribers", "import", str(csv), "--list", "members")
    assert code == 1 and "MAILOUT_SECRET_KEY" in output
    code, output = run("subscribers", "add", "carla@example.org", "--list", "members")
    assert code == 1 and "MAILOUT_SECRET_KEY" in output


def test_an_unknown_address_has_nothing_to_export(sending_workspace: Path) -> None:
    code, output = run("subscribers", "export-person", "nobody@example.org", "--json")
    assert code == 1 and "holds nothing" in output


@pytest.mark.slow
def test_someone_erased_mid_dispatch_gets_nothing_more(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    edit_config(
        sending_workspace, ("concurrency = 2", "concurrency = 1"), ("batch_size = 5", "batch_size = 1")
    )
    add_subscribers(sending_workspace, people(5))
    smtp_server.stall("p1@example.org", 1.5)  # one connection, one at a time: p4's turn is well after
    with start_send() as process:
        smtp_server.wait_for(1, timeout=20)
        code, out = run("subscribers", "erase", "p4@example.org", "--yes", "--by", "t")
        assert code == 0, out
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    received = {r.rcpt_tos[0] for r in smtp_server.messages}
    assert received == {"p0@example.org", "p1@example.org", "p2@example.org", "p3@example.org"}
    states = statuses(sending_workspace)
    assert states[""] == "skipped" and "p4@example.org" not in states
    assert_adds_up(report_of(), 5)
    engine = workspace_engine(sending_workspace)
    try:
        assert traces(dump(engine).replace("p4@", "")) == [] and "p4@example.org" not in dump(engine)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_an_erasure_racing_an_import_of_the_address_keeps_it_out(sending_workspace: Path) -> None:
    csv = sending_workspace / "big.csv"
    lines = [f"r{i}@example.org" for i in range(4000)] + [ADDRESS]
    csv.write_text("email\n" + "\n".join(lines) + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "mailout", "subscribers"]
    importing = subprocess.Popen(
        [*command, "import", str(csv), "--list", "members"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    erasing = subprocess.Popen(
        [*command, "erase", ADDRESS, "--yes", "--by", "t"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    imported, _ = importing.communicate(timeout=120)
    erased, _ = erasing.communicate(timeout=120)
    assert importing.returncode == 0 and erasing.returncode == 0, imported + erased
    engine = workspace_engine(sending_workspace)
    try:
        with transaction(engine) as session:
            stored = session.scalars(sa.select(Subscriber).where(Subscriber.email_key == KEY)).all()
            assert stored == [], "the address did not come back"
            assert session.scalar(sa.select(sa.func.count()).select_from(Erasure)) == 1
            statuses_ = set(session.scalars(sa.select(Subscriber.status)))
            # Either the import came first (and its row was erased) or it kept the address out.
            kept_out = f"big.csv:{len(lines) + 1}: kept out" in imported
            assert (SubscriberStatus.ERASED in statuses_) != kept_out, imported
    finally:
        engine.dispose()


def test_an_erasure_during_the_confirmation_of_the_sign_up_erases_who_it_created(
    engine: sa.Engine, sending_workspace: Path
) -> None:
    # The confirmation has created the person but not committed yet when the erasure
    # starts: the erasure must wait for it and erase the new subscriber too (on PostgreSQL
    # it read no subscriber before, and left them subscribed).
    edit_config(sending_workspace, ("[lists.public]\n", "[lists.public]\npublic_signup = true\n"))
    settings = load_settings(sending_workspace)
    assert any(lst.name == "public" and lst.public_signup for lst in settings.lists)
    now = dt.datetime.now(dt.UTC)
    form = signup.SignupRequest(
        "victim@example.org", "Vic Tim", "", ("public",), "/subscribe", "I agree", "en"
    )
    with engine.begin() as conn:
        c = signup.request(conn, settings, signer(), form, now=now)
    assert c is not None
    confirming = engine.connect()
    transaction_ = confirming.begin()
    assert signup.confirm(confirming, settings, signer(), c.signup_id, c.nonce, now=now) is not None
    done: dict[str, privacy.Erased] = {}
    eraser = threading.Thread(
        target=lambda: done.setdefault("r", privacy.erase(engine, signer(), form.address, by="dpo"))
    )
    eraser.start()
    time.sleep(1.0)  # the erasure is waiting for the confirmation's lock
    transaction_.commit()
    confirming.close()
    eraser.join(30)
    assert "r" in done and done["r"].done_now
    assert done["r"].subscriber_id is not None, "the subscriber the confirmation created was found"
    with engine.connect() as conn:
        people_now = conn.execute(sa.select(Subscriber.email, Subscriber.name, Subscriber.status)).all()
    assert [(row.name, str(row.status)) for row in people_now] == [("", "erased")]
    assert "victim" not in dump(engine).lower() and "vic tim" not in dump(engine).lower()


@pytest.fixture
def sent(sending_workspace: Path, engine: sa.Engine, smtp_server: SMTPServer) -> Sent:
    """A dispatch sent to p0..p5@example.org (as the bounce tests make it)."""
    return send_dispatch(sending_workspace, engine, smtp_server, 6)


def test_a_report_read_after_the_erasure_keeps_the_person_out_of_the_database(
    sent: Sent, engine: sa.Engine, tmp_path: Path
) -> None:
    # A bounce arrives days after the person was erased: it is recorded (the dispatch's
    # counts), without their address; their unsubscribe mail, too, keeps no sender.
    headers, to = sent.headers("p0@example.org"), sent.envelope("p0@example.org")
    privacy.erase(engine, sent.signer, "p0@example.org", by="t")
    assert "p0@example.org" not in dump(engine).lower()
    late = dsn(to, "p0@example.org", "5.1.1", headers, message_id="<late@mx.example.net>")
    read_reports(engine, sent, maildir(tmp_path / "bounces", late))
    assert "p0@example.org" not in dump(engine).lower()
    with transaction(engine) as session:
        [line] = session.execute(sa.select(ReportRecipient)).scalars().all()
        assert line.address == "" and line.action == "none"
    request = EmailMessage()
    request["From"], request["To"], request["Subject"] = (
        "p0@example.org",
        "unsubscribe@x.example",
        "unsubscribe",
    )
    request["Message-ID"] = "<again@p0.example>"
    request.set_content("please")
    with transaction(engine) as session:
        unsubmail.process(session, sent.signer, unsubmail.Read("1", "<again@p0.example>", request))
    assert "p0@example.org" not in dump(engine).lower()


def test_a_name_that_is_a_common_word_stays_in_other_peoples_rows(
    sent: Sent, engine: sa.Engine, tmp_path: Path
) -> None:
    # p0 is called "Example": a word of every other address here. Their own rows lose it;
    # other people's addresses, diagnostics and requests keep every character.
    other = dsn(
        sent.envelope("p1@example.org"),
        "p1@example.org",
        "5.1.1",
        sent.headers("p1@example.org"),
        message_id="<p1@mx.example.net>",
    )
    read_reports(engine, sent, maildir(tmp_path / "bounces", other))
    with transaction(engine) as session:
        session.execute(
            sa.update(Subscriber).where(Subscriber.email == "p0@example.org").values(name="Example")
        )
        session.add(
            MailRequest(key="<m1@example.org>", sender="p2@example.org", outcome="unsubscribed", detail="x")
        )
    with transaction(engine) as session:
        lines_before = session.execute(sa.select(ReportRecipient.address, ReportRecipient.diagnostic)).all()
    privacy.erase(engine, sent.signer, "p0@example.org", by="t")
    with transaction(engine) as session:
        assert (
            session.execute(sa.select(ReportRecipient.address, ReportRecipient.diagnostic)).all()
            == lines_before
        )
        assert session.execute(sa.select(MailRequest.key, MailRequest.sender)).all() == [
            ("<m1@example.org>", "p2@example.org")
        ]
        names = session.execute(sa.select(Subscriber.email, Subscriber.name).order_by(Subscriber.id)).all()
    assert ("p1@example.org", names[1].name) in [tuple(row) for row in names]
    assert names[0].email.startswith("erased-") and names[0].name == ""
