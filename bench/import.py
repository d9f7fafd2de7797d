"""Benchmark importing subscribers: 100,000 generated rows into SQLite and PostgreSQL.

Run from the repository root:
  python bench/import.py [--rows N] [--no-postgres] [--sqlite-synchronous full|normal|both]

For each database it imports the file into an empty list, then imports the
same file again (every row unchanged), each in a fresh process so that the
peak memory (max RSS) is that of the import alone. It also imports a file ten
times smaller, to show that memory does not grow with the file. PostgreSQL is
a throw-away server started on loopback (initdb + pg_ctl, as the tests do).

Besides the wall-clock time it gives the CPU seconds of the importing process
and, on PostgreSQL, of its server process (from /proc): on a busy machine they
move much less than the wall clock. It also measures, in the same run, the
share of the importing process's CPU time that is address and field
validation (reading the file with and without validating each row), and the
rows/s of a plain COPY of the same file into a table on the same server, the
ceiling for PostgreSQL. ``--sqlite-synchronous`` sets ``database.sqlite_synchronous`` for SQLite
(default: mailout's own default); ``both`` imports with each, back to back.
Prints a Markdown table to paste into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe, flush_latency

ROOT = Path(__file__).resolve().parent.parent
FIRST = ["Ana", "Zoë", "Jörg", "Łukasz", "Inês", "Åsa", "Pierre", "María", "Giulia", "Sean"]
LAST = ["Silva", "Müller", "Kowalski", "Dubois", "García", "Rossi", "Lindqvist", "O'Brien", "Nowak", "Costa"]
ORGS = ["Ville de Nantes", "Stadt Essen", "Câmara Municipal de Lisboa", "Comune di Torino", "Malmö stad"]


def generate(path: Path, rows: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("email,name,organisation,language\n")
        for n in range(rows):
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            handle.write(
                f'person{n}@city{n % 997}.example,"{name}",{rng.choice(ORGS)},{rng.choice(["en", "fr", "de"])}\n'
            )


def run_one(url: str, path: Path, synchronous: str) -> dict[str, float]:
    """In this process: import ``path`` twice into ``url``; return timings and peak memory."""
    from mailout.config import ListSettings
    from mailout.db import make_engine, upgrade
    from mailout.importer import import_file
    from mailout.segments import Segment

    validation = validation_seconds(path)
    upgrade(url)
    options = {} if synchronous == "default" else {"sqlite_synchronous": synchronous}
    engine = make_engine(url, **options)
    members = ListSettings("members", Segment.MEMBER, "")
    server_pid = None
    if engine.dialect.name == "postgresql":
        # The pool hands the import this same connection: its server process does the work.
        with engine.connect() as conn:
            server_pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    timings: dict[str, float] = {}
    reports = []
    for run in ("first", "second"):
        server = server_cpu(server_pid)
        cpu, start = time.process_time(), time.perf_counter()
        reports.append(import_file(engine, path, members))
        timings[run] = time.perf_counter() - start
        timings[f"{run}_cpu"] = time.process_time() - cpu
        timings[f"{run}_server_cpu"] = server_cpu(server_pid) - server
    engine.dispose()
    first, second = reports
    assert first.added == first.rows and second.unchanged == second.rows, (first, second)
    return {
        "rows": first.rows,
        **timings,
        "validation_cpu": validation,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def validation_seconds(path: Path) -> float:
    """Return the CPU seconds that checking every row's address and fields takes, as the import does."""
    from mailout import csvfile
    from mailout.subscribers import InvalidSubscriber, _checked_domain, clean_fields, normalise_email

    def read(validate: bool) -> float:
        _checked_domain.cache_clear()  # as in a fresh import
        start = time.process_time()
        with csvfile.read_rows(path) as (_, rows):
            for row in rows:
                if validate:
                    try:
                        normalise_email(row.email)
                        clean_fields(row.name, row.organisation, row.language)
                    except InvalidSubscriber:
                        pass
        return time.process_time() - start

    read(validate=False)  # warm the file cache
    return max(0.0, min(read(True) for _ in range(2)) - min(read(False) for _ in range(2)))


def server_cpu(pid: int | None) -> float:
    """Return the CPU seconds (user + system) of a local server process so far; 0 without one."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def copy_rows_per_second(url: str, path: Path) -> float:
    """Return the rows/s of a plain COPY of ``path`` into a fresh table on the server at ``url``."""
    import psycopg

    rows = sum(1 for _ in path.open(encoding="utf-8")) - 1
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute("DROP TABLE IF EXISTS copy_reference")
        conn.execute("CREATE TABLE copy_reference (email text, name text, organisation text, language text)")
        start = time.perf_counter()
        with (
            conn.cursor() as cursor,
            cursor.copy("COPY copy_reference FROM STDIN WITH (FORMAT csv, HEADER true)") as copy,
            path.open("rb") as handle,
        ):
            while block := handle.read(1 << 16):
                copy.write(block)
        conn.commit()
        return rows / (time.perf_counter() - start)


def measure(url: str, path: Path, synchronous: str = "default") -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", url, str(path), synchronous],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("full", "normal", "both"),
        help="database.sqlite_synchronous for SQLite (default: mailout's); both: each, back to back",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child[0], Path(args.child[1]), args.child[2])))
        return
    chosen = args.sqlite_synchronous
    modes = ("full", "normal") if chosen == "both" else (chosen or "default",)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="mailout-bench-") as scratch:
        folder = Path(scratch)
        flush = flush_latency(folder)
        files = {n: folder / f"{n}.csv" for n in (args.rows, args.rows // 10)}
        for rows, path in files.items():
            generate(path, rows)
        results = []
        copy_rate: list[float] = []
        for rows, path in files.items():
            for synchronous in modes:
                label = "SQLite" if synchronous == "default" else f"SQLite ({synchronous})"
                url = f"sqlite:///{folder / f'bench-{synchronous}-{rows}.db'}"
                results.append((label, rows, measure(url, path, synchronous)))
        if not args.no_postgres:
            from tests.postgres import PostgresServer, find_pg_bin

            if find_pg_bin() is None:
                print("PostgreSQL is not installed: skipping it", file=sys.stderr)
            else:
                with PostgresServer(folder / "pg") as server:
                    for rows, path in files.items():
                        results.append(
                            ("PostgreSQL", rows, measure(server.create_database(f"bench_{rows}"), path))
                        )
                    reference = server.create_database("bench_copy")
                    copy_rate = [copy_rows_per_second(reference, files[args.rows]) for _ in range(3)]
    print(f"Machine: {describe()}")
    print(f"Disk (before the runs): {flush}\n")
    print(
        "| database | rows | first import | rows/s | CPU s (mailout + server) "
        "| re-import (unchanged) | rows/s | CPU s (mailout + server) | peak memory |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows, r in results:
        print(
            f"| {name} | {rows:,} | {r['first']:.1f} s | {rows / r['first']:,.0f}"
            f" | {r['first_cpu']:.1f} + {r['first_server_cpu']:.1f}"
            f" | {r['second']:.1f} s | {rows / r['second']:,.0f}"
            f" | {r['second_cpu']:.1f} + {r['second_server_cpu']:.1f} | {r['max_rss_mb']:.0f} MB |"
        )
    print()
    for name, rows, r in results:
        if rows == args.rows:
            print(
                f"{name}, {rows:,} rows: checking the addresses and fields takes {r['validation_cpu']:.2f}"
                f" CPU s, {r['validation_cpu'] / r['first_cpu']:.0%} of the first import's"
                f" {r['first_cpu']:.2f} CPU s in mailout's process."
            )
    if copy_rate:
        print(
            f"PostgreSQL COPY of the same {args.rows:,} rows into a plain table, same server:"
            f" {min(copy_rate):,.0f}-{max(copy_rate):,.0f} rows/s (3 runs)."
        )


if __name__ == "__main__":
    main()
