"""A real Postfix on loopback for the tests, relaying every message to another SMTP server.

It runs from a configuration folder of its own (``postfix -c DIR``): its own
queue, its own port, no DNS, no local delivery; nothing of the machine's mail
system is used or changed. Postfix's master runs as root and its daemons as
the ``postfix`` user, so it needs root and the Debian package.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
DAEMONS = Path("/usr/lib/postfix/sbin")
#: Seconds the first greeting may take after Postfix starts.
GREETING_TIMEOUT = 60
# Debian's list of Postfix services; the package's copy if the machine's was removed.
MASTER_CF = next(
    (p for p in (Path("/etc/postfix/master.cf"), Path("/usr/share/postfix/master.cf.dist")) if p.exists()),
    Path("/etc/postfix/master.cf"),
)


def unavailable() -> str | None:
    """Say why a Postfix relay cannot run here, or None when it can."""
    if not Path(POSTFIX).exists() or not (DAEMONS / "master").exists() or not MASTER_CF.exists():
        return "Postfix is not installed (Debian's postfix package)"
    if os.geteuid() != 0:
        return "needs root: Postfix's master process runs as root (run the tests as root, as CI does)"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no postfix user"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostfixRelay:
    """Postfix listening on 127.0.0.1:``port``, relaying to 127.0.0.1:``relay_port``.

    ``settings`` are main.cf lines written after the defaults below, which they override.
    """

    def __init__(self, relay_port: int, settings: dict[str, str] | None = None) -> None:
        self.relay_port = relay_port
        self.settings = dict(settings or {})
        self.port = _free_port()
        # Not under pytest's tmp_path: the postfix user must be able to reach it.
        self.root = Path(tempfile.mkdtemp(prefix="mailout-postfix-"))
        self.root.chmod(0o755)
        self.config = self.root / "etc"

    def _run(self, command: str) -> None:
        # Postfix reports to syslog, or to a terminal: `script` gives it one to read back from.
        result = subprocess.run(
            ["script", "-qec", f"{POSTFIX} -c {self.config} {command}", "/dev/null"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            log = self.root / "maillog"
            raise RuntimeError(
                f"postfix {command}: {result.stdout}{result.stderr}"
                f"{log.read_text(errors='replace')[-2000:] if log.exists() else ''}"
            )

    def start(self) -> None:
        for folder in ("etc", "queue", "data"):
            (self.root / folder).mkdir()
        shutil.chown(self.root / "data", user="postfix")
        (self.config / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {self.root}/queue
data_directory = {self.root}/data
command_directory = {Path(POSTFIX).parent}
daemon_directory = {DAEMONS}
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.test.example
mydomain = test.example
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{self.relay_port}
smtp_dns_support_level = disabled
smtp_host_lookup = native
alias_maps =
alias_database =
local_transport = error:no local delivery here
maillog_file = {self.root}/maillog
maillog_file_prefixes = {self.root}
"""
            + "".join(f"{name} = {value}\n" for name, value in self.settings.items()),
            encoding="utf-8",
        )
        # Debian's services, less its smtpd on port 25 and without chroot (nothing to set up
        # in the queue folder); then an smtpd on a free port.
        lines = []
        for line in MASTER_CF.read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if line.startswith(("#", " ", "\t")) or len(fields) < 8:
                lines.append(line)
            elif fields[:2] != ["smtp", "inet"]:
                fields[4] = "n"
                lines.append(" ".join(fields))
        lines.append(f"127.0.0.1:{self.port} inet n - n - - smtpd")
        (self.config / "master.cf").write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._run("start")
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postfix did not listen on port {self.port}") from None
                time.sleep(0.1)
        # Listening is the master's socket; the greeting needs its first smtpd, which on a
        # loaded machine has taken over 5 s here (a client with a short timeout then fails).
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=GREETING_TIMEOUT) as client:
                client.noop()
        except (OSError, smtplib.SMTPException) as error:
            log = self.root / "maillog"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"postfix did not greet on port {self.port}: {error}\n{tail}") from error

    def stop(self) -> None:
        try:
            self._run("stop")
        except subprocess.TimeoutExpired:
            # A master that does not stop within a minute is killed: its daemons notice and exit.
            pid = self.root / "queue" / "pid" / "master.pid"
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid.read_text().split()[0]), signal.SIGKILL)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
