"""Where messages go: a real SMTP server, or the local outbox folder.

A transport checks that it can send at all (``check``: connect and log in, or
write a test file) and opens connections; a connection sends one message at a
time. The contract of ``Connection.send``, which the send loop relies on:

- it returns the server's reply: the message was accepted;
- ``TemporaryFailure`` (a 4xx, or a connection lost before the message ended):
  not accepted, the same message may succeed later;
- ``PermanentFailure`` (a 5xx, or an address this transport cannot carry):
  not accepted, and it would fail again;
- ``UnclearOutcome``: the whole message went out but no answer came (the
  connection dropped, or the answer took longer than ``smtp.data_timeout``):
  the server may have accepted it, so it must not be sent again unasked;
- any other exception (``TransportUnavailable``: no connection, a refused login,
  an outbox that cannot be written; or a bug): the message did not reach the
  server, as if it had not been tried.

``send`` is ``start`` then ``finish``: ``start`` puts the whole message on the
wire and raises only what ``send`` raises before the message ended (it never
raises ``UnclearOutcome``); ``finish`` waits for the answer and raises the
rest. Between the two the send loop does its database work for the next
message, while the server reads this one.

The send loop depends on this interface only, never on smtplib.
"""

from __future__ import annotations

import contextlib
import os
import re
import smtplib
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .config import Settings, Smtp
from .errors import ConfigError, MailoutError
from .net import is_loopback
from .paths import display_path


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


class DeliveryFailure(MailoutError):
    """The server refused a message, or the connection failed while sending it."""

    def __init__(self, code: int, text: str) -> None:
        # Code 0: mailout's own words, not a server's reply.
        super().__init__(f"{code} {text}".strip() if code else text)
        self.code = code
        self.text = text

    @property
    def enhanced(self) -> str:
        """Return the RFC 3463 status code (``5.1.1``) the reply starts with, if any."""
        return enhanced_status(self.text)


def enhanced_status(reply: str) -> str:
    """Return the RFC 3463 status code of a reply (``550 5.7.1 ...`` or ``5.7.1 ...``), or ""."""
    match = re.match(r"\s*(?:[245]\d\d[ -])?\s*([245]\.\d{1,3}\.\d{1,3})\b", reply)
    return match.group(1) if match else ""


class TemporaryFailure(DeliveryFailure):
    """A 4xx reply, or a connection lost before the message ended: the same message may succeed later."""


class PermanentFailure(DeliveryFailure):
    """A 5xx reply, or an address the transport cannot carry: sending it again would fail again."""


class UnclearOutcome(DeliveryFailure):
    """The whole message went out but no answer came: the server may have accepted it."""


class TransportUnavailable(MailoutError):
    """Nothing can be sent: no connection, TLS or login refused, or the outbox cannot be written."""


class Connection(Protocol):
    def send(self, sender: str, recipient: str, data: bytes) -> Reply:
        """Send one message; return the reply that accepted it, or raise (see the module's contract)."""
        ...

    def start(self, sender: str, recipient: str, data: bytes) -> None:
        """Put one message on the wire, to its end; raise as ``send`` would before its end."""
        ...

    def finish(self) -> Reply:
        """Return the answer to the message ``start`` put on the wire, or raise as ``send`` would."""
        ...

    def close(self) -> None: ...


class Transport(Protocol):
    description: str

    def check(self) -> None:
        """Make sure messages can be sent (connect and log in once); raise ``TransportUnavailable``."""
        ...

    def connect(self) -> Connection: ...

    def delivered(self, message_id: str) -> bool | None:
        """Tell whether the message with this Message-ID was delivered; None when it cannot be known."""
        ...

    def discard(self, message_id: str) -> None:
        """Remove what a dead process left of a message that was not delivered."""
        ...


# --- the local outbox -----------------------------------------------------------


class OutboxTransport:
    """Writes each message as an .eml file that any mail program opens.

    The file starts with a ``Return-Path`` line holding the envelope sender, as a
    mailbox shows a delivered message; what follows is exactly what SMTP would carry.

    A message is written to a temporary file named after its Message-ID, then renamed
    to its final name, also from the Message-ID: so the folder alone says whether a
    message was delivered, and a temporary file left by a killed process is not a delivery.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.description = f"local outbox {display_path(folder)}/"

    def check(self) -> None:
        """Make sure the folder exists and takes a file: write one, fsync it, delete it."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=self.folder, prefix=".check-")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(b"mailout checks that this folder can be written\r\n")
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                os.unlink(name)
        except OSError as exc:
            raise TransportUnavailable(f"{self.description}: cannot write: {exc.strerror or exc}") from None

    def connect(self) -> OutboxConnection:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransportUnavailable(f"{self.description}: cannot write: {exc.strerror or exc}") from None
        return OutboxConnection(self.folder)

    def delivered(self, message_id: str) -> bool:
        """Tell whether the message's final .eml file is in the outbox."""
        return (self.folder / eml_name(message_id)).exists()

    def discard(self, message_id: str) -> None:
        """Remove the temporary files of the message that a killed process left behind."""
        for leftover in self.folder.glob(f"{TEMPORARY}{_stem(message_id)}-*.eml"):
            leftover.unlink(missing_ok=True)


#: How the name of a message's file starts while it is being written.
TEMPORARY = ".tmp-"


def _stem(message_id: str) -> str:
    """Return the part of the file names that comes from the Message-ID (no brackets)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", message_id.strip("<>"))[:150]


def eml_name(message_id: str) -> str:
    """Return the name of the outbox file of the message with this Message-ID."""
    return f"{_stem(message_id)}.eml"


class OutboxConnection:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._written: Reply | None = None

    def start(self, sender: str, recipient: str, data: bytes) -> None:
        """Write the message (see ``send``); ``finish`` returns what ``send`` would."""
        self._written = self.send(sender, recipient, data)

    def finish(self) -> Reply:
        reply, self._written = self._written, None
        assert reply is not None, "finish() without start()"
        return reply

    def send(self, sender: str, recipient: str, data: bytes) -> Reply:
        """Write the message atomically: a temporary file, fsync, then rename."""
        match = re.search(rb"^Message-ID: <([^>]+)>", data, re.MULTILINE | re.IGNORECASE)
        stem = _stem(match.group(1).decode("ascii", "replace") if match else f"{time.time_ns()}")
        name = f"{stem}.eml"
        target = self.folder / name
        temporary = ""
        try:
            handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f"{TEMPORARY}{stem}-", suffix=".eml")
            with os.fdopen(handle, "wb") as out:
                # The envelope sender, where a delivering server puts it: a first line of its
                # own, above the DKIM signature, which does not cover it.
                out.write(b"Return-Path: <" + sender.encode("utf-8") + b">\r\n")
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        except BaseException as exc:
            if temporary:
                with contextlib.suppress(OSError):  # the folder may be gone: report the first error
                    Path(temporary).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                # A full disk, a folder gone or made read-only: the file is not there, nothing
                # can be written until it is fixed.
                raise TransportUnavailable(
                    f"local outbox {display_path(self.folder)}/: cannot write {name}: {exc.strerror or exc}"
                ) from None
            raise
        return Reply(250, f"written to {display_path(target)}")

    def close(self) -> None:
        pass


# --- SMTP -------------------------------------------------------------------------


class SmtpTransport:
    """A real SMTP server: STARTTLS, implicit TLS, or plain on loopback."""

    def __init__(self, settings: Smtp) -> None:
        self.settings = settings
        security = settings.security
        if security == "plain" and not is_loopback(settings.host) and not settings.allow_plain:
            raise ConfigError(
                f"smtp.security = 'plain' sends mail unencrypted to {settings.host}; use 'starttls' or 'tls',"
                " or set smtp.allow_plain = true if this network is trusted"
            )
        if security == "plain" and settings.username and not is_loopback(settings.host):
            raise ConfigError("smtp: refusing to send a username and password without TLS")
        self.description = f"SMTP {settings.host}:{settings.port} ({security})"

    def check(self) -> None:
        """Connect, say EHLO, start TLS and log in as a dispatch would, then QUIT."""
        connection = SmtpConnection(self.settings)
        connection.client = connection._open()
        connection.close()

    def connect(self) -> SmtpConnection:
        return SmtpConnection(self.settings)

    def delivered(self, message_id: str) -> None:
        """Say that it cannot be known: a server that got the final "." may have the message or not."""
        return None

    def discard(self, message_id: str) -> None:
        """Do nothing: nothing of the message is left on this side."""


class _Client(smtplib.SMTP):
    """smtplib's client, with a timeout of its own for connecting."""

    def __init__(self, host: str, port: int, *, timeout: float, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib's hook for opening the socket (undeclared in its stubs): connect with our timeout.
        sock: socket.socket = super()._get_socket(host, port, self.connect_timeout)  # type: ignore[misc]
        sock.settimeout(timeout)  # then each answer is awaited for smtp.timeout
        return sock


class _TlsClient(smtplib.SMTP_SSL):
    """smtplib's implicit-TLS client, with a timeout of its own for connecting and the handshake."""

    def __init__(
        self, host: str, port: int, *, timeout: float, connect_timeout: float, context: ssl.SSLContext
    ) -> None:
        self.connect_timeout = connect_timeout
        super().__init__(host, port, timeout=timeout, context=context)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib's hook for opening the socket (undeclared in its stubs): connect with our timeout.
        sock: socket.socket = super()._get_socket(host, port, self.connect_timeout)  # type: ignore[misc]
        sock.settimeout(timeout)
        return sock


#: How many times in a row a message answered 421 goes again at once on a new connection
#: before it is deferred like any 4xx (a server that says 421 to every try is down).
RESEND_421 = 2


class SmtpConnection:
    """One SMTP session, reused for many messages and reopened when the server drops it."""

    def __init__(self, settings: Smtp) -> None:
        self.settings = settings
        self.client: smtplib.SMTP | None = None
        #: The message ``start`` put on the wire, until ``finish``: sent again after a 421.
        self._message: tuple[str, str, bytes] | None = None

    def _open(self) -> smtplib.SMTP:
        """Connect, EHLO, STARTTLS and AUTH as the settings say; raise ``TransportUnavailable``."""
        s = self.settings
        where = f"SMTP {s.host}:{s.port}"
        context = ssl.create_default_context()
        client: smtplib.SMTP | None = None
        failure: TransportUnavailable
        try:
            if s.security == "tls":
                client = _TlsClient(
                    s.host, s.port, timeout=s.timeout, connect_timeout=s.connect_timeout, context=context
                )
            else:
                client = _Client(s.host, s.port, timeout=s.timeout, connect_timeout=s.connect_timeout)
            if s.security == "starttls":
                client.starttls(context=context)
            client.ehlo_or_helo_if_needed()
            if s.username:
                client.login(s.username, s.password)
            return client
        except smtplib.SMTPAuthenticationError as exc:
            failure = TransportUnavailable(f"{where}: login refused: {exc.smtp_code} {_text(exc.smtp_error)}")
        except smtplib.SMTPConnectError as exc:
            failure = TransportUnavailable(
                f"{where}: the server refused the connection: {exc.smtp_code} {_text(exc.smtp_error)}"
            )
        except smtplib.SMTPNotSupportedError as exc:
            if "STARTTLS" in str(exc):
                failure = TransportUnavailable(
                    f"{where} does not offer STARTTLS, and smtp.security = 'starttls' sends nothing without it"
                )
            else:
                failure = TransportUnavailable(f"{where}: {exc} (smtp.username is set)")
        except ssl.SSLError as exc:
            failure = TransportUnavailable(f"{where}: TLS failed: {exc.reason or exc}")
        except UnicodeEncodeError:
            # smtplib sends AUTH (and EHLO) in ASCII only, and raises on anything else.
            failure = TransportUnavailable(
                f"{where}: cannot log in: smtp.username and the SMTP password must be ASCII"
                " (smtplib sends them as ASCII)"
            )
        except (OSError, smtplib.SMTPException) as exc:
            failure = TransportUnavailable(f"{where}: cannot connect: {exc}")
        if client is not None:
            client.close()  # never leave a half-open (TLS) socket behind
        raise failure

    def send(self, sender: str, recipient: str, data: bytes) -> Reply:
        """Send one message; return the reply that accepted it, or raise (see the module's contract)."""
        self.start(sender, recipient, data)
        return self.finish()

    def start(self, sender: str, recipient: str, data: bytes) -> None:
        """Send the envelope and the whole message, up to the final "."; do not wait for the answer.

        A 421 on the way (the server closes the connection: "421 Maximum message count per
        session reached", "421 service closing") is no failure of the message: it goes again at
        once on a new connection, up to ``RESEND_421`` times.
        """
        self._message = None
        self._put(sender, recipient, data, RESEND_421)
        self._message = (sender, recipient, data)

    def _put(self, sender: str, recipient: str, data: bytes, resends: int) -> None:
        """Put the message on the wire, on a new connection after each 421, ``resends`` times at most."""
        while True:
            try:
                self._put_once(sender, recipient, data)
                return
            except TemporaryFailure as failure:
                if failure.code != 421 or resends <= 0:
                    raise
                resends -= 1  # the connection is closed (_fail, _abandon): the next try opens one

    def _put_once(self, sender: str, recipient: str, data: bytes) -> None:
        if self.client is None:
            self.client = self._open()
        client = self.client
        smtputf8 = self._smtputf8(client, sender, recipient)
        replies: list[tuple[int, bytes]] = []
        try:
            if client.has_extn("pipelining"):
                # RFC 2920: MAIL, RCPT and DATA in one round trip instead of three.
                option = " SMTPUTF8" if smtputf8 else ""
                commands = f"MAIL FROM:<{sender}>{option}\r\nRCPT TO:<{recipient}>\r\nDATA\r\n"
                client.send(commands.encode("utf-8" if smtputf8 else "ascii"))
                for _ in range(3):
                    replies.append(client.getreply())
                (mail, mail_text), (rcpt, rcpt_text), (data_code, data_text) = replies
                if data_code == 354 and (mail != 250 or rcpt not in (250, 251)):
                    client.send(
                        b".\r\n"
                    )  # a server that took DATA anyway gets an empty message, refused below
                    client.getreply()
                for code, text in ((mail, mail_text), (rcpt, rcpt_text)):
                    if code not in (250, 251):
                        self._fail(code, text, reset=True)
                if data_code != 354:
                    self._fail(data_code, data_text, reset=True)
            else:
                code, text = client.mail(sender, ["SMTPUTF8"] if smtputf8 else [])
                if code != 250:
                    self._fail(code, text, reset=True)
                code, text = client.rcpt(recipient)
                if code not in (250, 251):
                    self._fail(code, text, reset=True)
                code, text = client.docmd("DATA")
                if code != 354:
                    self._fail(code, text, reset=True)
            # The body never has a line starting with "." (message.py encodes it), so the
            # DATA phase needs no dot stuffing: smtplib's would cost most of its CPU time.
            client.send(data if data.endswith(b"\r\n") else data + b"\r\n")
            client.send(b".\r\n")
        except (OSError, smtplib.SMTPException) as exc:
            # Before the final "." has gone out the server cannot have taken the message.
            self._abandon()
            closing = [text for code, text in replies if code == 421]
            if closing:  # "421 closing connection" to a pipelined command, then the hang-up
                raise TemporaryFailure(421, _text(closing[0])) from None
            raise TemporaryFailure(0, f"connection lost: {exc}") from None

    def finish(self) -> Reply:
        """Wait for the answer to the message ``start`` sent (see ``_final_reply``)."""
        # From here on, the server may have the message whatever happens to the answer.
        client = self.client
        assert client is not None, "finish() without start()"
        code, text = self._final_reply(client)
        resends = RESEND_421
        while code == 421 and self._message is not None and resends > 0:
            # A 4xx answer to the end of the data refuses the message (RFC 5321 4.2.5: the
            # server takes no responsibility for it), unlike no answer at all: it is not
            # there, so sending it again on a new connection cannot deliver it twice.
            resends -= 1
            self.close()
            try:
                self._put(*self._message, resends)
            except TransportUnavailable as exc:
                raise TemporaryFailure(421, f"{_text(text)}; then {exc}") from None
            assert self.client is not None
            code, text = self._final_reply(self.client)
        self._message = None
        if code == 421:
            self.close()
        if code != 250:
            self._fail(code, text, reset=False)
        return Reply(code, _text(text))

    def _smtputf8(self, client: smtplib.SMTP, sender: str, recipient: str) -> bool:
        """Tell whether the envelope needs SMTPUTF8; raise ``PermanentFailure`` when the server lacks it."""
        if sender.isascii() and recipient.isascii():
            return False
        if client.has_extn("smtputf8"):
            return True
        address = recipient if not recipient.isascii() else sender
        raise PermanentFailure(
            0,
            f"not sent: {address} has characters outside ASCII, and {self.settings.host}"
            " does not offer SMTPUTF8 (RFC 6531), which such an address needs",
        )

    def _final_reply(self, client: smtplib.SMTP) -> tuple[int, bytes]:
        """Wait up to ``smtp.data_timeout`` for the answer to the final "."; raise ``UnclearOutcome``."""
        wait, timeout = self.settings.data_timeout, self.settings.timeout
        try:
            assert client.sock is not None
            if wait != timeout:
                client.sock.settimeout(wait)
            code, text = client.getreply()
        except Exception as exc:  # whatever it is, the answer is lost (see the module's contract)
            self._abandon()
            if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
                what = f"no answer to the end of the message after {wait:g} s"
            elif isinstance(exc, OSError | smtplib.SMTPServerDisconnected):
                what = f"connection lost after the end of the message ({exc})"
            else:
                what = f"no readable answer to the end of the message ({exc})"
            raise UnclearOutcome(0, f"{what}; the server may have accepted it") from None
        if code < 0:  # smtplib's code for a line that does not start with one
            self._abandon()
            raise UnclearOutcome(
                0,
                f"no readable answer to the end of the message ({_text(text)[:200]});"
                " the server may have accepted it",
            )
        if wait != timeout and client.sock is not None:
            client.sock.settimeout(timeout)
        return code, text

    def _fail(self, code: int, text: bytes, *, reset: bool) -> None:
        if code == 421:
            self.close()
        elif reset and self.client is not None:
            try:
                self.client.rset()
            except (smtplib.SMTPException, OSError):
                self._abandon()
        failure = PermanentFailure if 500 <= code < 600 else TemporaryFailure
        raise failure(code, _text(text))

    def _abandon(self) -> None:
        """Close the socket without QUIT: after a loss or a timeout, waiting for an answer is pointless."""
        if self.client is not None:
            self.client.close()
            self.client = None

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.quit()
            except (smtplib.SMTPException, OSError):
                self.client.close()
            self.client = None


def _text(raw: bytes | str) -> str:
    return (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw).replace("\n", " ").strip()


def make_transport(settings: Settings, route: str = "") -> Transport:
    """Return the SMTP server of ``route`` (a ``[smtp.routes.NAME]``); for "", ``[smtp]``, or the local outbox.

    Raises ``ConfigError`` for a route the settings do not have (any more).
    """
    if route:
        return SmtpTransport(settings.route(route).smtp)
    if settings.smtp.host:
        return SmtpTransport(settings.smtp)
    return OutboxTransport(settings.path("outbox"))
