"""Reading bounces, complaints and automatic replies (mailout.reports).

The corpus in tests/data/bounces/ was written for this project in the formats the
servers named in each file send; one real Postfix report is made in a test below.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import quopri
import resource
import smtplib
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailout import reports
from mailout.reports import Original, Outcome, Report, ReportKind, outcome_of, read_report
from tests.postfix import PostfixRelay
from tests.smtpserver import SMTPServer

CORPUS = Path(__file__).parent / "data" / "bounces"


@dataclass(frozen=True)
class Expected:
    kind: ReportKind
    envelope_to: str | None = None
    recipients: tuple[
        tuple[str, Outcome, str | None, str | None], ...
    ] = ()  # address, outcome, status, in diagnostic
    message_id: str | None = None
    list_id: str | None = None
    standard: bool = True


LIST_MEMBERS = "Members <members.news.example.org>"
LIST_PUBLIC = "Public <public.news.example.org>"

CASES = {
    "postfix-hard.eml": Expected(
        ReportKind.DSN,
        "bounces+17.4021.k3j9x2@news.example.org",
        (("gone@example.com", Outcome.PERMANENT, "5.1.1", "User unknown in virtual mailbox table"),),
        "<17.4021.1709457124@news.example.org>",
        LIST_MEMBERS,
    ),
    "postfix-delayed.eml": Expected(
        ReportKind.DSN,
        "bounces+17.4022.p0q8w1@news.example.org",
        (("slow@example.net", Outcome.TEMPORARY, "4.4.1", "Connection timed out"),),
        "<17.4022.1709457124@news.example.org>",
        LIST_MEMBERS,
    ),
    "postfix-policy.eml": Expected(
        ReportKind.DSN,
        "bounces@news.example.org",
        (("reader@example.com", Outcome.POLICY, "5.7.1", "blocked using bl.example.net"),),
        "<17.4023.1709457124@news.example.org>",
        "<public.news.example.org>",
    ),
    "exim-nonstandard.eml": Expected(
        ReportKind.DSN,
        "bounces+17.5001.zz81mq@news.example.org",
        (
            (
                "left@example.co.uk",
                Outcome.PERMANENT,
                "5.1.1",
                "550 5.1.1 <left@example.co.uk>: Recipient address",
            ),
        ),
        "<17.5001.1709457124@news.example.org>",
        LIST_MEMBERS,
        standard=False,
    ),
    "exim-dsn.eml": Expected(
        ReportKind.DSN,
        "bounces+17.5002.aa01bc@news.example.org",
        (("voll@example.de", Outcome.TEMPORARY, "4.2.2", "mailbox is full"),),
        "<17.5002.1709457124@news.example.org>",
        LIST_MEMBERS,
    ),
    "sendmail.eml": Expected(
        ReportKind.DSN,
        "bounces+17.5003.qq77rt@news.example.org",
        (("alumnus@example.edu", Outcome.PERMANENT, "5.1.1", "<alumnus@example.edu>... User unknown"),),
        "<17.5003.1709457124@news.example.org>",
        LIST_MEMBERS,
    ),
    "qmail.eml": Expected(
        ReportKind.DSN,
        "bounces+17.5004.mm12nb@news.example.org",
        (("nobody@example.info", Outcome.PERMANENT, "5.1.1", "no mailbox here by that name"),),
        "<17.5004.1709457124@news.example.org>",
        LIST_MEMBERS,
        standard=False,
    ),
    "exchange-365.eml": Expected(
        ReportKind.DSN,
        "bounces+17.6001.ex55yy@news.example.org",
        (
            (
                "jdoe@contoso.example.com",
                Outcome.PERMANENT,
                "5.1.10",
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound",
            ),
        ),
        "<17.6001.1709457124@news.example.org>",
        LIST_MEMBERS,
    ),
    "gmail-hard.eml": Expected(
        ReportKind.DSN,
        "bounces+17.6002.gg00hh@news.example.org",
        (
            (
                "nosuch.person@gmail.example",
                Outcome.PERMANENT,
                "5.1.1",
                "tried to reach does not exist. Please",
            ),
        ),
        "<17.6002.1709457124@news.example.org>",
        LIST_PUBLIC,
    ),
    "gmail-mailbox-full.eml": Expected(
        ReportKind.DSN,
        "bounces+17.6003.ff11ee@news.example.org",
        (("full.box@gmail.example", Outcome.TEMPORARY, "4.2.2", "out of storage space"),),
        "<17.6003.1709457124@news.example.org>",
        LIST_PUBLIC,
    ),
    "yahoo.eml": Expected(
        ReportKind.DSN,
        "bounces+17.6004.yy22zz@news.example.org",
        (
            (
                "goneaway@yahoo.example",
                Outcome.PERMANENT,
                None,
                "554: delivery error: dd This user doesn't have",
            ),
        ),
        "<17.6004.1709457124@news.example.org>",
        LIST_PUBLIC,
        standard=False,
    ),
    "amazon-ses.eml": Expected(
        ReportKind.DSN,
        "bounces@news.example.org",
        (("missing@example.org", Outcome.PERMANENT, "5.1.1", "User unknown in local recipient table"),),
        # SES replaces the Message-ID it sends with; ours is only in X-Original-Message-ID.
        "<0102018e0a1b2c3d-aaaa-bbbb-cccc-dddddddddddd-000000@eu-west-1.amazonses.example>",
        LIST_MEMBERS,
    ),
    "arf-yahoo.eml": Expected(
        ReportKind.COMPLAINT,
        "fbl@news.example.org",
        (("annoyed@yahoo.example", Outcome.COMPLAINT, None, None),),
        "<17.7001.1709457124@news.example.org>",
        LIST_PUBLIC,
    ),
    # No Original-Rcpt-To (redacted feedback loops): the recipient comes from the original's To.
    "arf-microsoft.eml": Expected(
        ReportKind.COMPLAINT,
        "fbl@news.example.org",
        (("redacted.reader@outlook.example", Outcome.COMPLAINT, None, None),),
        "<17.7002.1709457124@news.example.org>",
        LIST_MEMBERS,
    ),
    "vacation-auto-submitted.eml": Expected(ReportKind.AUTOREPLY, "bounces+17.8001.vv44ww@news.example.org"),
    # Its body says "user unknown" and names an address: still an automatic reply, never a bounce.
    "vacation-x-autoreply.eml": Expected(ReportKind.AUTOREPLY, "bounces@news.example.org"),
    "vacation-subject-de.eml": Expected(ReportKind.AUTOREPLY, "bounces@news.example.org"),
    "human-reply.eml": Expected(ReportKind.UNKNOWN, "bounces@news.example.org"),
    "broken-mime.eml": Expected(ReportKind.UNKNOWN),
    # A bounce of a bounce: the outer report's recipient only; the inner report is the original.
    "nested-report.eml": Expected(
        ReportKind.DSN,
        "bounces+17.9100.nn55oo@news.example.org",
        (("forwarder@example.net", Outcome.PERMANENT, "5.2.1", "mailbox disabled"),),
        "<inner.1@inner.example.com>",
    ),
}


def test_every_corpus_file_has_a_case() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.eml")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus(name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    expected = CASES[name]
    report = read_report(raw)
    assert report.kind is expected.kind, report.reason
    assert report.standard is expected.standard
    if expected.envelope_to:
        assert expected.envelope_to in report.envelope_to
    got = [(r.address, r.outcome, r.status) for r in report.recipients]
    assert got == [(a, o, s) for a, o, s, _ in expected.recipients]
    for recipient, (_, _, _, diagnostic) in zip(report.recipients, expected.recipients, strict=True):
        if diagnostic is None:
            assert recipient.diagnostic is None
        else:
            assert recipient.diagnostic is not None and diagnostic in recipient.diagnostic
    if expected.message_id or expected.list_id:
        assert report.original is not None
        assert report.original.message_id == expected.message_id
        assert report.original.list_id == expected.list_id
    elif expected.kind in (ReportKind.AUTOREPLY, ReportKind.UNKNOWN):
        assert report.original is None and report.recipients == ()
    assert report.identity.sha256 == hashlib.sha256(raw).hexdigest()
    assert report.reason


def test_complaint_keeps_the_feedback_type_and_the_original_sender() -> None:
    report = read_report((CORPUS / "arf-yahoo.eml").read_bytes())
    assert report.feedback_type == "abuse"
    assert report.original == Original(
        "<17.7001.1709457124@news.example.org>",
        LIST_PUBLIC,
        "news@news.example.org",
        ("annoyed@yahoo.example",),
    )


def test_the_envelope_id_and_reporting_mta_are_kept() -> None:
    report = read_report((CORPUS / "amazon-ses.eml").read_bytes())
    assert report.envelope_id == "17-6005"
    assert report.reporting_mta == "a1-23.smtp-out.eu-west-1.amazonses.example"


def test_a_bounce_marked_auto_replied_by_its_mail_system_is_still_a_bounce() -> None:
    raw = (CORPUS / "exim-nonstandard.eml").read_bytes()
    assert b"Auto-Submitted: auto-replied" in raw
    assert read_report(raw).kind is ReportKind.DSN


def test_auto_submitted_no_is_not_an_automatic_reply() -> None:
    raw = (CORPUS / "human-reply.eml").read_bytes().replace(b"Subject:", b"Auto-Submitted: no\nSubject:", 1)
    assert read_report(raw).kind is ReportKind.UNKNOWN


# --- identity ------------------------------------------------------------------------------


def test_identity_is_the_message_id_and_the_hash_of_the_bytes() -> None:
    raw = (CORPUS / "postfix-hard.eml").read_bytes()
    first, again = read_report(raw), read_report(raw)
    assert first.identity == again.identity
    assert first.identity.message_id == "<20260303091207.4Bq1xY0Zk2z1r@mail.example.net>"
    # The same Message-ID with other bytes (a resent copy, a changed header) hashes otherwise.
    other = read_report(raw.replace(b"Tue,  3 Mar", b"Wed,  4 Mar", 1))
    assert other.identity.message_id == first.identity.message_id
    assert other.identity.sha256 != first.identity.sha256


def test_a_report_without_message_id_still_has_an_identity() -> None:
    raw = b"From: someone@example.com\nSubject: hi\n\nbody\n"
    report = read_report(raw)
    assert report.identity.message_id is None
    assert report.identity.sha256 == hashlib.sha256(raw).hexdigest()


# --- classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "status", "outcome"),
    [
        ("failed", "5.1.1", Outcome.PERMANENT),
        ("failed", "5.2.1", Outcome.PERMANENT),
        ("failed", "5.7.1", Outcome.POLICY),
        ("failed", "5.7.26", Outcome.POLICY),
        ("failed", "4.2.2", Outcome.TEMPORARY),
        ("delayed", "4.4.1", Outcome.TEMPORARY),
        ("delayed", None, Outcome.TEMPORARY),
        ("failed", None, Outcome.PERMANENT),
        ("Failed", "5.0.0", Outcome.PERMANENT),
        ("delivered", "2.0.0", Outcome.DELIVERED),
        ("relayed", "2.0.0", Outcome.DELIVERED),
        ("expanded", "2.0.0", Outcome.DELIVERED),
        (None, "5.1.1", Outcome.PERMANENT),
    ],
)
def test_outcome_of(action: str | None, status: str | None, outcome: Outcome) -> None:
    assert outcome_of(action, status) is outcome


def _dsn(recipient_blocks: str, *, extra_headers: str = "") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.net\n"
        "To: bounces@news.example.org\n"
        "Message-ID: <built@mx.example.net>\n"
        f"{extra_headers}"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nReport.\n\n"
        "--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
        f"{recipient_blocks}\n"
        "--b--\n"
    ).encode()


def test_an_ip_address_or_version_is_not_read_as_a_status() -> None:
    block = "Final-Recipient: rfc822; a@example.com\nAction: failed\nStatus: 10.4.5.6 mx\n"
    [recipient] = read_report(_dsn(block)).recipients
    assert recipient.status is None and recipient.outcome is Outcome.PERMANENT


def test_a_report_of_10000_recipients_keeps_a_bounded_number() -> None:
    blocks = "\n".join(
        f"Final-Recipient: rfc822; r{i}@example.com\nAction: failed\nStatus: 5.1.1\n" for i in range(10_000)
    )
    started = time.process_time()
    report = read_report(_dsn(blocks))
    assert time.process_time() - started < 10
    assert report.kind is ReportKind.DSN and report.truncated
    assert len(report.recipients) == reports.MAX_RECIPIENTS
    assert report.recipients[0].address == "r0@example.com"


def test_a_non_standard_bounce_with_many_failed_addresses_is_bounded() -> None:
    failed = ", ".join(f"r{i}@example.com" for i in range(3000))
    raw = (
        "From: Mail Delivery System <Mailer-Daemon@mx.example.net>\n"
        f"X-Failed-Recipients: {failed}\n"
        "Subject: Mail delivery failed\n\nThe following address(es) failed.\n"
    ).encode()
    report = read_report(raw)
    assert report.kind is ReportKind.DSN and not report.standard
    assert report.truncated and len(report.recipients) == reports.MAX_RECIPIENTS


def test_huge_headers_are_clipped() -> None:
    diagnostic = "smtp; 550 5.1.1 " + "x" * 2_000_000
    block = f"Final-Recipient: rfc822; a@example.com\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: {diagnostic}\n"
    report = read_report(_dsn(block, extra_headers=f"Subject: {'y' * 1_000_000}\n"))
    [recipient] = report.recipients
    assert recipient.diagnostic is not None and 900 < len(recipient.diagnostic) <= reports.MAX_TEXT
    assert recipient.diagnostic.startswith("550 5.1.1 xxx")


def test_a_text_part_in_an_unknown_charset_is_read() -> None:
    raw = (CORPUS / "exim-nonstandard.eml").read_bytes().replace(b"charset=us-ascii", b"charset=x-no-such", 1)
    report = read_report(raw.replace(b"User unknown", b"Utilisateur inconnu \xe9\xff"))
    [recipient] = report.recipients
    assert recipient.outcome is Outcome.PERMANENT and recipient.diagnostic is not None
    assert "Utilisateur inconnu" in recipient.diagnostic


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe" * 1000,
        b"Content-Type: multipart/report; report-type=delivery-status\n\nno boundary at all\n",
        b"Content-Type: multipart/report; report-type=feedback-report; boundary=x\n\n--x\n"
        b"Content-Type: message/feedback-report\n\n\xff\xfe: \xff\n--x--\n",
        b"Subject: =?utf-8?B?!!!?= =?bogus?Q?x?=\nAuto-Submitted: \xff\xfe\n\n",
        # Multiparts nested thousands deep.
        b"".join(b'Content-Type: multipart/mixed; boundary="%d"\n\n--%d\n' % (i, i) for i in range(3000)),
    ],
    ids=["empty", "binary", "no-boundary", "binary-feedback", "broken-words", "deep-nesting"],
)
def test_hostile_input_never_raises(raw: bytes) -> None:
    report = read_report(raw)
    assert isinstance(report, Report)
    assert report.kind in (ReportKind.UNKNOWN, ReportKind.COMPLAINT)
    assert report.identity.sha256 == hashlib.sha256(raw).hexdigest()


def test_a_failing_detector_gives_unknown_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(msg: object) -> None:
        raise ValueError("detector bug")

    monkeypatch.setattr(reports.flufl.bounce, "all_failures", explode)
    report = read_report((CORPUS / "qmail.eml").read_bytes())
    assert report.kind is ReportKind.UNKNOWN and report.reason == "unreadable: ValueError"
    # A standard report does not need the detector.
    assert read_report((CORPUS / "postfix-hard.eml").read_bytes()).kind is ReportKind.DSN


def test_a_message_over_the_size_limit_is_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = (CORPUS / "postfix-hard.eml").read_bytes()
    monkeypatch.setattr(reports, "MAX_REPORT_BYTES", len(raw) - 1)
    report = read_report(raw)
    assert report.kind is ReportKind.UNKNOWN and "larger than" in report.reason
    assert report.identity.sha256 == hashlib.sha256(raw).hexdigest()


# --- a real Postfix ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_postfix_bounce_is_read(postfix_relay: PostfixRelay, smtp_server: SMTPServer) -> None:
    """Postfix relays to a server that refuses the recipient, and bounces to the VERP sender."""
    smtp_server.answer(
        "gone@example.com", 550, "5.1.1 <gone@example.com>: Recipient address rejected: User unknown"
    )
    message = EmailMessage()
    message["From"] = "Efus Newsletter <news@news.example.org>"
    message["To"] = "gone@example.com"
    message["Subject"] = "March news"
    message["Message-ID"] = "<17.4021.real@news.example.org>"
    message["List-Id"] = LIST_MEMBERS
    message.set_content("Hello,\n")
    sender = "bounces+17.4021.k3j9x2@news.example.org"
    with smtplib.SMTP("127.0.0.1", postfix_relay.port, timeout=30) as client:
        client.sendmail(sender, ["gone@example.com"], message.as_bytes())
    [bounce] = smtp_server.wait_for(1, timeout=60)
    assert bounce.mail_from in ("", "<>") and bounce.rcpt_tos == [sender]  # a null sender: a bounce
    assert b"This is the mail system at host relay.test.example" in bounce.raw

    report = read_report(bounce.raw)
    assert report.kind is ReportKind.DSN and report.standard, report.reason
    assert sender in report.envelope_to
    [recipient] = report.recipients
    assert (recipient.address, recipient.outcome, recipient.status) == (
        "gone@example.com",
        Outcome.PERMANENT,
        "5.1.1",
    )
    assert (
        recipient.diagnostic is not None
        and "Recipient address rejected: User unknown" in recipient.diagnostic
    )
    assert report.original is not None
    assert report.original.message_id == "<17.4021.real@news.example.org>"
    assert report.original.list_id == LIST_MEMBERS
    assert report.reporting_mta == "relay.test.example"


def test_a_non_standard_bounce_gives_each_address_its_own_answer() -> None:
    raw = (
        b"From: Mail Delivery System <Mailer-Daemon@mx.example.net>\n"
        b"X-Failed-Recipients: jimbob@example.com, bob@example.com\n"
        b"Subject: Mail delivery failed\n\n"
        b"The following address(es) failed:\n\n"
        b"  jimbob@example.com\n    550 5.1.1 no such user\n\n"
        b"  bob@example.com\n    550 5.7.1 refused by policy: your domain is blocked\n"
    )
    report = read_report(raw)
    assert [(r.address, r.outcome, r.status) for r in report.recipients] == [
        ("bob@example.com", Outcome.POLICY, "5.7.1"),
        ("jimbob@example.com", Outcome.PERMANENT, "5.1.1"),
    ]


def test_a_report_wrapped_in_a_mixed_message_is_found() -> None:
    block = "Final-Recipient: rfc822; gone@example.com\nAction: failed\nStatus: 5.1.1\n"
    report_body = _dsn(block).split(b"\n\n", 1)[1]
    raw = (
        b"From: relay@example.net\nTo: bounces@news.example.org\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="outer"\n\n--outer\n'
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        + report_body
        + b"\n--outer--\n"
    )
    report = read_report(raw)
    assert report.kind is ReportKind.DSN and report.standard, report.reason
    assert [(r.address, r.outcome) for r in report.recipients] == [("gone@example.com", Outcome.PERMANENT)]


@pytest.mark.slow
def test_a_real_postfix_bounce_for_an_unknown_local_user_is_read(
    postfix_local: PostfixRelay, smtp_server: SMTPServer
) -> None:
    """Postfix's own local delivery refuses a user it does not know (its diagnostic type is X-Postfix)."""
    sender = "bounces+17.4024.m4n5b6@news.example.org"
    message = (
        b"From: news@news.example.org\r\nTo: nosuch@local.test.example\r\n"
        b"Message-ID: <17.4024.real@news.example.org>\r\nSubject: March news\r\n\r\nHello\r\n"
    )
    with smtplib.SMTP("127.0.0.1", postfix_local.port, timeout=30) as client:
        client.sendmail(sender, ["nosuch@local.test.example"], message)
    [bounce] = smtp_server.wait_for(1, timeout=60)
    assert bounce.rcpt_tos == [sender]

    report = read_report(bounce.raw)
    assert report.kind is ReportKind.DSN and sender in report.envelope_to
    [recipient] = report.recipients
    assert (recipient.address, recipient.outcome, recipient.status) == (
        "nosuch@local.test.example",
        Outcome.PERMANENT,
        "5.1.1",
    )
    assert recipient.diagnostic == 'unknown user: "nosuch"'
    assert report.original is not None and report.original.message_id == "<17.4024.real@news.example.org>"


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable"])
def test_an_encoded_delivery_status_part_is_decoded(encoding: str) -> None:
    fields = (
        "Reporting-MTA: dns; mx.example.net\n\nFinal-Recipient: rfc822; a@example.com\nAction: failed\n"
        "Status: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 Benutzer unbekannt: Müller\n"
    ).encode()
    body = base64.encodebytes(fields) if encoding == "base64" else quopri.encodestring(fields)
    assert b"M\xc3\xbcller" not in body
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        b"--b\nContent-Type: message/delivery-status\nContent-Transfer-Encoding: " + encoding.encode() + b"\n\n"
        + body + b"\n--b--\n"
    )  # fmt: skip
    report = read_report(raw)
    assert report.kind is ReportKind.DSN and report.standard, report.reason
    [recipient] = report.recipients
    assert (recipient.address, recipient.status) == ("a@example.com", "5.1.1")
    assert recipient.diagnostic == "550 5.1.1 Benutzer unbekannt: Müller"


# --- what a report carries is safe to store ----------------------------------------------------

# C0 control characters but tab, and DEL; a NUL makes PostgreSQL refuse the whole write.
CONTROLS = "\x00\x01\x08\x0e\x1b\x7f"


def _strings(value: object) -> list[str]:
    """Every string a report carries, however deep in it."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (tuple, list)):
        return [s for item in value for s in _strings(item)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [s for f in dataclasses.fields(value) for s in _strings(getattr(value, f.name))]
    return []


def _assert_clean(report: Report) -> None:
    strings = _strings(report)
    assert strings
    for text in strings:
        assert not any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in text), repr(text)
        assert not any("\ud800" <= c <= "\udfff" for c in text), repr(text)  # no lone surrogate


def _returned(c: str) -> str:
    return (
        "--b\nContent-Type: message/rfc822\n\n"
        f"Message-ID: <orig{c}@news.example.org>\nList-Id: Members{c} <members.news.example.org>\n"
        f"From: news{c}@news.example.org\nTo: gone{c}@example.com\nSubject: News\n\nHello.\n\n"
    )


def test_control_characters_never_leave_a_report() -> None:
    c = CONTROLS
    block = (
        f"Final-Recipient: rfc822; go{c}ne@example.com\nOriginal-Recipient: rfc822;{c}gone@example.com\n"
        f"Action: fail{c}ed\nStatus: 5.1.1{c}\nDiagnostic-Code: smtp; 550 5.1.1 no{c} such user\n"
    )
    raw = (
        _dsn(block, extra_headers=f"Delivered-To: bounces{c}@news.example.org\n")
        .replace(b"<built@", f"<bu{c}ilt@".encode())
        .replace(b"dns; mx.example.net", f"dns; mx{c}.example.net\nOriginal-Envelope-Id: 17{c}-1".encode())
        .replace(b"--b--", (_returned(c) + "--b--").encode())
    )
    report = read_report(raw)
    assert report.kind is ReportKind.DSN
    _assert_clean(report)
    [recipient] = report.recipients
    assert (recipient.address, recipient.status, recipient.action) == ("gone@example.com", "5.1.1", "failed")
    assert recipient.diagnostic == "550 5.1.1 no such user"
    assert report.identity.message_id == "<built@mx.example.net>"
    assert report.envelope_id == "17-1" and report.reporting_mta == "mx.example.net"
    assert report.original == Original(
        "<orig@news.example.org>",
        "Members <members.news.example.org>",
        "news@news.example.org",
        ("gone@example.com",),
    )


def test_control_characters_never_leave_a_complaint_or_a_non_standard_bounce() -> None:
    c = CONTROLS
    complaint = (
        "From: fbl@example.net\nTo: fbl@news.example.org\nMIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nA complaint.\n\n"
        "--b\nContent-Type: message/feedback-report\n\n"
        f"Feedback-Type: ab{c}use\nUser-Agent: fbl{c}/1\nOriginal-Rcpt-To: an{c}noyed@example.com\n\n"
        f"{_returned(c)}--b--\n"
    ).encode()
    report = read_report(complaint)
    assert report.kind is ReportKind.COMPLAINT
    _assert_clean(report)
    assert report.feedback_type == "abuse" and report.recipients[0].address == "annoyed@example.com"
    nonstandard = (
        (CORPUS / "exim-nonstandard.eml")
        .read_bytes()
        .replace(b"User unknown", f"User{c} unknown".encode())
        .replace(b"left@example.co.uk", f"le{c}ft@example.co.uk".encode(), 1)
    )
    report = read_report(nonstandard)
    assert report.kind is ReportKind.DSN and not report.standard
    _assert_clean(report)
    no_recipients = _dsn("").replace(b"report-type=delivery-status", f"report-type=x{c}y".encode())
    report = read_report(no_recipients)
    assert report.kind is ReportKind.UNKNOWN and "xy" in report.reason
    _assert_clean(report)


def test_raw_utf8_addresses_are_read_as_utf8() -> None:
    # SMTPUTF8: a server returns the address as it is, in raw UTF-8, in the report's fields.
    block = (
        "Final-Recipient: rfc822; josé@exemplo.pt\nOriginal-Recipient: rfc822; josé@exemplo.pt\n"
        "Action: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 <josé@exemplo.pt>: usuário desconhecido\n"
    )
    raw = _dsn(block, extra_headers="Subject: Não entregue\n").replace(
        b"--b--", (_returned("") + "--b--").replace("gone@example.com", "zoë@exemplo.pt").encode()
    )
    report = read_report(raw)
    _assert_clean(report)
    [recipient] = report.recipients
    assert recipient.address == "josé@exemplo.pt" and recipient.original_address == "josé@exemplo.pt"
    assert recipient.diagnostic == "550 5.1.1 <josé@exemplo.pt>: usuário desconhecido"
    assert report.original is not None and report.original.to == ("zoë@exemplo.pt",)
    # Bytes that are no UTF-8 are replaced, never kept as surrogates.
    report = read_report(raw.replace("josé".encode(), b"jos\xe9"))
    _assert_clean(report)
    assert report.recipients[0].address == "jos\ufffd@exemplo.pt"


# --- hostile sizes cost little CPU -------------------------------------------------------------


def _cpu() -> float:
    """CPU seconds of this thread: what a test measures is not slowed by a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def _read_cheaply(raw: bytes) -> Report:
    started = _cpu()
    report = read_report(raw)
    assert _cpu() - started < 3, f"{_cpu() - started:.1f} CPU seconds"
    return report


def _exim(addresses: int) -> bytes:
    return (
        "From: Mail Delivery System <Mailer-Daemon@mx.example.net>\n"
        "Subject: Mail delivery failed: returning message to sender\n\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n\n"
        + "".join(
            f"  r{i}@example.com\n    SMTP error from remote mail server after RCPT TO:<r{i}@example.com>:\n"
            f"    550 5.1.{i % 10} no such user\n"
            for i in range(addresses)
        )
    ).encode()


def test_a_message_of_200000_parts_costs_little() -> None:
    # Parsing took seconds and flufl.bounce a minute (it walks every part): neither reads past part 200.
    raw = (
        b'From: MAILER-DAEMON@mx.example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="B"\n\n'
        + b"--B\nContent-Type: text/plain\n\nr1@example.com 550 5.1.1 no\n" * 200_000
        + b"--B--\n"
    )
    report = _read_cheaply(raw)
    assert report.kind is ReportKind.UNKNOWN
    assert report.reason == "no report found; not searched for other formats (more than 200 MIME parts)"


def test_a_plain_text_bounce_of_12_mb_costs_little() -> None:
    report = _read_cheaply(_exim(200_000))
    assert report.kind is ReportKind.UNKNOWN
    assert report.reason.endswith(
        f"not searched for other formats (larger than {reports.MAX_READ_BYTES} bytes)"
    )


def test_a_non_standard_bounce_of_almost_a_mib_is_read_cheaply() -> None:
    raw = _exim(7_000)
    assert len(raw) < reports.MAX_READ_BYTES
    report = _read_cheaply(raw)
    assert report.kind is ReportKind.DSN and not report.standard and report.truncated
    assert len(report.recipients) == reports.MAX_RECIPIENTS
    by_address = {r.address: r for r in report.recipients}
    assert by_address["r1001@example.com"].status == "5.1.1"  # its own line, not r1000's
    assert by_address["r1001@example.com"].diagnostic == "550 5.1.1 no such user"


def test_a_dsn_of_200000_recipients_or_10000_parts_costs_little() -> None:
    blocks = "\n".join(
        f"Final-Recipient: rfc822; r{i}@example.com\nAction: failed\nStatus: 5.1.1\n" for i in range(200_000)
    )
    report = _read_cheaply(_dsn(blocks))
    assert report.kind is ReportKind.DSN and report.truncated
    assert len(report.recipients) == reports.MAX_RECIPIENTS
    # The report's parts come first: a hostile tail of parts after them does not hide them.
    block = "Final-Recipient: rfc822; gone@example.com\nAction: failed\nStatus: 5.1.1\n"
    tail = "--b\nContent-Type: text/plain\n\nx\n" * 10_000
    report = _read_cheaply(_dsn(block).replace(b"--b--", tail.encode() + b"--b--"))
    assert report.kind is ReportKind.DSN and report.recipients[0].address == "gone@example.com"


def test_a_dsn_returning_a_large_message_is_still_read() -> None:
    # A returned newsletter with its images is larger than what is parsed: the report comes first.
    block = "Final-Recipient: rfc822; gone@example.com\nAction: failed\nStatus: 5.1.1\n"
    returned = _returned("").replace("Hello.\n", "Hello.\n" + ("x" * 76 + "\n") * 50_000)
    raw = _dsn(block).replace(b"--b--", returned.encode() + b"--b--")
    assert len(raw) > 3 * reports.MAX_READ_BYTES
    report = _read_cheaply(raw)
    assert report.kind is ReportKind.DSN and report.recipients[0].outcome is Outcome.PERMANENT
    assert report.original is not None and report.original.message_id == "<orig@news.example.org>"
    assert report.original.list_id == "Members <members.news.example.org>"
