"""The envelope sender on every path that sends, the Feedback-ID, and what a dispatch records of both."""

from __future__ import annotations

import collections
import re
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailout import dispatching, outbox
from mailout.config import load_settings
from mailout.db import make_engine, upgrade
from mailout.envelope import envelope_sender
from mailout.issues import load_issue
from mailout.message import feedback_id
from tests.conftest import edit_config
from tests.smtpserver import Received, SMTPServer
from tests.test_migrations import TABLES, insert, rows
from tests.test_sending import add_subscribers, people, run, statuses

pytestmark = pytest.mark.slow

FROM = "newsletter@efus.example"
RETURN_PATH = "bounces@mail.efus.example"
_FEEDBACK = re.compile(r"[A-Za-z0-9._-]+(?::[A-Za-z0-9._-]+){3}")


def _set_return_path(workspace: Path, address: str) -> None:
    edit_config(workspace, (f'address = "{FROM}"', f'address = "{FROM}"\nreturn_path = "{address}"'))


def _start_only(workspace: Path, database_url: str) -> int:
    """Write a dispatch of 2019-01 to members without sending it (``mailout worker`` sends it)."""
    settings = load_settings(workspace)
    engine = make_engine(database_url)
    try:
        issue = load_issue(workspace / "issues" / "2019-01" / "issue.yaml")
        plan = dispatching.plan(engine, settings, issue, "members", again=True)
        return dispatching.start(engine, settings, plan).dispatch_id
    finally:
        engine.dispose()


def _check_envelope(received: list[Received], envelope: str) -> None:
    for message in received:
        assert message.mail_from == envelope, message.rcpt_tos
        parsed = message.message()
        [author] = parsed["From"].addresses
        assert author.addr_spec == FROM, "the From header is the sender's, whatever the envelope"
        assert "Return-Path" not in parsed, "a receiving server adds Return-Path, not the sender"
        assert _FEEDBACK.fullmatch(parsed["Feedback-ID"]), parsed["Feedback-ID"]


@pytest.mark.parametrize("return_path", [RETURN_PATH, ""], ids=["return-path", "unset"])
def test_every_path_that_sends_gives_the_return_path_as_mail_from(
    sending_workspace: Path, smtp_server: SMTPServer, database_url: str, return_path: str
) -> None:
    if return_path:
        _set_return_path(sending_workspace, return_path)
    envelope = return_path or FROM
    add_subscribers(sending_workspace, people(3))
    code, out = run("test", "2019-01", "--to", "team@efus.example")
    assert code == 0, out
    tests = smtp_server.wait_for(2)
    _check_envelope(tests, envelope)
    assert {m.message()["Feedback-ID"] for m in tests} == {
        "test:test-member:2019-01:efus.example",
        "test:test-public:2019-01:efus.example",
    }
    smtp_server.clear()

    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    _check_envelope(smtp_server.wait_for(3), envelope)
    assert {m.message()["Feedback-ID"] for m in smtp_server.messages} == {"1:members:2019-01:efus.example"}
    smtp_server.clear()

    second = _start_only(sending_workspace, database_url)
    code, out = run("worker", "--dispatch", str(second))
    assert code == 0, out
    _check_envelope(smtp_server.wait_for(3), envelope)
    assert {m.message()["Feedback-ID"] for m in smtp_server.messages} == {
        f"{second}:members:2019-01:efus.example"
    }

    for dispatch in (1, second):
        code, out = run("status", str(dispatch))
        assert code == 0, out
        assert "not signed" in out.splitlines()
        assert f"envelope sender: {envelope}" in out.splitlines()


def test_a_dispatch_resumed_after_the_return_path_changed_uses_the_new_one_and_says_so(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    _set_return_path(sending_workspace, RETURN_PATH)
    add_subscribers(sending_workspace, people(10))
    for address, _ in people(10):
        smtp_server.answer(address, 550, "5.7.1 SPF check failed", times=1)
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 3 and "paused" in out, out
    first = len(smtp_server.messages)
    assert {m.mail_from for m in smtp_server.messages} <= {RETURN_PATH}
    smtp_server.rules.clear()
    edit_config(sending_workspace, (RETURN_PATH, "bounces@efus.example"))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0 and "resuming dispatch 1" in out, out
    assert "the messages of the run before had the envelope sender bounces@mail.efus.example;" in out, out
    later = smtp_server.messages[first:]
    assert later and {m.mail_from for m in later} == {"bounces@efus.example"}
    code, out = run("status", "1")
    assert (
        "envelope sender: bounces@efus.example (earlier runs: envelope sender: bounces@mail.efus.example)"
        in out.splitlines()
    ), out
    assert collections.Counter(statuses(sending_workspace).values())["queued"] == 0


def test_status_says_which_key_signed_a_dispatch(
    sending_workspace: Path, smtp_server: SMTPServer, rsa_pem: bytes, ed25519_pem: bytes
) -> None:
    add_subscribers(sending_workspace, people(2))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    (sending_workspace / "dkim.pem").write_bytes(rsa_pem)
    with (sending_workspace / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write('\n[dkim]\ndomain = "efus.example"\nselector = "mo2026"\nkey_file = "dkim.pem"\n')
    code, out = run("send", "2019-01", "--list", "members", "--yes", "--again")
    assert code == 0, out
    (sending_workspace / "dkim-ed.pem").write_bytes(ed25519_pem)
    edit_config(
        sending_workspace,
        (
            'selector = "mo2026"',
            'selector = "mo2026"\ned25519_selector = "mo2026e"\ned25519_key_file = "dkim-ed.pem"',
        ),
    )
    code, out = run("send", "2019-01", "--list", "members", "--yes", "--again")
    assert code == 0, out
    expected = {
        1: "not signed",
        2: "signed: d=efus.example s=mo2026 (rsa-sha256)",
        3: "signed: d=efus.example s=mo2026 (rsa-sha256), d=efus.example s=mo2026e (ed25519-sha256)",
    }
    for dispatch, line in expected.items():
        code, out = run("status", str(dispatch))
        assert code == 0 and line in out.splitlines(), out
    code, out = run("status", "2", "--json")
    assert '"signing": [\n    "d=efus.example s=mo2026 (rsa-sha256)"\n  ]' in out, out


def test_the_outbox_shows_the_envelope_as_a_delivered_message_does(sending_workspace: Path) -> None:
    config = sending_workspace / "mailout.toml"
    config.write_text(re.sub(r"\[smtp\][^\[]*", "", config.read_text(encoding="utf-8")), encoding="utf-8")
    _set_return_path(sending_workspace, RETURN_PATH)
    add_subscribers(sending_workspace, people(2))
    assert run("test", "2019-01", "--to", "team@efus.example")[0] == 0
    assert run("send", "2019-01", "--list", "members", "--yes")[0] == 0
    written = sorted((sending_workspace / "outbox").glob("*.eml"))
    assert len(written) == 4
    feedback = set()
    for path in written:
        data = path.read_bytes()
        assert data.startswith(f"Return-Path: <{RETURN_PATH}>\r\n".encode()), data[:200]
        assert data.count(b"Return-Path:") == 1
        feedback.add(re.search(rb"^Feedback-ID: (.*)\r$", data, re.M).group(1))  # type: ignore[union-attr]
    # A test and a dispatch tell themselves apart by their Feedback-ID.
    assert feedback == {
        b"test:test-member:2019-01:efus.example",
        b"test:test-public:2019-01:efus.example",
        b"1:members:2019-01:efus.example",
    }


def test_a_return_path_outside_ascii_is_refused_at_once(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    add_subscribers(sending_workspace, people(1))
    _set_return_path(sending_workspace, "rebonds@été.example")
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 1 and "sender.return_path" in out and "outside ASCII" in out and "xn--" in out, out
    assert smtp_server.messages == []


# --- the record on the dispatch --------------------------------------------------


def test_an_upgraded_database_says_it_does_not_know_for_old_dispatches(
    empty_database_url: str, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = empty_database_url
    upgrade(url, "0006")
    engine = make_engine(url)
    data = rows()
    try:
        with engine.begin() as connection:
            for name in TABLES:
                insert(connection, name, data[name])
        upgrade(url)
        monkeypatch.setenv("MAILOUT_DATABASE_URL", url)
        code, out = run("status", "1")
        assert code == 0, out
        assert "signed: unknown (sent before mailout recorded it)" in out.splitlines()
        assert "envelope sender: unknown (sent before mailout recorded it)" in out.splitlines()
        # A run of an old dispatch records from then on; a like run adds nothing, another does.
        for signing, envelope in [("", FROM), ("", FROM), ("d=efus.example s=k1 (rsa-sha256)", FROM)]:
            with engine.begin() as connection:
                outbox.record_run(connection, 2, signing=signing, envelope_sender=envelope)
        with engine.connect() as connection:
            ran = outbox.run_record(connection, 2)
        assert ran == outbox.RunRecord(("", "d=efus.example s=k1 (rsa-sha256)"), (FROM,))
        code, out = run("status", "2")
        assert "signed: d=efus.example s=k1 (rsa-sha256) (earlier runs: not signed)" in out.splitlines(), out
        assert f"envelope sender: {FROM}" in out.splitlines()
    finally:
        engine.dispose()


def test_runs_starting_together_record_their_envelope_once(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    data = rows()
    try:
        with engine.begin() as connection:
            for name in TABLES:
                insert(connection, name, data[name])
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def start() -> None:
            try:
                barrier.wait()
                with engine.begin() as connection:
                    outbox.record_run(connection, 1, signing="", envelope_sender=RETURN_PATH)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        with engine.connect() as connection:
            assert outbox.run_record(connection, 1) == outbox.RunRecord(("",), (RETURN_PATH,))
            raw = connection.execute(sa.text("SELECT envelope_sender FROM dispatches WHERE id = 1")).scalar()
        assert raw == RETURN_PATH
    finally:
        engine.dispose()


# --- units -------------------------------------------------------------------------


def test_the_envelope_is_the_return_path_else_the_from_address(tmp_path: Path) -> None:
    (tmp_path / "mailout.toml").write_text(f'[sender]\naddress = "{FROM}"\n', encoding="utf-8")
    assert envelope_sender(load_settings(tmp_path, env={}), 3, 17) == FROM
    (tmp_path / "mailout.toml").write_text(
        f'[sender]\naddress = "{FROM}"\nreturn_path = "{RETURN_PATH}"\n', encoding="utf-8"
    )
    settings = load_settings(tmp_path, env={})
    assert envelope_sender(settings) == envelope_sender(settings, 3) == envelope_sender(settings, 3, 17)
    assert envelope_sender(settings) == RETURN_PATH


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (("12", "members", "2019-01", "efus.example"), "12:members:2019-01:efus.example"),
        (
            ("12", "a list: with spaces", "2019-01", "efus.example"),
            "12:a-list-with-spaces:2019-01:efus.example",
        ),
        (("12", "Ünïcode:名前", "x", "ville-été.example"), "12:n-code:x:xn--ville-t-gyab.example"),
        (("12", "::", "", "efus.example"), "12:-:-:efus.example"),
        (("12", "l" * 200, "i" * 200, "efus.example"), f"12:{'l' * 64}:{'i' * 64}:efus.example"),
    ],
)
def test_feedback_id_fields_hold_no_colon_no_space_and_only_ascii(
    fields: tuple[str, str, str, str], expected: str
) -> None:
    value = feedback_id(*fields)
    assert value == expected
    assert _FEEDBACK.fullmatch(value) and value.isascii() and len(value) < 998 - len("Feedback-ID: ")
