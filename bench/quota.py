"""Benchmark the quota's cost per message: ``quota.take`` as the send loop calls it.

Run from the repository root:
  python bench/quota.py [--calls N] [--only sqlite|postgresql]

For SQLite (a file, ``database.sqlite_synchronous = full``) and a throw-away
PostgreSQL on loopback (fsync and synchronous commit on, as in production), it
compares, per message, on one connection as a sending thread: a stand-in for
the message's ``sending`` mark (one UPDATE) committed by itself, as on a route
without limits; and a slot of a route limited per minute and per day (limits
too high to wait) taken with the same UPDATE in one transaction, as on a route
with limits. The clock moves 10 ms per message, so buckets change and old ones
are purged as in a real send. It prints wall time and CPU time per message of
this process, and for PostgreSQL the server's CPU time too; the difference
between the two rows is what a quota costs. Back to back, twice in both
orders, best of each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import tempfile
import time
from pathlib import Path

from dispatch import make_durable, postmaster_pid, tree_cpu
from machine import describe

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from mailout import outbox, quota  # noqa: E402
from mailout.config import Route  # noqa: E402
from mailout.db import make_engine, upgrade  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


#: Stands in for the message's ``sending`` mark: one UPDATE of one row.
MARK = "UPDATE bench_mark SET n = n + 1 WHERE id = 1"


def measure(url: str, calls: int, server_pid: int | None, *, take: bool) -> tuple[float, float, float | None]:
    """Return wall, client CPU and server CPU (or None) per message, in microseconds.

    Without ``take``: the mark alone, one statement committed by itself, as the send loop
    marks a message on a route without limits. With it: a slot taken and the mark, in one
    transaction, as it does on a route with limits.
    """
    engine = make_engine(url)
    route = Route("bench", per_minute=10**9, per_day=10**9)
    start = dt.datetime(2019, 2, 12, 9, 0, tzinfo=dt.UTC) + dt.timedelta(hours=2 if take else 0)
    with outbox.loop_connection(engine) as conn:

        def message(n: int) -> None:
            if not take:
                conn.exec_driver_sql(MARK)
                if conn.in_transaction():
                    conn.commit()  # SQLite's driver connection: SQLAlchemy began one
                return
            with outbox.atomic(conn):
                assert quota.take(conn, route, start + dt.timedelta(milliseconds=10 * n)) is None
                conn.exec_driver_sql(MARK)

        for n in range(200):  # warm up: statements prepared, the route's row written
            message(n - 200)
        server_before = tree_cpu(server_pid) if server_pid else None
        cpu_before, wall_before = cpu(), time.perf_counter()
        for n in range(calls):
            message(n)
        wall, client = time.perf_counter() - wall_before, cpu() - cpu_before
        server = tree_cpu(server_pid) - server_before if server_pid and server_before is not None else None
    engine.dispose()
    per = 1e6 / calls
    return wall * per, client * per, server * per if server is not None else None


def compare(label: str, url: str, calls: int, server_pid: int | None) -> None:
    """Print the mark alone, then with a slot taken, back to back (twice, in both orders)."""
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE bench_mark (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        conn.exec_driver_sql("INSERT INTO bench_mark VALUES (1, 0)")
    engine.dispose()
    rows: dict[bool, list[tuple[float, float, float | None]]] = {False: [], True: []}
    for take in (False, True, True, False):
        rows[take].append(measure(url, calls, server_pid, take=take))
    for take, runs in rows.items():
        wall, client = min(r[0] for r in runs), min(r[1] for r in runs)
        server = min(r[2] for r in runs if r[2] is not None) if server_pid else None
        what = "mark + quota.take" if take else "mark alone"
        shown = f"{server:>12.0f}" if server is not None else f"{'':>12}"
        print(f"{label:<12}{what:<20}{wall:>10.0f}{client:>10.0f}{shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    print(describe())
    print(
        f"{args.calls:,} messages, a route with two limits (minute, day); microseconds per message, best of two"
    )
    print(f"{'database':<12}{'':<20}{'wall':>10}{'CPU':>10}{'server CPU':>12}")
    with tempfile.TemporaryDirectory(prefix="bench-quota-") as folder:
        base = Path(folder)
        if args.only != "postgresql":
            compare("SQLite", f"sqlite:///{base / 'quota.db'}", args.calls, None)
        if args.only != "sqlite":
            from tests.postgres import PostgresServer, find_pg_bin

            if find_pg_bin() is None:
                print("PostgreSQL: not installed, skipped")
                return
            server = PostgresServer(base / "pg")
            server.start()
            try:
                make_durable(server)
                compare("PostgreSQL", server.create_database("quota"), args.calls, postmaster_pid(server))
            finally:
                server.stop()


if __name__ == "__main__":
    main()
