"""Benchmark the web app: `mailout serve` against a hello-world on the same server, same run.

Run from the repository root:  python bench/web.py [--seconds N] [--no-postgres]
It uses wrk (``apt-get install wrk``) as the load generator when it is installed,
else a small keep-alive client in Python, in processes of their own: either way
the client never shares the server's interpreter.

On a throw-away workspace (the example issue dispatched to a public list into the
local outbox, and a members list of subscribers to unsubscribe) it starts
``mailout serve`` as a child process, exactly as a team would, and a hello-world
Flask app and a bare WSGI app under the same server (waitress, as ``mailout serve``
sets it up) with the same number of threads. Four keep-alive clients, each
waiting for its answer before the next request (a bounded load), then measure
requests per second, p50 and p99 latency and the server's CPU time per request
for: the hello-worlds; GET /issues/<slug>; and the RFC 8058 one-click POST, each
with a distinct valid token for a distinct subscriber (every POST a real
unsubscribe, checked in the consent history afterwards). For SQLite and for a
throw-away PostgreSQL server on loopback, with fsync and synchronous commit on.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from machine import describe

ROOT = Path(__file__).resolve().parent.parent
SLUG = "2019-01"
CLIENTS = 4
#: A throw-away workspace's key, made afresh: a key written here would be public (tokens.PUBLIC_KEYS).
SECRET_KEY = secrets.token_urlsafe(32)
ONE_CLICK = b"List-Unsubscribe=One-Click"

# wrk's script: GET, or POST one-click with the tokens of this thread's own file, each once.
WRK_SCRIPT = """
local threads, tokens, next_token, mode = {}, {}, 1, "get"
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  mode = args[1]
  if mode == "post" then
    for line in io.lines(args[2] .. "-" .. id .. ".txt") do tokens[#tokens + 1] = line end
  end
end
function request()
  if mode == "get" then return wrk.request() end
  local token = tokens[next_token]
  next_token = next_token % #tokens + 1
  return wrk.format("POST", "/unsubscribe/" .. token,
    {["Content-Type"] = "application/x-www-form-urlencoded"}, "List-Unsubscribe=One-Click")
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass
class Measured:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms: float  # the server's CPU time per request

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


# --- the servers -----------------------------------------------------------------


def hello_app(kind: str) -> Any:
    if kind == "wsgi":

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
            return [b"Hello, World!"]

        return app
    from flask import Flask

    flask_app = Flask("hello")
    flask_app.add_url_rule("/", "hello", lambda: "Hello, World!")
    return flask_app


def serve_hello(kind: str, port: int, threads: int) -> None:
    """Serve a hello-world exactly as ``mailout serve`` serves the app (runs in a child process)."""
    from mailout.web.server import make_server

    make_server(hello_app(kind), "127.0.0.1", port, threads).run()


def wait_listening(port: int, child: subprocess.Popen[bytes]) -> None:
    import socket

    for _ in range(300):
        if child.poll() is not None:
            raise RuntimeError(f"server exited: {child.args}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen: {child.args}")


def start(command: list[str], port: int, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MAILOUT_SECRET_KEY": SECRET_KEY}
    env.pop("MAILOUT_DATABASE_URL", None)
    child = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, child)
    return child


def stop(child: subprocess.Popen[bytes]) -> None:
    child.terminate()
    try:
        child.wait(20)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the load ----------------------------------------------------------------------


def run_wrk(
    url: str, seconds: float, scratch: Path, tokens: list[str] | None
) -> tuple[int, float, float, float, int]:
    script = scratch / "bench.lua"
    script.write_text(WRK_SCRIPT, encoding="utf-8")
    args = ["get"]
    if tokens is not None:
        prefix = scratch / f"tokens-{secrets.token_hex(4)}"
        share = len(tokens) // CLIENTS
        for n in range(CLIENTS):
            Path(f"{prefix}-{n}.txt").write_text("\n".join(tokens[n * share : (n + 1) * share]) + "\n")
        args = ["post", str(prefix)]
    out = subprocess.run(
        ["wrk", "-t", str(CLIENTS), "-c", str(CLIENTS), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s",
         "-s", str(script), url, "--", *args],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    count, micros, p50, p99, errors = (int(v) for v in line.split()[1:])
    return count, micros / 1e6, p50 / 1000, p99 / 1000, errors


def python_client(url: str, seconds: float, tokens: list[str] | None) -> tuple[int, list[float], int]:
    """One keep-alive connection, one request at a time, for ``seconds`` (runs in a child process)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        if tokens is None:
            connection.request("GET", parts.path)
        else:
            token = tokens[n % len(tokens)]
            connection.request(
                "POST", f"/unsubscribe/{token}", ONE_CLICK,
                {"Content-Type": "application/x-www-form-urlencoded"},
            )  # fmt: skip
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        errors += response.status >= 400
        n += 1
    connection.close()
    return n, latencies, errors


def run_python(url: str, seconds: float, tokens: list[str] | None) -> tuple[int, float, float, float, int]:
    from concurrent.futures import ProcessPoolExecutor

    share = len(tokens) // CLIENTS if tokens is not None else 0
    with ProcessPoolExecutor(CLIENTS) as pool:
        started = time.perf_counter()
        futures = [
            pool.submit(
                python_client,
                url,
                seconds,
                tokens[n * share : (n + 1) * share] if tokens is not None else None,
            )
            for n in range(CLIENTS)
        ]
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - started
    latencies = sorted(x for _, lat, _ in results for x in lat)
    count = sum(n for n, _, _ in results)

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return count, min(elapsed, seconds + 0.5), percentile(0.50), percentile(0.99), sum(e for *_, e in results)


def measure(url: str, pid: int, seconds: float, scratch: Path, tokens: list[str] | None = None) -> Measured:
    load = run_wrk if shutil.which("wrk") else None
    before = cpu_seconds(pid)
    if load is not None:
        count, elapsed, p50, p99, errors = load(url, seconds, scratch, tokens)
    else:
        count, elapsed, p50, p99, errors = run_python(url, seconds, tokens)
    cpu = cpu_seconds(pid) - before
    return Measured(count, elapsed, p50, p99, errors, cpu / max(count, 1) * 1000)


# --- the workspace -----------------------------------------------------------------


def workspace(folder: Path, url: str, port: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "mailout.toml").write_text(
        f'[newsletter]\nname = "Efus Newsletter"\npublic_base_url = "http://127.0.0.1:{port}"\n'
        f'postal_address = "10 rue de l\'Exemple, Paris"\n[sender]\nname = "Efus Newsletter"\n'
        f'address = "newsletter@efus.example"\n[database]\nurl = "{url}"\n'
        '[lists.members]\nsegment = "member"\n[lists.public]\nsegment = "public"\n',
        encoding="utf-8",
    )
    shutil.copytree(ROOT / "issues" / SLUG, folder / "issues" / SLUG)
    return folder


def mailout(folder: Path, *args: str) -> None:
    env = {**os.environ, "MAILOUT_SECRET_KEY": SECRET_KEY}
    env.pop("MAILOUT_DATABASE_URL", None)
    subprocess.run([sys.executable, "-m", "mailout", *args], cwd=folder, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def prepare(folder: Path, url: str, subscribers: int) -> list[str]:
    """Dispatch the issue to a small public list (local outbox); return a token per member."""
    from dispatch import fill
    from sqlalchemy import select

    from mailout.db import make_engine
    from mailout.models import MailingList, Subscription
    from mailout.tokens import Purpose, Signer

    fill(url, subscribers)  # the schema, and the members list
    (folder / "public.csv").write_text("email,name\ncy@example.org,Cy\nana@example.org,Ana\n")
    mailout(folder, "subscribers", "import", "public.csv", "--list", "public")
    mailout(folder, "send", SLUG, "--list", "public", "--yes")
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Subscription.subscriber_id, Subscription.list_id)
            .join(MailingList, MailingList.id == Subscription.list_id)
            .where(MailingList.name == "members")
            .order_by(Subscription.id)
        ).all()
    engine.dispose()
    signer = Signer([SECRET_KEY])
    return [signer.sign(Purpose.UNSUBSCRIBE, sid, lid) for sid, lid in rows]


def one_click_events(url: str) -> int:
    from sqlalchemy import func, select

    from mailout.db import make_engine
    from mailout.models import ConsentEvent, Source

    engine = make_engine(url)
    with engine.connect() as conn:
        found = conn.scalar(select(func.count()).where(ConsentEvent.source == Source.ONE_CLICK))
    engine.dispose()
    return int(found or 0)


# --- the run -------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each measurement (default 10)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--hello", choices=["flask", "wsgi"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.hello:
        serve_hello(args.hello, args.port, args.threads)
        return
    from dispatch import free_port, make_durable

    from mailout.config import Web

    threads = Web().threads
    client = (
        "wrk" if shutil.which("wrk") else "a Python keep-alive client (apt-get install wrk for less noise)"
    )
    # Enough members that no token is used twice: a fast server does a few thousand a second.
    subscribers = int(args.seconds * 3000) + 10_000
    rows: list[tuple[str, str, Measured, Measured]] = []
    checks: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mailout-web-") as scratch:
        base = Path(scratch)
        databases = [("SQLite", lambda name: f"sqlite:///{base / name}.db")]
        server = None
        if not args.no_postgres:
            from tests.postgres import PostgresServer, find_pg_bin

            if find_pg_bin() is not None:
                server = PostgresServer(base / "pg")
                server.start()
                make_durable(server)
                databases.append(("PostgreSQL", lambda name: server.create_database(name)))  # type: ignore[union-attr]
        try:
            wsgi_port = free_port()
            wsgi = start([sys.executable, __file__, "--hello", "wsgi", "--port", str(wsgi_port),
                          "--threads", str(threads)], wsgi_port)  # fmt: skip
            try:
                bare = measure(f"http://127.0.0.1:{wsgi_port}/", wsgi.pid, args.seconds, base)
            finally:
                stop(wsgi)
            for label, make_url in databases:
                url = make_url(label.lower())
                port = free_port()
                folder = workspace(base / label.lower(), url, port)
                tokens = prepare(folder, url, subscribers)
                warm, tokens = tokens[:400], tokens[400:]
                hello_port = free_port()
                hello = start([sys.executable, __file__, "--hello", "flask", "--port", str(hello_port),
                               "--threads", str(threads)], hello_port)  # fmt: skip
                app = start([sys.executable, "-m", "mailout", "serve", "--port", str(port)], port, cwd=folder)
                try:
                    hello_url = f"http://127.0.0.1:{hello_port}/"
                    page_url = f"http://127.0.0.1:{port}/issues/{SLUG}"
                    measure(hello_url, hello.pid, 1, base)  # warm-ups
                    measure(page_url, app.pid, 1, base)
                    measure(f"http://127.0.0.1:{port}/", app.pid, 1, base, warm)
                    before = one_click_events(url)
                    reference = measure(hello_url, hello.pid, args.seconds, base)
                    rows.append(
                        (
                            label,
                            f"GET /issues/{SLUG}",
                            measure(page_url, app.pid, args.seconds, base),
                            reference,
                        )
                    )
                    posted = measure(f"http://127.0.0.1:{port}/", app.pid, args.seconds, base, tokens)
                    rows.append((label, "POST one-click", posted, reference))
                    recorded = one_click_events(url) - before
                    checks.append(
                        f"{label}: {posted.requests} one-click POSTs answered, {recorded} unsubscribes recorded"
                        f" (up to {CLIENTS} more: requests in flight when the clients stopped)"
                        + (
                            ""
                            if posted.requests <= len(tokens)
                            else " (tokens ran out: some POSTs repeated one)"
                        )
                    )
                finally:
                    stop(app)
                    stop(hello)
        finally:
            if server is not None:
                server.stop()
    print(f"Machine: {describe()}; {CLIENTS} keep-alive clients ({client}); waitress, {threads} threads;"
          f" {args.seconds:g} s each\n")  # fmt: skip
    print(f"Bare WSGI hello-world: {bare.rate:,.0f} requests/s, p50 {bare.p50_ms:.1f} ms, p99 {bare.p99_ms:.1f} ms,"
          f" {bare.cpu_ms:.2f} ms CPU/request\n")  # fmt: skip
    print(
        "| database | request | requests/s | Flask hello-world requests/s | ratio | p50 | p99 | server CPU/request | errors |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, what, m, ref in rows:
        print(
            f"| {label} | {what} | {m.rate:,.0f} | {ref.rate:,.0f} | {m.rate / ref.rate:.2f}x | {m.p50_ms:.1f} ms"
            f" | {m.p99_ms:.1f} ms | {m.cpu_ms:.2f} ms (hello {ref.cpu_ms:.2f}) | {m.errors} |"
        )
    print()
    for line in checks:
        print(line)


if __name__ == "__main__":
    main()
