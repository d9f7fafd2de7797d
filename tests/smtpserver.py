"""A real SMTP server on loopback for the tests (a helper, not a fixture).

`SMTPServer` runs aiosmtpd in a thread on 127.0.0.1, at a free port. It records
every message it accepts, byte for byte, with its envelope; and it can be told how
to answer each recipient, to drop a connection, or to stall, so that the tests can
drive the send loop through the failures real servers produce.

The faults, each produced by the server itself on the wire:

- ``answer(address, code, text)``: a 4xx or 5xx at RCPT TO or at the end of DATA;
- ``stall(address, seconds)``: a slow answer to RCPT TO;
- ``drop_after(k)``, ``drop_every(n)``: the connection closed at the end of DATA,
  before any answer, with the message kept (``record=True``) or not (``dropped``
  lists them all);
- ``slow_answer(seconds, every=n)``: the message kept, the answer to its end sent
  only after ``seconds`` (``slowed`` lists them);
- ``refuse_logins(after=k)``: AUTH refused with 535 once ``k`` more messages came;
- ``withhold_starttls(after=k)``: STARTTLS no longer offered once ``k`` more came;
- ``limit_per_connection(k)``: MAIL answered "421" after ``k`` messages on a connection;
- ``repair()`` switches all of them off, keeping what was received.

    with SMTPServer() as server:
        server.answer("gone@example.org", 550, "5.1.1 no such mailbox")
        server.answer("busy@example.org", 451, "4.3.0 try later", times=1)
        ...  # send through server.host, server.port
        [received] = server.wait_for(1)
        received.raw, received.rcpt_tos, received.message()["Subject"]

With ``tls=True`` it offers STARTTLS with a self-signed certificate for
``localhost`` and ``127.0.0.1`` (``cert_pem``, ``cert_file``, ``client_context()``), or for
the names of ``cert_names`` only (a certificate for another host);
with a ``username`` and ``password`` it offers AUTH PLAIN and LOGIN and refuses
MAIL FROM until the client has logged in. With ``smtputf8=True`` it offers
SMTPUTF8 (RFC 6531), for addresses that are not ASCII.

Times (``Received.at``) are ``time.monotonic()`` values: the tests compare the
intervals between messages (rate limits, back-off), never wall-clock times.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email
import email.policy
import enum
import importlib.util
import ipaddress
import logging
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
HOSTNAME = "localhost"
"""The name the server gives in its greeting (aiosmtpd would otherwise ask DNS for the FQDN)."""

DATA_SIZE_LIMIT = 32 * 1024 * 1024
"""Bytes of DATA accepted: far above the largest issue with images inlined."""

STOP_TIMEOUT = 5.0
"""Seconds `stop()` waits for open connections to close before it stops the loop anyway."""

When = Literal["rcpt", "data"]


def _hide_login_data_notice(record: logging.LogRecord) -> bool:
    # aiosmtpd 1.4 logs a deprecation warning of its own (Session.login_data) on every
    # successful AUTH; it concerns aiosmtpd's API, not anything the tests do.
    return not str(record.msg).startswith("Session.login_data is deprecated")


logging.getLogger("mail.log").addFilter(_hide_login_data_notice)


@dataclass(frozen=True)
class Received:
    """One message the server accepted: the bytes after DATA, and its envelope."""

    raw: bytes
    mail_from: str
    rcpt_tos: list[str]
    connection: int
    at: float

    def message(self) -> EmailMessage:
        """Parse the raw bytes as an email message (modern policy)."""
        return email.message_from_bytes(self.raw, policy=email.policy.default)


@dataclass
class Rule:
    """Answer one recipient with ``code`` and ``text``, at RCPT TO or at the end of DATA.

    ``times=N`` applies the rule to the first N attempts only; later attempts are
    accepted. ``applied`` counts the attempts the rule answered. A 2xx code accepts,
    with the given text; a 421 reply closes the connection after it is sent.
    """

    code: int
    text: str
    at: When = "rcpt"
    times: int | None = None
    applied: int = field(default=0, init=False, compare=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code {self.code} is not an SMTP reply code (200-599)")
        if self.at not in ("rcpt", "data"):
            raise ValueError(f"at={self.at!r}: use 'rcpt' or 'data'")
        if self.times is not None and self.times < 0:
            raise ValueError(f"times={self.times}: use None (always) or a count >= 0")

    @property
    def reply(self) -> str:
        """Return the reply line, code and text."""
        return f"{self.code} {self.text}"

    @property
    def refuses(self) -> bool:
        """Tell whether the reply is a 4xx or 5xx refusal."""
        return self.code >= 400

    def _take(self) -> bool:
        """Count one attempt; tell whether the rule still answers it (the caller holds the lock)."""
        if self.times is not None and self.applied >= self.times:
            return False
        self.applied += 1
        return True


def free_port() -> int:
    """Return a loopback port where nothing listens (bound, then let go): connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


# --- the certificate ---------------------------------------------------------------


def tls_available() -> bool:
    """Tell whether a self-signed certificate can be made (cryptography or openssl)."""
    return importlib.util.find_spec("cryptography") is not None or shutil.which("openssl") is not None


def _certificate_with_cryptography(names: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
    """Make a self-signed certificate and its key (PEM) with the cryptography package."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else HOSTNAME)])
    alternatives: list[x509.GeneralName] = [x509.DNSName(n) for n in names] or [
        x509.DNSName(HOSTNAME),
        x509.IPAddress(ipaddress.ip_address(HOST)),
    ]
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(alternatives),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _certificate_with_openssl(openssl: str, names: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
    """Make a self-signed certificate and its key (PEM) with the openssl command."""
    with tempfile.TemporaryDirectory(prefix="smtpserver-") as folder:
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        subprocess.run(
            [
                openssl, "req", "-x509", "-nodes", "-days", "2",
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-keyout", str(key), "-out", str(cert),
                "-subj", f"/CN={names[0] if names else HOSTNAME}",
                "-addext", "subjectAltName=" + (
                    ",".join(f"DNS:{n}" for n in names) or f"DNS:{HOSTNAME},IP:{HOST}"
                ),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        return cert.read_bytes(), key.read_bytes()


def _certificate(names: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
    """Make a self-signed certificate for ``names`` (default: localhost and 127.0.0.1), and its key (PEM)."""
    if importlib.util.find_spec("cryptography") is not None:
        return _certificate_with_cryptography(names)
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("STARTTLS needs a certificate: install the cryptography package or openssl")
    return _certificate_with_openssl(openssl, names)


# --- aiosmtpd glue -----------------------------------------------------------------


class _Protocol(SMTP):
    """aiosmtpd's SMTP session, numbered per TCP connection, closing after a 421 reply."""

    def __init__(self, owner: SMTPServer, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = owner
        self.connection = 0
        self.accepted = 0  # messages accepted on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # aiosmtpd calls this again with the TLS transport after STARTTLS: same connection.
        if self._original_transport is None:
            self.connection = self.owner._connected(self, transport.get_extra_info("peername"))
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self.owner._disconnected(self)

    async def push(self, status: str | bytes) -> None:
        await super().push(status)
        # A server that says 421 closes the connection (RFC 5321 3.8); aiosmtpd does not.
        code = status[:3].encode() if isinstance(status, str) else status[:3]
        if code == b"421" and self.transport is not None:
            self.transport.close()


class _Handler:
    """aiosmtpd's hooks: apply the owner's rules, record what is accepted."""

    def __init__(self, owner: SMTPServer) -> None:
        self.owner = owner

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        # Checked here rather than with aiosmtpd's auth_required, which warns (an error
        # under pytest) when AUTH is also allowed without TLS.
        if self.owner.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        assert isinstance(server, _Protocol)
        limit = self.owner._per_connection
        if limit is not None and server.accepted >= limit:
            return "421 4.7.0 too many messages on this connection, closing"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        stall = self.owner.stalls.get(address)
        if stall:
            await asyncio.sleep(stall)
        rule = self.owner._rule([address], "rcpt")
        if rule is not None and rule.refuses:
            return rule.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return rule.reply if rule is not None else "250 OK"

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when there is no hook
        if self.owner._starttls_withheld():
            return [line for line in responses if line != "250-STARTTLS"]
        return responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, _Protocol)
        assert envelope.original_content is not None
        received = Received(
            raw=envelope.original_content,
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            connection=server.connection,
            at=time.monotonic(),
        )
        fault = self.owner._fault_at_data_end(received)  # keeps the message for DROP_KEPT
        if fault in (_Fault.DROP, _Fault.DROP_KEPT) and server.transport is not None:
            server.transport.abort()
            # No reply at all: connection_lost() cancels this session's task while it waits.
            await asyncio.get_running_loop().create_future()
        rule = self.owner._rule(envelope.rcpt_tos, "data")
        if rule is not None and rule.refuses:
            return rule.reply
        self.owner._record(received)
        server.accepted += 1
        if fault is _Fault.SLOW:
            # Kept, then answered late: a client that gave up meanwhile closes the
            # connection, and connection_lost() cancels this wait.
            await asyncio.sleep(self.owner._slow_seconds)
        return rule.reply if rule is not None else "250 OK"

    async def handle_exception(self, error: Exception) -> str:
        # Without this hook aiosmtpd logs the traceback; keep it for the test to see.
        self.owner.errors.append(error)
        return f"451 4.3.0 test server error: {type(error).__name__}: {error}"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        owner = self.owner
        assert owner.username is not None and owner.password is not None
        success = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == owner.username.encode()
            and auth_data.password == owner.password.encode()
            and not owner._logins_refused()
        )
        owner._logged_in(success)
        # handled=False: aiosmtpd then answers 535 itself on failure.
        return AuthResult(success=success, handled=False)


class _Controller(Controller):
    """aiosmtpd's threaded controller, on a free port chosen by the kernel."""

    def __init__(self, owner: SMTPServer, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = owner
        self.protocol_handler = handler

    def factory(self) -> SMTP:
        return _Protocol(self.owner, self.protocol_handler, loop=self.loop, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Bound to port 0, the listener knows its real port only now. aiosmtpd connects
        # once to make sure its factory works; that connection is not the tests', so
        # its address is noted before connecting and it is left out of the counts.
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.ready_timeout)
            sock.bind((HOST, 0))
            self.owner._probe = sock.getsockname()
            sock.connect((HOST, self.port))
            sock.recv(1024)


# --- the server --------------------------------------------------------------------


class _Fault(enum.Enum):
    """What happens at the end of one message's DATA."""

    DROP = "drop"  # the connection closed, no answer, the message not kept
    DROP_KEPT = "drop-kept"  # the message kept, then the connection closed with no answer
    SLOW = "slow"  # the message kept, the answer sent late


class SMTPServer:
    """A real SMTP server in a thread on 127.0.0.1 that records what it receives."""

    def __init__(
        self,
        *,
        tls: bool = False,
        username: str | None = None,
        password: str | None = None,
        auth_require_tls: bool | None = None,
        smtputf8: bool = False,
        cert_names: tuple[str, ...] = (),
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both a username and a password, or neither")
        self.host = HOST
        self.port = 0
        self.tls = tls
        self.username = username
        self.password = password
        self.auth_require_tls = tls if auth_require_tls is None else auth_require_tls
        self.smtputf8 = smtputf8
        self.cert_names = cert_names
        self.rules: dict[str, Rule] = {}
        """How to answer each recipient address (exact match); see `answer()`."""
        self.stalls: dict[str, float] = {}
        """Seconds to wait before answering RCPT TO for each address; see `stall()`."""
        self.errors: list[BaseException] = []
        """Exceptions the server caught while serving (a test may assert there are none)."""
        self.dropped: list[Received] = []
        """Messages whose connection was closed at the end of DATA, unanswered (kept or not)."""
        self.slowed: list[Received] = []
        """Messages kept, then answered late by `slow_answer()`."""
        self.cert_pem: str | None = None
        self.cert_file: Path | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._messages: list[Received] = []
        self._connections = 0
        self._logins = 0
        self._failed_logins = 0
        self._drop_at: int | None = None
        self._drop_kept = False
        self._drop_every: int | None = None
        self._slow_every: int | None = None
        self._slow_seconds = 0.0
        self._data_ends = 0
        self._refuse_logins_at: int | None = None
        self._withhold_starttls_at: int | None = None
        self._per_connection: int | None = None
        self._open: set[_Protocol] = set()
        self._probe: tuple[str, int] | None = None
        self._controller: _Controller | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    # --- what it received

    @property
    def messages(self) -> list[Received]:
        """Return the messages accepted so far, oldest first (a copy)."""
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """Return the number of TCP connections clients opened."""
        with self._lock:
            return self._connections

    @property
    def logins(self) -> int:
        """Return the number of successful AUTH logins."""
        with self._lock:
            return self._logins

    @property
    def failed_logins(self) -> int:
        """Return the number of AUTH attempts refused for a wrong username or password."""
        with self._lock:
            return self._failed_logins

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Received]:
        """Wait until at least ``n`` messages were accepted; return them all."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._messages) >= n, timeout):
                raise TimeoutError(
                    f"the SMTP server received {len(self._messages)} of {n} messages in {timeout} s"
                )
            return list(self._messages)

    def clear(self) -> None:
        """Forget the messages, counts, errors, rules, stalls and faults; number connections from 1 again."""
        self.repair()
        with self._lock:
            self._messages.clear()
            self._connections = self._logins = self._failed_logins = 0
            self._data_ends = 0
            self.rules.clear()
            self.stalls.clear()
            self.errors.clear()
            self.dropped.clear()
            self.slowed.clear()

    def repair(self) -> None:
        """Switch every fault off (drops, slow answers, refused logins, STARTTLS, connection limit).

        What was received, the rules and the stalls stay.
        """
        with self._lock:
            self._drop_at = self._drop_every = self._slow_every = None
            self._refuse_logins_at = self._withhold_starttls_at = self._per_connection = None

    # --- how it answers

    def answer(self, address: str, code: int, text: str, times: int | None = None, at: When = "rcpt") -> Rule:
        """Answer ``address`` with ``code`` and ``text`` (the first ``times`` attempts, or always)."""
        rule = Rule(code, text, at=at, times=times)
        self.rules[address] = rule
        return rule

    def drop_after(self, k: int, *, record: bool = False) -> None:
        """Accept ``k`` more messages, then close the connection at the end of the next DATA, unanswered.

        It happens once: the message after the dropped one is accepted again. With
        ``record`` the dropped message is kept first: the server has it, the client
        never hears so.
        """
        if k < 0:
            raise ValueError(f"drop_after({k}): use a count >= 0")
        with self._lock:
            self._drop_at = len(self._messages) + k
            self._drop_kept = record

    def drop_every(self, n: int, *, record: bool = False) -> None:
        """Close the connection at the end of every ``n``-th DATA from now, unanswered (kept with ``record``)."""
        if n < 1:
            raise ValueError(f"drop_every({n}): use a count >= 1")
        with self._lock:
            self._drop_every, self._drop_kept, self._data_ends = n, record, 0

    def slow_answer(self, seconds: float, *, every: int = 1) -> None:
        """Keep every ``every``-th message from now, but answer the end of its DATA only after ``seconds``."""
        if every < 1 or seconds < 0:
            raise ValueError(f"slow_answer({seconds}, every={every}): use seconds >= 0 and every >= 1")
        with self._lock:
            self._slow_every, self._slow_seconds, self._data_ends = every, seconds, 0

    def refuse_logins(self, after: int = 0) -> None:
        """Once ``after`` more messages were accepted, refuse every login with 535 (new connections)."""
        with self._lock:
            self._refuse_logins_at = len(self._messages) + after

    def withhold_starttls(self, after: int = 0) -> None:
        """Once ``after`` more messages were accepted, stop offering STARTTLS (in answers to EHLO)."""
        with self._lock:
            self._withhold_starttls_at = len(self._messages) + after

    def limit_per_connection(self, k: int) -> None:
        """After ``k`` messages on a connection, answer MAIL FROM with 421 and close it."""
        if k < 1:
            raise ValueError(f"limit_per_connection({k}): use a count >= 1")
        with self._lock:
            self._per_connection = k

    def stall(self, address: str, seconds: float) -> None:
        """Wait ``seconds`` before answering each RCPT TO for ``address``."""
        self.stalls[address] = seconds

    def client_context(self) -> ssl.SSLContext:
        """Return a client SSL context that trusts this server's certificate."""
        if self.cert_pem is None:
            raise RuntimeError("the server has no certificate: start it with tls=True")
        return ssl.create_default_context(cadata=self.cert_pem)

    # --- start and stop

    def start(self) -> SMTPServer:
        """Start listening on 127.0.0.1 at a free port (``port``); return the server."""
        if self._controller is not None:
            raise RuntimeError("the SMTP server is already running")
        tls_context = self._make_tls_context() if self.tls else None
        handler = _Handler(self)
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._loop_error)
        controller = _Controller(
            self,
            handler,
            hostname=HOST,
            port=0,
            loop=loop,
            ready_timeout=10.0,
            server_hostname=HOSTNAME,
            data_size_limit=DATA_SIZE_LIMIT,
            decode_data=False,
            tls_context=tls_context,
            enable_SMTPUTF8=self.smtputf8,
            authenticator=handler.authenticate if self.username is not None else None,
            auth_require_tls=self.auth_require_tls,
        )
        try:
            controller.start()
        except BaseException:
            controller.stop(no_assert=True)
            if not loop.is_closed():
                loop.close()
            self._remove_certificate()
            raise
        self._controller = controller
        self.port = controller.port
        return self

    def stop(self) -> None:
        """Close every connection, stop the server and its thread; a second call does nothing."""
        controller = self._controller
        if controller is None:
            return
        self._controller = None
        closing = asyncio.run_coroutine_threadsafe(self._close_connections(controller), controller.loop)
        try:
            closing.result(STOP_TIMEOUT)
        except TimeoutError:
            closing.cancel()
        controller.stop()
        self._remove_certificate()

    def __enter__(self) -> SMTPServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"{self.host}:{self.port}" if self._controller is not None else "stopped"
        return f"<SMTPServer {state}, {len(self._messages)} messages>"

    # --- inside the server thread

    def _connected(self, protocol: _Protocol, peer: Any) -> int:
        """Note a new TCP connection; return its number (0 for aiosmtpd's start-up probe)."""
        with self._lock:
            self._open.add(protocol)
            if peer == self._probe:
                return 0
            self._connections += 1
            return self._connections

    def _disconnected(self, protocol: _Protocol) -> None:
        with self._lock:
            self._open.discard(protocol)

    def _rule(self, addresses: list[str], at: When) -> Rule | None:
        """Return the first rule for these recipients that answers now, counting the attempt."""
        with self._lock:
            for address in addresses:
                rule = self.rules.get(address)
                if rule is not None and rule.at == at and rule._take():
                    return rule
            return None

    def _fault_at_data_end(self, received: Received) -> _Fault | None:
        """Say what to do at the end of this DATA; keep a dropped message when asked to."""
        with self._changed:
            self._data_ends += 1
            drop = self._drop_at is not None and len(self._messages) >= self._drop_at
            if drop:
                self._drop_at = None
            drop = drop or (self._drop_every is not None and self._data_ends % self._drop_every == 0)
            if drop:
                self.dropped.append(received)
                if not self._drop_kept:
                    return _Fault.DROP
                self._messages.append(received)
                self._changed.notify_all()
                return _Fault.DROP_KEPT
            if self._slow_every is not None and self._data_ends % self._slow_every == 0:
                self.slowed.append(received)
                return _Fault.SLOW
            return None

    def _logins_refused(self) -> bool:
        with self._lock:
            return self._refuse_logins_at is not None and len(self._messages) >= self._refuse_logins_at

    def _starttls_withheld(self) -> bool:
        with self._lock:
            return (
                self._withhold_starttls_at is not None and len(self._messages) >= self._withhold_starttls_at
            )

    def _record(self, received: Received) -> None:
        with self._changed:
            self._messages.append(received)
            self._changed.notify_all()

    def _logged_in(self, success: bool) -> None:
        with self._lock:
            if success:
                self._logins += 1
            else:
                self._failed_logins += 1

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # asyncio's default handler prints a traceback, e.g. "Task exception was never
        # retrieved" for a session whose client reset the connection. A client that goes
        # away is not an error of the server; anything else is kept for the test.
        error = context.get("exception")
        if isinstance(error, ConnectionError | ssl.SSLError | asyncio.CancelledError):
            return
        self.errors.append(error if error is not None else RuntimeError(context.get("message")))

    async def _close_connections(self, controller: _Controller) -> None:
        """Stop listening, abort open connections, and let every session end."""
        if controller.server is not None:
            controller.server.close()
        with self._lock:
            protocols = list(self._open)
        for protocol in protocols:
            if protocol.transport is not None:
                protocol.transport.abort()
        while True:
            with self._lock:
                if not self._open:
                    break
            await asyncio.sleep(0.01)
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        # Collect the sessions' outcomes so that none is reported as never retrieved.
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the certificate

    def _make_tls_context(self) -> ssl.SSLContext:
        cert_pem, key_pem = _certificate(self.cert_names)
        self._folder = tempfile.TemporaryDirectory(prefix="smtpserver-")
        folder = Path(self._folder.name)
        cert_file, key_file = folder / "cert.pem", folder / "key.pem"
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        key_file.chmod(0o600)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        self.cert_pem = cert_pem.decode("ascii")
        self.cert_file = cert_file
        return context

    def _remove_certificate(self) -> None:
        if self._folder is not None:
            with contextlib.suppress(OSError):
                self._folder.cleanup()
            self._folder = None
            self.cert_file = None
