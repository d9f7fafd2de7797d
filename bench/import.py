"""Benchmark importing subscribers: 100,000 generated rows into SQLite and PostgreSQL.

Run from the repository root:
  python bench/import.py [--rows N] [--no-postgres] [--sqlite-synchronous full|normal|both]

For each database it imports the file into an empty list, then imports the
same file again (every row unchanged), each in a fresh process so that the
peak memory (max RSS) is that of the import alone. It also imports a file ten
times smaller, to show that memory does not grow with the file. PostgreSQL is
a throw-away server started on loopback (initdb + pg_ctl, as the tests do).
``--sqlite-synchronous`` sets ``database.sqlite_synchronous`` for SQLite
(default: mailout's own default); ``both`` imports with each, back to back.
Prints a Markdown table to paste into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
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

    upgrade(url)
    options = {} if synchronous == "default" else {"sqlite_synchronous": synchronous}
    engine = make_engine(url, **options)
    members = ListSettings("members", Segment.MEMBER, "")
    start = time.perf_counter()
    first = import_file(engine, path, members)
    first_seconds = time.perf_counter() - start
    start = time.perf_counter()
    second = import_file(engine, path, members)
    second_seconds = time.perf_counter() - start
    engine.dispose()
    assert first.added == first.rows and second.unchanged == second.rows, (first, second)
    return {
        "rows": first.rows,
        "first": first_seconds,
        "second": second_seconds,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


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
    print(f"Machine: {describe()}")
    print(f"Disk (before the runs): {flush}\n")
    print("| database | rows | first import | rows/s | re-import (unchanged) | rows/s | peak memory |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rows, r in results:
        print(
            f"| {name} | {rows:,} | {r['first']:.1f} s | {rows / r['first']:,.0f} | {r['second']:.1f} s"
            f" | {rows / r['second']:,.0f} | {r['max_rss_mb']:.0f} MB |"
        )


if __name__ == "__main__":
    main()
