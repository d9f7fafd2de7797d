"""PostgresServer: a private PostgreSQL server the database tests start themselves."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.postgres import PostgresServer, find_pg_bin, process_running

pytestmark = pytest.mark.slow


def require_postgres() -> None:
    """Skip when PostgreSQL is not installed, except in CI, which must have it."""
    if find_pg_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL (initdb, pg_ctl) is not installed; scripts/system-deps must install it")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PostgresServer]:
    require_postgres()
    with PostgresServer(tmp_path / "pg") as started:
        yield started


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL as psycopg takes it."""
    assert url.startswith("postgresql+psycopg://")
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def test_databases_tables_and_templates(server: PostgresServer) -> None:
    url = server.create_database("app")
    assert url == f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/app"
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
        conn.execute("CREATE TABLE subscriber (id serial PRIMARY KEY, email text NOT NULL)")
        conn.execute("INSERT INTO subscriber (email) VALUES ('ada@example.org'), ('bob@example.org')")
        assert conn.execute("SELECT email FROM subscriber ORDER BY id").fetchall() == [
            ("ada@example.org",),
            ("bob@example.org",),
        ]

    copy = server.create_database("app_copy", template="app")
    with psycopg.connect(libpq_url(copy), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM subscriber").fetchone() == (2,)
        # WITH (FORCE): an open connection does not stop the drop.
        server.drop_database("app_copy")
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(libpq_url(copy)).close()


def test_stop_frees_the_port_and_leaves_no_server(tmp_path: Path) -> None:
    require_postgres()
    # A base folder too deep for a unix socket path (108 bytes at most).
    server = PostgresServer(tmp_path / ("deep" * 30) / "pg")
    server.start()
    port = server.port
    assert port is not None
    assert len(os.fsencode(server.socket_dir / f".s.PGSQL.{port}")) < 108
    assert (server.socket_dir / f".s.PGSQL.{port}").is_socket()
    assert accepts_connections(port)
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])

    server.stop()
    assert not accepts_connections(port)
    assert not (server.data_dir / "postmaster.pid").exists()
    assert not process_running(pid)
    server.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not running"):
        server.url("app")
