"""The send loop facing unclear answers, and failures before a message reaches the server.

Every fault comes from the real test server on loopback (or a real folder), on SQLite
and PostgreSQL; what is checked is what the server received and what the database says.
"""

from __future__ import annotations

import collections
import email
import email.policy
import itertools
import json
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailout.config import load_settings
from mailout.db import make_engine, transaction
from mailout.models import Delivery, DeliveryStatus
from tests.conftest import edit_config
from tests.smtpserver import SMTPServer, free_port, tls_available
from tests.test_sending import add_subscribers, people, run, statuses

pytestmark = pytest.mark.slow

SEND = ("send", "2019-01", "--list", "members", "--yes")


def deliveries(workspace: Path) -> dict[str, tuple[str, str, int]]:
    """Return each delivery's (status, reply, attempts), by address."""
    engine = make_engine(load_settings(workspace).database_url())
    with transaction(engine) as session:
        rows = session.execute(select(Delivery.email, Delivery.status, Delivery.reply, Delivery.attempts))
        found = {address: (str(status), reply, attempts) for address, status, reply, attempts in rows}
    engine.dispose()
    return found


def report(dispatch: int = 1) -> dict[str, Any]:
    code, out = run("status", str(dispatch), "--json")
    assert code == 0, out
    found: dict[str, Any] = json.loads(out)
    return found


def everyone(n: int) -> set[str]:
    return {address for address, _ in people(n)}


def received(server: SMTPServer) -> collections.Counter[str]:
    return collections.Counter(r.rcpt_tos[0] for r in server.messages)


# --- unclear answers: unknown, never sent twice -----------------------------------------


@pytest.mark.parametrize("record", [False, True], ids=["not-kept", "kept"])
def test_drops_after_the_final_dot_are_unknown_and_never_sent_twice(
    sending_workspace: Path, smtp_server: SMTPServer, record: bool
) -> None:
    add_subscribers(sending_workspace, people(120))
    smtp_server.drop_every(10, record=record)
    code, out = run(*SEND)
    assert code == 0, out
    dropped = {r.rcpt_tos[0] for r in smtp_server.dropped}
    assert len(dropped) == 12, "every 10th of 120 messages, each tried once"
    found = deliveries(sending_workspace)
    assert {a for a, (status, _, _) in found.items() if status == DeliveryStatus.UNKNOWN} == dropped
    assert {a for a, (status, _, _) in found.items() if status == DeliveryStatus.SENT} == everyone(
        120
    ) - dropped
    for address in dropped:
        _, reply, attempts = found[address]
        assert reply.startswith("connection lost after the end of the message (") and attempts == 1
        assert reply.endswith("; the server may have accepted it")
    got = received(smtp_server)
    assert set(got.values()) == {1}, "nobody got two copies"
    assert set(got) == (everyone(120) if record else everyone(120) - dropped)
    assert "12 unknown (no answer from the server after the whole message" in out
    assert "resend with --resend-unknown" in out and "finished" in out
    status = report()
    assert status["state"] == "finished" and set(status["unknown"]) == dropped
    assert status["counts"]["unknown"] == 12 and sum(status["counts"].values()) == status["total"] == 120
    code, text = run("status", "1")
    assert f"  {'unknown':<9}{12:>9,}" in text.splitlines()
    assert "--list members --resend-unknown` sends them again" in text


def test_answers_slower_than_data_timeout_are_unknown(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    edit_config(sending_workspace, ("timeout = 5\n", "timeout = 5\ndata_timeout = 0.3\n"))
    add_subscribers(sending_workspace, people(60))
    smtp_server.slow_answer(1.0, every=10)
    code, out = run(*SEND)
    assert code == 0, out
    slowed = {r.rcpt_tos[0] for r in smtp_server.slowed}
    assert len(slowed) == 6
    found = deliveries(sending_workspace)
    assert {a for a, (status, _, _) in found.items() if status == DeliveryStatus.UNKNOWN} == slowed
    assert {a for a, (status, _, _) in found.items() if status == DeliveryStatus.SENT} == everyone(
        60
    ) - slowed
    assert {found[a][1] for a in slowed} == {
        "no answer to the end of the message after 0.3 s; the server may have accepted it"
    }
    got = received(smtp_server)
    assert set(got) == everyone(60) and set(got.values()) == {1}, "the server kept each once"
    assert sum(report()["counts"].values()) == 60


def test_a_slow_answer_within_data_timeout_is_awaited(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    # Slower than the per-command timeout, but the end of a message has data_timeout (600 s).
    edit_config(sending_workspace, ("timeout = 5\n", "timeout = 0.3\n"))
    add_subscribers(sending_workspace, people(20))
    smtp_server.slow_answer(0.8, every=5)
    code, out = run(*SEND)
    assert code == 0, out
    assert len(smtp_server.slowed) == 4
    assert set(statuses(sending_workspace).values()) == {"sent"}
    got = received(smtp_server)
    assert set(got) == everyone(20) and set(got.values()) == {1}


# --- an address the transport cannot carry -----------------------------------------------


def test_an_address_the_server_cannot_take_fails_alone(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    add_subscribers(sending_workspace, [("jürgen@example.org", "Jürgen"), *people(4)])
    code, out = run(*SEND)
    assert code == 0, out
    assert "finished" in out and "1 failed" in out
    found = deliveries(sending_workspace)
    status, reply, _ = found.pop("jürgen@example.org")
    assert status == DeliveryStatus.FAILED and "does not offer SMTPUTF8" in reply
    assert {status for status, _, _ in found.values()} == {DeliveryStatus.SENT}
    assert set(received(smtp_server)) == everyone(4)


# --- nothing can be sent: refused before a dispatch is written --------------------------


def one_error_line(out: str) -> str:
    """Return the only error line of a command's output (and check there is no traceback)."""
    errors = [line for line in out.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in out, out
    return errors[0]


@pytest.mark.parametrize("fault", ["wrong-password", "no-starttls", "connection-refused", "outbox-blocked"])
def test_a_transport_that_cannot_send_creates_no_dispatch(
    sending_workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    add_subscribers(sending_workspace, people(3))
    port = f"port = {smtp_server.port}\n"
    with ExitStack() as stack:
        if fault == "wrong-password":
            server = stack.enter_context(
                SMTPServer(username="news", password="s3cret-pass", auth_require_tls=False)
            )
            edit_config(sending_workspace, (port, f'port = {server.port}\nusername = "news"\n'))
            monkeypatch.setenv("MAILOUT_SMTP_PASSWORD", "wrong")
            expected = "login refused: 535 "
        elif fault == "no-starttls":
            edit_config(sending_workspace, ('security = "plain"', 'security = "starttls"'))
            expected = "does not offer STARTTLS"
        elif fault == "connection-refused":
            edit_config(sending_workspace, (port, f"port = {free_port()}\n"))
            expected = "cannot connect: "
        else:
            edit_config(sending_workspace, ('host = "127.0.0.1"\n', ""))
            (sending_workspace / "outbox").write_text("a file where the folder goes", encoding="utf-8")
            expected = "error: local outbox outbox/: cannot write: "
        code, out = run(*SEND)
    assert code == 1, out
    assert expected in one_error_line(out)
    code, listing = run("status", "--json")
    assert json.loads(listing) == [], "no dispatch was written"
    assert smtp_server.messages == []


def test_resuming_with_a_broken_setting_claims_nothing(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    add_subscribers(sending_workspace, people(10))
    for address, _ in people(10):
        smtp_server.answer(address, 550, "5.7.1 SPF check failed", times=1)
    code, out = run(*SEND)
    assert code == 3 and "paused" in out, out
    before = deliveries(sending_workspace)
    edit_config(sending_workspace, ('security = "plain"', 'security = "starttls"'))
    for command in (SEND, ("worker",)):
        code, out = run(*command)
        assert code == 1 and "does not offer STARTTLS" in one_error_line(out)
    assert deliveries(sending_workspace) == before, "nothing claimed, nothing changed"
    assert report()["state"] == "paused", "the pause is not lifted"
    edit_config(sending_workspace, ('security = "starttls"', 'security = "plain"'))
    smtp_server.rules.clear()
    code, out = run(*SEND)
    assert code == 0, out
    failed = {a for a, (status, _, _) in before.items() if status == DeliveryStatus.FAILED}
    got = received(smtp_server)
    assert set(got) == everyone(10) - failed and set(got.values()) == {1}


# --- nothing can be sent any more, mid-dispatch: paused, nobody left behind -------------


def check_paused_with_nobody_behind(workspace: Path, out: str, expected: str) -> None:
    """Check the dispatch paused saying why, with nothing in flight and no attempt counted in the queue."""
    paused = [line for line in out.splitlines() if line.startswith("paused: ")]
    assert len(paused) == 1 and expected in paused[0], out
    assert paused[0].endswith("; fix it, then run the same command to resume")
    found = deliveries(workspace)
    states = collections.Counter(status for status, _, _ in found.values())
    assert states[DeliveryStatus.SENDING] == states[DeliveryStatus.UNKNOWN] == 0, states
    queued = [attempts for status, _, attempts in found.values() if status == DeliveryStatus.QUEUED]
    assert queued and set(queued) == {0}, (
        "the message that could not go out is queued, its attempt not counted"
    )
    assert report()["state"] == "paused"


@pytest.mark.parametrize("fault", ["login-refused", "starttls-withheld"])
def test_a_server_that_stops_taking_connections_mid_dispatch_leaves_nobody_behind(
    sending_workspace: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    if fault == "starttls-withheld" and not tls_available():
        pytest.skip("no certificate tooling (cryptography or openssl)")
    config = sending_workspace / "mailout.toml"
    old_port = next(
        line for line in config.read_text(encoding="utf-8").splitlines() if line.startswith("port")
    )
    if fault == "login-refused":
        server = SMTPServer(username="news", password="s3cret-pass", auth_require_tls=False)
    else:
        server = SMTPServer(tls=True)
    with server:
        if fault == "login-refused":
            monkeypatch.setenv("MAILOUT_SMTP_PASSWORD", "s3cret-pass")
            edit_config(sending_workspace, (old_port, f'port = {server.port}\nusername = "news"'))
            expected = "login refused: 535 "
        else:
            assert server.cert_file is not None
            monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_file))
            edit_config(
                sending_workspace,
                (old_port, f"port = {server.port}"),
                ('security = "plain"', 'security = "starttls"'),
                ('host = "127.0.0.1"', 'host = "localhost"'),
            )
            expected = "does not offer STARTTLS"
        add_subscribers(sending_workspace, people(60))
        server.limit_per_connection(4)  # new connections, so that the fault is met mid-dispatch
        if fault == "login-refused":
            server.refuse_logins(after=15)
        else:
            server.withhold_starttls(after=15)
        code, out = run(*SEND)
        assert code == 3, out
        check_paused_with_nobody_behind(sending_workspace, out, expected)
        assert 15 <= len(server.messages) < 60
        server.repair()
        code, out = run(*SEND)
        assert code == 0 and "resuming dispatch 1" in out, out
        got = received(server)
    assert set(got) == everyone(60) and set(got.values()) == {1}, "everyone once"
    status = report()
    assert status["counts"]["sent"] == sum(status["counts"].values()) == status["total"] == 60


def test_an_outbox_that_stops_taking_files_mid_dispatch_leaves_nobody_behind(sending_workspace: Path) -> None:
    edit_config(
        sending_workspace,
        ('host = "127.0.0.1"\n', ""),
        ("concurrency = 2", "concurrency = 2\nrate_limit = 40"),
    )
    add_subscribers(sending_workspace, people(80))
    outbox, moved = sending_workspace / "outbox", sending_workspace / "outbox-moved"

    def written() -> list[Path]:
        return [p for p in outbox.iterdir() if not p.name.startswith(".")] if outbox.is_dir() else []

    def block() -> None:
        # As the disk filling up would, but as root too: the folder is now a file.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(written()) < 20:
            time.sleep(0.005)
        outbox.rename(moved)
        outbox.write_text("a file where the folder was", encoding="utf-8")

    blocker = threading.Thread(target=block)
    blocker.start()
    code, out = run(*SEND)
    blocker.join()
    assert code == 3, out
    check_paused_with_nobody_behind(sending_workspace, out, "local outbox outbox/: cannot write ")
    outbox.unlink()
    moved.rename(outbox)
    code, out = run(*SEND)
    assert code == 0, out
    recipients = collections.Counter(
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["To"].addresses[0].addr_spec
        for path in written()
    )
    assert set(recipients) == everyone(80) and set(recipients.values()) == {1}
    status = report()
    assert status["counts"]["sent"] == sum(status["counts"].values()) == status["total"] == 80


@pytest.mark.parametrize("work", [0.0, 0.02])
def test_one_sender_reaches_the_rate_limit_whatever_its_work_between_slot_and_wire(work: float) -> None:
    # Building and marking a message takes time after its slot; counting it twice would
    # keep a single connection (or several processes of one each) under the limit.
    from mailout.mailer import RateLimit

    rate, stop = RateLimit(20.0), threading.Event()
    started = time.monotonic()
    sent: list[float] = []
    for _ in range(21):
        slot = rate.wait(stop)
        time.sleep(work)
        rate.went(slot)
        sent.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= 0.05 * 0.9, "never closer together than the limit"
    assert sent[-1] - started < 20 * 0.05 + work + 0.5, "and not slower than it: 20 intervals"


def test_a_message_sent_late_after_its_slot_keeps_the_next_an_interval_away() -> None:
    from mailout.mailer import RateLimit

    rate, stop = RateLimit(10.0), threading.Event()
    slot = rate.wait(stop)
    time.sleep(0.35)  # the connection was being opened: it went out long after its slot
    rate.went(slot)
    went = time.monotonic()
    rate.wait(stop)
    assert time.monotonic() - went >= 0.1 * 0.9
