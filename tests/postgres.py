"""A private, throwaway PostgreSQL server for the tests (a helper, not a fixture).

`PostgresServer` runs `initdb` and `pg_ctl start` on a temporary folder, listens on
127.0.0.1 only, at a free port, with durability turned off (fsync, full-page writes,
synchronous commit) so that it starts in about a second. It never depends on a
system cluster (Debian's `postgresql` service) being installed or running.

`initdb` and `postgres` refuse to run as root: as root (CI), they run as the
`postgres` system user (created by Debian's `postgresql` package), in a fresh
folder under /tmp that this user can reach.

    server = PostgresServer(tmp_path / "pg")
    server.start()
    url = server.create_database("app")  # postgresql+psycopg://postgres@127.0.0.1:PORT/app
    ...
    server.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

SUPERUSER = "postgres"
"""The database superuser `initdb` creates (trust authentication, no password)."""

SYSTEM_USER = "postgres"
"""The system user the server runs as when the tests run as root."""

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
"""Seconds to wait for the server to accept connections."""

_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes, NUL included
_PORT_ATTEMPTS = 3  # another process may take the free port before the server binds it
_LOG_TAIL_LINES = 30

_SETTINGS = {
    "listen_addresses": HOST,
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "max_connections": "100",
    "shared_buffers": "16MB",
    "jit": "off",
    "timezone": "UTC",
}


def _is_pg_bin(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in ("initdb", "pg_ctl"))


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    """(16,) for /usr/lib/postgresql/16/bin, (9, 6) for .../9.6/bin."""
    return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name))


def find_pg_bin() -> Path | None:
    """The folder holding the server's `initdb` and `pg_ctl`, or None when PostgreSQL is absent.

    Tries, in order: `pg_config --bindir` of the `pg_config` on PATH (Debian's libpq-dev
    wrapper answers even without the server, hence the check for the programs),
    an `initdb` on PATH, then /usr/lib/postgresql/*/bin, highest version first.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            if result.stdout.strip():
                candidates.append(Path(result.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    return next((folder for folder in candidates if _is_pg_bin(folder)), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def process_running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (in a container, PID 1 may not reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresServer:
    """A PostgreSQL server of our own, started in `base` (see the module's docstring).

    `start()` once, then `url()`, `create_database()` and `drop_database()`; `stop()`
    (idempotent, also run at exit) shuts it down. Usable as a context manager.
    """

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.port: int | None = None
        self.data_dir = self.base / "data"
        self.socket_dir = self.base
        self.log_path = self.base / "postgres.log"
        self._bin_dir: Path | None = None
        self._scratch: Path | None = None  # a folder under /tmp we made, removed by stop()
        self._as_root = os.geteuid() == 0
        self._started = False

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """initdb, then start the server and wait until it accepts connections.

        Raises RuntimeError, with the end of the server's log, when it cannot.
        """
        if self._started:
            raise RuntimeError("this PostgresServer is already started")
        self._bin_dir = find_pg_bin()
        if self._bin_dir is None:
            raise RuntimeError(
                "PostgreSQL server programs (initdb, pg_ctl) not found: apt-get install postgresql"
            )
        self._started = True
        atexit.register(self.stop)
        try:
            self._prepare_folders()
            self._initdb()
            self._start_server()
            self._wait_for_connections()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove our folders under /tmp; idempotent."""
        atexit.unregister(self.stop)
        if not self._started:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists() and self._bin_dir is not None:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    pg_ctl = str(self._bin_dir / "pg_ctl")
                    self._run([pg_ctl, "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop"], 45)
                self._kill_leftover()
        finally:
            self._started = False
            self._remove_scratch()

    # -- databases ----------------------------------------------------------------------------

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of database `dbname` on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self._port()}/{quote(dbname, safe='')}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[TupleRow]:
        """A psycopg connection (autocommit) to `dbname` on this server."""
        return psycopg.connect(
            host=HOST,
            port=self._port(),
            user=SUPERUSER,
            dbname=dbname,
            sslmode="disable",
            connect_timeout=10,
            autocommit=True,
        )

    def create_database(self, name: str, template: str | None = None) -> str:
        """CREATE DATABASE `name` (a copy of `template` if given); returns its URL.

        PostgreSQL refuses to copy a template that has open connections: close them
        (e.g. dispose of the SQLAlchemy engine) first.
        """
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
        with self.connect() as conn:
            conn.execute(query)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE `name` if it exists, ending its open connections (WITH (FORCE))."""
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The end of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ----------------------------------------------------------------------------

    def _port(self) -> int:
        if self.port is None or not self._started:
            raise RuntimeError("the PostgreSQL server is not running: call start() first")
        return self.port

    def _prepare_folders(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            # The base folder's parents may be closed to the postgres user (pytest's
            # /tmp/pytest-of-root is 0700): use a fresh folder of its own under /tmp.
            try:
                user = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root, and initdb refuses root, but there is no {SYSTEM_USER!r} system "
                    "user to run it as: apt-get install postgresql, or run the tests as another user"
                ) from None
            self._scratch = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
            self._scratch.chmod(0o755)
            os.chown(self._scratch, user.pw_uid, user.pw_gid)
            self.data_dir = self._scratch / "data"
            self.socket_dir = self._scratch
            self.log_path = self._scratch / "postgres.log"
        elif len(os.fsencode(self.base / ".s.PGSQL.65535")) > _SOCKET_PATH_MAX:
            self._scratch = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
            self.socket_dir = self._scratch

    def _remove_scratch(self) -> None:
        if self._scratch is None:
            return
        if self.log_path.is_relative_to(self._scratch) and self.log_path.exists():
            with contextlib.suppress(OSError):  # keep the log beside the test's files
                shutil.copyfile(self.log_path, self.base / "postgres.log")
            self.log_path = self.base / "postgres.log"
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._scratch = None

    def _run(self, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a server program, as the postgres system user when we are root."""
        if self._as_root:
            if shutil.which("runuser"):
                command = ["runuser", "-u", SYSTEM_USER, "--", *command]
            else:
                user = pwd.getpwnam(SYSTEM_USER)
                command = [
                    "setpriv",
                    f"--reuid={user.pw_uid}",
                    f"--regid={user.pw_gid}",
                    "--init-groups",
                    *command,
                ]
        # No PG* variable of the developer's shell (PGDATA, PGPORT, ...) may change the server.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update(LC_ALL="C", TZ="UTC")
        return subprocess.run(
            command,
            cwd=self.socket_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _initdb(self) -> None:
        assert self._bin_dir is not None
        initdb = str(self._bin_dir / "initdb")
        command = [initdb, "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8"]
        result = self._run([*command, "--locale=C", "--no-sync"], 120)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
        settings = {**_SETTINGS, "unix_socket_directories": str(self.socket_dir)}
        lines = [f"{name} = {_conf_value(value)}" for name, value in settings.items()]
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/postgres.py\n" + "\n".join(lines) + "\n")

    def _start_server(self) -> None:
        assert self._bin_dir is not None
        pg_ctl = str(self._bin_dir / "pg_ctl")
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.port = _free_port()
            command = [pg_ctl, "-D", str(self.data_dir), "-l", str(self.log_path), "-o", f"-p {self.port}"]
            result = self._run([*command, "-w", "-t", str(int(START_TIMEOUT)), "start"], START_TIMEOUT + 15)
            if result.returncode == 0:
                return
            self._kill_leftover()
            tail = self.log_tail()
            if "could not bind" in tail and attempt < _PORT_ATTEMPTS:
                continue  # someone took the port in between: try another one
            raise RuntimeError(
                f"PostgreSQL did not start (pg_ctl exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- {self.log_path} (end) ---\n{tail}"
            )

    def _wait_for_connections(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with self.connect() as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL on {HOST}:{self.port} accepts no connections: {error}\n"
                        f"--- {self.log_path} (end) ---\n{self.log_tail()}"
                    ) from error
                time.sleep(0.05)

    def _kill_leftover(self) -> None:
        """Make sure no postmaster of ours survives (pg_ctl failed or timed out)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        for sig in (signal.SIGQUIT, signal.SIGKILL):  # immediate shutdown, then no questions
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if not process_running(pid):
                    return
                time.sleep(0.05)
