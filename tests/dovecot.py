"""A private Dovecot IMAP server on loopback for the tests (a helper, not a fixture).

`DovecotServer` runs Debian's Dovecot (``dovecot-imapd``, 2.3) from a folder of
its own under /tmp: its own configuration (``dovecot -c``, nothing of
/etc/dovecot is read), its own run and state folders, one user in a
passwd-file with a known password, Maildir storage, and two listeners on free
loopback ports: IMAP over implicit TLS (``imaps_port``) and IMAP with STARTTLS
(``imap_port``). The certificate is signed by a certificate authority made for
this server (``ca_file``), so a client verifies it as it would a real one;
``other_ca_file`` is a second authority that signed nothing here.

Dovecot never gives mail access to root: run by a user, every process runs as
that user; run as root (CI), the master process stays root, the login
processes run as Debian's ``dovenull`` and the rest as ``dovecot`` (both made
by the package), which also owns the mail.

    with DovecotServer() as server:
        server.append("INBOX", b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
        source = f"imaps://{server.url_user}@127.0.0.1:{server.imaps_port}/INBOX"
        server.flags("INBOX")  # {uid: {"\\\\Seen", ...}} through a second connection
"""

from __future__ import annotations

import contextlib
import datetime
import grp
import imaplib
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
HOST = "127.0.0.1"
#: Also loopback, where the server also listens, but a name its certificate does not have.
OTHER_HOST = "127.0.0.2"
USER = "ana@example.org"
START_TIMEOUT = 20.0
_PORT_ATTEMPTS = 3  # another process may take a free port before Dovecot binds it


def unavailable() -> str | None:
    """Say why a Dovecot server cannot run here, or None when it can."""
    if not Path(DOVECOT).exists() or not Path("/usr/lib/dovecot/imap-login").exists():
        return "Dovecot is not installed (Debian's dovecot-imapd package)"
    if os.geteuid() == 0:
        for name in ("dovecot", "dovenull"):
            try:
                pwd.getpwnam(name)
            except KeyError:
                return f"running as root, and there is no {name!r} system user for Dovecot's processes"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _authority(name: str) -> tuple[object, object]:
    """A certificate authority: its key and its self-signed certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    usage = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment"), False
    )
    usage |= {"key_agreement": False, "encipher_only": False, "decipher_only": False}
    ca_usage = x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def make_certificates(folder: Path) -> tuple[Path, Path, Path, Path]:
    """Write a CA, a server certificate it signed (localhost, 127.0.0.1) and its key, and another CA.

    Returns the paths of the CA's certificate, the server's certificate, its key,
    and the other CA's certificate (PEM).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, ca_cert = _authority("mailout tests IMAP CA")
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey) and isinstance(ca_cert, x509.Certificate)
    _, other_cert = _authority("mailout tests other CA")
    assert isinstance(other_cert, x509.Certificate)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = (folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "other-ca.pem")
    paths[0].write_bytes(ca_cert.public_bytes(pem))
    paths[1].write_bytes(certificate.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths[2].chmod(0o600)
    paths[3].write_bytes(other_cert.public_bytes(pem))
    return paths


class DovecotServer:
    """Dovecot on 127.0.0.1 (see the module's docstring); `start()`, then `stop()` (idempotent)."""

    def __init__(self, capabilities: str | None = None, password: str | None = None) -> None:
        #: What Dovecot announces after login instead of all it can do (``imap_capability``),
        #: to play an older server: e.g. without MOVE or UIDPLUS.
        self.capabilities = capabilities
        self.user = USER
        #: The user as an IMAP URL writes it: the "@" percent-encoded.
        self.url_user = quote(USER, safe="")
        self.password = password or secrets.token_urlsafe(16)
        assert ":" not in self.password and "\n" not in self.password  # the passwd-file's separators
        self.imap_port = 0
        self.imaps_port = 0
        # Not under pytest's tmp_path: Dovecot's own users must reach it when we are root.
        self.root = Path(tempfile.mkdtemp(prefix="mailout-dovecot-"))
        self.root.chmod(0o755)
        self.home = self.root / "mail" / USER
        #: The user's Maildir: INBOX, and each folder "X" as the sub-folder ".X" (Maildir++).
        self.maildir = self.home / "Maildir"
        self.log = self.root / "dovecot.log"
        self.ca_file, self._cert, self._key, self.other_ca_file = make_certificates(self.root)
        self._process: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            self._login_user, self._internal_user, mail_user = "dovenull", "dovecot", "dovecot"
        else:
            name = pwd.getpwuid(os.getuid()).pw_name
            self._login_user = self._internal_user = mail_user = name
        entry = pwd.getpwnam(mail_user)
        self.mail_uid, self.mail_gid = entry.pw_uid, entry.pw_gid
        self._internal_group = grp.getgrgid(pwd.getpwnam(self._internal_user).pw_gid).gr_name

    def __enter__(self) -> DovecotServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _config(self) -> str:
        return f"""# tests/dovecot.py: a throwaway server for one test run
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.log}
protocols = imap
# 127.0.0.2 too: the same server under a name its certificate does not have.
listen = {HOST}, {OTHER_HOST}
ssl = required
ssl_cert = <{self._cert}
ssl_key = <{self._key}
ssl_min_protocol = TLSv1.2
# Loopback counts as secure to Dovecot: keep it from offering a login before TLS anyway.
disable_plaintext_auth = yes
auth_mechanisms = plain login
default_login_user = {self._login_user}
default_internal_user = {self._internal_user}
default_internal_group = {self._internal_group}
first_valid_uid = {self.mail_uid}
first_valid_gid = {self.mail_gid}
mail_uid = {self.mail_uid}
mail_gid = {self.mail_gid}
mail_location = maildir:{self.root}/mail/%u/Maildir
mail_fsync = never
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.root}/users
}}
{f"imap_capability = {self.capabilities}" if self.capabilities else ""}
namespace inbox {{
  inbox = yes
  separator = /
}}
{"" if os.geteuid() == 0 else _UNPRIVILEGED}service imap-login {{
  inet_listener imap {{
    address = {HOST}, {OTHER_HOST}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {HOST}, {OTHER_HOST}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
"""

    def start(self) -> None:
        """Write the configuration and the user, start Dovecot and wait until it greets."""
        if self._process is not None:
            raise RuntimeError("this DovecotServer is already started")
        for folder in ("run", "state", "mail"):
            (self.root / folder).mkdir(exist_ok=True)
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        for path in (self.root / "mail", *self.root.joinpath("mail").rglob("*")):
            os.chown(path, self.mail_uid, self.mail_gid)
        (self.root / "users").write_text(f"{USER}:{{PLAIN}}{self.password}:::{self.home}::\n")
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                self.imap_port, self.imaps_port = _free_port(), _free_port()
                (self.root / "dovecot.conf").write_text(self._config(), encoding="utf-8")
                self._process = subprocess.Popen(
                    [DOVECOT, "-F", "-c", str(self.root / "dovecot.conf")],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
                if self._wait_until_listening():
                    return
                if attempt < _PORT_ATTEMPTS and "Address already in use" in self.log_tail():
                    self._terminate()
                    continue
                raise RuntimeError(f"Dovecot did not start:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def _wait_until_listening(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with self.connect(login=False):
                    return True
            except (OSError, imaplib.IMAP4.error):
                time.sleep(0.05)
        return False

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()

    def stop(self) -> None:
        """Stop Dovecot and every process it started, and remove its folder."""
        try:
            self._terminate()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """The end of Dovecot's log, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- a second client, for the tests to look at what the code under test did --------------

    def client_context(self) -> ssl.SSLContext:
        """A TLS context that trusts this server's certificate authority."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @contextlib.contextmanager
    def connect(self, *, login: bool = True) -> Iterator[imaplib.IMAP4_SSL]:
        """An IMAPS connection of our own (logged in), closed at the end of the block."""
        client = imaplib.IMAP4_SSL(HOST, self.imaps_port, ssl_context=self.client_context(), timeout=10)
        try:
            if login:  # PLAIN: LOGIN cannot carry a password that is not ASCII
                secret = f"\0{USER}\0{self.password}".encode()
                client.authenticate("PLAIN", lambda _: secret)
            yield client
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                client.logout()

    def append(self, folder: str, raw: bytes, flags: str = "") -> int:
        """APPEND ``raw`` to ``folder`` (unread unless ``flags`` says); return its UID."""
        with self.connect() as client:
            typ, data = client.append(_quoted(folder), f"({flags})" if flags else None, None, raw)
            assert typ == "OK", data
            match = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
            assert match, data
            return int(match.group(1))

    def expunge(self, folder: str, uid: int) -> None:
        """Take the message ``uid`` out of ``folder``, as another mail program would."""
        with self.connect() as client:
            typ, data = client.select(_quoted(folder))
            assert typ == "OK", data
            typ, data = client.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")
            assert typ == "OK", data
            typ, data = client.uid("EXPUNGE", str(uid))
            assert typ == "OK", data

    def create(self, folder: str) -> None:
        """CREATE ``folder``."""
        with self.connect() as client:
            typ, data = client.create(_quoted(folder))
            assert typ == "OK", data

    def folders(self) -> set[str]:
        """The folders of the user's mailbox, as LIST names them."""
        with self.connect() as client:
            typ, data = client.list()
            assert typ == "OK", data
        names = set()
        for line in data:
            assert isinstance(line, bytes)
            match = re.match(rb'\(.*?\) (?:"(?:[^"\\]|\\.)*"|NIL) (?:"((?:[^"\\]|\\.)*)"|(\S+))$', line)
            assert match, line
            quoted, atom = match.groups()
            name = atom if quoted is None else re.sub(rb"\\(.)", rb"\1", quoted)
            names.add(name.decode("ascii"))
        return names

    def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """Each message of ``folder``: its UID and flags, read without changing anything."""
        with self.connect() as client:
            typ, data = client.select(_quoted(folder), readonly=True)
            assert typ == "OK", data
            if int(data[0] or 0) == 0:
                return {}
            typ, data = client.uid("FETCH", "1:*", "(FLAGS)")
            assert typ == "OK", data
        found = {}
        for line in data:
            assert isinstance(line, bytes)
            match = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", line)
            assert match, line
            uid = match.group(1) or match.group(4)
            names = match.group(2) if match.group(2) is not None else match.group(3)
            found[int(uid)] = set(names.decode().split()) - {"\\Recent"}
        return found

    def messages(self, folder: str = "INBOX") -> dict[int, bytes]:
        """Each message of ``folder``: its UID and bytes, read with PEEK (nothing changes)."""
        with self.connect() as client:
            typ, data = client.select(_quoted(folder), readonly=True)
            assert typ == "OK", data
            if int(data[0] or 0) == 0:
                return {}
            typ, data = client.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            assert typ == "OK", data
        found = {}
        for part in data:
            if isinstance(part, tuple):
                match = re.search(rb"UID (\d+)", part[0])
                assert match, part[0]
                found[int(match.group(1))] = part[1]
        return found


#: Run by a user, no process may chroot: the login and anvil processes stay where they are.
_UNPRIVILEGED = """service anvil {
  chroot =
}
service imap-login {
  chroot =
}
"""


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
