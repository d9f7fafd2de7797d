"""The SMTP part of ``mailout doctor``: connect, TLS with a valid certificate, log in, QUIT.

No message is sent. Every step waits ``doctor.timeout`` seconds at most, so a
server that accepts the connection and never answers costs that, not a hang.
The certificate is verified as the send loop verifies it: the system's
certificate authorities (or ``SSL_CERT_FILE``), and the host name of
``smtp.host``.
"""

from __future__ import annotations

import smtplib
import socket
import ssl

from .config import Smtp
from .doctor import Finding, Status
from .net import is_loopback

_TLS_FIX = (
    "use the host name the certificate is for (the provider documents it) as smtp.host,"
    " or have the server's certificate renewed"
)


class _Client(smtplib.SMTP):
    """smtplib's client on a socket we opened (and maybe wrapped in TLS) ourselves."""

    def __init__(self, sock: socket.socket, host: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.sock = sock
        self._host = host  # the name STARTTLS verifies the certificate against


def probe(settings: Smtp, timeout: float) -> list[Finding]:
    """Return the findings of smtp-connect, smtp-tls and smtp-login for the server of ``settings``."""
    return _Probe(settings, timeout).run()


class _Probe:
    def __init__(self, settings: Smtp, timeout: float) -> None:
        self.s = settings
        self.timeout = timeout
        host = f"[{settings.host}]" if ":" in settings.host else settings.host  # an IPv6 address
        self.where = f"{host}:{settings.port}"
        self.findings: list[Finding] = []

    def add(self, check: str, status: Status, message: str, fix: str = "") -> None:
        self.findings.append(Finding(check, status, message, fix))

    def done(self, why: str = "") -> list[Finding]:
        """Note the checks not reached as skipped (``why``); return every finding."""
        reached = {f.id for f in self.findings}
        for check in ("smtp-connect", "smtp-tls", "smtp-login"):
            if check not in reached:
                self.add(check, Status.SKIPPED, why)
        return self.findings

    def run(self) -> list[Finding]:
        s, where, timeout = self.s, self.where, self.timeout
        try:
            sock = socket.create_connection((s.host, s.port), timeout=timeout)
        except TimeoutError:
            self.add(
                "smtp-connect",
                Status.ERROR,
                f"no connection to {where} within {timeout:g} s",
                _connect_fix(s),
            )
            return self.done("needs a connection")
        except OSError as exc:
            self.add(
                "smtp-connect",
                Status.ERROR,
                f"cannot connect to {where}: {exc.strerror or exc}",
                _connect_fix(s),
            )
            return self.done("needs a connection")
        tls_version = ""
        if s.security == "tls":
            try:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=s.host)
                tls_version = sock.version() or "TLS"
            except ssl.SSLCertVerificationError as exc:
                sock.close()
                self.add("smtp-connect", Status.OK, f"{where} accepts connections")
                self.add(
                    "smtp-tls", Status.ERROR, f"the certificate of {where}: {exc.verify_message}", _TLS_FIX
                )
                return self.done("needs TLS")
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                self.add("smtp-connect", Status.OK, f"{where} accepts connections")
                self.add(
                    "smtp-tls",
                    Status.ERROR,
                    f"TLS with {where} failed: {_reason(exc, timeout)}",
                    'check smtp.port (465 for smtp.security = "tls", 587 for "starttls")',
                )
                return self.done("needs TLS")
        client = _Client(sock, s.host, timeout)
        try:
            return self._session(client, tls_version)
        finally:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()

    def _session(self, client: _Client, tls_version: str) -> list[Finding]:
        s, where, timeout = self.s, self.where, self.timeout
        try:
            code, text = client.getreply()
            if code != 220:
                self.add(
                    "smtp-connect", Status.ERROR, f"{where} refuses: {code} {_text(text)}", _connect_fix(s)
                )
                return self.done("needs a connection")
            if client.ehlo()[0] != 250:
                client.helo()
            self.add("smtp-connect", Status.OK, f"{where} answers: {code} {_text(text)}")
        except (smtplib.SMTPException, OSError) as exc:
            self.add(
                "smtp-connect",
                Status.ERROR,
                f"{where} accepted the connection, but {_reason(exc, timeout)}",
                _connect_fix(s),
            )
            return self.done("needs a connection")
        if s.security == "starttls":
            if not client.has_extn("starttls"):
                self.add(
                    "smtp-tls",
                    Status.ERROR,
                    f"{where} does not offer STARTTLS: mail would go unencrypted",
                    'smtp.security = "tls" and smtp.port = 465 if the server offers it, or another server',
                )
                return self.done("credentials are never sent without TLS")
            try:
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            except ssl.SSLCertVerificationError as exc:
                self.add(
                    "smtp-tls", Status.ERROR, f"the certificate of {where}: {exc.verify_message}", _TLS_FIX
                )
                return self.done("needs TLS")
            except (smtplib.SMTPException, OSError) as exc:
                self.add("smtp-tls", Status.ERROR, f"STARTTLS with {where} failed: {_reason(exc, timeout)}")
                return self.done("needs TLS")
            tls_version = (client.sock.version() if isinstance(client.sock, ssl.SSLSocket) else None) or "TLS"
        if s.security == "plain":
            if is_loopback(s.host):
                self.add(
                    "smtp-tls",
                    Status.OK,
                    "plain SMTP to a relay on this machine: TLS onwards is the relay's job",
                )
            else:
                self.add(
                    "smtp-tls",
                    Status.WARNING,
                    f"plain SMTP to {where} (smtp.allow_plain): mail crosses the network unencrypted",
                    'smtp.security = "starttls"',
                )
        else:
            self.add("smtp-tls", Status.OK, f"{tls_version}, the certificate is valid for {s.host}")
        if not s.username:
            self.add("smtp-login", Status.SKIPPED, "no smtp.username: the server takes mail without a login")
        elif not s.password:
            self.add(
                "smtp-login",
                Status.ERROR,
                f"smtp.username is {s.username} but MAILOUT_SMTP_PASSWORD is not set",
                "export MAILOUT_SMTP_PASSWORD=...",
            )
        else:
            self._login(client)
        return self.findings

    def _login(self, client: _Client) -> None:
        s, where = self.s, self.where
        fix = "check smtp.username and MAILOUT_SMTP_PASSWORD"
        try:
            client.login(s.username, s.password)
        except smtplib.SMTPAuthenticationError as exc:
            self.add(
                "smtp-login",
                Status.ERROR,
                f"{where} refuses the login of {s.username}: {exc.smtp_code} {_text(exc.smtp_error)}",
                fix,
            )
        except smtplib.SMTPNotSupportedError:
            self.add(
                "smtp-login", Status.ERROR, f"{where} offers no login (AUTH)", "leave smtp.username empty"
            )
        except (smtplib.SMTPException, OSError, UnicodeEncodeError) as exc:
            self.add(
                "smtp-login", Status.ERROR, f"login at {where} failed: {_reason(exc, self.timeout)}", fix
            )
        else:
            self.add("smtp-login", Status.OK, f"{where} accepts the login of {s.username}")


def _connect_fix(s: Smtp) -> str:
    return f"check smtp.host and smtp.port ({s.host}:{s.port}), and that this machine may reach it"


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
        return f"no answer came within {timeout:g} s"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return "the server closed the connection"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    return str(exc) or type(exc).__name__


def _text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())[:200]
