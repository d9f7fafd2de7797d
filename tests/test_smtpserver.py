"""SMTPServer: the real SMTP server the delivery tests send to, driven here by smtplib."""

from __future__ import annotations

import os
import smtplib
import socket
import struct
import time
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

import pytest

from tests.smtpserver import Received, Rule, SMTPServer, tls_available

SENDER = "news@example.org"
ADA = "ada@example.org"
BOB = "bob@example.org"


def make_message(to: str, body: str = "Hello.\n.A line that starts with a dot.\nGrüße\n") -> bytes:
    """Build a message as the mailer sends it: CRLF line ends, 8-bit UTF-8 body."""
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = to
    message["Subject"] = "Issue 1"
    message.set_content(body, cte="8bit")
    return message.as_bytes(policy=SMTP_POLICY)


def connect(server: SMTPServer, timeout: float = 5.0) -> smtplib.SMTP:
    """Open an smtplib session to the server."""
    return smtplib.SMTP(server.host, server.port, timeout=timeout)


def test_records_raw_bytes_and_envelope() -> None:
    raw = make_message(ADA)
    with SMTPServer() as server, connect(server) as client:
        assert server.host == "127.0.0.1" and server.port > 0
        refused = client.sendmail(SENDER, [ADA, BOB], raw, mail_options=["BODY=8BITMIME"])
        assert refused == {}
        [received] = server.wait_for(1)
        assert received.raw == raw  # byte for byte: CRLF, 8-bit, the leading dot unstuffed
        assert received.mail_from == SENDER
        assert received.rcpt_tos == [ADA, BOB]
        assert received.connection == 1
        assert received.message()["Subject"] == "Issue 1"
        assert "Grüße" in received.message().get_content()
        assert server.connections == 1
        assert server.errors == []


def test_accepts_a_large_message() -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = SENDER, ADA, "Pictures"
    message.set_content("See the attachment.")
    picture = os.urandom(200 * 1024)
    message.add_attachment(picture, maintype="image", subtype="png", filename="a.png")
    raw = message.as_bytes(policy=SMTP_POLICY)
    with SMTPServer() as server, connect(server) as client:
        client.sendmail(SENDER, [ADA], raw)
        [received] = server.messages
        assert len(received.raw) > 200 * 1024
        assert received.raw == raw
        assert next(received.message().iter_attachments()).get_content() == picture


def test_refuses_one_recipient_and_accepts_another_in_the_same_session() -> None:
    with SMTPServer() as server, connect(server) as client:
        server.answer(ADA, 550, "5.1.1 no such mailbox")
        refused = client.sendmail(SENDER, [ADA, BOB], make_message(BOB))
        assert refused == {ADA: (550, b"5.1.1 no such mailbox")}
        [received] = server.messages
        assert received.rcpt_tos == [BOB]
        assert server.rules[ADA].applied == 1


def test_times_applies_a_rule_to_the_first_attempts_only() -> None:
    with SMTPServer() as server, connect(server) as client:
        rule = server.answer(ADA, 451, "4.3.0 try later", times=1)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail(SENDER, [ADA], make_message(ADA))
        assert refused.value.recipients == {ADA: (451, b"4.3.0 try later")}
        assert server.messages == []
        client.sendmail(SENDER, [ADA], make_message(ADA))
        assert [m.rcpt_tos for m in server.messages] == [[ADA]]
        assert rule == Rule(451, "4.3.0 try later", times=1) and rule.applied == 1


def test_a_rule_at_the_end_of_data_refuses_the_message() -> None:
    with SMTPServer() as server, connect(server) as client:
        server.answer(ADA, 554, "5.7.1 rejected by policy", at="data")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(SENDER, [ADA], make_message(ADA))
        assert (refused.value.smtp_code, refused.value.smtp_error) == (554, b"5.7.1 rejected by policy")
        assert server.messages == []


@pytest.mark.parametrize("at", ["rcpt", "data"])
def test_421_closes_the_connection(at: str) -> None:
    with SMTPServer() as server:
        server.answer(ADA, 421, "4.7.0 closing connection", at="data" if at == "data" else "rcpt")
        with connect(server) as client:
            client.ehlo()
            assert client.mail(SENDER)[0] == 250
            if at == "rcpt":
                assert client.rcpt(ADA) == (421, b"4.7.0 closing connection")
            else:
                assert client.rcpt(ADA)[0] == 250
                assert client.data(make_message(ADA)) == (421, b"4.7.0 closing connection")
            with pytest.raises((smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException)):
                client.noop()
        with connect(server) as client:
            client.sendmail(SENDER, [BOB], make_message(BOB))
        assert [m.connection for m in server.messages] == [2]
        assert server.connections == 2
        assert server.errors == []


def test_drop_after_closes_the_connection_without_a_reply_once() -> None:
    with SMTPServer() as server:
        server.drop_after(1)
        with connect(server) as client:
            client.sendmail(SENDER, [ADA], make_message(ADA))
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.sendmail(SENDER, [BOB], make_message(BOB))
        with connect(server) as client:
            client.sendmail(SENDER, [BOB], make_message(BOB))
        received = server.wait_for(2)
        assert [(m.rcpt_tos, m.connection) for m in received] == [([ADA], 1), ([BOB], 2)]
        assert server.errors == []


def test_stall_makes_the_client_time_out() -> None:
    with SMTPServer() as server:
        server.stall(ADA, 30)
        with connect(server) as client:
            client.ehlo()
            client.mail(SENDER)
            assert client.sock is not None
            client.sock.settimeout(0.3)
            with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
                client.rcpt(ADA)
        assert server.messages == []


@pytest.mark.skipif(not tls_available(), reason="no cryptography package nor openssl command")
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_and_auth(mechanism: str) -> None:
    with SMTPServer(tls=True, username="mailer", password="s3cret") as server:
        assert server.cert_file is not None and server.cert_file.read_text() == server.cert_pem
        with connect(server) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            assert not client.has_extn("auth")  # not before TLS
            client.starttls(context=server.client_context())  # verifies the certificate for 127.0.0.1
            client.ehlo()
            assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail(SENDER, [ADA], make_message(ADA))
            assert refused.value.smtp_code == 530
            client.user, client.password = "mailer", "wrong"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
            client.password = "s3cret"
            assert client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))[0] == 235
            client.sendmail(SENDER, [ADA], make_message(ADA))
        assert [m.rcpt_tos for m in server.messages] == [[ADA]]
        assert (server.logins, server.failed_logins) == (1, 1)
        assert server.errors == []


def test_clear_forgets_everything() -> None:
    with SMTPServer() as server:
        server.answer(ADA, 550, "5.1.1 no such mailbox")
        with connect(server) as client:
            client.sendmail(SENDER, [BOB], make_message(BOB))
        server.clear()
        assert (server.messages, server.rules, server.connections) == ([], {}, 0)
        with connect(server) as client:
            client.sendmail(SENDER, [ADA], make_message(ADA))
        assert server.messages == [
            Received(make_message(ADA), SENDER, [ADA], connection=1, at=server.messages[0].at)
        ]
        with pytest.raises(TimeoutError, match="1 of 2 messages"):
            server.wait_for(2, timeout=0.1)


def test_auth_without_tls_when_allowed() -> None:
    with SMTPServer(username="mailer", password="s3cret") as server, connect(server) as client:
        client.login("mailer", "s3cret")
        client.sendmail(SENDER, [ADA], make_message(ADA))
        assert server.logins == 1
        assert len(server.messages) == 1


def test_a_client_resetting_the_connection_mid_data_leaves_no_error() -> None:
    with SMTPServer() as server:
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            sock.recv(1024)
            sock.sendall(
                b"EHLO client\r\nMAIL FROM:<news@example.org>\r\nRCPT TO:<ada@example.org>\r\nDATA\r\n"
            )
            sock.sendall(b"Subject: cut short\r\n\r\nhalf a mess")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        with connect(server) as client:
            client.sendmail(SENDER, [ADA], make_message(ADA))
        assert [m.connection for m in server.messages] == [2]
        assert server.errors == []


@pytest.mark.parametrize("record", [False, True])
def test_drop_every_closes_every_nth_connection_at_the_end_of_data(record: bool) -> None:
    with SMTPServer() as server:
        server.drop_every(2, record=record)
        sent, dropped = [], []
        for n in range(4):
            to = f"p{n}@example.org"
            with connect(server) as client:
                try:
                    client.sendmail(SENDER, [to], make_message(to))
                    sent.append(to)
                except smtplib.SMTPServerDisconnected:
                    dropped.append(to)
        assert dropped == ["p1@example.org", "p3@example.org"] and sent == [
            "p0@example.org",
            "p2@example.org",
        ]
        assert [m.rcpt_tos[0] for m in server.dropped] == dropped
        kept = [m.rcpt_tos[0] for m in server.messages]
        assert kept == (
            ["p0@example.org", "p1@example.org", "p2@example.org", "p3@example.org"] if record else sent
        )
        assert server.errors == []


def test_drop_after_with_record_keeps_the_message() -> None:
    with SMTPServer() as server:
        server.drop_after(0, record=True)
        with connect(server) as client, pytest.raises(smtplib.SMTPServerDisconnected):
            client.sendmail(SENDER, [ADA], make_message(ADA))
        with connect(server) as client:
            client.sendmail(SENDER, [BOB], make_message(BOB))
        assert [m.rcpt_tos for m in server.messages] == [[ADA], [BOB]]
        assert [m.rcpt_tos for m in server.dropped] == [[ADA]]


def test_slow_answer_keeps_the_message_and_answers_late() -> None:
    with SMTPServer() as server:
        server.slow_answer(0.6, every=2)
        with connect(server) as client:
            started = time.monotonic()
            client.sendmail(SENDER, [ADA], make_message(ADA))
            assert time.monotonic() - started < 0.5
            started = time.monotonic()
            client.sendmail(SENDER, [BOB], make_message(BOB))
            assert time.monotonic() - started >= 0.6
        with connect(server) as client:
            assert client.sock is not None
            client.sendmail(SENDER, [ADA], make_message(ADA))
            client.ehlo()
            client.mail(SENDER)
            client.rcpt(BOB)
            client.sock.settimeout(0.2)
            with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
                client.data(make_message(BOB))
        assert [m.rcpt_tos for m in server.messages] == [[ADA], [BOB], [ADA], [BOB]], "kept before answering"
        assert [m.rcpt_tos for m in server.slowed] == [[BOB], [BOB]]


def test_refuse_logins_after_some_messages_refuses_new_logins() -> None:
    with SMTPServer(username="mailer", password="s3cret") as server:
        server.refuse_logins(after=1)
        with connect(server) as client:
            client.login("mailer", "s3cret")
            client.sendmail(SENDER, [ADA], make_message(ADA))
            client.sendmail(SENDER, [BOB], make_message(BOB))  # logged in before: goes on
        with connect(server) as client, pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("mailer", "s3cret")
        assert refused.value.smtp_code == 535
        server.repair()
        with connect(server) as client:
            client.login("mailer", "s3cret")
        # smtplib tried PLAIN, then LOGIN: two refusals.
        assert (server.logins, server.failed_logins, len(server.messages)) == (2, 2, 2)


@pytest.mark.skipif(not tls_available(), reason="no cryptography package nor openssl command")
def test_withhold_starttls_stops_offering_it() -> None:
    with SMTPServer(tls=True) as server:
        server.withhold_starttls(after=1)
        with connect(server) as client:
            client.starttls(context=server.client_context())
            client.sendmail(SENDER, [ADA], make_message(ADA))
        with connect(server) as client:
            client.ehlo()
            assert not client.has_extn("starttls")
            with pytest.raises(smtplib.SMTPNotSupportedError):
                client.starttls(context=server.client_context())
            client.sendmail(SENDER, [BOB], make_message(BOB))  # EHLO still names the client
        server.repair()
        with connect(server) as client:
            client.ehlo()
            assert client.has_extn("starttls")
        assert server.errors == []


def test_limit_per_connection_answers_421_and_closes() -> None:
    with SMTPServer() as server:
        server.limit_per_connection(2)
        with connect(server) as client:
            client.sendmail(SENDER, [ADA], make_message(ADA))
            client.sendmail(SENDER, [BOB], make_message(BOB))
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail(SENDER, [ADA], make_message(ADA))
            assert refused.value.smtp_code == 421
        with connect(server) as client:
            client.sendmail(SENDER, [ADA], make_message(ADA))
        assert [m.connection for m in server.messages] == [1, 1, 2]


def test_smtputf8_is_offered_on_request() -> None:
    address = "jürgen@example.org"
    with SMTPServer() as server, connect(server) as client:
        client.ehlo()
        assert not client.has_extn("smtputf8")
    with SMTPServer(smtputf8=True) as server, connect(server) as client:
        client.sendmail(SENDER, [address], make_message(address), mail_options=["SMTPUTF8"])
        assert [m.rcpt_tos for m in server.messages] == [[address]]
