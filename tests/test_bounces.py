"""Bounce and complaint reports about real deliveries of a real dispatch, handled once, ever.

Each test sends the example issue through the loopback SMTP server, then writes
the reports a receiving server would send back (to the delivery's envelope sender,
with the original's headers inside) into a Maildir, and runs them through
`bounces.run` or `mailout bounces process`; on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import mailbox
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from mailout import bounces, dispatching, outbox, reports
from mailout import subscribers as people
from mailout.bounces import Verdict
from mailout.cli import cli
from mailout.config import Settings, load_settings
from mailout.db import make_engine, reader, transaction, upgrade
from mailout.issues import load_issue
from mailout.mailsource import open_source
from mailout.models import (
    ConsentEvent,
    EventKind,
    HandledReport,
    MatchedBy,
    ReportAction,
    ReportRecipient,
    Source,
    Subscriber,
    SubscriberStatus,
    Subscription,
)
from mailout.reports import read_report
from mailout.tokens import Signer
from tests.conftest import SECRET_KEY, edit_config
from tests.postgres import PostgresServer
from tests.smtpserver import Received, SMTPServer
from tests.test_migrations import fill
from tests.test_migrations import rows as migration_rows

FROM = "newsletter@efus.example"
RETURN_PATH = "bounces@mail.efus.example"
DAY = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


@dataclass
class Sent:
    """A dispatch sent to p0..p{n-1}@example.org: what each recipient received, by address."""

    workspace: Path
    settings: Settings
    signer: Signer
    dispatch_id: int
    messages: dict[str, Received]

    def headers(self, address: str) -> str:
        raw = self.messages[address].raw
        return raw.split(b"\r\n\r\n", 1)[0].decode("ascii").replace("\r\n", "\n")

    def envelope(self, address: str) -> str:
        return self.messages[address].mail_from


def send_dispatch(
    workspace: Path, engine: Engine, smtp_server: SMTPServer, n: int, *, verp: bool = True
) -> Sent:
    """Subscribe p0.. to members (and p0, p1 to public too), send the example issue to members."""
    edit_config(workspace, (f'address = "{FROM}"', f'address = "{FROM}"\nreturn_path = "{RETURN_PATH}"'))
    if not verp:
        with (workspace / "mailout.toml").open("a", encoding="utf-8") as config:
            config.write("\n[bounces]\nverp = false\n")
    settings = load_settings(workspace)
    signer = Signer.from_secret(settings.secret_key)
    with transaction(engine) as session:
        members = people.ensure_list(session, settings.mailing_list("members"))
        public = people.ensure_list(session, settings.mailing_list("public"))
        for i in range(n):
            people.add(session, members, f"p{i}@example.org", name=f"Person {i}")
            if i < 2:
                people.add(session, public, f"p{i}@example.org")
    issue = load_issue(workspace / "issues" / "2019-01" / "issue.yaml")
    started = dispatching.start(engine, settings, dispatching.plan(engine, settings, issue, "members"))
    result = dispatching.run(engine, settings, started.dispatch_id, signer)
    assert result.report.counts["sent"] == n
    received = {m.rcpt_tos[0]: m for m in smtp_server.messages}
    assert len(received) == n
    return Sent(workspace, settings, signer, started.dispatch_id, received)


def dsn(
    to: str,
    recipient: str,
    status: str,
    original: str,
    *,
    action: str = "failed",
    diagnostic: str = "",
    message_id: str | None = None,
    at: dt.datetime | None = None,
) -> bytes:
    """An RFC 3464 report as Postfix writes it, sent to ``to``, about ``recipient``, written ``at``."""
    message_id = message_id or make_msgid(domain="mx.example.net")
    date = format_datetime(at) if at else "Tue,  1 Dec 2026 10:12:07 +0100"
    diagnostic = diagnostic or f"smtp; 550 {status} <{recipient}>: Recipient address rejected"
    return f"""Return-Path: <>
Delivered-To: {to}
Date: {date}
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {to}
Auto-Submitted: auto-replied
Message-Id: {message_id}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b0"

--b0
Content-Type: text/plain; charset=utf-8

Your message could not be delivered.

--b0
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {recipient}
Action: {action}
Status: {status}
Diagnostic-Code: {diagnostic}

--b0
Content-Type: text/rfc822-headers

{original}

--b0--
""".replace("\n", "\r\n").encode("utf-8")


def complaint(to: str, recipient: str, original: str) -> bytes:
    """An RFC 5965 abuse report from a feedback loop, sent to ``to``."""
    return f"""From: Feedback Loop <fbl@isp.example>
To: {to}
Subject: Abuse report
Message-ID: {make_msgid(domain="isp.example")}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="f0"

--f0
Content-Type: text/plain

This is an email abuse report.

--f0
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Test-Feedback/1.0
Version: 1
Original-Rcpt-To: <{recipient}>

--f0
Content-Type: text/rfc822-headers

{original}

--f0--
""".replace("\n", "\r\n").encode("utf-8")


def autoreply(to: str) -> bytes:
    return (
        f"From: p3@example.org\r\nTo: {to}\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\n"
        f"Message-ID: {make_msgid(domain='example.org')}\r\n\r\nI am away until Monday.\r\n"
    ).encode()


#: The order messages were put in each test Maildir, by their SHA-256: a Maildir lists its
#: messages in no particular order, and `run` gives the results back in this one.
_ORDER: dict[Path, list[str]] = {}


def maildir(path: Path, *messages: bytes) -> Path:
    box = mailbox.Maildir(path, create=True)
    for raw in messages:
        box.add(raw)
    box.close()
    _ORDER[path] = [hashlib.sha256(raw).hexdigest() for raw in messages]
    return path


def unread(path: Path) -> int:
    """How many messages of the Maildir are still unread (no S flag)."""
    box = mailbox.Maildir(path, create=False)
    try:
        return sum("S" not in box.get_message(key).get_flags() for key in box.iterkeys())
    finally:
        box.close()


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def run(
    engine: Engine, sent: Sent, box: Path, *, dry_run: bool = False, now: dt.datetime | None = None
) -> list[bounces.Result]:
    clock = (lambda: now) if now else bounces.utcnow
    with open_source(str(box)) as source:
        results = list(bounces.run(engine, sent.settings, sent.signer, source, dry_run=dry_run, clock=clock))
    order = _ORDER[box]
    return sorted(results, key=lambda r: order.index(r.sha256))


def person(engine: Engine, address: str) -> Subscriber:
    with transaction(engine) as session:
        return people.find(session, address)


def subscriptions(engine: Engine, address: str) -> dict[str, str]:
    with transaction(engine) as session:
        return {m.list_name: m.status for m in people.memberships(session, people.find(session, address))}


def events(engine: Engine, address: str, kind: EventKind) -> list[ConsentEvent]:
    with transaction(engine) as session:
        found = people.find(session, address)
        return list(
            session.scalars(
                select(ConsentEvent).where(ConsentEvent.subscriber_id == found.id, ConsentEvent.kind == kind)
            )
        )


def snapshot(engine: Engine) -> dict[str, Any]:
    """What handling reports may change: people, subscriptions, events, and the records."""
    with transaction(engine) as session:
        return {
            "subscribers": session.execute(
                select(
                    Subscriber.email, Subscriber.status, Subscriber.soft_score, Subscriber.soft_day
                ).order_by(Subscriber.id)
            ).all(),
            "subscriptions": session.execute(
                select(Subscription.subscriber_id, Subscription.list_id, Subscription.status).order_by(
                    Subscription.id
                )
            ).all(),
            "events": session.execute(
                select(
                    ConsentEvent.subscriber_id,
                    ConsentEvent.list_id,
                    ConsentEvent.kind,
                    ConsentEvent.source,
                    ConsentEvent.detail,
                ).order_by(ConsentEvent.id)
            ).all(),
            "reports": session.execute(
                select(
                    HandledReport.sha256,
                    HandledReport.kind,
                    HandledReport.matched_by,
                    HandledReport.settled,
                    HandledReport.summary,
                ).order_by(HandledReport.sha256)
            ).all(),
            "lines": session.execute(
                select(
                    HandledReport.sha256,
                    ReportRecipient.address,
                    ReportRecipient.action,
                    ReportRecipient.note,
                    ReportRecipient.matched_by,
                )
                .join(HandledReport, HandledReport.id == ReportRecipient.report_id)
                .order_by(HandledReport.sha256, ReportRecipient.address)
            ).all(),
        }


@pytest.fixture
def sent(sending_workspace: Path, engine: Engine, smtp_server: SMTPServer) -> Sent:
    return send_dispatch(sending_workspace, engine, smtp_server, 6)


# --- matching and actions ---------------------------------------------------------------------


def test_a_hard_bounce_to_the_verp_address_suppresses_the_address_on_every_list(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    to = sent.envelope("p0@example.org")
    assert to.startswith("bounces+") and to != RETURN_PATH, "each delivery has its own return address"
    raw = dsn(
        to, "p0@example.org", "5.1.1", sent.headers("p0@example.org"), message_id="<dsn-1@mx.example.net>"
    )
    box = maildir(tmp_path / "bounces", raw)
    [result] = run(engine, sent, box)
    assert (result.verdict, result.kind, result.matched_by) == (Verdict.HANDLED, "dsn", MatchedBy.VERP)
    assert result.action is ReportAction.BOUNCED and result.settled
    assert person(engine, "p0@example.org").status is SubscriberStatus.BOUNCED
    assert subscriptions(engine, "p0@example.org") == {"members": "unsubscribed", "public": "unsubscribed"}
    [event] = events(engine, "p0@example.org", EventKind.BOUNCED)
    assert event.source is Source.BOUNCE and event.list_id is None
    assert "<dsn-1@mx.example.net>" in event.detail and "5.1.1" in event.detail
    assert "Recipient address rejected" in event.detail
    assert unread(box) == 0, "a settled report is marked seen"
    assert person(engine, "p1@example.org").status is SubscriberStatus.SUBSCRIBED, "nobody else"
    report = dispatching.report(engine, sent.dispatch_id)
    assert (report.bounced, report.complained) == (1, 0)


def test_a_report_is_handled_once_whether_read_again_or_seen_with_other_bytes(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    headers = sent.headers("p1@example.org")
    raw = dsn(sent.envelope("p1@example.org"), "p1@example.org", "4.2.2", headers, message_id="<same@mx>")
    box = maildir(tmp_path / "one", raw)
    [first] = run(engine, sent, box, now=DAY)
    assert first.action is ReportAction.SOFT
    after = snapshot(engine)
    # The same report again, the same bytes; then a copy with another Delivered-To (same Message-ID).
    copy = raw.replace(b"Delivered-To: ", b"Delivered-To: other@mail.efus.example\r\nX-Was-To: ")
    again = maildir(tmp_path / "two", raw, copy)
    results = run(engine, sent, again, now=DAY + dt.timedelta(days=1))
    assert [r.verdict for r in results] == [Verdict.BEFORE, Verdict.BEFORE]
    assert snapshot(engine) == after, "a second run changes nothing, not even the soft score a day later"
    assert person(engine, "p1@example.org").soft_score == 1
    assert unread(again) == 0, "a report handled before and settled is marked seen"


def test_a_dry_run_decides_the_same_and_changes_nothing(sent: Sent, engine: Engine, tmp_path: Path) -> None:
    hard = dsn(sent.envelope("p0@example.org"), "p0@example.org", "5.1.1", sent.headers("p0@example.org"))
    again = dsn(sent.envelope("p0@example.org"), "p0@example.org", "5.1.1", sent.headers("p0@example.org"))
    spam = complaint("fbl@efus.example", "p2@example.org", sent.headers("p2@example.org"))
    box = maildir(tmp_path / "bounces", hard, again, spam, autoreply(sent.envelope("p3@example.org")))
    before = snapshot(engine)
    dry = run(engine, sent, box, dry_run=True)
    assert snapshot(engine) == before and unread(box) == 4, "nothing stored, no mail touched"
    # The second report about p0 sees what the first would have done, whichever comes first.
    assert sorted((r.kind, r.action) for r in dry) == [
        ("autoreply", ReportAction.NONE),
        ("complaint", ReportAction.UNSUBSCRIBED),
        ("dsn", ReportAction.BOUNCED),
        ("dsn", ReportAction.NONE),
    ]
    real = run(engine, sent, box)
    assert sorted((r.kind, r.matched_by, r.action) for r in real) == sorted(
        (r.kind, r.matched_by, r.action) for r in dry
    )
    assert unread(box) == 1, "only the automatic reply is left for a person"


def test_a_complaint_unsubscribes_from_the_dispatchs_list_by_message_id(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    # Feedback loops send to their own address: the Message-ID of the original finds the delivery.
    raw = complaint("fbl@efus.example", "p1@example.org", sent.headers("p1@example.org"))
    [result] = run(engine, sent, maildir(tmp_path / "fbl", raw))
    assert (result.matched_by, result.action) == (MatchedBy.MESSAGE_ID, ReportAction.UNSUBSCRIBED)
    assert subscriptions(engine, "p1@example.org") == {"members": "unsubscribed", "public": "subscribed"}
    assert person(engine, "p1@example.org").status is SubscriberStatus.SUBSCRIBED
    [event] = events(engine, "p1@example.org", EventKind.COMPLAINED)
    assert event.source is Source.FEEDBACK_LOOP and event.list_id is not None and "abuse" in event.detail
    assert dispatching.report(engine, sent.dispatch_id).complained == 1


def test_a_complaint_ends_every_list_when_the_settings_say_all(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    with (sent.workspace / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write('\n[bounces]\ncomplaint = "all"\n')
    sent.settings = load_settings(sent.workspace)
    raw = complaint(sent.envelope("p0@example.org"), "p0@example.org", sent.headers("p0@example.org"))
    [result] = run(engine, sent, maildir(tmp_path / "fbl", raw))
    assert (result.matched_by, result.action) == (MatchedBy.VERP, ReportAction.COMPLAINED)
    assert person(engine, "p0@example.org").status is SubscriberStatus.COMPLAINED
    assert subscriptions(engine, "p0@example.org") == {"members": "unsubscribed", "public": "unsubscribed"}


def test_without_verp_the_list_id_and_the_recipient_match_when_the_message_id_is_not_ours(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    sent = send_dispatch(sending_workspace, engine, smtp_server, 3, verp=False)
    headers = sent.headers("p2@example.org")
    changed = "\n".join(
        "Message-ID: <rewritten-by-a-relay@relay.example>" if line.lower().startswith("message-id:") else line
        for line in headers.split("\n")
    )
    assert "<members.efus.example>" in changed
    # Another sender's list of the same name: not ours, whoever is named.
    theirs = changed.replace("<members.efus.example>", "<members.other.example>")
    other = dsn("bounces@mail.efus.example", "p1@example.org", "5.1.1", theirs)
    raw = dsn("bounces@mail.efus.example", "p2@example.org", "5.1.1", changed)
    stranger = dsn("bounces@mail.efus.example", "nobody@example.org", "5.1.1", changed)
    box = maildir(tmp_path / "bounces", other, raw, stranger)
    elsewhere, first, second = run(engine, sent, box)
    # Not by its List-Id: by the address and the recent dispatches, as without VERP any report is.
    assert elsewhere.matched_by is MatchedBy.RECIPIENT
    assert (first.matched_by, first.action) == (MatchedBy.LIST_ID, ReportAction.BOUNCED)
    assert first.lines[0].dispatch_id == sent.dispatch_id, "the latest dispatch of that list to them"
    assert (second.matched_by, second.action, second.settled) == (MatchedBy.NONE, ReportAction.NONE, False)
    assert unread(box) == 1, "what matched nothing stays unread"


def test_policy_and_delivered_change_nothing_but_are_listed(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    policy = dsn(sent.envelope("p3@example.org"), "p3@example.org", "5.7.1", sent.headers("p3@example.org"))
    delivered = dsn(
        sent.envelope("p4@example.org"), "p4@example.org", "2.0.0", sent.headers("p4@example.org"),
        action="delivered", diagnostic="smtp; 250 2.0.0 Ok",
    )  # fmt: skip
    before = snapshot(engine)["subscribers"]
    box = maildir(tmp_path / "bounces", policy, delivered)
    results = run(engine, sent, box)
    assert [(r.matched_by, r.action, r.settled) for r in results] == [
        (MatchedBy.VERP, ReportAction.NONE, True)
    ] * 2
    assert "policy" in results[0].lines[0].note and "delivered" in results[1].lines[0].note
    assert snapshot(engine)["subscribers"] == before
    assert unread(box) == 0


def test_someone_already_gone_is_recorded_and_left_as_they_are(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    with transaction(engine) as session:
        people.unsubscribe(session, people.find(session, "p5@example.org"), Source.MANUAL)
    raw = dsn(sent.envelope("p5@example.org"), "p5@example.org", "5.1.1", sent.headers("p5@example.org"))
    [result] = run(engine, sent, maildir(tmp_path / "b", raw))
    assert result.action is ReportAction.NONE and result.lines[0].note == "already unsubscribed"
    assert person(engine, "p5@example.org").status is SubscriberStatus.UNSUBSCRIBED
    assert events(engine, "p5@example.org", EventKind.BOUNCED) == []


@pytest.mark.parametrize("forgery", ["wrong MAC", "other dispatch", "mistyped"])
def test_a_forged_verp_address_changes_nothing_even_with_a_matching_message_id(
    sent: Sent, engine: Engine, tmp_path: Path, forgery: str
) -> None:
    real = sent.envelope("p0@example.org")
    local, _, domain = real.partition("@")
    head, dispatch, delivery, mac = local.replace("+", ".", 1).split(".")
    if forgery == "wrong MAC":
        to = f"{head}+{dispatch}.{delivery}.{'a' * len(mac)}@{domain}"
    elif forgery == "other dispatch":
        to = f"{head}+{int(dispatch) + 1}.{delivery}.{mac}@{domain}"
    else:
        to = f"{head}+{dispatch}.{delivery}.{mac[:-1]}@{domain}"
    before = snapshot(engine)
    raw = dsn(to, "p0@example.org", "5.1.1", sent.headers("p0@example.org"))
    box = maildir(tmp_path / "b", raw)
    [result] = run(engine, sent, box)
    assert result.action is ReportAction.NONE and not result.settled
    assert "forged or mistyped return address" in result.summary
    after = snapshot(engine)
    assert after["subscribers"] == before["subscribers"] and after["events"] == before["events"]
    assert person(engine, "p0@example.org").status is SubscriberStatus.SUBSCRIBED
    assert unread(box) == 1


def test_autoreplies_unknown_and_unreadable_mail_are_recorded_and_left_unread(
    sent: Sent, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    human = b"From: someone@example.org\r\nTo: bounces@mail.efus.example\r\nSubject: hi\r\n\r\nHello!\r\n"
    broken = (Path(__file__).parent / "data" / "bounces" / "broken-mime.eml").read_bytes()
    huge = b"Subject: big\r\n\r\n" + b"x" * 5000
    box = maildir(tmp_path / "b", autoreply(sent.envelope("p3@example.org")), human, broken, huge)
    monkeypatch.setattr(reports, "MAX_REPORT_BYTES", 4096)  # "huge", without writing 32 MiB
    results = run(engine, sent, box)
    # Larger than any report: not even read (the source lists it in `skipped`), left for a person.
    assert [r.kind for r in results] == ["autoreply", "unknown", results[2].kind]
    assert all(r.verdict is Verdict.HANDLED and not r.settled for r in results)
    assert results[0].matched_by is MatchedBy.VERP, "an automatic reply says whom it is about"
    assert unread(box) == 4
    assert [r.verdict for r in run(engine, sent, box)] == [Verdict.BEFORE] * 3, "recorded: not counted twice"
    assert unread(box) == 4


def test_without_verp_the_recipient_and_recent_dispatches_match(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    sent = send_dispatch(sending_workspace, engine, smtp_server, 3, verp=False)
    assert sent.envelope("p0@example.org") == RETURN_PATH
    # Only the failed address: no original headers, as some servers write them.
    raw = dsn(RETURN_PATH, "P0@Example.org", "5.1.1", "Subject: (headers not returned)")
    [result] = run(engine, sent, maildir(tmp_path / "b", raw))
    assert (result.matched_by, result.action) == (MatchedBy.RECIPIENT, ReportAction.BOUNCED)
    assert result.lines[0].dispatch_id == sent.dispatch_id
    # A dispatch older than bounces.match_days is no longer a reason to believe a report.
    late = dsn(RETURN_PATH, "p1@example.org", "5.1.1", "Subject: (headers not returned)")
    [old] = run(engine, sent, maildir(tmp_path / "late", late), now=bounces.utcnow() + dt.timedelta(days=31))
    assert (old.matched_by, old.action) == (MatchedBy.NONE, ReportAction.NONE)
    assert person(engine, "p1@example.org").status is SubscriberStatus.SUBSCRIBED


def test_with_verp_a_report_naming_only_a_recipient_matches_nothing(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    # Anyone can write to the plain return path: with VERP on, a bare address proves nothing.
    raw = dsn(RETURN_PATH, "p0@example.org", "5.1.1", "Subject: (headers not returned)")
    [result] = run(engine, sent, maildir(tmp_path / "b", raw))
    assert (result.matched_by, result.action) == (MatchedBy.NONE, ReportAction.NONE)
    assert person(engine, "p0@example.org").status is SubscriberStatus.SUBSCRIBED


def test_with_verp_forged_reports_to_the_plain_return_path_change_nothing(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    """A subscriber knows the dispatch's key (their own Message-ID) and the list's List-Id.

    Delivery ids are sequential: p5 can write p0's Message-ID. Without the signed
    return address, neither makes a bounce report about p0 believable.
    """
    victim = sent.headers("p0@example.org")
    forged = [
        # p0's real Message-ID and List-Id, to the plain return path, naming p0 ...
        dsn(RETURN_PATH, "p0@example.org", "5.1.1", victim),
        # ... or naming someone else
        dsn(RETURN_PATH, "attacker@evil.example", "5.1.1", victim),
        # the List-Id alone, with p1's address
        dsn(RETURN_PATH, "p1@example.org", "5.1.1", "List-Id: members <members.efus.example>\nSubject: x"),
    ]
    before = snapshot(engine)
    results = run(engine, sent, maildir(tmp_path / "b", *forged))
    assert [(r.matched_by, r.action, r.settled) for r in results] == [
        (MatchedBy.NONE, ReportAction.NONE, False)
    ] * 3
    after = snapshot(engine)
    assert after["subscribers"] == before["subscribers"] and after["events"] == before["events"]


def test_a_report_acts_only_on_the_address_its_delivery_went_to(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    # A true return address, but the failed recipient is another address (a forward): no bounce.
    forwarded = dsn(
        sent.envelope("p0@example.org"), "p0-fwd@other.example", "5.1.1", sent.headers("p0@example.org")
    )
    # A complaint with p1's real Message-ID that names someone else: nothing either.
    other = complaint("fbl@efus.example", "attacker@evil.example", sent.headers("p1@example.org"))
    first, second = run(engine, sent, maildir(tmp_path / "b", forwarded, other))
    for result in (first, second):
        assert (result.action, result.settled) == (ReportAction.NONE, False), result
        assert result.lines[0].note == "not the address the message went to"
    assert person(engine, "p0@example.org").status is SubscriberStatus.SUBSCRIBED
    assert set(subscriptions(engine, "p1@example.org").values()) == {"subscribed"}


def test_a_report_with_nul_bytes_is_handled_on_every_database(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    """PostgreSQL refuses a NUL in text: one such report used to stop every run there."""
    poison = dsn(
        sent.envelope("p0@example.org"), "p0@example.org", "5.1.1", sent.headers("p0@example.org"),
        diagnostic="smtp; 550 5.1.1 no\x00such\x01user\x1b[2J",
    )  # fmt: skip
    after = dsn(sent.envelope("p1@example.org"), "p1@example.org", "5.1.1", sent.headers("p1@example.org"))
    first, second = run(engine, sent, maildir(tmp_path / "b", poison, after))
    assert (first.action, second.action) == (ReportAction.BOUNCED, ReportAction.BOUNCED)
    [event] = events(engine, "p0@example.org", EventKind.BOUNCED)
    assert "no" in event.detail and not any(ord(c) < 32 for c in event.detail)


def test_a_late_report_about_a_message_sent_before_a_resubscription_changes_nothing(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    hard = dsn(sent.envelope("p0@example.org"), "p0@example.org", "5.1.1", sent.headers("p0@example.org"))
    [first] = run(engine, sent, maildir(tmp_path / "a", hard))
    assert first.action is ReportAction.BOUNCED
    code, out = run_cli(
        "subscribers", "resubscribe", "p0@example.org", "--list", "members",
        "--reason", "new mailbox, checked by phone", "--confirm-consent",
    )  # fmt: skip
    assert code == 0, out
    # A copy of the old report (other bytes, other Message-ID) reaches the mailbox late.
    late = dsn(
        sent.envelope("p0@example.org"), "p0@example.org", "5.1.1", sent.headers("p0@example.org"),
        message_id="<late.copy@mx.example.net>",
    )  # fmt: skip
    [second] = run(engine, sent, maildir(tmp_path / "b", late))
    assert (second.action, second.settled) == (ReportAction.NONE, True)
    assert second.lines[0].note == "about a message sent before they were subscribed again"
    assert person(engine, "p0@example.org").status is SubscriberStatus.SUBSCRIBED


def test_a_resubscription_starts_the_soft_score_again(sent: Sent, engine: Engine, tmp_path: Path) -> None:
    for day in range(2):
        delayed_on(engine, sent, tmp_path / f"s{day}", "p0@example.org", DAY + dt.timedelta(days=day))
    assert person(engine, "p0@example.org").soft_score == 2
    code, out = run_cli(
        "subscribers", "unsubscribe", "p0@example.org", "--all", "--reason", "asked",
    )  # fmt: skip
    assert code == 0, out
    code, out = run_cli(
        "subscribers", "resubscribe", "p0@example.org", "--list", "members",
        "--reason", "asked again", "--confirm-consent",
    )  # fmt: skip
    assert code == 0, out
    found = person(engine, "p0@example.org")
    assert (found.soft_score, found.soft_day, found.soft_bounced_at) == (0, None, None)


def test_a_clock_put_back_does_not_count_a_day_twice(sent: Sent, engine: Engine, tmp_path: Path) -> None:
    for n, day in enumerate((0, 1, 0)):
        delayed_on(engine, sent, tmp_path / f"s{n}", "p0@example.org", DAY + dt.timedelta(days=day))
    assert person(engine, "p0@example.org").soft_score == 2


def test_a_feedback_loop_at_a_sub_address_is_not_taken_for_a_forged_return_address(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    local, _, domain = RETURN_PATH.partition("@")
    raw = complaint(f"{local}+fbl@{domain}", "p2@example.org", sent.headers("p2@example.org"))
    [result] = run(engine, sent, maildir(tmp_path / "b", raw))
    assert (result.matched_by, result.action) == (MatchedBy.MESSAGE_ID, ReportAction.UNSUBSCRIBED), result


# --- the soft score, by the day ------------------------------------------------------------------


def soft(sent: Sent, address: str, at: dt.datetime | None = None) -> bytes:
    return dsn(
        sent.envelope(address), address, "4.2.2", sent.headers(address), action="delayed",
        diagnostic="smtp; 452 4.2.2 Mailbox full", at=at,
    )  # fmt: skip


def delayed_on(engine: Engine, sent: Sent, box: Path, address: str, at: dt.datetime) -> list[bounces.Result]:
    """A mailbox full for ``address``, reported and read at ``at``."""
    return run(engine, sent, maildir(box, soft(sent, address, at)), now=at)


def test_three_soft_bounces_on_one_day_count_once(sent: Sent, engine: Engine, tmp_path: Path) -> None:
    box = maildir(tmp_path / "b", *(soft(sent, "p0@example.org") for _ in range(3)))
    results = run(engine, sent, box, now=DAY)
    assert [r.action for r in results] == [ReportAction.SOFT] * 3
    notes = sorted(r.lines[0].note for r in results)
    assert notes == ["score 1 of 3"] + ["score 1 of 3, counted today already"] * 2
    found = person(engine, "p0@example.org")
    assert (found.soft_score, found.soft_day, found.status) == (1, DAY.date(), SubscriberStatus.SUBSCRIBED)


def test_soft_bounces_on_three_days_suppress_and_a_gap_starts_again(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    for day in range(3):
        results = run(
            engine,
            sent,
            maildir(
                tmp_path / f"p0-{day}",
                soft(sent, "p0@example.org", DAY + dt.timedelta(days=day, hours=day * 5)),
            ),
            now=DAY + dt.timedelta(days=day, hours=day * 5),
        )
        assert person(engine, "p0@example.org").soft_score == day + 1
    assert results[0].action is ReportAction.SUPPRESSED
    assert person(engine, "p0@example.org").status is SubscriberStatus.BOUNCED
    [event] = events(engine, "p0@example.org", EventKind.BOUNCED)
    assert event.detail.startswith("soft bounces on 3 days") and "4.2.2" in event.detail
    assert dispatching.report(engine, sent.dispatch_id).bounced == 1
    # p1: two days, then nothing for 8 days: the third starts the score again.
    for n, day in enumerate((0, 1, 9)):
        delayed_on(engine, sent, tmp_path / f"p1-{n}", "p1@example.org", DAY + dt.timedelta(days=day))
    found = person(engine, "p1@example.org")
    assert (found.soft_score, found.status) == (1, SubscriberStatus.SUBSCRIBED)
    # 7 days exactly is not "more than 7": the score goes on.
    delayed_on(engine, sent, tmp_path / "p1-3", "p1@example.org", DAY + dt.timedelta(days=16))
    assert person(engine, "p1@example.org").soft_score == 2


def test_a_mailbox_read_once_a_week_counts_each_day_by_the_reports_date(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    """Three days of delays, read on the sixth day in one run: three days, suppressed."""
    box = maildir(
        tmp_path / "week",
        *(soft(sent, "p0@example.org", DAY + dt.timedelta(days=d, hours=3)) for d in range(3)),
    )
    run(engine, sent, box, now=DAY + dt.timedelta(days=6))
    found = person(engine, "p0@example.org")
    assert (found.soft_score, found.status) == (3, SubscriberStatus.BOUNCED)
    # A report dated ahead of the clock (a forged or wrong Date) counts as written now.
    ahead = soft(sent, "p1@example.org", DAY + dt.timedelta(days=40))
    run(engine, sent, maildir(tmp_path / "ahead", ahead), now=DAY)
    found = person(engine, "p1@example.org")
    assert (found.soft_score, found.soft_day) == (1, DAY.date())
    assert outbox.as_utc(found.soft_bounced_at) == DAY


# --- exactly once, with another process at the same instant ---------------------------------------


def test_two_processes_handling_one_report_at_once_act_once(
    sent: Sent, engine: Engine, database_url: str
) -> None:
    report = read_report(
        dsn(sent.envelope("p2@example.org"), "p2@example.org", "4.2.2", sent.headers("p2@example.org"))
    )
    other_engine = make_engine(database_url)
    second: list[bounces.Result] = []
    try:
        with transaction(engine) as session:
            first = bounces.handle(session, sent.settings, sent.signer, report, now=DAY)
            assert first.action is ReportAction.SOFT
            # The other process starts now, on its own connection, and must wait for this one.
            other = threading.Thread(
                target=lambda: second.append(
                    bounces.apply(other_engine, sent.settings, sent.signer, report, now=DAY)
                )
            )
            other.start()
            time.sleep(0.5)
            assert other.is_alive(), "the second writer waits for the first (write lock, or the unique key)"
        other.join(30)
    finally:
        other_engine.dispose()
    assert [r.verdict for r in second] == [Verdict.RACE]
    assert second[0].summary == "handled by another process"
    assert person(engine, "p2@example.org").soft_score == 1
    with transaction(engine) as session:
        assert session.scalar(select(func.count()).select_from(HandledReport)) == 1
        assert session.scalar(select(func.count()).select_from(ReportRecipient)) == 1


# --- the command line -------------------------------------------------------------------------------


def test_the_commands_process_list_and_show(sent: Sent, engine: Engine, tmp_path: Path) -> None:
    hard = dsn(sent.envelope("p0@example.org"), "p0@example.org", "5.1.1", sent.headers("p0@example.org"))
    hostile = dsn(sent.envelope("p1@example.org"), "p1@example.org", "4.2.2", sent.headers("p1@example.org"),
                  action="delayed", diagnostic="smtp; 452 4.2.2 full \x1b]0;pwned\x07")  # fmt: skip
    box = maildir(tmp_path / "b", hard, hostile, autoreply(sent.envelope("p3@example.org")))
    runner = CliRunner()
    dry = runner.invoke(cli, ["bounces", "process", str(box), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines()[-1].startswith(
        "3 new reports (dry run: nothing stored, no mail touched): 1 bounced"
    )
    assert unread(box) == 3
    done = runner.invoke(cli, ["bounces", "process", str(box), "--move-to", "Processed"])
    assert done.exit_code == 0, done.output
    *lines, summary = done.output.splitlines()
    lines.sort()
    assert lines[0].split()[:3] == ["autoreply", "verp", "none"] and "left for a person" in lines[0]
    assert lines[1].split()[:4] == ["dsn", "verp", "bounced", "p0@example.org"]
    assert lines[2].split()[:4] == ["dsn", "verp", "soft", "p1@example.org"]
    assert summary == "3 new reports: 1 bounced, 1 soft; 1 left for a person; 0 handled before"
    assert "\x1b" not in done.output
    processed = mailbox.Maildir(box, create=False).get_folder("Processed")
    assert len(processed) == 2 and len(mailbox.Maildir(box, create=False)) == 1
    again = runner.invoke(cli, ["bounces", "process", str(box)])
    assert again.output.splitlines()[-1].endswith("0 left for a person; 1 handled before"), again.output
    listed = runner.invoke(cli, ["bounces", "list"])
    assert listed.exit_code == 0 and "autoreply: automatic reply  (left for a person)" in listed.output
    assert "p1@example.org  temporary 4.2.2 -> soft: score 1 of 3" in listed.output
    assert "p0@example.org  permanent 5.1.1 -> bounced" in listed.output
    one = runner.invoke(cli, ["bounces", "list", "--limit", "1"])
    assert len([line for line in one.output.splitlines() if not line.startswith(" ")]) == 1, one.output
    shown = runner.invoke(cli, ["subscribers", "show", "p1@example.org"])
    assert "soft bounces: score 1" in shown.output and "temporary 4.2.2 -> soft (by verp)" in shown.output
    status = runner.invoke(cli, ["status", str(sent.dispatch_id)])
    assert "1 bounced, 0 complained" in status.output
    missing = runner.invoke(cli, ["bounces", "process", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no such Maildir or mbox file" in missing.output


# --- kill -9 in the middle ----------------------------------------------------------------------------


def test_a_run_asked_to_stop_ends_between_two_groups(sent: Sent, engine: Engine, tmp_path: Path) -> None:
    reports_ = [soft(sent, f"p{n % 6}@example.org", DAY) for n in range(bounces.GROUP + 20)]
    box = maildir(tmp_path / "b", *reports_)
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 1  # after the first group

    with open_source(str(box)) as source:
        results = list(bounces.run(engine, sent.settings, sent.signer, source, stop=stop, clock=lambda: DAY))
    assert len(results) == bounces.GROUP, "one whole group, printed and marked"
    assert unread(box) == 20
    with transaction(engine) as session:
        assert session.scalar(select(func.count()).select_from(HandledReport)) == bounces.GROUP


def test_two_copies_of_a_report_in_one_group_act_once_and_are_both_marked(
    sent: Sent, engine: Engine, tmp_path: Path
) -> None:
    one = dsn(sent.envelope("p0@example.org"), "p0@example.org", "5.1.1", sent.headers("p0@example.org"),
              message_id="<same@mx.example.net>")  # fmt: skip
    copy = one.replace(b"Return-Path: <>", b"Received: from relay\r\nReturn-Path: <>", 1)
    assert copy != one
    first, second = run(engine, sent, maildir(tmp_path / "b", one, copy))
    assert (first.verdict, first.action) == (Verdict.HANDLED, ReportAction.BOUNCED)
    assert second.verdict is Verdict.BEFORE, second
    assert unread(tmp_path / "b") == 0
    assert len(events(engine, "p0@example.org", EventKind.BOUNCED)) == 1


def test_a_value_the_database_refuses_is_recorded_as_unknown_and_the_run_goes_on(
    sent: Sent, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The net under reports.py's cleaning: PostgreSQL refuses a NUL in text."""
    monkeypatch.setattr(reports, "_CONTROL", re.compile("(?!)"))  # let control characters through
    poison = dsn(sent.envelope("p0@example.org"), "p0@example.org", "5.1.1", sent.headers("p0@example.org"),
                 diagnostic="smtp; 550 5.1.1 no\x00such user")  # fmt: skip
    after = dsn(sent.envelope("p1@example.org"), "p1@example.org", "5.1.1", sent.headers("p1@example.org"))
    first, second = run(engine, sent, maildir(tmp_path / "b", poison, after))
    assert second.action is ReportAction.BOUNCED, "the run went on"
    if engine.dialect.name == "postgresql":
        assert (first.kind, first.action, first.settled) == ("unknown", ReportAction.NONE, False)
        assert "could not be recorded (" in first.summary
        assert person(engine, "p0@example.org").status is SubscriberStatus.SUBSCRIBED
    else:  # SQLite keeps a NUL in text
        assert first.action is ReportAction.BOUNCED


def test_process_says_which_messages_were_too_large_to_read(
    sent: Sent, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = b"Subject: big\r\n\r\n" + b"x" * 5000
    box = maildir(tmp_path / "b", huge, autoreply(sent.envelope("p3@example.org")))
    monkeypatch.setattr(reports, "MAX_REPORT_BYTES", 4096)
    code, out = run_cli("bounces", "process", str(box))
    assert code == 0, out
    [line] = [line for line in out.splitlines() if line.startswith("not read:")]
    assert "5,016 bytes, larger than any report; left for a person" in line
    assert unread(box) == 2


def three_hundred(sent: Sent) -> Iterator[bytes]:
    """300 reports about the 6 deliveries, one kind per person so that any order ends the same.

    Soft bounces (p0), hard bounces (p1), complaints (p2), automatic replies (p3), policy
    refusals (p4), and a person's replies (p5), 50 of each.
    """
    for n in range(300):
        address = f"p{n % 6}@example.org"
        kind = n % 6
        if kind == 0:
            yield soft(sent, address)
        elif kind == 1:
            yield dsn(sent.envelope(address), address, "5.1.1", sent.headers(address))
        elif kind == 2:
            yield complaint("fbl@efus.example", address, sent.headers(address))
        elif kind == 3:
            yield autoreply(sent.envelope(address))
        elif kind == 4:
            yield dsn(sent.envelope(address), address, "5.7.1", sent.headers(address))
        else:
            yield f"From: {address}\r\nTo: team@efus.example\r\nSubject: re {n}\r\n\r\nThanks!\r\n".encode()


def final_state(engine: Engine) -> dict[str, Any]:
    """What any order of the same reports ends with: who is where, what was done how often."""
    taken = snapshot(engine)
    return {
        "subscribers": taken["subscribers"],
        "subscriptions": taken["subscriptions"],
        # An event's detail cites the report that acted: which one depends on the order.
        "events": sorted(collections.Counter(e[:4] for e in taken["events"]).items(), key=str),
        "reports": [r[:4] for r in taken["reports"]],
        "actions": sorted(
            collections.Counter((line[1], line[2]) for line in taken["lines"]).items(), key=str
        ),
    }


def mailbox_state(box: Path) -> list[tuple[bytes, bool]]:
    found = mailbox.Maildir(box, create=False)
    try:
        return sorted((found.get_bytes(k), "S" in found.get_message(k).get_flags()) for k in found.iterkeys())
    finally:
        found.close()


def process(workspace: Path, box: Path, database_url: str) -> subprocess.Popen[bytes]:
    """Start `mailout bounces process BOX` in a process of its own; its errors go to BOX.log."""
    with (box.parent / f"{box.name}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "mailout", "bounces", "process", str(box)],
            cwd=workspace, env={**os.environ, "MAILOUT_DATABASE_URL": database_url},
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip


def log(box: Path) -> str:
    return (box.parent / f"{box.name}.log").read_text(encoding="utf-8", errors="replace")


def test_kill_9_in_the_middle_then_a_rerun_ends_as_one_uninterrupted_run(
    sending_workspace: Path,
    smtp_server: SMTPServer,
    database_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    engine = make_engine(database_url)
    try:
        sent = send_dispatch(sending_workspace, engine, smtp_server, 6)
        messages = list(three_hundred(sent))
    finally:
        engine.dispose()
    # The same database twice: one run killed and run again, one uninterrupted.
    if database_url.startswith("sqlite"):
        twin_file = tmp_path / "twin.db"
        twin_file.write_bytes(Path(database_url.removeprefix("sqlite:///")).read_bytes())
        twin = f"sqlite:///{twin_file}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        name = database_url.rpartition("/")[2]
        twin = server.create_database(f"{name}_twin", template=name)
        request.addfinalizer(lambda: server.drop_database(f"{name}_twin"))
    box, twin_box = maildir(tmp_path / "killed", *messages), maildir(tmp_path / "whole", *messages)

    # Uninterrupted, on the copy.
    whole = process(sending_workspace, twin_box, twin)
    assert whole.wait(120) == 0, log(twin_box)

    # Killed once a third is recorded, then run again.
    killed = process(sending_workspace, box, database_url)
    engine = make_engine(database_url)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # As a reader: a writer's lock would wait for the run's groups, and see none of them.
            with transaction(reader(engine)) as session:
                if session.scalar(select(func.count()).select_from(HandledReport)) >= 1:
                    break
            time.sleep(0.005)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(10)
        with transaction(engine) as session:
            partial = session.scalar(select(func.count()).select_from(HandledReport))
        assert partial is not None and 1 <= partial < 300, "killed in the middle"
        rerun = process(sending_workspace, box, database_url)
        assert rerun.wait(120) == 0, log(box)
        twin_engine = make_engine(twin)
        try:
            assert final_state(engine) == final_state(twin_engine)
            state = final_state(engine)
            assert len(state["reports"]) == 300
            actions = dict(state["actions"])
            assert actions[("p0@example.org", ReportAction.SOFT)] == 50, "soft, counted once a day"
            assert actions[("p1@example.org", ReportAction.BOUNCED)] == 1
            assert actions[("p2@example.org", ReportAction.UNSUBSCRIBED)] == 1
            assert person(engine, "p0@example.org").soft_score == 1
        finally:
            twin_engine.dispose()
    finally:
        engine.dispose()
    killed_box, whole_box = mailbox_state(box), mailbox_state(twin_box)
    assert set(killed_box) == set(whole_box), "the same reports marked seen, the rest unread"
    # Marking a Maildir message seen renames its file, in one step: no copy, none lost.
    assert len(whole_box) == 300 and len(killed_box) == len(whole_box)


# --- a database upgraded from before reports were kept ------------------------------------------------


def test_reports_act_on_a_database_upgraded_with_rows_everywhere(
    empty_database_url: str, tmp_path: Path
) -> None:
    url = empty_database_url
    upgrade(url, "0008")
    data = migration_rows()
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            fill(connection, data)
        upgrade(url)
        (tmp_path / "mailout.toml").write_text(
            f'[sender]\naddress = "{FROM}"\nreturn_path = "{RETURN_PATH}"\n', encoding="utf-8"
        )
        settings = load_settings(tmp_path, env={"MAILOUT_SECRET_KEY": SECRET_KEY})
        signer = Signer.from_secret(settings.secret_key)
        key = data["dispatches"][0]["key"]
        # Deliveries 1 and 2 of dispatch 1 (subscribers 1 and 2), sent before VERP: their
        # Message-IDs find them, and the old rows take a score from 0.
        first, second = (data["deliveries"][n]["email"] for n in (0, 1))
        original = (
            "From: Efus <newsletter@efus.example>\nMessage-ID: <{key}.{n}@efus.example>\nSubject: January"
        )
        hard = read_report(dsn(RETURN_PATH, first, "5.1.1", original.format(key=key, n=1)))
        full = read_report(dsn(RETURN_PATH, second, "4.2.2", original.format(key=key, n=2), action="delayed"))
        assert bounces.apply(engine, settings, signer, hard, now=DAY).action is ReportAction.BOUNCED
        assert bounces.apply(engine, settings, signer, full, now=DAY).action is ReportAction.SOFT
        assert bounces.apply(engine, settings, signer, hard, now=DAY).verdict is Verdict.RACE, "no pre-check"
        with transaction(engine) as session:
            statuses = dict(session.execute(select(Subscriber.id, Subscriber.status)).all())
            scores = dict(session.execute(select(Subscriber.id, Subscriber.soft_score)).all())
            assert (statuses[1], statuses[2]) == (SubscriberStatus.BOUNCED, SubscriberStatus.SUBSCRIBED)
            assert scores[2] == 1 and sum(scores.values()) == 1, "every old row starts at 0"
            assert bounces.dispatch_counts(session, 1) == (1, 0)
    finally:
        engine.dispose()
