"""Shared fixtures: a clean environment, real workspaces on disk, the example issue."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from mailout.config import Settings, load_settings
from mailout.db import make_engine, upgrade
from mailout.issues import Issue, load_issue
from mailout.workspace import init_workspace
from tests import dnsserver
from tests.dovecot import DovecotServer
from tests.dovecot import unavailable as dovecot_unavailable
from tests.postfix import PostfixRelay
from tests.postfix import unavailable as postfix_unavailable
from tests.postgres import PostgresServer, find_pg_bin
from tests.smtpserver import SMTPServer
from tests.spamassassin import SPAMASSASSIN

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
EXAMPLE_ISSUE = REPO / "issues" / "2019-01" / "issue.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MAILOUT_* variable of the developer's shell may change a test's outcome."""
    for name in list(os.environ):
        if name.startswith("MAILOUT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace made by `mailout init`, as the current folder."""
    root = tmp_path / "ws"
    init_workspace(root)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def repo_settings() -> Settings:
    """The settings of the repository's own workspace (the team's mailout.toml)."""
    return load_settings(REPO, env={})


@pytest.fixture
def example_issue() -> Issue:
    """The example issue the README's main job builds."""
    return load_issue(EXAMPLE_ISSUE)


@pytest.fixture
def copy_example(tmp_path: Path) -> Iterator[Path]:
    """A copy of the repository workspace's example issue folder, free to edit."""
    target = tmp_path / "issues" / "2019-01"
    shutil.copytree(EXAMPLE_ISSUE.parent, target)
    yield target


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's headless Chromium driven by Playwright; skipped only outside CI when absent."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run must install Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


def _require(what: str, reason: str) -> None:
    """Skip a test that needs ``what`` outside CI; fail it in CI, which must have everything."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: {reason}")
    pytest.skip(f"{what} is not installed ({reason})")


@pytest.fixture
def spamassassin_command() -> str:
    """Debian's spamassassin command (the rules run offline); skipped only outside CI when absent."""
    if SPAMASSASSIN is None:
        _require("spamassassin", "apt-get install spamassassin; `make test` does it as root")
    assert SPAMASSASSIN is not None
    return SPAMASSASSIN


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL server on loopback, with a migrated template database."""
    if find_pg_bin() is None:
        _require("PostgreSQL", "apt-get install postgresql; `make test` does it as root")
    server = PostgresServer(tmp_path_factory.mktemp("pg"))
    server.start()
    try:
        upgrade(server.create_database("mailout_template"))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database file, copied for each test."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


_database_names = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, migrated database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path / "mailout.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"test_{os.getpid()}_{next(_database_names)}"
    yield server.create_database(name, template="mailout_template")
    server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with no tables yet: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"empty_{os.getpid()}_{next(_database_names)}"
    yield server.create_database(name)
    server.drop_database(name)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the fresh database of ``database_url``."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_workspace(workspace: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace (the current folder) whose database is ``database_url``."""
    monkeypatch.setenv("MAILOUT_DATABASE_URL", database_url)
    return workspace


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    """A real SMTP server on loopback that records every message it accepts."""
    with SMTPServer() as server:
        yield server


#: Made afresh for each run: a key written in the repository would be public (see tokens.PUBLIC_KEYS).
SECRET_KEY = secrets.token_urlsafe(32)


def sending_config(port: int) -> str:
    """Return the mailout.toml of ``sending_workspace``, sending to the test SMTP server on ``port``."""
    return f"""
[newsletter]
name = "Efus Newsletter"
public_base_url = "https://news.example"
postal_address = "10 rue de l'Exemple, 75020 Paris"

[sender]
name = "Efus – Zoë's newsletter"
address = "newsletter@efus.example"
reply_to = "team@efus.example"

[smtp]
host = "127.0.0.1"
port = {port}
security = "plain"
timeout = 5

[doctor]
# The loopback server stands in for a relay: no real domain is set up for these sends, and
# tests/test_doctor.py tests the checks that `send` runs first against a test DNS server.
before_send = false

[sending]
concurrency = 2
batch_size = 5
retry_delay = 0.05
retry_max_age = 60
worker_timeout = 2
policy_failures_pause = 3

[lists.members]
segment = "member"
description = "Members"

[lists.public]
segment = "public"
description = "Public"
"""


@pytest.fixture
def sending_workspace(db_workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace with the example issue, a database, and the test SMTP server as its transport."""
    (db_workspace / "mailout.toml").write_text(sending_config(smtp_server.port), encoding="utf-8")
    shutil.copytree(EXAMPLE_ISSUE.parent, db_workspace / "issues" / "2019-01")
    monkeypatch.setenv("MAILOUT_SECRET_KEY", SECRET_KEY)
    return db_workspace


def edit_config(workspace: Path, *changes: tuple[str, str]) -> None:
    """Replace text in the workspace's mailout.toml (each ``old`` must be there)."""
    config = workspace / "mailout.toml"
    text = config.read_text(encoding="utf-8")
    for old, new in changes:
        assert old in text, f"{old!r} is not in mailout.toml"
        text = text.replace(old, new)
    config.write_text(text, encoding="utf-8")


@pytest.fixture
def dns_server() -> Iterator[dnsserver.DNSServer]:
    """A real DNS server on loopback (UDP and TCP) answering the TXT records a test adds."""
    with dnsserver.running() as server:
        yield server


@pytest.fixture(scope="session")
def rsa_pem() -> bytes:
    """An unencrypted RSA-2048 private key in PEM, made for this run."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="session")
def ed25519_pem() -> bytes:
    """An unencrypted Ed25519 private key in PEM, made for this run."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture
def postfix_relay(smtp_server: SMTPServer) -> Iterator[PostfixRelay]:
    """A real Postfix on loopback that relays what it receives to ``smtp_server``."""
    reason = postfix_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the relay test (scripts/system-deps installs Postfix)")
        pytest.skip(reason)
    relay = PostfixRelay(smtp_server.port)
    relay.start()
    yield relay
    relay.stop()


@pytest.fixture
def postfix_local(smtp_server: SMTPServer) -> Iterator[PostfixRelay]:
    """``postfix_relay``, plus local delivery for ``local.test.example``, where no user exists.

    A message to anyone there is accepted, then bounced by Postfix's local delivery
    ("unknown user", 5.1.1); the bounce is relayed to ``smtp_server``.
    """
    reason = postfix_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the Postfix tests (scripts/system-deps installs Postfix)")
        pytest.skip(reason)
    settings = {"mydestination": "local.test.example", "local_recipient_maps": "", "local_transport": "local"}
    relay = PostfixRelay(smtp_server.port, settings)
    relay.start()
    yield relay
    relay.stop()


@pytest.fixture
def dovecot_factory() -> Iterator[Callable[..., DovecotServer]]:
    """Start Dovecot servers (`DovecotServer` arguments), each stopped at the end of the test."""
    reason = dovecot_unavailable()
    if reason:
        _require("Dovecot", f"{reason}; `make test` installs dovecot-imapd as root")
    servers: list[DovecotServer] = []

    def start(**options: Any) -> DovecotServer:
        server = DovecotServer(**options)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., DovecotServer]) -> DovecotServer:
    """A private Dovecot IMAP server on loopback: one user, an empty INBOX, TLS from its own CA."""
    return dovecot_factory()
