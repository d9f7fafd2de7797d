"""Where messages go: a real SMTP server, or the local outbox folder.

A transport opens connections; a connection sends one message at a time and
answers with the server's reply, or raises ``TemporaryFailure`` (4xx, a
dropped connection: try again later) or ``PermanentFailure`` (5xx: do not).
The send loop depends on this interface only, never on smtplib.
"""

from __future__ import annotations

import os
import re
import smtplib
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
        super().__init__(f"{code} {text}".strip())
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
    """A 4xx reply, or a lost connection: the same message may succeed later."""


class PermanentFailure(DeliveryFailure):
    """A 5xx reply: sending the same message again will fail again."""


class Connection(Protocol):
    def send(self, sender: str, recipient: str, data: bytes) -> Reply: ...

    def close(self) -> None: ...


class Transport(Protocol):
    description: str

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

    A message is written to a temporary file named after its Message-ID, then renamed
    to its final name, also from the Message-ID: so the folder alone says whether a
    message was delivered, and a temporary file left by a killed process is not a delivery.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.description = f"local outbox {display_path(folder)}/"

    def connect(self) -> OutboxConnection:
        self.folder.mkdir(parents=True, exist_ok=True)
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

    def send(self, sender: str, recipient: str, data: bytes) -> Reply:
        """Write the message atomically: a temporary file, fsync, then rename."""
        match = re.search(rb"^Message-ID: <([^>]+)>", data, re.MULTILINE | re.IGNORECASE)
        stem = _stem(match.group(1).decode("ascii", "replace") if match else f"{time.time_ns()}")
        target = self.folder / f"{stem}.eml"
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f"{TEMPORARY}{stem}-", suffix=".eml")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
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

    def connect(self) -> SmtpConnection:
        return SmtpConnection(self.settings)

    def delivered(self, message_id: str) -> None:
        """Say that it cannot be known: a server that got the final "." may have the message or not."""
        return None

    def discard(self, message_id: str) -> None:
        """Do nothing: nothing of the message is left on this side."""


class SmtpConnection:
    """One SMTP session, reused for many messages and reopened when the server drops it."""

    def __init__(self, settings: Smtp) -> None:
        self.settings = settings
        self.client: smtplib.SMTP | None = None

    def _open(self) -> smtplib.SMTP:
        s = self.settings
        context = ssl.create_default_context()
        client: smtplib.SMTP | None = None
        failure: MailoutError
        try:
            if s.security == "tls":
                client = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=context)
            else:
                client = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
                if s.security == "starttls":
                    client.starttls(context=context)
            client.ehlo_or_helo_if_needed()
            if s.username:
                client.login(s.username, s.password)
            return client
        except smtplib.SMTPAuthenticationError as exc:
            failure = ConfigError(f"SMTP {s.host}: login refused: {exc.smtp_code} {_text(exc.smtp_error)}")
        except smtplib.SMTPNotSupportedError as exc:
            failure = ConfigError(f"SMTP {s.host}: {exc}")
        except ssl.SSLError as exc:
            failure = ConfigError(f"SMTP {s.host}: TLS failed: {exc.reason or exc}")
        except (OSError, smtplib.SMTPException) as exc:
            failure = TemporaryFailure(0, f"cannot connect to {s.host}:{s.port}: {exc}")
        if client is not None:
            client.close()  # never leave a half-open (TLS) socket behind
        raise failure

    def send(self, sender: str, recipient: str, data: bytes) -> Reply:
        """Send one message; raise ``TemporaryFailure`` or ``PermanentFailure`` if it was not accepted."""
        if self.client is None:
            self.client = self._open()
        client = self.client
        replies: list[tuple[int, bytes]] = []
        try:
            if client.has_extn("pipelining"):
                # RFC 2920: MAIL, RCPT and DATA in one round trip instead of three.
                client.send(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode("ascii"))
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
                code, text = client.mail(sender)
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
            code, text = client.getreply()
        except (TimeoutError, smtplib.SMTPServerDisconnected, OSError) as exc:
            self.close()
            closing = [text for code, text in replies if code == 421]
            if closing:  # "421 closing connection" to a pipelined command, then the hang-up
                raise TemporaryFailure(421, _text(closing[0])) from None
            raise TemporaryFailure(0, f"connection lost: {exc}") from None
        if code == 421:
            self.close()
        if code != 250:
            self._fail(code, text, reset=False)
        return Reply(code, _text(text))

    def _fail(self, code: int, text: bytes, *, reset: bool) -> None:
        if code == 421:
            self.close()
        elif reset and self.client is not None:
            try:
                self.client.rset()
            except (smtplib.SMTPException, OSError):
                self.close()
        failure = PermanentFailure if 500 <= code < 600 else TemporaryFailure
        raise failure(code, _text(text))

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.quit()
            except (smtplib.SMTPException, OSError):
                self.client.close()
            self.client = None


def _text(raw: bytes | str) -> str:
    return (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw).replace("\n", " ").strip()


def make_transport(settings: Settings) -> Transport:
    """Return SMTP when ``smtp.host`` is set, else the local outbox."""
    if settings.smtp.host:
        return SmtpTransport(settings.smtp)
    return OutboxTransport(settings.path("outbox"))
