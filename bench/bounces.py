"""Benchmark ``mailout bounces process``: 10,000 reports in a Maildir, about real deliveries.

Run from the repository root:
  python bench/bounces.py [--reports N] [--postgres]
It needs Debian's postfix package for smtp-sink (the Postfix daemon is not used).

It makes a workspace with ``sender.return_path`` set (VERP on), N subscribers
on one list, and dispatches the example issue to them through ``mailout send``
into ``smtp-sink``, so every delivery has its own signed return address, as in
production. Then it writes one report per delivery into a Maildir, addressed to
that delivery's return address, in the mix a real bounce mailbox sees after a
large send:

- 60 % RFC 3464 permanent failures (Postfix's format, 5.1.1),
- 20 % temporary failures (4.2.2, mailbox full),
- 5 % RFC 5965 complaints (a feedback loop's ARF report),
- 5 % automatic replies (out of office),
- 10 % non-standard bounces (qmail's format, read through flufl.bounce).

It times ``mailout bounces process MAILDIR`` as a child process (wall time, CPU
seconds, peak memory), then the same command again, when every report was
handled before, and checks what the database holds afterwards: one report row
per message, and as many subscribers bounced as there were permanent failures.
The target (issue 13): 10,000 reports in under 10 s on SQLite.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dispatch
from dispatch import SECRET_KEY, SENDER, fill, free_port, start_sink
from machine import describe, flush_latency

ROOT = Path(__file__).resolve().parent.parent
RETURN_PATH = "bounces@efus.example"


def workspace(folder: Path, url: str, port: int) -> Path:
    """bench/dispatch.py's workspace, with a return path: each message gets its own (VERP)."""
    made = dispatch.workspace(folder, url, port)
    config = made / "mailout.toml"
    text = config.read_text(encoding="utf-8")
    sender = f'address = "{SENDER}"\n'
    assert sender in text
    config.write_text(text.replace(sender, f'{sender}return_path = "{RETURN_PATH}"\n', 1), encoding="utf-8")
    return made


def mailout(folder: Path, *args: str) -> tuple[str, float, float, float]:
    """Run ``mailout ARGS`` in ``folder``; return its output, wall seconds, CPU seconds and max RSS in MB."""
    env = {**os.environ, "MAILOUT_SECRET_KEY": SECRET_KEY}
    env.pop("MAILOUT_DATABASE_URL", None)
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "mailout", *args],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert child.stdout is not None
    output = child.stdout.read().decode()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.stdout.close()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        raise RuntimeError(f"mailout {' '.join(args)} exited {code}:\n{output[-3000:]}")
    return output, seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


DSN = """\
Return-Path: <>
Delivered-To: {envelope}
Date: Tue, 12 Feb 2019 09:{minute:02d}:00 +0100
From: MAILER-DAEMON@mx{host}.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {envelope}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b{n}"
Message-Id: <dsn{n}@mx{host}.example.net>

--b{n}
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx{host}.example.net. I'm sorry to have to inform you
that your message could not be delivered to one or more recipients.

<{address}>: {text}

--b{n}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx{host}.example.net
X-Postfix-Sender: rfc822; {envelope}

Final-Recipient: rfc822; {address}
Original-Recipient: rfc822;{address}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {text}

--b{n}
Content-Type: text/rfc822-headers

From: Efus Newsletter <{sender}>
To: {address}
Subject: Efus Newsletter
Message-ID: <{message_id}>
List-Id: members <members.efus.example>

--b{n}--
"""

ARF = """\
From: Feedback Loop <fbl@mx{host}.example.net>
To: {envelope}
Date: Tue, 12 Feb 2019 10:{minute:02d}:00 +0100
Subject: complaint about message from 192.0.2.7
Message-ID: <arf{n}@mx{host}.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="a{n}"

--a{n}
Content-Type: text/plain; charset=us-ascii

This is an email abuse report for an email message received from IP 192.0.2.7.

--a{n}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleFBL/1.0
Version: 1
Original-Mail-From: <{envelope}>
Original-Rcpt-To: <{address}>

--a{n}
Content-Type: text/rfc822-headers

Return-Path: <{envelope}>
From: Efus Newsletter <{sender}>
To: {address}
Subject: Efus Newsletter
Message-ID: <{message_id}>

--a{n}--
"""

AWAY = """\
From: {address}
To: {envelope}
Date: Tue, 12 Feb 2019 09:{minute:02d}:30 +0100
Subject: Out of office: Efus Newsletter
Message-ID: <away{n}@city.example>
Auto-Submitted: auto-replied
X-Autoreply: yes

I am out of the office until 18 February, with limited access to email.
"""

QMAIL = """\
Return-Path: <>
Delivered-To: {envelope}
Date: 12 Feb 2019 08:{minute:02d}:12 -0000
From: MAILER-DAEMON@mx{host}.example.net
To: {envelope}
Subject: failure notice
Message-ID: <qmail{n}@mx{host}.example.net>

Hi. This is the qmail-send program at mx{host}.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{address}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Return-Path: <{envelope}>
From: Efus Newsletter <{sender}>
To: {address}
Message-ID: <{message_id}>
Subject: Efus Newsletter

Dear reader,
"""


def write_reports(url: str, box: Path) -> dict[str, int]:
    """Write one report per delivery of the dispatch into the Maildir ``box``; return the mix."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from mailout.db import make_engine
    from mailout.message import Addressing, message_id
    from mailout.models import Delivery, Dispatch

    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    engine = make_engine(url)
    mix = {"permanent": 0, "temporary": 0, "complaint": 0, "autoreply": 0, "qmail": 0}
    with Session(engine) as conn:
        dispatch = conn.execute(select(Dispatch)).scalars().one()
        domain = Addressing(dispatch.from_name, dispatch.from_address).domain
        rows = conn.execute(
            select(Delivery.id, Delivery.email, Delivery.envelope_sender).where(
                Delivery.dispatch_id == dispatch.id
            )
        )
        for n, (delivery_id, address, envelope) in enumerate(rows):
            assert envelope and "+" in envelope, f"delivery {delivery_id}: no VERP address ({envelope})"
            fields = {
                "n": n, "host": n % 50, "minute": n % 60, "address": address, "envelope": envelope,
                "sender": SENDER, "message_id": message_id(dispatch.key, delivery_id, domain),
            }  # fmt: skip
            slot = n % 20
            if slot < 12:
                kind, text = (
                    "permanent",
                    DSN.format(**fields, action="failed", status="5.1.1", text="550 5.1.1 user unknown"),
                )
            elif slot < 16:
                kind, text = (
                    "temporary",
                    DSN.format(**fields, action="delayed", status="4.2.2", text="452 4.2.2 mailbox full"),
                )
            elif slot < 17:
                kind, text = "complaint", ARF.format(**fields)
            elif slot < 18:
                kind, text = "autoreply", AWAY.format(**fields)
            else:
                kind, text = "qmail", QMAIL.format(**fields)
            mix[kind] += 1
            (box / "new" / f"{1549958400 + n}.M{n}P1.bench").write_bytes(text.replace("\n", "\r\n").encode())
    engine.dispose()
    return mix


def parse_floor(box: Path) -> tuple[float, float]:
    """CPU seconds to read the box's messages with Python's own parser alone, and with `read_report`.

    The first is a floor for any reader of these messages written in Python; both run
    in this process, on the same files, after the timed runs.
    """
    from email import policy
    from email.parser import BytesParser

    from mailout.reports import read_report

    raws = [path.read_bytes() for sub in ("new", "cur") for path in sorted((box / sub).iterdir())]
    start = time.process_time()
    for raw in raws:
        BytesParser(policy=policy.compat32).parsebytes(raw)
    parser = time.process_time() - start
    start = time.process_time()
    for raw in raws:
        read_report(raw)
    return parser, time.process_time() - start


def outcome(url: str) -> dict[str, int]:
    """What the database holds after the run: report rows, and subscribers by status."""
    from sqlalchemy import func, select, text

    from mailout.db import make_engine
    from mailout.models import Subscriber

    engine = make_engine(url)
    with engine.connect() as conn:
        found = {
            str(status): int(count)
            for status, count in conn.execute(
                select(Subscriber.status, func.count()).group_by(Subscriber.status)
            )
        }
        found["reports"] = int(conn.execute(text("SELECT count(*) FROM handled_reports")).scalar_one())
    engine.dispose()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--postgres", action="store_true", help="also on a throw-away PostgreSQL server")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory(prefix="mailout-bounces-") as scratch:
            base = Path(scratch)
            print(describe())
            print(f"fsync latency here: {flush_latency(base)}")
            databases = [("SQLite", f"sqlite:///{base / 'sqlite.db'}")]
            server = None
            if args.postgres:
                from tests.postgres import PostgresServer

                server = PostgresServer(base / "pg")
                server.start()
                databases.append(("PostgreSQL", server.create_database("bounces")))
            try:
                for label, url in databases:
                    folder = workspace(base / label, url, port)
                    fill(url, args.reports)
                    mailout(folder, "send", "2019-01", "--list", "members", "--yes")
                    box = base / f"{label}-box"
                    mix = write_reports(url, box)
                    output, seconds, cpu, rss = mailout(folder, "bounces", "process", str(box))
                    again, seconds2, cpu2, _ = mailout(folder, "bounces", "process", str(box))
                    held = outcome(url)
                    print(
                        f"\n{label}: {args.reports:,} reports ({', '.join(f'{k} {v}' for k, v in mix.items())})"
                    )
                    print(
                        f"  first run:  {seconds:6.2f} s wall, {cpu:6.2f} s CPU,"
                        f" {args.reports / seconds:,.0f} reports/s, max RSS {rss:.0f} MB"
                    )
                    print(
                        f"  second run: {seconds2:6.2f} s wall, {cpu2:6.2f} s CPU (every report handled before)"
                    )
                    print(f"  afterwards: {held}")
                    print("  summary:", output.strip().splitlines()[-1])
                    print("  again:  ", again.strip().splitlines()[-1])
                    expected_bounced = mix["permanent"] + mix["qmail"]
                    if held.get("reports") != args.reports or held.get("bounced", 0) < expected_bounced:
                        print(
                            f"  CHECK FAILED: expected {args.reports} reports and >= {expected_bounced} bounced"
                        )
                    parser, reader = parse_floor(box)
                    print(
                        f"  in this process: email parser alone {parser:.2f} s CPU,"
                        f" read_report {reader:.2f} s CPU ({reader / args.reports * 1000:.2f} ms a report);"
                        f" the rest of the first run: {cpu - reader:.2f} s CPU"
                    )
                    if label == "SQLite" and args.reports >= 10_000:
                        verdict = "met" if seconds < 10 else "MISSED"
                        print(f"  target (10,000 in under 10 s on SQLite): {verdict}")
            finally:
                if server is not None:
                    server.stop()
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    main()
