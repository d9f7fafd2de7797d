"""Benchmark a dispatch: the example issue to 100,000 subscribers, into Postfix's smtp-sink.

Run from the repository root:
  python bench/dispatch.py [--recipients N] [--no-postgres] [--sqlite-synchronous full|normal|both]
                           [--dkim off|on|both]
It needs Debian's postfix package for smtp-sink and smtp-source
(``apt-get install postfix``; the Postfix daemon itself is not used and not started).

For SQLite and PostgreSQL, it runs ``mailout send`` with the default settings
(concurrency, batch size) as a child process into ``smtp-sink`` on loopback,
and reports messages per second, CPU seconds and peak memory (max RSS) of that
process; for a tenth of the recipients too, to compare memory. It also reports
the CPU time per message of every process involved, summed: the mailout
process, smtp-sink and, for PostgreSQL, every process of the server (those that
ended during the run too). On a machine with few cores that sum, not any one
process, caps the throughput. In the same run it
measures the ceiling as mailout sends: ``smtp-source`` pushing one of the same
messages, as many times, over as many connections, each connection reused for
message after message (``-d``, as mailout reuses its connections), into the
same sink (its CPU per message: smtp-source and the sink). PostgreSQL is a
throw-away server on loopback, with fsync and synchronous commit on, as in
production.

Every other subscriber reads French: an issue in English and French sends both
variants, one template per language built once, picked per message.

``--sqlite-synchronous`` writes ``database.sqlite_synchronous`` into the SQLite
workspaces (default: mailout's own default); ``both`` sends with each, back to
back for each number of recipients, and prints both rows.
``--dkim on`` signs every message (RSA-2048, a key made for the run), and the
ceiling's message is signed too, so smtp-source carries the same bytes;
``both`` sends unsigned, then signed, back to back, each with its ceiling.
``--concurrency`` overrides ``sending.concurrency``; ``--profile FOLDER`` runs
the mailout process under py-spy (``pip install py-spy``) and writes a flame
graph per run there (collapsed stacks as text with ``BENCH_PROFILE_RAW=1``); ``--only sqlite|postgresql`` and ``--no-small`` shorten a run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from machine import describe, flush_latency

if TYPE_CHECKING:
    from tests.postgres import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
SENDER = "newsletter@efus.example"
#: A throw-away workspace's key, made afresh: a key written here would be public (tokens.PUBLIC_KEYS).
SECRET_KEY = secrets.token_urlsafe(32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    command = ["smtp-sink", "-4"]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]
    sink = subprocess.Popen(
        [*command, f"127.0.0.1:{port}", "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return sink
        except OSError:
            time.sleep(0.05)
    sink.kill()
    raise RuntimeError("smtp-sink did not start")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """Return the CPU time (user + system) ``pid`` has used, and with ``children`` its reaped children's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # Fields 14-17 of proc(5), counted from the pid: utime, stime, cutime, cstime.
    ticks = sum(int(f) for f in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """Return ``root`` and every process below it, as /proc shows them now."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def tree_cpu(root: int) -> float:
    """Return the CPU time of ``root``'s processes: those running, and those it reaped (PostgreSQL's backends)."""
    total = 0.0
    for pid in process_tree(root):
        # One that ended meanwhile: its time is in its parent's reaped children by now.
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid, children=pid == root)
    return total


def postmaster_pid(server: PostgresServer) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().split()[0])


def dkim_key(folder: Path) -> Path:
    """An RSA-2048 signing key made for the run (PEM, PKCS#8)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = folder / "dkim.pem"
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def workspace(
    folder: Path, url: str, port: int, synchronous: str | None = None, dkim: Path | None = None
) -> Path:
    folder.mkdir(parents=True)
    database = f'[database]\nurl = "{url}"\n'
    if synchronous is not None:
        database += f'sqlite_synchronous = "{synchronous}"\n'
    if dkim is not None:
        database += f'[dkim]\ndomain = "efus.example"\nselector = "bench"\nkey_file = "{dkim}"\n'
    (folder / "mailout.toml").write_text(
        f'[newsletter]\nname = "Efus Newsletter"\npublic_base_url = "https://news.example"\n'
        f'postal_address = "10 rue de l\'Exemple, Paris"\n[sender]\nname = "Efus Newsletter"\naddress = "{SENDER}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "plain"\n'
        # The sink on loopback stands in for a relay; no DNS is set up for the benchmark's domain.
        "[doctor]\nbefore_send = false\n"
        f'{database}[lists.members]\nsegment = "member"\n',
        encoding="utf-8",
    )
    shutil.copytree(ROOT / "issues" / "2019-01", folder / "issues" / "2019-01")
    return folder


def fill(url: str, recipients: int) -> None:
    """Create the schema and ``recipients`` subscribers on the members list, quickly."""
    from sqlalchemy import insert

    from mailout.db import make_engine, upgrade
    from mailout.models import MailingList, Subscriber, Subscription, utcnow

    upgrade(url)
    engine = make_engine(url)
    now = utcnow()
    with engine.begin() as conn:
        list_id = conn.execute(
            insert(MailingList).values(name="members", segment="member", description="", created_at=now)
        ).inserted_primary_key[0]  # type: ignore[index]
        for start in range(0, recipients, 10_000):
            rows = [
                # Every other reader French: an issue in English and French sends both variants
                # (an issue in one language sends it to everyone, as before).
                {"email": f"reader{n}@city{n % 997}.example", "name": f"Reader {n}", "organisation": "",
                 "language": "fr" if n % 2 else "en",
                 "status": "subscribed", "created_at": now, "updated_at": now}
                for n in range(start, min(start + 10_000, recipients))
            ]  # fmt: skip
            ids = (
                conn.execute(insert(Subscriber).returning(Subscriber.id, sort_by_parameter_order=True), rows)
                .scalars()
                .all()
            )
            conn.execute(
                insert(Subscription),
                [
                    {
                        "subscriber_id": i,
                        "list_id": list_id,
                        "status": "subscribed",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in ids
                ],
            )
    engine.dispose()


def make_durable(server: PostgresServer) -> None:
    """Turn durability back on: the tests' server turns it off to start fast.

    A real deployment flushes the WAL at every commit; so does the benchmark, or the
    cost of the commit the send loop makes before each message would not be measured.
    """
    settings = ("fsync", "full_page_writes", "synchronous_commit")
    with server.connect() as conn:
        for name in settings:
            conn.execute(f"ALTER SYSTEM SET {name} = on")
        conn.execute("SELECT pg_reload_conf()")
    for _ in range(100):
        with server.connect() as conn:
            if all(conn.execute(f"SHOW {name}").fetchone() == ("on",) for name in settings):
                return
        time.sleep(0.05)
    raise RuntimeError("PostgreSQL did not take fsync/synchronous_commit = on")


def run_send(
    folder: Path, sink: int, database: int | None, concurrency: int | None, profile: Path | None
) -> dict[str, float]:
    env = {**os.environ, "MAILOUT_SECRET_KEY": SECRET_KEY}
    env.pop("MAILOUT_DATABASE_URL", None)
    if concurrency is not None:
        env["MAILOUT_SENDING_CONCURRENCY"] = str(concurrency)
    command = [sys.executable, "-m", "mailout", "send", "2019-01", "--list", "members", "--yes"]
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        # Collapsed stacks ("raw") are text, for reading or for any flame graph tool.
        form, suffix = ("raw", "txt") if os.environ.get("BENCH_PROFILE_RAW") else ("flamegraph", "svg")
        out = (profile / f"{folder.name}.{suffix}").resolve()
        command = [
            spy,
            "record",
            "--threads",
            "--idle",
            "-r",
            "200",
            "-f",
            form,
            "-o",
            str(out),
            "--",
            *command,
        ]
    others = cpu_seconds(sink) + (tree_cpu(database) if database else 0.0)
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    others = cpu_seconds(sink) + (tree_cpu(database) if database else 0.0) - others
    output = child.stdout.read().decode() if child.stdout else ""
    if child.stdout:
        child.stdout.close()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0 or "finished" not in output:
        raise RuntimeError(f"send failed: {output}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"seconds": seconds, "cpu": cpu, "all_cpu": cpu + others, "rss_mb": usage.ru_maxrss / 1024}


def message_file(folder: Path) -> Path:
    """One message exactly as mailout builds it, for smtp-source to send."""
    from mailout.config import load_settings
    from mailout.dkim import load_signer
    from mailout.issues import load_issue
    from mailout.links import Links
    from mailout.message import Addressing, MessageTemplate
    from mailout.render import Recipient, render_variant
    from mailout.segments import Segment
    from mailout.tokens import Signer

    settings = load_settings(folder)
    variant = render_variant(
        load_issue(folder / "issues" / "2019-01" / "issue.yaml"), settings, Segment.MEMBER
    )
    template = MessageTemplate(
        variant, Addressing("Efus Newsletter", SENDER, list_name="members"), dkim=load_signer(settings)
    )
    # The links of a real message: signed tokens, as long as the send loop's.
    links = Links(settings, Signer([SECRET_KEY])).for_messages("2019-01", 1, member=True, sender=SENDER)
    urls = links(1)
    data = template.build(
        to_name="Reader 1", to_address="reader1@city1.example", message_id=f"bench.1@{template.addressing.domain}",
        recipient=Recipient("Reader", urls.unsubscribe, urls.view, urls.preferences), unsubscribe_mailto=urls.unsubscribe_mailto,
    )  # fmt: skip
    path = folder / "message.eml"
    path.write_bytes(data)
    return path


def run_source(port: int, path: Path, count: int, sessions: int, sink: int) -> tuple[float, float]:
    """Return the messages per second of smtp-source, and its and the sink's CPU seconds."""
    before = cpu_seconds(sink)
    start = time.perf_counter()
    source = subprocess.Popen(
        # -d: keep each connection for the next message, as mailout does; without it every
        # message paid for a new connection, and the ceiling was about 25% too low.
        ["smtp-source", "-d", "-s", str(sessions), "-m", str(count), "-F", str(path), "-f", SENDER, "-t", "reader@city.example", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _, status, usage = os.wait4(source.pid, 0)
    rate = count / (time.perf_counter() - start)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("smtp-source failed")
    return rate, usage.ru_utime + usage.ru_stime + cpu_seconds(sink) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("full", "normal", "both"),
        help="database.sqlite_synchronous for SQLite (default: mailout's); both: each, back to back",
    )
    parser.add_argument(
        "--dkim", choices=("off", "on", "both"), default="off", help="sign with DKIM (both: off, then on)"
    )
    parser.add_argument("--only", choices=["sqlite", "postgresql"], help="one database only")
    parser.add_argument("--no-small", action="store_true", help="skip the run with a tenth of the recipients")
    parser.add_argument("--concurrency", type=int, help="sending.concurrency (default: the default)")
    parser.add_argument("--profile", type=Path, help="write a py-spy flame graph per run into this folder")
    args = parser.parse_args()
    if shutil.which("smtp-sink") is None:
        sys.exit("smtp-sink not found: apt-get install postfix (the daemon need not run)")
    sys.path.insert(0, str(ROOT))
    from mailout.config import Sending

    concurrency = args.concurrency or Sending().concurrency
    port = free_port()
    sink = start_sink(port)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="mailout-dispatch-") as scratch:
            base = Path(scratch)
            flush = flush_latency(base)
            key = dkim_key(base)
            signing: tuple[Path | None, ...] = {"off": (None,), "on": (key,), "both": (None, key)}[args.dkim]
            chosen = args.sqlite_synchronous
            modes: tuple[str | None, ...] = ("full", "normal") if chosen == "both" else (chosen,)
            databases = (
                []
                if args.only == "postgresql"
                else [("SQLite", lambda name: f"sqlite:///{base / name}.db", modes)]
            )
            server = None
            if not args.no_postgres and args.only != "sqlite":
                from tests.postgres import PostgresServer, find_pg_bin

                if find_pg_bin() is not None:
                    server = PostgresServer(base / "pg")
                    server.start()
                    make_durable(server)
                    databases.append(("PostgreSQL", lambda name: server.create_database(name), (None,)))  # type: ignore[union-attr]
            try:
                sizes = (args.recipients,) if args.no_small else (args.recipients, args.recipients // 10)
                for kind, make_url, synchronous_modes in databases:
                    for n in sizes:
                        for synchronous, dkim in [(m, d) for m in synchronous_modes for d in signing]:
                            notes = [note for note in (synchronous, dkim and "DKIM") if note]
                            label = f"{kind} ({', '.join(notes)})" if notes else kind
                            name = (
                                f"{kind.lower()}_{synchronous or 'default'}_{'dkim' if dkim else 'plain'}_{n}"
                            )
                            url = make_url(name)
                            folder = workspace(base / name, url, port, synchronous, dkim)
                            fill(url, n)
                            database = (
                                postmaster_pid(server)
                                if server is not None and kind == "PostgreSQL"
                                else None
                            )
                            measured = run_send(folder, sink.pid, database, args.concurrency, args.profile)
                            ceiling = run_source(port, message_file(folder), n, concurrency, sink.pid)
                            size = (folder / "message.eml").stat().st_size
                            results.append((label, n, measured, ceiling, size))
            finally:
                if server is not None:
                    server.stop()
    finally:
        sink.kill()
        sink.wait()
    print(f"Machine: {describe()}; concurrency {concurrency}")
    print(f"Disk (before the runs): {flush}\n")
    print(
        "| database | recipients | message | time | messages/s | smtp-source messages/s | ratio | CPU"
        " | CPU/message: mailout | all processes | smtp-source + sink | peak memory |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, n, m, (ceiling, ceiling_cpu), size in results:
        rate = n / m["seconds"]
        print(
            f"| {label} | {n:,} | {size / 1000:.0f} KB | {m['seconds']:.1f} s | {rate:,.0f} | {ceiling:,.0f} | {rate / ceiling:.2f}x"
            f" | {m['cpu']:.1f} s | {m['cpu'] / n * 1000:.2f} ms | {m['all_cpu'] / n * 1000:.2f} ms"
            f" | {ceiling_cpu / n * 1000:.2f} ms | {m['rss_mb']:.0f} MB |"
        )


if __name__ == "__main__":
    main()
