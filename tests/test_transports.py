"""Transports against the real test server: what each outcome of a message is, and the check."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from mailout.config import Smtp
from mailout.transports import (
    OutboxTransport,
    PermanentFailure,
    SmtpConnection,
    SmtpTransport,
    TemporaryFailure,
    TransportUnavailable,
    UnclearOutcome,
)
from tests.smtpserver import SMTPServer, free_port, tls_available
from tests.test_smtpserver import ADA, BOB, SENDER, make_message


def settings(server: SMTPServer, **changes: Any) -> Smtp:
    """Return SMTP settings for the test server, plain on loopback, with ``changes``."""
    smtp = Smtp(host=server.host, port=server.port, security="plain", timeout=5.0, data_timeout=5.0)
    return dataclasses.replace(smtp, **changes)


# --- what one message's outcome is -------------------------------------------------


@pytest.mark.parametrize("record", [False, True], ids=["not-kept", "kept"])
def test_a_drop_after_the_final_dot_is_unclear(record: bool) -> None:
    with SMTPServer() as server:
        connection = SmtpConnection(settings(server))
        server.drop_after(0, record=record)
        with pytest.raises(UnclearOutcome) as unclear:
            connection.send(SENDER, ADA, make_message(ADA))
        assert str(unclear.value).startswith("connection lost after the end of the message (")
        assert str(unclear.value).endswith("; the server may have accepted it")
        assert len(server.messages) == (1 if record else 0), "both cases are unclear to the client"
        reply = connection.send(SENDER, BOB, make_message(BOB))  # a new connection
        assert reply.code == 250 and server.connections == 2
        connection.close()


def test_no_answer_to_the_final_dot_within_data_timeout_is_unclear() -> None:
    with SMTPServer() as server:
        server.slow_answer(3)
        connection = SmtpConnection(settings(server, data_timeout=0.4))
        started = time.monotonic()
        with pytest.raises(UnclearOutcome) as unclear:
            connection.send(SENDER, ADA, make_message(ADA))
        assert 0.4 <= time.monotonic() - started < 2.5, "gave up after data_timeout, without a QUIT"
        assert str(unclear.value) == (
            "no answer to the end of the message after 0.4 s; the server may have accepted it"
        )
        assert [m.rcpt_tos for m in server.messages] == [[ADA]], "the server had it all along"
        connection.close()


def test_the_answer_to_the_final_dot_is_awaited_for_data_timeout_not_timeout() -> None:
    with SMTPServer() as server:
        server.slow_answer(0.8)
        connection = SmtpConnection(settings(server, timeout=0.3, data_timeout=5))
        started = time.monotonic()
        reply = connection.send(SENDER, ADA, make_message(ADA))
        assert reply.code == 250 and time.monotonic() - started >= 0.8
        server.repair()
        connection.send(SENDER, BOB, make_message(BOB))  # the per-command timeout is back
        assert server.connections == 1
        connection.close()


def test_no_answer_before_the_final_dot_is_a_temporary_failure() -> None:
    with SMTPServer() as server:
        server.stall(ADA, 3)
        connection = SmtpConnection(settings(server, timeout=0.3))
        with pytest.raises(TemporaryFailure, match="connection lost"):
            connection.send(SENDER, ADA, make_message(ADA))
        assert server.messages == []
        connection.close()


def test_a_non_ascii_address_needs_smtputf8() -> None:
    address = "jürgen@example.org"
    with SMTPServer() as server:
        connection = SmtpConnection(settings(server))
        with pytest.raises(PermanentFailure) as failed:
            connection.send(SENDER, address, make_message(ADA))
        assert str(failed.value) == (
            f"not sent: {address} has characters outside ASCII, and 127.0.0.1 does not offer"
            " SMTPUTF8 (RFC 6531), which such an address needs"
        )
        assert connection.send(SENDER, ADA, make_message(ADA)).code == 250, "the session goes on"
        connection.close()
    with SMTPServer(smtputf8=True) as server:
        connection = SmtpConnection(settings(server))
        assert connection.send(SENDER, address, make_message(ADA)).code == 250
        connection.close()
        assert [m.rcpt_tos for m in server.messages] == [[address]]


# --- the check before a dispatch ----------------------------------------------------


def test_check_logs_in_and_sends_nothing() -> None:
    with SMTPServer(username="news", password="right", auth_require_tls=False) as server:
        SmtpTransport(settings(server, username="news", password="right")).check()
        assert (server.logins, server.messages) == (1, [])
        with pytest.raises(TransportUnavailable) as refused:
            SmtpTransport(settings(server, username="news", password="wrong")).check()
        assert str(refused.value).startswith(f"SMTP 127.0.0.1:{server.port}: login refused: 535 ")


def test_check_refuses_credentials_outside_ascii_in_one_line() -> None:
    with SMTPServer(username="zoë", password="pässwörd", auth_require_tls=False) as server:
        with pytest.raises(TransportUnavailable) as refused:
            SmtpTransport(settings(server, username="zoë", password="pässwörd")).check()
        assert str(refused.value) == (
            f"SMTP 127.0.0.1:{server.port}: cannot log in: smtp.username and the SMTP password"
            " must be ASCII (smtplib sends them as ASCII)"
        )
        assert server.messages == []


def test_check_refuses_a_server_without_starttls() -> None:
    with SMTPServer() as server, pytest.raises(TransportUnavailable) as refused:
        SmtpTransport(settings(server, security="starttls")).check()
    assert str(refused.value) == (
        f"SMTP 127.0.0.1:{server.port} does not offer STARTTLS,"
        " and smtp.security = 'starttls' sends nothing without it"
    )


def test_check_refuses_a_refused_connection() -> None:
    port = free_port()
    smtp = Smtp(host="127.0.0.1", port=port, security="plain")
    with pytest.raises(TransportUnavailable, match=rf"^SMTP 127.0.0.1:{port}: cannot connect: .*refused"):
        SmtpTransport(smtp).check()


@pytest.mark.skipif(not tls_available(), reason="no cryptography package nor openssl command")
def test_check_refuses_a_certificate_it_cannot_verify() -> None:
    with SMTPServer(tls=True) as server, pytest.raises(TransportUnavailable, match="TLS failed"):
        SmtpTransport(settings(server, security="starttls")).check()


def test_outbox_check_writes_and_deletes_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    OutboxTransport(folder).check()
    assert folder.is_dir() and list(folder.iterdir()) == []
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be", encoding="utf-8")
    with pytest.raises(TransportUnavailable) as refused:
        OutboxTransport(blocked).check()
    assert str(refused.value).startswith("local outbox ") and ": cannot write: " in str(refused.value)


def test_an_outbox_that_cannot_be_written_is_unavailable(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    connection = OutboxTransport(folder).connect()
    assert connection.send(SENDER, ADA, make_message(ADA)).code == 250
    folder.rename(tmp_path / "moved")
    folder.write_text("a file where the folder was", encoding="utf-8")
    with pytest.raises(TransportUnavailable, match=r"cannot write .*\.eml: Not a directory"):
        connection.send(SENDER, BOB, make_message(BOB))
