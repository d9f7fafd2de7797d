"""Sending against a real SMTP server on loopback, on SQLite and PostgreSQL.

What the server received is parsed from its raw bytes: these tests check what
went over the wire, not what mailout meant to build.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import email
import email.policy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select, update

from mailout import dispatching, outbox, processes
from mailout.cli import cli
from mailout.cli.state import State
from mailout.config import load_settings
from mailout.db import make_engine, transaction
from mailout.issues import Issue, load_issue
from mailout.languages import canonical, choose
from mailout.models import Delivery, Dispatch, Subscriber, SubscriberStatus, Subscription, Worker, utcnow
from mailout.subscribers import InvalidSubscriber, normalise_email
from mailout.tokens import PUBLIC_KEYS, Purpose, Signer
from tests.conftest import REPO, SECRET_KEY, edit_config
from tests.smtpserver import Received, SMTPServer, tls_available

pytestmark = pytest.mark.slow


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def add_subscribers(workspace: Path, rows: list[tuple[str, str]], list_name: str = "members") -> None:
    lines = "".join(f'{email},"{name.replace(chr(34), chr(34) * 2)}"\n' for email, name in rows)
    path = workspace / f"{list_name}-import.csv"
    path.write_text("email,name\n" + lines, encoding="utf-8")
    code, out = run("subscribers", "import", str(path), "--list", list_name)
    assert code == 0, out


def people(n: int, prefix: str = "p") -> list[tuple[str, str]]:
    return [(f"{prefix}{i}@example.org", f"Person {i}") for i in range(n)]


def statuses(workspace: Path) -> dict[str, str]:
    engine = make_engine(load_settings(workspace).database_url())
    with transaction(engine) as session:
        found = {
            email: str(status) for email, status in session.execute(select(Delivery.email, Delivery.status))
        }
    engine.dispose()
    return found


# --- the messages on the wire ----------------------------------------------------


def test_messages_meet_the_standards(sending_workspace: Path, smtp_server: SMTPServer) -> None:
    add_subscribers(
        sending_workspace, [("ana@example.org", "Ana Conceição"), ("long@example.org", "A" * 150 + " Long")]
    )
    # The import refuses a name with a line break; one stored by other means must still not inject.
    engine = make_engine(load_settings(sending_workspace).database_url())
    with transaction(engine) as session:
        ana = session.scalars(select(Subscriber).where(Subscriber.email == "ana@example.org")).one()
        eve = Subscriber(email="eve@example.org", name="Eve\r\nBcc: victim@example.net")
        session.add(eve)
        session.flush()
        session.add(
            Subscription(
                subscriber_id=eve.id,
                list_id=session.scalars(
                    select(Subscription.list_id).where(Subscription.subscriber_id == ana.id)
                ).one(),
            )
        )
    engine.dispose()
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    received = smtp_server.messages
    assert sorted(r.rcpt_tos[0] for r in received) == [
        "ana@example.org",
        "eve@example.org",
        "long@example.org",
    ]
    ids = set()
    for r in received:
        raw = r.raw
        assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b""), "CRLF line ends only"
        _, _, body = raw.partition(b"\r\n\r\n")
        assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
        assert all(len(line) <= 78 for line in body.split(b"\r\n")), "body lines within 78"
        assert not re.search(rb"^\.", body, re.M), "no line starts with a dot"
        assert r.mail_from == "newsletter@efus.example"
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert message["From"].addresses[0].display_name == "Efus – Zoë's newsletter"
        assert message["Reply-To"] == "team@efus.example"
        assert message["Subject"] == "Efus Newsletter – January 2019"
        assert message["MIME-Version"] == "1.0"
        assert message["Date"].datetime is not None
        assert re.fullmatch(r"<mo[0-9a-f]+\.\d+@efus\.example>", message["Message-ID"])
        ids.add(message["Message-ID"])
        assert message["List-Id"].endswith("<members.efus.example>")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        unsubscribe = re.findall(r"<([^>]+)>", message["List-Unsubscribe"])
        assert unsubscribe[0].startswith("https://news.example/unsubscribe/")
        assert unsubscribe[1].startswith("mailto:unsubscribe@efus.example?subject=unsubscribe")
        token = unsubscribe[0].rsplit("/", 1)[1].split("?")[0]  # without the ?lang= of its pages
        claim = Signer([SECRET_KEY]).verify(Purpose.UNSUBSCRIBE, token)
        assert claim is not None
        assert "@" not in token, "tokens hold no address"
        assert message.get_content_type() == "multipart/alternative"
        parts = list(message.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
        text, html = parts[0].get_content(), parts[1].get_content()
        assert unsubscribe[0] in text and unsubscribe[0] in html
        assert "Bcc" not in message, "no header injected through a name"
        to = message["To"].addresses[0]
        if to.addr_spec == "ana@example.org":
            assert to.display_name == "Ana Conceição"
            assert "Dear Ana," in text
        if to.addr_spec == "eve@example.org":
            assert to.display_name == "Eve Bcc: victim@example.net"
    assert len(ids) == 3, "one Message-ID per recipient"


def test_a_line_starting_with_a_dot_arrives_intact(sending_workspace: Path, smtp_server: SMTPServer) -> None:
    issue = sending_workspace / "issues" / "2019-01" / "issue.yaml"
    text = issue.read_text(encoding="utf-8").replace(
        "intro: |\n", "intro: |\n  .dotted first line\n\n  . and a lone dot line\n\n", 1
    )
    issue.write_text(text, encoding="utf-8")
    add_subscribers(sending_workspace, [("dot@example.org", "Dot")])
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    message = smtp_server.messages[0].message()
    plain = next(iter(message.iter_parts())).get_content()
    assert ".dotted first line" in plain and ". and a lone dot line" in plain


# --- one message per recipient, and every state ---------------------------------


def test_each_recipient_gets_exactly_one_message(sending_workspace: Path, smtp_server: SMTPServer) -> None:
    add_subscribers(sending_workspace, people(40))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert set(received) == {e for e, _ in people(40)} and set(received.values()) == {1}
    assert "40 sent" in out and "finished" in out
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 1 and "--again" in out, "the same issue is not sent twice to a list"
    assert len(smtp_server.messages) == 40
    code, out = run("send", "2019-01", "--list", "members", "--yes", "--again")
    assert code == 0 and len(smtp_server.messages) == 80


def test_temporary_failures_are_retried_and_permanent_ones_recorded(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    add_subscribers(sending_workspace, people(6))
    smtp_server.answer("p0@example.org", 451, "4.3.0 try again later", times=2)
    smtp_server.answer("p1@example.org", 454, "4.7.0 throttling, try later", times=1)
    smtp_server.answer("p2@example.org", 550, "5.1.1 no such mailbox")
    smtp_server.answer("p3@example.org", 550, "5.7.1 rejected by policy")
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    states = statuses(sending_workspace)
    assert states == {
        "p0@example.org": "sent",
        "p1@example.org": "sent",
        "p2@example.org": "failed",
        "p3@example.org": "failed",
        "p4@example.org": "sent",
        "p5@example.org": "sent",
    }
    engine = make_engine(load_settings(sending_workspace).database_url())
    with transaction(engine) as session:
        status_of = dict(session.execute(select(Subscriber.email, Subscriber.status)).all())
        attempts = dict(session.execute(select(Delivery.email, Delivery.attempts)).all())
        replies = dict(session.execute(select(Delivery.email, Delivery.reply)).all())
    engine.dispose()
    assert status_of["p2@example.org"] is SubscriberStatus.BOUNCED, "no such mailbox: suppressed"
    assert status_of["p3@example.org"] is SubscriberStatus.SUBSCRIBED, "5.7.x is about us, not the address"
    assert attempts["p0@example.org"] == 3 and attempts["p1@example.org"] == 2
    assert replies["p2@example.org"].startswith("550 5.1.1") and replies["p4@example.org"].startswith("250")
    code, out = run("status", "1", "--json")
    report = json.loads(out)
    assert sum(report["counts"].values()) == report["total"] == 6
    assert {f["reply"] for f in report["failures"]} == {
        "550 5.1.1 no such mailbox",
        "550 5.7.1 rejected by policy",
    }
    # the bounced address is left out of the next dispatch
    code, out = run("send", "2019-01", "--list", "members", "--yes", "--again")
    assert "recipients: 5" in out


def test_repeated_policy_refusals_pause_the_dispatch(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    add_subscribers(sending_workspace, people(10))
    for address, _ in people(10):
        smtp_server.answer(address, 550, "5.7.1 SPF check failed", times=1)
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 3, out
    assert "paused" in out and "SPF and DKIM" in out
    states = collections.Counter(statuses(sending_workspace).values())
    assert states["failed"] >= 3 and states["queued"] > 0, states
    smtp_server.rules.clear()  # the sender domain is fixed
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0 and "resuming dispatch 1" in out, out


@pytest.mark.parametrize("at", ["rcpt", "data"])
def test_a_policy_pause_stops_at_the_refusal_that_reaches_the_limit(
    sending_workspace: Path, smtp_server: SMTPServer, at: Literal["rcpt", "data"]
) -> None:
    # One connection: the next message is marked while the server reads the one before;
    # the refusal that reaches the limit must still stop it from going out.
    edit_config(sending_workspace, ("concurrency = 2", "concurrency = 1"))
    add_subscribers(sending_workspace, people(10))
    for address, _ in people(10):
        smtp_server.answer(address, 550, "5.7.1 SPF check failed", at=at)
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 3 and "paused" in out, out
    states = collections.Counter(statuses(sending_workspace).values())
    assert states == {"failed": 3, "queued": 7}, states


def test_421_and_dropped_connections_reconnect(sending_workspace: Path, smtp_server: SMTPServer) -> None:
    add_subscribers(sending_workspace, people(20))
    smtp_server.answer("p3@example.org", 421, "4.7.0 closing connection", times=1)
    smtp_server.drop_after(7)
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    # The drop came after the whole message: the server may have it, so it is not sent again.
    [dropped] = [r.rcpt_tos[0] for r in smtp_server.dropped]
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert set(received) == {e for e, _ in people(20)} - {dropped} and set(received.values()) == {1}
    assert smtp_server.connections > 2, "reconnected after the 421 and the drop"
    states = statuses(sending_workspace)
    assert states.pop(dropped) == "unknown" and set(states.values()) == {"sent"}


def test_someone_who_unsubscribes_mid_dispatch_is_skipped(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    config = sending_workspace / "mailout.toml"
    config.write_text(
        config.read_text(encoding="utf-8")
        .replace("concurrency = 2", "concurrency = 1")
        .replace("batch_size = 5", "batch_size = 1"),
        encoding="utf-8",
    )
    add_subscribers(sending_workspace, people(5))
    smtp_server.stall("p1@example.org", 1.5)  # one connection, one at a time: p4's turn is well after
    with start_send() as process:
        smtp_server.wait_for(1, timeout=20)
        code, out = run("subscribers", "unsubscribe", "p4@example.org", "--all")
        assert code == 0, out
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    received = {r.rcpt_tos[0] for r in smtp_server.messages}
    assert received == {"p0@example.org", "p1@example.org", "p2@example.org", "p3@example.org"}
    assert statuses(sending_workspace)["p4@example.org"] == "skipped"
    assert "1 skipped" in output


def test_starttls_and_authentication(
    db_workspace: Path, monkeypatch: pytest.MonkeyPatch, sending_workspace: Path
) -> None:
    if not tls_available():
        pytest.skip("no certificate tooling (cryptography or openssl)")
    with SMTPServer(tls=True, username="news", password="s3cret-pass") as server:
        assert server.cert_file is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_file))
        monkeypatch.setenv("MAILOUT_SMTP_PASSWORD", "s3cret-pass")
        config = sending_workspace / "mailout.toml"
        text = re.sub(r"port = \d+", f"port = {server.port}", config.read_text(encoding="utf-8"))
        text = text.replace('security = "plain"', 'security = "starttls"\nusername = "news"').replace(
            'host = "127.0.0.1"', 'host = "localhost"'
        )
        config.write_text(text, encoding="utf-8")
        add_subscribers(sending_workspace, people(3))
        code, out = run("send", "2019-01", "--list", "members", "--yes")
        assert code == 0, out
        assert len(server.messages) == 3 and server.logins >= 1
        monkeypatch.setenv("MAILOUT_SMTP_PASSWORD", "wrong")
        code, out = run("send", "2019-01", "--list", "members", "--yes", "--again")
        assert code == 1 and "login refused" in out and "Traceback" not in out


def test_credentials_are_never_sent_in_clear(sending_workspace: Path) -> None:
    edit_config(sending_workspace, ('host = "127.0.0.1"', 'host = "smtp.example.org"\nusername = "news"'))
    add_subscribers(sending_workspace, people(1))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 1 and "unencrypted" in out


def test_test_send_marks_the_subject_and_records_nothing(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    add_subscribers(sending_workspace, [("me@example.org", "Me")])
    code, out = run("test", "2019-01", "--to", "me@example.org")
    assert code == 0, out
    subjects = sorted(r.message()["Subject"] for r in smtp_server.messages)
    # The example issue is written in English and French: a test message per segment and language.
    assert subjects == [
        "[TEST member en] Efus Newsletter – January 2019",
        "[TEST member fr] Lettre d'information de l'Efus – janvier 2019",
        "[TEST public en] Efus Newsletter – January 2019",
        "[TEST public fr] Lettre d'information de l'Efus – janvier 2019",
    ]
    assert statuses(sending_workspace) == {}
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0 and statuses(sending_workspace) == {"me@example.org": "sent"}


def test_send_refuses_without_a_secret_key(sending_workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILOUT_SECRET_KEY")
    add_subscribers(sending_workspace, people(1))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 1 and "MAILOUT_SECRET_KEY" in out


def test_dry_run_writes_nothing(sending_workspace: Path, smtp_server: SMTPServer) -> None:
    add_subscribers(sending_workspace, people(3))
    code, out = run("send", "2019-01", "--list", "members", "--dry-run")
    assert code == 0 and "recipients: 3" in out and "transport:  SMTP 127.0.0.1" in out
    assert statuses(sending_workspace) == {} and smtp_server.messages == []


def test_rate_limit_is_held(sending_workspace: Path, smtp_server: SMTPServer) -> None:
    (sending_workspace / "mailout.toml").write_text(
        (sending_workspace / "mailout.toml")
        .read_text(encoding="utf-8")
        .replace("concurrency = 2", "concurrency = 3\nrate_limit = 20"),
        encoding="utf-8",
    )
    add_subscribers(sending_workspace, people(30))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    times = sorted(r.at for r in smtp_server.messages)
    assert len(times) == 30
    # 30 messages at 20/s: at least 29 intervals of 50 ms, whatever the concurrency
    assert times[-1] - times[0] >= 29 / 20 * 0.9


def test_nothing_goes_on_the_wire_before_its_sending_mark_is_committed(
    sending_workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_subscribers(sending_workspace, people(30))
    engine = make_engine(load_settings(sending_workspace).database_url())
    earlier: dict[int, list[str]] = collections.defaultdict(list)
    problems: list[str] = []
    most_sending = [0]
    record = smtp_server._record

    def check(received: Received) -> None:
        # Runs in the server as the message ends, before it answers: a connection of
        # our own sees only what the sender committed.
        with engine.connect() as conn:
            state = {
                email: str(status) for email, status in conn.execute(select(Delivery.email, Delivery.status))
            }
        recipient = received.rcpt_tos[0]
        if state[recipient] != "sending":
            problems.append(f"{recipient} on the wire while {state[recipient]}")
        # The answer to the previous message on the connection is recorded with the next
        # mark but one: all the others before it are recorded.
        problems.extend(
            f"{recipient} on the wire while {before}, sent two or more before it on the same"
            f" connection, is {state[before]}"
            for before in earlier[received.connection][:-1]
            if state[before] != "sent"
        )
        earlier[received.connection].append(recipient)
        most_sending[0] = max(most_sending[0], sum(s == "sending" for s in state.values()))
        record(received)

    monkeypatch.setattr(smtp_server, "_record", check)
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    engine.dispose()
    assert code == 0, out
    assert len(smtp_server.messages) == 30 and problems == []
    # At most two per connection (concurrency 2): the one on the wire, the next one marked.
    assert 1 <= most_sending[0] <= 2 * 2
    assert set(statuses(sending_workspace).values()) == {"sent"}


# --- crashes and stops ------------------------------------------------------------


def start_send(*extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mailout", "send", "2019-01", "--list", "members", "--yes", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def slow_sending(workspace: Path, rate: int) -> None:
    edit_config(workspace, ("concurrency = 2", f"concurrency = 3\nrate_limit = {rate}"))


def test_kill_9_then_resume_sends_everyone_exactly_once_at_once(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    slow_sending(sending_workspace, 100)
    # The heartbeat alone would keep the dead process "sending" for a minute: a dead process
    # on this machine must be known at once.
    edit_config(sending_workspace, ("worker_timeout = 2", "worker_timeout = 60"))
    add_subscribers(sending_workspace, people(120))
    process = start_send()
    try:
        smtp_server.wait_for(40, timeout=30)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.stdout.close()  # type: ignore[union-attr]
    started = time.monotonic()
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    assert f"process {process.pid} on this machine is gone; resuming" in out
    assert time.monotonic() - started < 30, "resumed at once, not after sending.worker_timeout"
    code, report = run("status", "1", "--json")
    unknown = set(json.loads(report)["unknown"])
    assert len(unknown) <= 2 * 3, "at most two per connection (docs/reliability.md)"
    if unknown:
        assert f"{len(unknown)} in flight when the process stopped are unknown" in out
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    everyone = {e for e, _ in people(120)}
    assert set(received) | unknown == everyone, "nobody is skipped"
    duplicates = {e for e, n in received.items() if n > 1}
    assert duplicates <= unknown, "duplicates only among the reported unknowns"
    assert all(n == 1 for e, n in received.items() if e not in unknown)
    counts = json.loads(report)["counts"]
    assert sum(counts.values()) == 120


def test_kill_9_at_full_speed_leaves_at_most_two_unknown_per_connection_and_sends_none_twice(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    # No rate limit: the answer to one message is read while the next one is being marked,
    # so a kill finds up to two deliveries "sending" on each connection.
    edit_config(sending_workspace, ("concurrency = 2", "concurrency = 3"))
    add_subscribers(sending_workspace, people(400))
    process = start_send()
    try:
        smtp_server.wait_for(100, timeout=60)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.stdout.close()  # type: ignore[union-attr]
    left = collections.Counter(statuses(sending_workspace).values())
    assert left["sent"] + left["queued"] + left["claimed"] + left["sending"] == 400
    assert left["sent"] < 400 and left["sending"] <= 2 * 3, f"at most two per connection: {left}"
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0 and "finished" in out, out
    report = json.loads(run("status", "1", "--json")[1])
    unknown = set(report["unknown"])
    assert len(unknown) == left["sending"], "what was sending, and only that, is unknown"
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert [e for e, n in received.items() if n > 1] == [], "nobody got it twice"
    assert set(received) | unknown == {e for e, _ in people(400)}, "nobody is left out"
    assert report["counts"]["sent"] + len(unknown) == 400
    assert report["done"] == report["total"] == 400


def test_a_zombie_or_a_reused_pid_is_gone_too(
    sending_workspace: Path, smtp_server: SMTPServer, database_url: str
) -> None:
    """A killed sender its parent has not collected yet, and a PID taken by a new process, are gone."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux's /proc")
    slow_sending(sending_workspace, 50)
    edit_config(sending_workspace, ("worker_timeout = 2", "worker_timeout = 60"))
    add_subscribers(sending_workspace, people(60))
    process = start_send()
    try:
        smtp_server.wait_for(10, timeout=30)
        os.kill(process.pid, signal.SIGKILL)
        # Not collected (no wait()): a zombie, still in /proc, until the test ends.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{process.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline, "the killed sender became a zombie"
            time.sleep(0.05)
        # And a PID reused: a worker row with this test's own PID, recorded when another
        # process of that number ran (another start time).
        engine = make_engine(database_url)
        with engine.begin() as conn:
            conn.execute(
                insert(Worker).values(
                    id="reused",
                    dispatch_id=1,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    process=processes.identity()[:-1] + "x",
                    started_at=utcnow(),
                    heartbeat_at=utcnow(),
                )
            )
        engine.dispose()
        code, out = run("send", "2019-01", "--list", "members", "--yes")
    finally:
        process.wait(timeout=30)
        process.stdout.close()  # type: ignore[union-attr]
    assert code == 0, out
    assert f"process {process.pid} on this machine is gone; resuming" in out
    assert f"process {os.getpid()} on this machine is gone; resuming" in out
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    unknown = set(json.loads(run("status", "1", "--json")[1])["unknown"])
    assert set(received) | unknown == {e for e, _ in people(60)}
    assert all(n == 1 for e, n in received.items() if e not in unknown)


def test_sigterm_pauses_and_the_same_command_resumes(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    slow_sending(sending_workspace, 60)
    add_subscribers(sending_workspace, people(60))
    process = start_send()
    smtp_server.wait_for(10, timeout=30)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 3, output
    assert re.search(r"paused at \d+ of 60; run the same command to resume", output), output
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert set(received) == {e for e, _ in people(60)} and set(received.values()) == {1}
    code, report = run("status", "1", "--json")
    assert json.loads(report)["unknown"] == []


def test_two_processes_share_a_dispatch_without_duplicates(
    sending_workspace: Path, smtp_server: SMTPServer, database_url: str
) -> None:
    # Slow enough that the second process, started once the first has sent a few, finds
    # work left even on a busy machine (150 at 60/s finished before it had loaded).
    slow_sending(sending_workspace, 20)
    add_subscribers(sending_workspace, people(150))
    first = start_send()
    smtp_server.wait_for(5, timeout=30)
    second = subprocess.Popen(
        [sys.executable, "-m", "mailout", "worker", "--dispatch", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out_second, _ = second.communicate(timeout=120)
    first_was_running = first.poll() is None
    out_first, _ = first.communicate(timeout=120)
    if database_url.startswith("sqlite") and first_was_running:
        assert second.returncode == 1 and "another process is sending this dispatch" in out_second
    elif database_url.startswith("sqlite"):
        # The machine was so busy that the first had finished before the second had started;
        # then the second only found a finished dispatch (and must not have sent anything).
        assert second.returncode in (0, 1), out_second
    else:
        assert second.returncode in (0, 3), out_second
    assert first.returncode in (0, 3), out_first  # 3: the other process finished the last ones
    code, report = run("status", "1", "--json")
    assert code == 0, report
    assert json.loads(report)["state"] == "finished", report
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert set(received) == {e for e, _ in people(150)}
    assert set(received.values()) == {1}, "no recipient twice"


RACER = """
import os, sys
from pathlib import Path
from typing import Literal

from mailout.cli import main  # imported before the start: the racers differ by as little as can be

Path(sys.argv[1]).touch()
with open(sys.argv[2], "rb"):  # a FIFO: opening it waits until the test opens it for writing
    pass
sys.argv = ["mailout", "send", "2019-01", "--list", "members", "--yes", *sys.argv[3:]]
main()
"""


def race(workspace: Path, racers: int, *extra: str) -> list[tuple[int, str]]:
    """Start ``racers`` sends of 2019-01 to members released at one instant; return their (status, output)."""
    start = workspace / "start.fifo"
    os.mkfifo(start)
    ready = [workspace / f"ready-{n}" for n in range(racers)]
    senders = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(mark), str(start), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for mark in ready
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(mark.exists() for mark in ready):
            assert time.monotonic() < deadline, "the racers got ready"
            time.sleep(0.05)
        time.sleep(0.2)  # each has touched its mark: now it waits in open()
        with open(start, "wb"):
            time.sleep(0.5)  # every reader's open() returns while the FIFO has a writer
        outputs = [p.communicate(timeout=120)[0] for p in senders]
        return [(p.returncode, out) for p, out in zip(senders, outputs, strict=True)]
    finally:
        for p in senders:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_sends_started_together_write_one_dispatch_and_send_each_message_once(
    sending_workspace: Path, smtp_server: SMTPServer, database_url: str
) -> None:
    slow_sending(sending_workspace, 20)  # a few seconds: the others come while it sends
    add_subscribers(sending_workspace, people(80))
    results = race(sending_workspace, 4)
    engine = make_engine(database_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Dispatch)) == 1, "one dispatch"
    engine.dispose()
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert set(received) == {e for e, _ in people(80)} and set(received.values()) == {1}, received
    outputs = [out for _, out in results]
    assert sum("dispatch 1: 80 deliveries queued" in out for out in outputs) == 1, outputs
    for code, out in results:
        assert "Traceback" not in out, out
        if code == 0:
            # It wrote the dispatch, joined it, or took it up, and sent its share (PostgreSQL).
            assert "finished" in out or "other processes are sending the last messages" in out, out
            continue
        assert code == 1, out
        # Only one process may send a dispatch on SQLite; or it came when all was sent.
        [error] = [line for line in out.splitlines() if line.startswith("error: ")]
        assert (
            "another process is sending this dispatch: process" in error
            or "was sent to 'members' by another send since this one was planned" in error
            or "was sent to 'members' already" in error
        ), out
    joined = [out for out in outputs if "was written by another send a moment ago; joining it" in out]
    resumed = [out for out in outputs if "resuming dispatch 1 of 2019-01 to 'members'" in out]
    assert joined or resumed, "the others took up the one dispatch"
    code, report = run("status", "1", "--json")
    assert json.loads(report)["state"] == "finished"


def test_sends_again_started_together_write_one_more_dispatch(
    sending_workspace: Path, smtp_server: SMTPServer, database_url: str
) -> None:
    add_subscribers(sending_workspace, people(20))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    slow_sending(sending_workspace, 20)
    results = race(sending_workspace, 3, "--again")
    assert all("Traceback" not in out for _, out in results), results
    engine = make_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(select(Dispatch.id, Dispatch.generation).order_by(Dispatch.id)).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(1, 1), (2, 2)], "--again moved on once, not three times"
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert set(received.values()) == {2}, "each recipient: the first dispatch and one more"


def test_worker_exits_0_when_others_finish_and_3_when_paused(
    sending_workspace: Path, smtp_server: SMTPServer, database_url: str
) -> None:
    add_subscribers(sending_workspace, people(4))
    settings = load_settings(sending_workspace)
    engine = make_engine(database_url)
    issue = load_issue(sending_workspace / "issues" / "2019-01" / "issue.yaml")
    try:
        started = dispatching.start(engine, settings, dispatching.plan(engine, settings, issue, "members"))
        with engine.begin() as conn:  # another process, alive, has one message on the wire
            outbox.register_worker(conn, started.dispatch_id, "other")
            [claimed] = outbox.claim(conn, started.dispatch_id, "other", 1)
            outbox.mark_sending(conn, claimed.id, "other")
        code, out = run("worker", "--dispatch", str(started.dispatch_id))
        if database_url.startswith("sqlite"):
            assert code == 1 and "another process is sending this dispatch: process" in out, out
        else:
            assert code == 0, out
            assert (
                "3 sent + 0 failed + 0 skipped + 0 unknown = 3 of 4 recipients (1 to go)" in out
                and "other processes are sending the last messages" in out
            ), out
        with engine.begin() as conn:  # the other process is done
            outbox.mark_sent(conn, claimed.id, "250 ok")
            outbox.retire_worker(conn, "other")
        code, out = run("worker", "--dispatch", str(started.dispatch_id))
        assert code == 0, out
        assert "finished" in out or "nothing to send" in out
        # A dispatch that is paused for good reason leaves the worker with status 3.
        add_subscribers(sending_workspace, people(10))
        for address, _ in people(10):
            smtp_server.answer(address, 550, "5.7.1 SPF check failed")
        again = dispatching.plan(engine, settings, issue, "members", again=True)
        dispatching.start(engine, settings, again)
    finally:
        engine.dispose()
    code, out = run("worker")
    assert code == 3 and "paused: " in out and "SPF and DKIM" in out, out


def test_an_empty_list_is_refused_and_writes_no_dispatch(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 1, out
    assert "nobody is subscribed to 'members': no dispatch was written" in out
    assert "mailout subscribers sync" in out and "Traceback" not in out
    code, out = run("status", "--json")
    assert json.loads(out) == [], "no dispatch row"
    # Once people are added, the real send is not blocked by a dispatch to nobody.
    add_subscribers(sending_workspace, people(2))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0 and "dispatch 1: 2 deliveries queued" in out, out
    assert len(smtp_server.messages) == 2


def test_a_public_key_is_refused_for_a_real_send_and_short_keys_warned(
    sending_workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_subscribers(sending_workspace, people(2))
    [demo] = PUBLIC_KEYS
    monkeypatch.setenv("MAILOUT_SECRET_KEY", demo)
    for command in (
        ["send", "2019-01", "--list", "members", "--yes"],
        ["test", "2019-01", "--to", "me@example.org"],
    ):
        code, out = run(*command)
        assert code == 1, out
        assert "is a key published in mailout's own files" in out and "Traceback" not in out
    # An old key kept to verify old links signs nothing, but forged links would verify.
    monkeypatch.setenv("MAILOUT_SECRET_KEY", f"{SECRET_KEY},{demo}")
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 1 and "MAILOUT_SECRET_KEY (key 2) is a key published" in out
    assert statuses(sending_workspace) == {} and smtp_server.messages == [], "nothing written or sent"
    short = "s" * 20
    monkeypatch.setenv("MAILOUT_SECRET_KEY", short)
    code, out = run("test", "2019-01", "--to", "me@example.org")
    assert code == 0 and "warning: MAILOUT_SECRET_KEY has 20 characters" in out, out
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0 and "warning: MAILOUT_SECRET_KEY has 20 characters" in out, out
    assert len(smtp_server.messages) == 6, "4 test messages (2 segments × 2 languages), 2 sent"
    # A worker taking up a dispatch refuses the demo key too.
    settings = load_settings(sending_workspace)
    engine = make_engine(settings.database_url())
    issue = load_issue(sending_workspace / "issues" / "2019-01" / "issue.yaml")
    try:
        plan = dispatching.plan(engine, settings, issue, "members", again=True)
        dispatching.start(engine, settings, plan)
    finally:
        engine.dispose()
    monkeypatch.setenv("MAILOUT_SECRET_KEY", demo)
    code, out = run("worker")
    assert code == 1 and "is a key published in mailout's own files" in out, out
    assert len(smtp_server.messages) == 6


def test_the_local_outbox_may_use_the_demo_key(
    sending_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = sending_workspace / "mailout.toml"
    config.write_text(re.sub(r"\[smtp\][^\[]*", "", config.read_text(encoding="utf-8")), encoding="utf-8")
    [demo] = PUBLIC_KEYS
    monkeypatch.setenv("MAILOUT_SECRET_KEY", demo)
    add_subscribers(sending_workspace, people(2))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0 and "local outbox" in out and "warning" not in out, out
    assert len(list((sending_workspace / "outbox").glob("*.eml"))) == 2


def test_plain_http_links_are_warned_about_before_a_real_send(sending_workspace: Path) -> None:
    edit_config(sending_workspace, ("https://news.example", "http://news.example"))
    add_subscribers(sending_workspace, people(1))
    code, out = run("send", "2019-01", "--list", "members", "--dry-run")
    assert code == 0 and "should be https" in out


def test_a_dry_run_leaves_a_paused_dispatch_as_it_is(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    add_subscribers(sending_workspace, people(10))
    for address, _ in people(10):
        smtp_server.answer(address, 550, "5.7.1 SPF check failed", times=1)
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 3, out
    code, out = run("send", "2019-01", "--list", "members", "--dry-run")
    assert code == 0 and "resuming dispatch 1 (it was paused: " in out and "nothing was written" in out
    code, report = run("status", "1", "--json")
    assert json.loads(report)["state"] == "paused", "a dry run lifts no pause"


def test_status_lists_dispatches_and_shows_one_in_full(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    add_subscribers(sending_workspace, people(3), "public")
    smtp_server.answer("p1@example.org", 550, "5.1.1 no such mailbox")
    code, out = run("send", "2019-01", "--list", "public", "--yes")
    assert code == 0, out
    code, out = run("status")
    assert code == 0, out
    header, row, archive = out.splitlines()
    assert header.split() == ["id", "issue", "list", "created", "total", "sent", "failed", "state"]
    number, issue, list_name, _, *figures = row.split()
    assert (number, issue, list_name, figures) == ("1", "2019-01", "public", ["3", "2", "1", "finished"])
    assert archive == "archive: https://news.example/issues/ (answered by `mailout serve`)"
    code, out = run("status", "1")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "dispatch 1: 2019-01 to 'public' (finished)"
    assert lines[1] == "subject: Efus Newsletter – January 2019"
    assert (
        "  sent             2" in lines
        and "  failed           1" in lines
        and "  total            3" in lines
    )
    assert lines[-2:] == ["failures and deferrals by server reply:", "        1  550 5.1.1 no such mailbox"]
    code, out = run("status", "7")
    assert code == 1 and "no dispatch 7" in out


# --- sending again: unknown deliveries, policy refusals --------------------------


def report_of(dispatch: int = 1) -> dict[str, object]:
    code, out = run("status", str(dispatch), "--json")
    assert code == 0, out
    report: dict[str, object] = json.loads(out)
    return report


def assert_adds_up(report: dict[str, object], total: int) -> None:
    """A finished dispatch: sent + failed + skipped + unknown = recipients, and nothing else."""
    counts = report["counts"]
    assert isinstance(counts, dict)
    assert report["state"] == "finished", report
    assert counts["sent"] + counts["failed"] + counts["skipped"] + counts["unknown"] == total
    assert report["done"] == report["total"] == total


def kill_with_one_on_the_wire(workspace: Path, smtp_server: SMTPServer, stalled: str) -> None:
    """Start a send, kill -9 it while ``stalled``'s message is on the wire, let its heartbeat go stale."""
    smtp_server.stall(stalled, 60)  # its RCPT TO is answered only long after the kill
    process = start_send()
    try:
        deadline = time.monotonic() + 30
        while statuses(workspace).get(stalled) != "sending":
            assert time.monotonic() < deadline, f"{stalled} never went on the wire"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.stdout.close()  # type: ignore[union-attr]
    smtp_server.stalls.clear()
    time.sleep(2.5)  # the dead process's heartbeat goes stale (worker_timeout = 2)


def test_resend_unknown_after_kill_9_includes_what_the_dead_process_had_on_the_wire(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    slow_sending(sending_workspace, 50)
    add_subscribers(sending_workspace, people(40))
    kill_with_one_on_the_wire(sending_workspace, smtp_server, "p10@example.org")
    before = statuses(sending_workspace)
    on_the_wire = {e for e, s in before.items() if s == "sending"}
    assert "p10@example.org" in on_the_wire
    code, out = run("send", "2019-01", "--list", "members", "--resend-unknown", "--dry-run")
    assert code == 0, out
    assert f"unknown:    {len(on_the_wire)} (may have the message already)" in out, out
    assert statuses(sending_workspace) == before, "a dry run changes nothing"
    code, out = run("send", "2019-01", "--list", "members", "--resend-unknown", "--yes")
    assert code == 0, out
    assert f"{len(on_the_wire)} unknown deliveries queued again" in out
    report = report_of()
    assert report["unknown"] == [], "the same run sent again what the dead process had on the wire"
    assert_adds_up(report, 40)
    assert report["counts"]["sent"] == 40  # type: ignore[index]
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert set(received) == {e for e, _ in people(40)}, "nobody is left out"
    assert received["p10@example.org"] == 1, "stalled before DATA: it had not arrived"
    assert {e for e, n in received.items() if n > 1} <= on_the_wire, "duplicates only among the unknown"


def test_resend_unknown_reopens_a_finished_dispatch_after_kill_9(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    slow_sending(sending_workspace, 50)
    add_subscribers(sending_workspace, people(30))
    kill_with_one_on_the_wire(sending_workspace, smtp_server, "p5@example.org")
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0 and "finished" in out, out
    report = report_of()
    unknown = report["unknown"]
    assert isinstance(unknown, list) and "p5@example.org" in unknown
    assert_adds_up(report, 30)
    assert f" + {len(unknown)} unknown = 30 recipients" in out, "the ending adds up"
    code, out = run("status", "1")
    assert f"0 skipped + {len(unknown)} unknown = 30 recipients" in out, out
    assert "`mailout send 2019-01 --list members --resend-unknown` sends them again" in out
    code, out = run("send", "2019-01", "--list", "members", "--resend-unknown", "--dry-run")
    assert code == 0 and "reopening dispatch 1 of 2019-01 to 'members' (finished " in out, out
    assert f"unknown:    {len(unknown)} (may have the message already)" in out
    assert report_of() == report, "a dry run changes nothing"
    result = CliRunner().invoke(
        cli, ["send", "2019-01", "--list", "members", "--resend-unknown"], input="n\n"
    )
    assert result.exit_code == 1, result.output
    question = (
        f"Send again to {len(unknown)} recipients whose delivery is unknown? They may receive it twice."
    )
    assert question in result.output
    assert report_of() == report, "answering no changes nothing"
    sent_before = len(smtp_server.messages)
    result = CliRunner().invoke(
        cli, ["send", "2019-01", "--list", "members", "--resend-unknown"], input="y\n"
    )
    assert result.exit_code == 0, result.output
    after = report_of()
    assert after["unknown"] == [] and after["counts"]["sent"] == 30  # type: ignore[index]
    assert_adds_up(after, 30)
    resent = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages[sent_before:])
    assert resent == dict.fromkeys(unknown, 1), "only the unknown, once each"
    code, out = run("send", "2019-01", "--list", "members", "--resend-unknown", "--yes")
    assert code == 1 and "has no unknown delivery: nothing to send again" in out, out


def test_retry_policy_after_a_pause_sends_the_refused_and_never_a_bounce(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    add_subscribers(sending_workspace, people(10))
    for address, _ in people(9):
        smtp_server.answer(address, 550, "5.7.1 SPF check failed", times=1)
    smtp_server.answer("p9@example.org", 550, "5.1.1 no such mailbox")
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 3 and "paused" in out, out
    refused = {e for e, s in statuses(sending_workspace).items() if s == "failed"} - {"p9@example.org"}
    assert len(refused) >= 3
    assert f"{len(refused)} refused by policy (5.7.x): once the cause is fixed," in out
    # The sender domain's SPF record is fixed; the mailbox that does not exist still does not.
    smtp_server.rules.clear()
    smtp_server.answer("p9@example.org", 550, "5.1.1 no such mailbox")
    code, out = run("send", "2019-01", "--list", "members", "--retry-policy", "--dry-run")
    assert code == 0 and f"refused:    {len(refused)} by policy (5.7.x)" in out, out
    assert report_of()["state"] == "paused", "a dry run changes nothing"
    code, out = run("send", "2019-01", "--list", "members", "--retry-policy", "--yes")
    assert code == 0, out
    assert f"{len(refused)} deliveries refused by policy queued again" in out
    states = statuses(sending_workspace)
    assert states == {**dict.fromkeys((e for e, _ in people(9)), "sent"), "p9@example.org": "failed"}
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert received == dict.fromkeys((e for e, _ in people(9)), 1)
    report = report_of()
    assert_adds_up(report, 10)
    assert report["refused"] == 0
    engine = make_engine(load_settings(sending_workspace).database_url())
    with transaction(engine) as session:
        bounced = session.scalar(select(Subscriber.status).where(Subscriber.email == "p9@example.org"))
    engine.dispose()
    assert bounced is SubscriberStatus.BOUNCED, "a 5.1.x stays failed and suppressed"
    code, out = run("send", "2019-01", "--list", "members", "--retry-policy", "--yes")
    assert code == 1 and "no delivery refused by policy (5.7.x)" in out, out


def test_retry_policy_reopens_a_finished_dispatch_after_asking(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    edit_config(sending_workspace, ("policy_failures_pause = 3", "policy_failures_pause = 50"))
    add_subscribers(sending_workspace, people(8))
    for address in ("p1@example.org", "p4@example.org", "p6@example.org"):
        smtp_server.answer(address, 554, "5.7.1 message refused by policy", times=1)
    smtp_server.answer("p2@example.org", 550, "5.1.1 no such mailbox")
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0 and "4 sent + 4 failed + 0 skipped + 0 unknown = 8 recipients" in out, out
    code, out = run("status", "1")
    assert "3 refused by policy (5.7.x): once the cause is fixed," in out, out
    assert "`mailout send 2019-01 --list members --retry-policy` sends them again" in out
    report = report_of()
    assert report["refused"] == 3
    assert_adds_up(report, 8)
    code, out = run("send", "2019-01", "--list", "members", "--again", "--retry-policy")
    assert code == 2 and "--again writes a new dispatch" in out, out
    result = CliRunner().invoke(cli, ["send", "2019-01", "--list", "members", "--retry-policy"], input="n\n")
    assert result.exit_code == 1 and "Send again to 3 recipients refused by policy (5.7.x)?" in result.output
    assert report_of() == report, "answering no changes nothing"
    result = CliRunner().invoke(cli, ["send", "2019-01", "--list", "members", "--retry-policy"], input="y\n")
    assert result.exit_code == 0, result.output
    assert "7 sent + 1 failed + 0 skipped + 0 unknown = 8 recipients" in result.output
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert received == {e: 1 for e, _ in people(8) if e != "p2@example.org"}
    after = report_of()
    assert after["refused"] == 0 and after["failures"] == [{"reply": "550 5.1.1 no such mailbox", "count": 1}]
    assert_adds_up(after, 8)


# --- the local outbox knows what was written --------------------------------------


def use_the_outbox(workspace: Path, rate: int = 0) -> Path:
    """Send to the local outbox folder instead of the SMTP server; return the folder."""
    config = workspace / "mailout.toml"
    text = config.read_text(encoding="utf-8").replace('host = "127.0.0.1"', 'host = ""')
    if rate:
        text = text.replace("concurrency = 2", f"concurrency = 3\nrate_limit = {rate}")
    config.write_text(text, encoding="utf-8")
    return workspace / "outbox"


def written(folder: Path) -> collections.Counter[str]:
    """Count the complete messages in the outbox per recipient."""
    return collections.Counter(
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["To"].addresses[0].addr_spec
        for path in folder.glob("*.eml")
        if not path.name.startswith(".")  # a temporary file, not a message
    )


def test_the_outbox_settles_what_a_killed_send_left_on_the_wire(sending_workspace: Path) -> None:
    folder = use_the_outbox(sending_workspace)
    add_subscribers(sending_workspace, people(6))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    # As a process killed at the two moments that matter leaves it: p1's file complete,
    # not recorded yet; p3's still a temporary file. p4 claimed, p5 waiting.
    engine = make_engine(load_settings(sending_workspace).database_url())
    with transaction(engine) as session:
        ids = dict(session.execute(select(Delivery.email, Delivery.id)).all())
        key = session.scalar(select(Dispatch.key))
        for address, status in [("p1", "sending"), ("p3", "sending"), ("p4", "claimed"), ("p5", "queued")]:
            session.execute(
                update(Delivery)
                .where(Delivery.email == f"{address}@example.org")
                .values(status=status, worker="gone:4744:abc" if status != "queued" else "")
            )
        session.execute(update(Dispatch).values(finished_at=None))
    engine.dispose()
    for address in ("p3", "p4", "p5"):
        (folder / f"{key}.{ids[f'{address}@example.org']}_efus.example.eml").unlink()
    leftover = folder / f".tmp-{key}.{ids['p3@example.org']}_efus.example-x1y2z3.eml"
    leftover.write_bytes(b"Message-ID: <half")
    assert written(folder) == dict.fromkeys(("p0@example.org", "p1@example.org", "p2@example.org"), 1)
    code, out = run("send", "2019-01", "--list", "members", "--resend-unknown", "--dry-run")
    assert code == 0 and "unknown:    0 " in out, "the outbox knows: nothing is unknown"
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    assert not leftover.exists() and not list(folder.glob(".tmp-*")), "the temporary file is cleaned up"
    assert written(folder) == {e: 1 for e, _ in people(6)}, "p1 kept its one file; p3, p4, p5 got theirs"
    report = report_of()
    assert report["unknown"] == [] and report["counts"]["sent"] == 6  # type: ignore[index]
    assert_adds_up(report, 6)
    assert statuses(sending_workspace) == {e: "sent" for e, _ in people(6)}


def test_kill_9_of_a_send_into_the_outbox_leaves_nothing_unknown(sending_workspace: Path) -> None:
    folder = use_the_outbox(sending_workspace)
    add_subscribers(sending_workspace, people(400))
    process = start_send()
    try:
        deadline = time.monotonic() + 60
        while len(list(folder.glob("[!.]*.eml"))) < 50:
            assert time.monotonic() < deadline and process.poll() is None, "the send ended too soon"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.stdout.close()  # type: ignore[union-attr]
    time.sleep(2.5)  # the dead process's heartbeat goes stale (worker_timeout = 2)
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    report = report_of()
    assert report["unknown"] == [], "the outbox never produces unknown"
    assert_adds_up(report, 400)
    assert not list(folder.glob(".tmp-*"))
    assert written(folder) == {e: 1 for e, _ in people(400)}, "everyone exactly once"


def test_a_pause_stops_every_sender_and_a_worker_leaves_a_paused_dispatch_alone(
    sending_workspace: Path, smtp_server: SMTPServer, database_url: str
) -> None:
    # One process pauses the dispatch (5.7.x refusals, a refused login): a second process
    # sending it must stop too, not go on into the same refusals; and `mailout worker`
    # must not take up a paused dispatch, only `send` (the operator, after the fix) may.
    slow_sending(sending_workspace, 20)
    add_subscribers(sending_workspace, people(200))
    first = start_send()
    smtp_server.wait_for(5, timeout=30)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            outbox.pause(conn, 1, "paused by the test: 5.7.1 refused")
        out, _ = first.communicate(timeout=60)
        assert first.returncode == 3, out
        assert "paused: paused by the test: 5.7.1 refused" in out, out
        sent = len(smtp_server.messages)
        assert sent < 200, "the sender stopped at the pause"
        code, out = run("worker")
        assert code == 3, out
        assert "is paused: paused by the test: 5.7.1 refused" in out, out
        assert "mailout send 2019-01 --list members` resumes it" in out
        assert len(smtp_server.messages) == sent, "the worker sent nothing"
        code, out = run("send", "2019-01", "--list", "members", "--yes")
        assert code == 0, out
    finally:
        engine.dispose()
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert set(received) == {e for e, _ in people(200)} and set(received.values()) == {1}


def test_again_on_an_unfinished_dispatch_says_it_takes_that_one_up(
    sending_workspace: Path, smtp_server: SMTPServer, database_url: str
) -> None:
    add_subscribers(sending_workspace, people(3))
    settings = load_settings(sending_workspace)
    engine = make_engine(database_url)
    issue = load_issue(sending_workspace / "issues" / "2019-01" / "issue.yaml")
    try:  # written, never run: as a send stopped before its first message leaves it
        dispatching.start(engine, settings, dispatching.plan(engine, settings, issue, "members"))
        code, out = run("send", "2019-01", "--list", "members", "--yes", "--again")
        assert code == 0, out
        assert "--again ignored: dispatch 1 of 2019-01 to 'members' is not finished" in out, out
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Dispatch)) == 1
    finally:
        engine.dispose()
    assert sorted(r.rcpt_tos[0] for r in smtp_server.messages) == sorted(e for e, _ in people(3))


# --- every reader's language -------------------------------------------------------


def in_languages(monkeypatch: pytest.MonkeyPatch, *languages: str) -> None:
    """Make the commands of this process read the example issue as written in ``languages``."""
    real = State.issue

    def issue(self: State, name: str) -> Issue:
        return dataclasses.replace(real(self, name), languages=languages)

    monkeypatch.setattr(State, "issue", issue)


def add_readers(workspace: Path, rows: list[tuple[str, str]], list_name: str = "members") -> None:
    """Import (address, language) rows into ``list_name``."""
    path = workspace / f"{list_name}-languages.csv"
    path.write_text("email,language\n" + "".join(f"{e},{lang}\n" for e, lang in rows), encoding="utf-8")
    code, out = run("subscribers", "import", str(path), "--list", list_name)
    assert code == 0, out


def test_test_sends_each_variant_in_each_language_or_the_one_asked_for(
    sending_workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_languages(monkeypatch, "en", "fr")
    code, out = run("test", "2019-01", "--to", "me@example.org")
    assert code == 0, out
    sent = sorted((r.message()["Subject"], r.message()["Content-Language"]) for r in smtp_server.messages)
    assert sent == [
        ("[TEST member en] Efus Newsletter – January 2019", "en"),
        ("[TEST member fr] Lettre d'information de l'Efus – janvier 2019", "fr"),
        ("[TEST public en] Efus Newsletter – January 2019", "en"),
        ("[TEST public fr] Lettre d'information de l'Efus – janvier 2019", "fr"),
    ]
    assert "[TEST member fr] to me@example.org: 250" in out
    code, out = run("test", "2019-01", "--to", "me@example.org", "--language", "fr_BE")
    assert code == 0, out
    assert "2019-01 is not written in fr-BE: a reader of fr-BE gets fr" in out
    assert sorted(r.message()["Subject"][:16] for r in smtp_server.messages[4:]) == [
        "[TEST member fr]",
        "[TEST public fr]",
    ]
    code, out = run("test", "2019-01", "--to", "me@example.org", "--language", "français")
    assert code == 1 and "--language 'français' is not a language tag" in out
    assert len(smtp_server.messages) == 6


def test_send_and_status_say_how_many_get_each_language(
    sending_workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_languages(monkeypatch, "en", "fr")
    add_readers(
        sending_workspace,
        [("a@example.org", "fr"), ("b@example.org", "fr-BE"), ("c@example.org", ""), ("d@example.org", "de")],
    )
    code, out = run("send", "2019-01", "--list", "members", "--dry-run")
    assert code == 0, out
    assert "languages:  en 2, fr 2" in out.splitlines()
    assert "subject fr: Lettre d'information de l'Efus – janvier 2019" in out.splitlines()
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0 and "finished" in out, out
    code, out = run("status", "1")
    assert "languages: en 2, fr 2" in out.splitlines()
    assert report_of()["languages"] == {"en": 2, "fr": 2}
    received = {r.rcpt_tos[0]: r.message()["Content-Language"] for r in smtp_server.messages}
    assert received == {
        "a@example.org": "fr",
        "b@example.org": "fr",
        "c@example.org": "en",
        "d@example.org": "en",
    }


#: A send of the example issue written in English and French (issue files in several
#: languages are FORMAT's part of issue 14: here the issue is changed as it is loaded).
SEND_IN_TWO_LANGUAGES = """
import dataclasses
from pathlib import Path
from mailout import dispatching
from mailout.config import load_settings
from mailout.db import make_engine
from mailout.issues import Issue, load_issue
from mailout.languages import canonical, choose
from mailout.tokens import Signer

settings = load_settings(Path.cwd())
engine = make_engine(settings.database_url())
issue = load_issue(Path("issues/2019-01/issue.yaml"))
issue = dataclasses.replace(issue, languages=("en", "fr"))
started = dispatching.start(engine, settings, dispatching.plan(engine, settings, issue, "members"))
dispatching.run(engine, settings, started.dispatch_id, Signer.from_secret(settings.secret_key))
"""


def test_kill_9_in_a_dispatch_in_two_languages_resumes_each_reader_in_their_language_once(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    slow_sending(sending_workspace, 100)
    edit_config(sending_workspace, ("worker_timeout = 2", "worker_timeout = 60"))
    languages = ["fr", "en", "fr-BE", "", "de"]
    readers = [(f"p{i}@example.org", languages[i % len(languages)]) for i in range(100)]
    add_readers(sending_workspace, readers)
    wanted = {e: "fr" if lang.startswith("fr") else "en" for e, lang in readers}
    process = subprocess.Popen(
        [sys.executable, "-c", SEND_IN_TWO_LANGUAGES],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        smtp_server.wait_for(30, timeout=30)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.stdout.close()  # type: ignore[union-attr]
    assert len(smtp_server.messages) < 100, "killed half-way"
    # Taken up by `mailout send` of the issue file as it is (one language): the dispatch's
    # frozen variants go out, each reader's language as chosen when it was written.
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    assert f"process {process.pid} on this machine is gone; resuming" in out
    report = report_of()
    unknown = set(report["unknown"])  # type: ignore[arg-type]
    assert len(unknown) <= 2 * 3
    received = collections.defaultdict(list)
    for r in smtp_server.messages:
        message = r.message()
        html = next(p for p in message.iter_parts() if p.get_content_type() == "text/html").get_content()
        assert f'lang="{message["Content-Language"]}"' in html
        received[r.rcpt_tos[0]].append(message["Content-Language"])
    assert set(received) | unknown == set(wanted), "nobody is left out"
    assert all(len(got) == 1 for e, got in received.items() if e not in unknown), "nobody got it twice"
    assert {e: got[0] for e, got in received.items()} == {e: wanted[e] for e in received}
    assert report["languages"] == {"en": 60, "fr": 40}


def demo_commands() -> list[list[str]]:
    """Return the mailout commands of the Makefile's ``demo`` target, in order."""
    recipe = (REPO / "Makefile").read_text(encoding="utf-8").split("\ndemo: $(STAMP)\n", 1)[1]
    lines = []
    for line in recipe.splitlines():
        if not line.startswith("\t"):
            break
        if line.startswith("\t$(BIN)/mailout "):
            lines.append(line.removeprefix("\t$(BIN)/mailout ").split())
    return lines


def test_the_demo_sends_each_reader_the_issue_in_their_language(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make demo`'s commands on a copy of the repository's workspace: every .eml in its reader's language."""
    root = tmp_path / "demo"
    root.mkdir()
    shutil.copy(REPO / "mailout.toml", root)
    for folder in ("issues", "subscribers", "templates"):
        shutil.copytree(REPO / folder, root / folder)
    monkeypatch.chdir(root)
    monkeypatch.setenv("MAILOUT_SECRET_KEY", SECRET_KEY)
    commands = demo_commands()
    assert ["send", "2019-01", "--list", "members", "--yes", "--again"] in commands
    assert ["send", "2019-01", "--list", "public", "--yes", "--again"] in commands
    for command in commands:
        code, out = run(*command)
        assert code == 0, (command, out)
        if command[:2] == ["subscribers", "sync"]:
            assert re.search(r"public\.csv:\d+: language 'norsk' is not a language tag", out), out
    settings = load_settings(root)
    issue = load_issue(root / "issues" / "2019-01" / "issue.yaml")
    written_in = dispatching.issue_languages(issue, settings)
    language_of = {}
    for name in ("members", "public"):
        with (root / "subscribers" / f"{name}.csv").open(encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                address = (row.get("email") or row.get("E-mail") or "").strip()
                language = (row.get("language") or row.get("Language") or "").strip()
                with contextlib.suppress(InvalidSubscriber):  # rows the import refuses
                    if canonical(language) is not None or not language:
                        key = normalise_email(address).lower()
                        language_of[key] = choose(language, written_in, written_in[0])
    found: dict[str, int] = collections.Counter()
    dispatched = 0
    for path in sorted((root / "outbox").glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        html = next(p for p in message.iter_parts() if p.get_content_type() == "text/html").get_content()
        [lang] = re.findall(r'<html[^>]* lang="([^"]+)"', html)
        assert message["Content-Language"] == lang, path.name
        found[lang] += 1
        subject = message["Subject"]
        if subject.startswith("[TEST"):
            continue
        dispatched += 1
        wanted = language_of[message["To"].addresses[0].addr_spec.lower()]
        assert lang == wanted, (message["To"], lang, wanted)
        assert subject == issue.localized(wanted).subject
    assert dispatched >= 40
    assert language_of["sophie.lambert@example.be"] == choose("fr-BE", written_in, written_in[0])
    assert language_of["aoife.byrne@example.ie"] == written_in[0], "a language the issue lacks: the default"
    assert language_of["oskar.lind@example.org"] == written_in[0], "no language: the default"
    if "fr" in written_in:  # the example issue in French (FORMAT's part of issue 14)
        assert set(found) >= {"en", "fr"}
