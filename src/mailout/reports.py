"""Reading the reports that come back by mail: bounces, complaints and automatic replies.

`read_report` turns one message, as bytes, into a `Report`: what kind it is, who
it says failed and how, and the headers of the original message it returns. It
is a pure function: no database, no network, and it never raises; a message it
cannot read is a `ReportKind.UNKNOWN` report with a reason.

The kinds, in the order they are tried:

- a ``multipart/report`` with ``report-type=delivery-status`` (RFC 3464) is a
  `ReportKind.DSN`, one `Recipient` per recipient block;
- a ``multipart/report`` with ``report-type=feedback-report`` (RFC 5965, the
  feedback loops' complaints) is a `ReportKind.COMPLAINT`;
- a message with clear signs of an automatic reply (``X-Autoreply``,
  ``X-Autorespond``, ``Precedence: auto_reply``, an out-of-office subject, or
  ``Auto-Submitted`` from someone other than a mail system) is a
  `ReportKind.AUTOREPLY`, never a bounce;
- otherwise flufl.bounce looks for the failed addresses of the many
  non-standard formats (Exim, qmail, Yahoo ...): what it finds is a
  `ReportKind.DSN` with ``standard=False``;
- what is left with ``Auto-Submitted`` other than ``no`` (RFC 3834) is an
  automatic reply, and the rest is `ReportKind.UNKNOWN`.

Everything kept is bounded (`MAX_RECIPIENTS`, `MAX_TEXT`), so a report listing
10,000 recipients or a header of a megabyte costs little to keep.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import quopri
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser, HeaderParser
from email.utils import getaddresses

import flufl.bounce

MAX_REPORT_BYTES = 32 * 1024 * 1024
"""A message larger than this is not parsed (an `UNKNOWN` report): no real report is near it."""

MAX_RECIPIENTS = 1000
"""Recipients kept from one report; the rest are dropped and `Report.truncated` is set."""

MAX_TEXT = 1000
"""Characters kept of any one header value or diagnostic text."""

MAX_PARTS = 200
"""MIME parts looked at when searching a report for its pieces."""


class ReportKind(enum.StrEnum):
    """What a message that came back is."""

    DSN = "dsn"
    COMPLAINT = "complaint"
    AUTOREPLY = "autoreply"
    UNKNOWN = "unknown"


class Outcome(enum.StrEnum):
    """What a report says happened to one recipient."""

    PERMANENT = "permanent"  # 5.x.x (not 5.7.x): the address is dead
    TEMPORARY = "temporary"  # 4.x.x, or Action: delayed
    POLICY = "policy"  # 5.7.x: refused because of the sender (reputation, authentication), not the address
    DELIVERED = "delivered"  # Action: delivered, relayed or expanded
    COMPLAINT = "complaint"  # the recipient reported the message as spam (or another feedback type)


@dataclass(frozen=True)
class Recipient:
    """One recipient of the original message, as the report describes it."""

    address: str
    outcome: Outcome
    original_address: str | None = None
    action: str | None = None
    status: str | None = None
    diagnostic: str | None = None


@dataclass(frozen=True)
class Original:
    """The headers of the message the report is about, as returned inside it."""

    message_id: str | None = None
    list_id: str | None = None
    from_address: str | None = None
    to: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportIdentity:
    """What makes a report the same report when it is read again: its Message-ID and its hash."""

    message_id: str | None
    sha256: str


@dataclass(frozen=True)
class Report:
    """One message that came back, read."""

    kind: ReportKind
    identity: ReportIdentity
    envelope_to: tuple[str, ...] = ()
    recipients: tuple[Recipient, ...] = ()
    original: Original | None = None
    standard: bool = True
    feedback_type: str | None = None
    reporting_mta: str | None = None
    envelope_id: str | None = None
    truncated: bool = False
    reason: str = ""


def identity_of(raw: bytes) -> ReportIdentity:
    """Return what makes ``raw`` the same report when read again, reading its header only.

    The same identity `read_report` gives, at a fraction of its cost: a run checks it
    before reading the whole report, and skips what was handled before.
    """
    digest = hashlib.sha256(raw).hexdigest()
    if len(raw) > MAX_REPORT_BYTES:
        return ReportIdentity(None, digest)
    end = min((i for i in (raw.find(b"\n\n"), raw.find(b"\r\n\r\n")) if i >= 0), default=len(raw))
    try:
        header = BytesHeaderParser(policy=policy.compat32).parsebytes(raw[: end + 4])
        return ReportIdentity(_message_id(header), digest)
    except Exception:  # hostile input: the digest alone
        return ReportIdentity(None, digest)


def read_report(raw: bytes, identity: ReportIdentity | None = None) -> Report:
    """Read one message that came back; never raise. ``identity``: `identity_of` ``raw``, if known."""
    identity = identity or identity_of(raw)
    if len(raw) > MAX_REPORT_BYTES:
        return Report(ReportKind.UNKNOWN, identity, reason=f"larger than {MAX_REPORT_BYTES} bytes")
    try:
        msg = BytesParser(policy=policy.compat32).parsebytes(raw)
        return _read(msg, identity)
    except Exception as error:  # hostile input must not stop a run: say why and go on
        return Report(ReportKind.UNKNOWN, identity, reason=f"unreadable: {type(error).__name__}")


def _read(msg: Message, identity: ReportIdentity) -> Report:
    envelope_to = _envelope_to(msg)
    report = _find_report(msg)
    if report is not None:
        report_type = _report_type(report)
        if report_type == "delivery-status":
            dsn = _read_dsn(report, identity, envelope_to)
            if dsn is not None:
                return dsn
        elif report_type == "feedback-report":
            return _read_complaint(report, identity, envelope_to)
    if _looks_like_autoreply(msg):
        return Report(ReportKind.AUTOREPLY, identity, envelope_to, reason="automatic reply")
    bounce = _read_nonstandard(msg, identity, envelope_to)
    if bounce is not None:
        return bounce
    auto_submitted = _auto_submitted(msg)
    if auto_submitted and auto_submitted != "no":
        return Report(ReportKind.AUTOREPLY, identity, envelope_to, reason=f"Auto-Submitted: {auto_submitted}")
    if report is not None:
        reason = f"a report of type {_report_type(report) or '?'} without recipients"
    else:
        reason = "no report and no failed address found"
    return Report(ReportKind.UNKNOWN, identity, envelope_to, reason=reason)


# --- headers -------------------------------------------------------------------------------


def _clip(text: str) -> str:
    return text[:MAX_TEXT]


def _text(value: object) -> str:
    """A header value as text: encoded words decoded, unknown bytes replaced, whitespace unfolded."""
    if isinstance(value, str):
        value = value[: MAX_TEXT * 4]  # a megabyte-long header costs no more than a short one
    try:
        text = str(make_header(decode_header(value)))  # type: ignore[arg-type]
    except Exception:  # a broken encoded word or charset: keep what the value says, readable
        text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _clip(" ".join(text[: MAX_TEXT * 4].split()))


def _header(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    return None if value is None else _text(value)


def _message_id(msg: Message) -> str | None:
    value = _header(msg, "Message-ID")
    return value.strip() or None if value is not None else None


def _addresses(values: list[str]) -> Iterator[str]:
    try:
        pairs = getaddresses(values)
    except Exception:
        return
    for _name, address in pairs:
        if "@" in address:
            yield _clip(address.strip())


def _envelope_to(msg: Message) -> tuple[str, ...]:
    """The addresses the report was delivered to: where a VERP return address shows."""
    found: list[str] = []
    for name in ("Delivered-To", "X-Original-To", "To"):
        values = [_text(v) for v in (msg.get_all(name) or [])[:20]]
        for address in _addresses(values):
            if address not in found:
                found.append(address)
    return tuple(found[:20])


def _original(headers: Message | None) -> Original | None:
    if headers is None or not headers.keys():
        return None
    list_id = _header(headers, "List-Id")
    from_ = list(_addresses([_text(v) for v in (headers.get_all("From") or [])[:5]]))
    to = tuple(_addresses([_text(v) for v in (headers.get_all("To") or [])[:5]]))[:MAX_RECIPIENTS]
    return Original(
        message_id=_message_id(headers),
        list_id=list_id or None,
        from_address=from_[0] if from_ else None,
        to=to,
    )


# --- finding the pieces of a report --------------------------------------------------------


def _parts(msg: Message, depth: int = 0) -> Iterator[Message]:
    """The parts of a message, not descending into attached messages (a returned original)."""
    yield msg
    if depth > 8 or not msg.is_multipart() or msg.get_content_maintype() == "message":
        return
    payload = msg.get_payload()
    if isinstance(payload, list):
        for part in payload[:MAX_PARTS]:
            if isinstance(part, Message):
                yield from _parts(part, depth + 1)


def _find_report(msg: Message) -> Message | None:
    for count, part in enumerate(_parts(msg)):
        if count > MAX_PARTS:
            break
        if part.get_content_type() == "multipart/report":
            return part
    return None


def _report_type(report: Message) -> str:
    value = report.get_param("report-type")
    return _clip(str(value or "").lower()) if not isinstance(value, tuple) else ""


def _children(report: Message) -> list[Message]:
    payload = report.get_payload()
    return [p for p in payload[:MAX_PARTS] if isinstance(p, Message)] if isinstance(payload, list) else []


def _field_blocks(part: Message) -> list[Message]:
    """The blocks of fields of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    encoding = str(part.get("Content-Transfer-Encoding") or "").strip().lower()
    if isinstance(payload, list):
        blocks = [b for b in payload if isinstance(b, Message)]
        if encoding not in ("base64", "quoted-printable"):
            return blocks  # the email package parsed the blocks already
        # It parsed the encoded text as if it were fields: put it back together and decode it.
        encoded = "\n\n".join(b.as_string() for b in blocks[:MAX_PARTS]).encode("ascii", "replace")
        body: object = base64.b64decode(encoded) if encoding == "base64" else quopri.decodestring(encoded)
    else:
        body = part.get_payload(decode=True)
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(payload)
    texts = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [HeaderParser(policy=policy.compat32).parsestr(block) for block in texts if block.strip()]


def _returned_headers(parts: Iterator[Message] | list[Message]) -> Message | None:
    """The headers of the original message a report returns (message/rfc822 or text/rfc822-headers)."""
    for count, part in enumerate(parts):
        if count > MAX_PARTS:
            break
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0]
        elif kind in ("text/rfc822-headers", "message/rfc822-headers"):
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                return HeaderParser(policy=policy.compat32).parsestr(body.decode("utf-8", "replace"))
    return None


# --- delivery status notifications (RFC 3464) ----------------------------------------------

# An enhanced status code (RFC 3463), not a piece of an IP address or a version number.
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")


def _typed(value: str | None) -> str | None:
    """The value of a typed field (``rfc822; a@b``, ``smtp; 550 ...``) without its type."""
    if not value:
        return None
    _type, sep, rest = value.partition(";")
    text = (rest if sep else value).strip()
    if "@" in text and " " not in text:  # an address, maybe in angle brackets
        text = text.strip("<>").strip()
    return text or None


def outcome_of(action: str | None, status: str | None) -> Outcome:
    """Classify one recipient by its DSN Action and Status: 5.7.x is the sender's problem, not the address's."""
    action = (action or "").lower()
    if action in ("delivered", "relayed", "expanded"):
        return Outcome.DELIVERED
    if action == "delayed":
        return Outcome.TEMPORARY
    match = _STATUS.search(status or "")
    if match is None:
        return Outcome.PERMANENT  # failed (or no Action) with no usable status: the address failed
    if match.group(1) == "4":
        return Outcome.TEMPORARY
    if match.group(1) == "2":
        return Outcome.DELIVERED
    return Outcome.POLICY if match.group(2) == "7" else Outcome.PERMANENT


def _read_dsn(report: Message, identity: ReportIdentity, envelope_to: tuple[str, ...]) -> Report | None:
    status_part = next(
        (p for p in _children(report) if p.get_content_type() == "message/delivery-status"), None
    )
    if status_part is None:
        return None
    blocks = _field_blocks(status_part)
    if not blocks:
        return None
    per_message = blocks[0]
    recipients: list[Recipient] = []
    seen = 0
    for block in blocks[1:] if len(blocks) > 1 else blocks:
        address = _typed(_header(block, "Final-Recipient")) or _typed(_header(block, "Original-Recipient"))
        if not address:
            continue
        seen += 1
        if len(recipients) >= MAX_RECIPIENTS:
            continue
        action = _header(block, "Action")
        status_field = _header(block, "Status")
        match = _STATUS.search(status_field or "")
        status = match.group(0) if match else None
        recipients.append(
            Recipient(
                address=address,
                outcome=outcome_of(action, status),
                original_address=_typed(_header(block, "Original-Recipient")),
                action=action.lower() if action else None,
                status=status,
                diagnostic=_typed(_header(block, "Diagnostic-Code")),
            )
        )
    if not recipients:
        return None
    return Report(
        ReportKind.DSN,
        identity,
        envelope_to,
        recipients=tuple(recipients),
        original=_original(_returned_headers(_children(report))),
        reporting_mta=_typed(_header(per_message, "Reporting-MTA")),
        envelope_id=_header(per_message, "Original-Envelope-Id"),
        truncated=seen > len(recipients),
        reason="delivery status notification",
    )


# --- complaints (RFC 5965) -----------------------------------------------------------------


def _read_complaint(report: Message, identity: ReportIdentity, envelope_to: tuple[str, ...]) -> Report:
    feedback = next((p for p in _children(report) if p.get_content_type() == "message/feedback-report"), None)
    fields = _field_blocks(feedback)[:1] if feedback is not None else []
    block = fields[0] if fields else Message()
    original = _original(_returned_headers(_children(report)))
    rcpt_to = [_text(v) for v in (block.get_all("Original-Rcpt-To") or [])[:MAX_RECIPIENTS]]
    addresses = list(_addresses(rcpt_to)) or list(original.to if original else ())
    feedback_type = (_header(block, "Feedback-Type") or "").lower() or None
    return Report(
        ReportKind.COMPLAINT,
        identity,
        envelope_to,
        recipients=tuple(
            Recipient(a, Outcome.COMPLAINT, action=feedback_type) for a in addresses[:MAX_RECIPIENTS]
        ),
        original=original,
        feedback_type=feedback_type,
        reporting_mta=_header(block, "Reporting-MTA") or _header(block, "User-Agent"),
        truncated=len(addresses) > MAX_RECIPIENTS,
        reason="feedback report",
    )


# --- automatic replies (RFC 3834 and the common non-standard signs) -------------------------

_OUT_OF_OFFICE = re.compile(
    r"^\s*(?:(?:re|aw|fw|tr)\s*:\s*)*(?:"
    r"out\s+of\s+(?:the\s+)?office|automatic\s+reply|auto(?:matic)?[\s-]*(?:reply|response)|autoreply"
    r"|abwesenheitsnotiz|automatische\s+antwort|abwesend"
    r"|r[ée]ponse\s+automatique|absent(?:e)?\s+du\s+bureau|absence\s+du\s+bureau"
    r"|respuesta\s+autom[áa]tica|fuera\s+de\s+la\s+oficina"
    r"|risposta\s+automatica|fuori\s+ufficio"
    r"|automatisch\s+antwoord|afwezig"
    r"|resposta\s+autom[áa]tica|aus[êe]ncia"
    r")",
    re.IGNORECASE,
)

_MAIL_SYSTEMS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon")


def _from_mail_system(msg: Message) -> bool:
    senders = list(_addresses([_text(v) for v in (msg.get_all("From") or [])[:5]]))
    return any(s.split("@")[0].lower() in _MAIL_SYSTEMS for s in senders) or bool(
        msg.get("X-Failed-Recipients")
    )


def _auto_submitted(msg: Message) -> str:
    """The keyword of Auto-Submitted (``auto-replied (vacation)`` is ``auto-replied``), or ""."""
    match = re.match(r"\s*([A-Za-z-]+)", _header(msg, "Auto-Submitted") or "")
    return match.group(1).lower() if match else ""


def _looks_like_autoreply(msg: Message) -> bool:
    """Signs that only automatic replies carry: checked before the bounce heuristics, so never a bounce."""
    if msg.get("X-Autoreply") is not None or msg.get("X-Autorespond") is not None:
        return True
    if (_header(msg, "Precedence") or "").lower() == "auto_reply":
        return True
    if _OUT_OF_OFFICE.match(_header(msg, "Subject") or ""):
        return True
    auto_submitted = _auto_submitted(msg)
    # Mail systems mark their bounces auto-replied too (RFC 3464): that alone says nothing there.
    return auto_submitted == "auto-replied" and not _from_mail_system(msg)


# --- non-standard bounces (flufl.bounce) ---------------------------------------------------

_SMTP_CODE = re.compile(r"(?<![\d.])\b[245]\d\d\b(?![\d.])")
_COPY_MARKERS = re.compile(
    r"^(?:-+\s*(?:Below this line is a copy of the message|This is a copy of the message|"
    r"Original message follows|Original message)[^\n]*|\s*-+\s*Original message\s*-+\s*)$",
    re.IGNORECASE | re.MULTILINE,
)


def _body_text(msg: Message) -> str:
    chunks: list[str] = []
    size = 0
    for count, part in enumerate(_parts(msg)):
        if count > MAX_PARTS or size > 256 * 1024:
            break
        if part.get_content_maintype() == "text" and not part.is_multipart():
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    text = body.decode(charset, "replace")
                except LookupError:
                    text = body.decode("utf-8", "replace")
                chunks.append(text[: 256 * 1024])
                size += len(chunks[-1])
    return "\n".join(chunks)


def _diagnostic_after(text: str, lowered: str, address: str) -> tuple[str | None, str | None]:
    """The first line with a status code after the address's first mention: (its enhanced status, the line).

    ``text`` ends where the returned copy of the message starts; ``lowered`` is it in lower case.
    """
    # The address itself, not the end of a longer one (bob@ in jimbob@).
    mention = re.search(r"(?<![\w.+-])" + re.escape(address.lower()), lowered)
    if mention is None:
        return None, None
    start = mention.start()
    for line in text[start : start + 4000].splitlines()[:30]:
        status = _STATUS.search(line)
        if status or _SMTP_CODE.search(line.replace(address, "")):
            return (status.group(0) if status else None), _clip(" ".join(line.split()))
    return None, None


def _read_nonstandard(msg: Message, identity: ReportIdentity, envelope_to: tuple[str, ...]) -> Report | None:
    temporary, permanent = flufl.bounce.all_failures(msg)
    if not temporary and not permanent:
        return None
    text = _body_text(msg)
    marker = _COPY_MARKERS.search(text)
    notice = text[: marker.start()] if marker else text  # the server's words, not the returned copy
    lowered = notice.lower()
    recipients: list[Recipient] = []
    found = [(a, Outcome.PERMANENT) for a in sorted(permanent)]
    found += [(a, Outcome.TEMPORARY) for a in sorted(temporary - permanent)]
    for raw_address, outcome in found[:MAX_RECIPIENTS]:
        address = _clip(raw_address.decode("ascii", "replace"))
        status, diagnostic = _diagnostic_after(notice, lowered, address)
        # flufl.bounce tells permanent from temporary; a 5.7.x in the answer says it is about the sender.
        if outcome is Outcome.PERMANENT and status and status.startswith("5.7."):
            outcome = Outcome.POLICY
        action = "failed" if outcome is not Outcome.TEMPORARY else "delayed"
        recipients.append(Recipient(address, outcome, action=action, status=status, diagnostic=diagnostic))
    return Report(
        ReportKind.DSN,
        identity,
        envelope_to,
        recipients=tuple(recipients),
        original=_original(_returned_headers_nonstandard(msg, text, marker)),
        standard=False,
        truncated=len(found) > MAX_RECIPIENTS,
        reason="non-standard bounce (flufl.bounce)",
    )


def _returned_headers_nonstandard(msg: Message, text: str, marker: re.Match[str] | None) -> Message | None:
    """The original's headers: an attached part, else the text after "a copy of the message follows"."""
    attached = _returned_headers(_parts(msg))
    if attached is not None:
        return attached
    if marker is None:
        return None
    rest = text[marker.end() :].lstrip("\r\n")
    return HeaderParser(policy=policy.compat32).parsestr(rest[: 64 * 1024])
