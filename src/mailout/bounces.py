"""Bounce and complaint reports handled: matched to a delivery, acted on, and each kept once, ever.

`process` takes one message from the bounce mailbox (its bytes), reads it
(`reports.read_report`), and, unless it was handled before, `handle` s it in one
transaction: the report's row in ``handled_reports`` (unique by its Message-ID
and by the SHA-256 of its bytes), what it did to each subscriber, and a row per
recipient in ``report_recipients``. So a report read again, or read by two
processes at once, acts once: the second writer hits the unique key and its
transaction is rolled back ("handled by another process").

Matching, in order (docs/bounces.md):

1. VERP: an envelope recipient of the report that `envelope.parse_verp`
   accepts and whose delivery exists names the delivery. An address that has
   the form of a return address but does not verify makes the report forged
   (or mistyped on the way): nothing at all is done, no other way is tried;
2. the returned message's Message-ID, when it is one of ours; else its
   List-Id, with each failed recipient's address, on that list;
3. with VERP off only (a fixed return path, to which anyone can send a fake
   report): the failed recipient's address and the dispatches of the last
   ``bounces.match_days`` days that mailed it.

`run` goes through a mailbox (`mailsource.MailSource`) and marks done the
reports it settled; what needs a person (automatic replies, unknown mail,
reports that match nothing) is recorded but left unread.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import NamedTuple, cast

from sqlalchemy import Connection, Table, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from . import subscribers
from .config import Settings
from .db import Engine, reader, transaction
from .envelope import looks_like_verp, parse_verp, uses_verp
from .mailsource import Item, MailSource
from .models import (
    ConsentEvent,
    Delivery,
    Dispatch,
    EventKind,
    HandledReport,
    MailingList,
    MatchedBy,
    ReportAction,
    ReportRecipient,
    Subscriber,
    SubscriberStatus,
    Subscription,
    utcnow,
)
from .reports import Outcome, Recipient, Report, ReportIdentity, ReportKind, identity_of, read_report
from .tokens import Signer

#: Characters kept of a diagnostic text and of a report's summary.
MAX_DIAGNOSTIC = 500
#: A report's own Message-ID longer than this (in UTF-8) is kept as its digest.
MAX_MESSAGE_ID = 250


class Verdict(StrEnum):
    """What became of one message of the mailbox."""

    HANDLED = "handled"  # read, acted on and recorded now
    BEFORE = "handled before"  # recorded by an earlier run: nothing done
    RACE = "handled by another process"  # recorded by another process meanwhile: rolled back


@dataclass(frozen=True)
class Line:
    """One recipient of a report: who it was matched to, and what was done."""

    address: str
    outcome: str | None
    status: str | None
    diagnostic: str
    matched_by: MatchedBy
    action: ReportAction
    note: str = ""
    subscriber_id: int | None = None
    dispatch_id: int | None = None
    delivery_id: int | None = None
    list_id: int | None = None


@dataclass(frozen=True)
class Result:
    """One report handled (or found handled before), and what it did."""

    verdict: Verdict
    kind: str
    matched_by: MatchedBy
    #: Handled in full: marked done in the mailbox. False: left there for a person to read.
    settled: bool
    summary: str
    lines: tuple[Line, ...] = ()
    message_id: str | None = None
    sha256: str = ""

    @property
    def action(self) -> ReportAction:
        """The first thing done for a recipient, or ``none``."""
        return next(
            (line.action for line in self.lines if line.action is not ReportAction.NONE), ReportAction.NONE
        )


@dataclass(frozen=True)
class _Match:
    """Who a recipient of a report is, as far as the database knows."""

    by: MatchedBy
    subscriber_id: int | None = None
    dispatch_id: int | None = None
    delivery_id: int | None = None
    list_id: int | None = None
    address: str = ""
    #: Why a recipient matched nothing, when there is more to say than that.
    note: str = ""
    #: The delivery's envelope sender (MAIL FROM), as it was kept; "" when not kept.
    envelope: str = ""


_NONE = _Match(MatchedBy.NONE)


def stored_message_id(message_id: str | None) -> str | None:
    """Return the form a report's Message-ID is kept in: as it is, or a digest when too long."""
    if message_id is None:
        return None
    if len(message_id.encode("utf-8", "surrogatepass")) <= MAX_MESSAGE_ID:
        return message_id
    return "sha256:" + hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()


class Seen(NamedTuple):
    """What an earlier run recorded of a report."""

    kind: str
    matched_by: MatchedBy
    settled: bool
    summary: str


_reports = cast(Table, HandledReport.__table__)
_SEEN_COLUMNS = (_reports.c.kind, _reports.c.matched_by, _reports.c.settled, _reports.c.summary)
# Built once: every message of the mailbox is looked up, ten thousand in a run.
_SEEN_BY_DIGEST = select(*_SEEN_COLUMNS).where(_reports.c.sha256 == bindparam("b_sha")).limit(1)
_SEEN = (
    select(*_SEEN_COLUMNS)
    .where(or_(_reports.c.sha256 == bindparam("b_sha"), _reports.c.message_id == bindparam("b_id")))
    .limit(1)
)


def handled_before(session: Session, report: Report | ReportIdentity) -> Seen | None:
    """Return the record of a report when an earlier run handled it (same Message-ID or same bytes)."""
    identity = report.identity if isinstance(report, Report) else report
    message_id = stored_message_id(identity.message_id)
    conn = session.connection()
    if message_id is None:
        row = conn.execute(_SEEN_BY_DIGEST, {"b_sha": identity.sha256}).first()
    else:
        row = conn.execute(_SEEN, {"b_sha": identity.sha256, "b_id": message_id}).first()
    return None if row is None else Seen(row[0], MatchedBy(row[1]), bool(row[2]), row[3])


# --- matching ------------------------------------------------------------------------------


_DELIVERY = (
    select(Delivery.subscriber_id, Delivery.email, Dispatch.list_id, Delivery.envelope_sender)
    .join(Dispatch, Dispatch.id == Delivery.dispatch_id)
    .where(Delivery.id == bindparam("b_delivery"), Delivery.dispatch_id == bindparam("b_dispatch"))
)


def _delivery_match(session: Session, by: MatchedBy, dispatch_id: int, delivery_id: int) -> _Match | None:
    row = (
        session.connection()
        .execute(_DELIVERY, {"b_delivery": delivery_id, "b_dispatch": dispatch_id})
        .first()
    )
    if row is None:
        return None
    return _Match(
        by,
        row.subscriber_id,
        dispatch_id,
        delivery_id,
        row.list_id,
        row.email,
        envelope=row.envelope_sender or "",
    )


def _by_verp(
    session: Session, settings: Settings, signer: Signer, report: Report
) -> tuple[_Match | None, str]:
    """Return the delivery a signed return address names, or why the report is forged ("" if not)."""
    forged = ""
    for address in report.envelope_to:
        if not looks_like_verp(settings, address):
            continue
        named = parse_verp(settings, signer, address)
        if named is None:
            forged = forged or address
            continue
        found = _delivery_match(session, MatchedBy.VERP, *named)
        if found is not None:
            return found, ""
    return None, forged


def _by_message_id(session: Session, message_id: str | None) -> _Match | None:
    """Match ``<KEY.DELIVERY@domain>``, the Message-ID of each of our messages (`message.message_id`)."""
    if not message_id:
        return None
    local = message_id.strip().strip("<>").rpartition("@")[0]
    key, dot, delivery = local.rpartition(".")
    if not dot or not key or not delivery.isdigit() or len(delivery) > 18:
        return None
    dispatch_id = session.scalars(select(Dispatch.id).where(Dispatch.key == key)).first()
    if dispatch_id is None:
        return None
    return _delivery_match(session, MatchedBy.MESSAGE_ID, dispatch_id, int(delivery))


def _list_named(session: Session, settings: Settings, list_id_header: str | None) -> int | None:
    """Return the list a List-Id header names (``Description <NAME.DOMAIN>``), if it is one of ours.

    DOMAIN must be the domain of ``sender.address`` or of a dispatch's From: another
    sender's list of the same name is not ours.
    """
    if not list_id_header:
        return None
    value = list_id_header.rpartition("<")[2].partition(">")[0] if "<" in list_id_header else list_id_header
    value = value.strip().lower()
    senders = {settings.sender.address, *session.scalars(select(Dispatch.from_address).distinct())}
    domains = {address.rpartition("@")[2].lower() for address in senders}
    for list_id, name in session.execute(select(MailingList.id, MailingList.name)):
        prefix = f"{name.lower()}."
        if value.startswith(prefix) and value[len(prefix) :] in domains:
            return int(list_id)
    return None


def _subscriber_id(session: Session, address: str) -> int | None:
    try:
        key = subscribers.normalise_email(address).lower()
    except subscribers.InvalidSubscriber:
        key = address.strip().lower()
    return session.scalars(select(Subscriber.id).where(Subscriber.email_key == key)).first()


def _latest_delivery(
    session: Session, subscriber_id: int, *, list_id: int | None = None, since: dt.datetime | None = None
) -> tuple[int, int, int] | None:
    """Return (dispatch, delivery, list) of the newest dispatch that mailed the person."""
    query = (
        select(Dispatch.id, Delivery.id, Dispatch.list_id)
        .join(Delivery, Delivery.dispatch_id == Dispatch.id)
        .where(Delivery.subscriber_id == subscriber_id)
        .order_by(Dispatch.created_at.desc(), Dispatch.id.desc())
        .limit(1)
    )
    if list_id is not None:
        query = query.where(Dispatch.list_id == list_id)
    if since is not None:
        query = query.where(Dispatch.created_at >= since)
    row = session.execute(query).first()
    return (row[0], row[1], row[2]) if row else None


def _by_list(session: Session, list_id: int, address: str) -> _Match | None:
    subscriber_id = _subscriber_id(session, address)
    if subscriber_id is None:
        return None
    on_list = session.scalars(
        select(Subscription.id).where(
            Subscription.subscriber_id == subscriber_id, Subscription.list_id == list_id
        )
    ).first()
    if on_list is None:
        return None
    latest = _latest_delivery(session, subscriber_id, list_id=list_id)
    dispatch_id, delivery_id = (latest[0], latest[1]) if latest else (None, None)
    return _Match(MatchedBy.LIST_ID, subscriber_id, dispatch_id, delivery_id, list_id, address)


def _by_recipient(session: Session, address: str, since: dt.datetime) -> _Match | None:
    subscriber_id = _subscriber_id(session, address)
    if subscriber_id is None:
        return None
    latest = _latest_delivery(session, subscriber_id, since=since)
    if latest is None:
        return None
    return _Match(MatchedBy.RECIPIENT, subscriber_id, *latest, address)


def _key(address: str) -> str:
    """An address as ``subscribers.email_key`` keeps it, to compare two spellings of one address."""
    try:
        return subscribers.normalise_email(address).lower()
    except subscribers.InvalidSubscriber:
        return address.strip().lower()


def _for(recipient: Recipient, whole: _Match) -> _Match:
    """``whole`` (the delivery a report is about) for ``recipient`` only if it names that delivery's address.

    A report matched by its return address or its Message-ID may still name another
    address: a forward of the message, or a report written by someone else. That
    recipient is listed, and the report left for a person, never acted on.
    """
    wanted = _key(whole.address)
    if any(_key(a) == wanted for a in (recipient.address, recipient.original_address) if a):
        return whole
    return _Match(MatchedBy.NONE, address=recipient.address, note="not the address the message went to")


def _matches(
    session: Session, settings: Settings, signer: Signer, report: Report, now: dt.datetime
) -> tuple[list[tuple[Recipient | None, _Match]], str]:
    """Return each recipient with its match, and why the report is forged ("" if it is not).

    With VERP on, a bounce about a message sent with a signed return address is
    believed only at that address: a stranger can write a report with a guessed
    Message-ID or a List-Id to the plain return path. The returned Message-ID still
    serves complaints (a feedback loop does not write to the return address) and
    messages sent before VERP, each with the address the message went to. List-Id
    and the recipient alone serve a fixed return path only.
    """
    verp, forged = _by_verp(session, settings, signer, report)
    if forged:
        return [(r, _NONE) for r in report.recipients], forged
    original = report.original
    verp_on = uses_verp(settings)
    whole = verp or _by_message_id(session, original.message_id if original else None)
    if (
        whole is not None
        and whole.by is MatchedBy.MESSAGE_ID
        and verp_on
        and report.kind is not ReportKind.COMPLAINT
        and looks_like_verp(settings, whole.envelope)
    ):
        # Its bounces go to its own signed return address: one that came here is not believed.
        return [(r, _NONE) for r in report.recipients], ""
    if whole is not None:
        if not report.recipients:
            return [(None, whole)], ""
        return [(r, _for(r, whole)) for r in report.recipients], ""
    if verp_on:
        return [(r, _NONE) for r in report.recipients], ""
    found: list[tuple[Recipient | None, _Match]] = []
    list_id = _list_named(session, settings, original.list_id if original else None)
    since = now - dt.timedelta(days=settings.bounces.match_days)
    for recipient in report.recipients:
        match = None
        for address in dict.fromkeys(a for a in (recipient.address, recipient.original_address) if a):
            if list_id is not None:
                match = _by_list(session, list_id, address)
            if match is None:
                match = _by_recipient(session, address, since)
            if match is not None:
                break
        found.append((recipient, match or _NONE))
    return found, ""


# --- acting ----------------------------------------------------------------------------------


def _reference(report: Report) -> str:
    return f"report {report.identity.message_id or 'sha256:' + report.identity.sha256[:16]}"


# The person's status, and whether the team subscribed them again after the delivery went out
# (no delivery: never), in one statement: it runs for every report.
_STANDING = select(
    Subscriber.status,
    select(ConsentEvent.id)
    .where(
        ConsentEvent.subscriber_id == Subscriber.id,
        ConsentEvent.kind == EventKind.RESUBSCRIBED,
        ConsentEvent.created_at
        > select(Delivery.updated_at).where(Delivery.id == bindparam("b_delivery")).scalar_subquery(),
    )
    .exists(),
).where(Subscriber.id == bindparam("b_subscriber"))


def _failed_at(report: Report, now: dt.datetime, match_days: int) -> dt.datetime:
    """When a temporary failure happened, for the soft score's days: the report's ``Date``.

    So that a mailbox read once a week still counts three days of failures as three
    days. Never later than ``now`` (a clock ahead, or a forged date), never earlier than
    ``match_days`` ago; without a readable ``Date``, ``now``.
    """
    if report.date is None:
        return now
    return min(now, max(report.date, now - dt.timedelta(days=match_days)))


def _act(
    session: Session,
    settings: Settings,
    report: Report,
    recipient: Recipient | None,
    match: _Match,
    now: dt.datetime,
) -> tuple[ReportAction, str]:
    """Do what one recipient's outcome calls for; return the action and a note."""
    if match.subscriber_id is None:
        return ReportAction.NONE, match.note or "matches no delivery or subscriber"
    if recipient is None or report.kind not in (ReportKind.DSN, ReportKind.COMPLAINT):
        return ReportAction.NONE, report.reason or f"{report.kind}: not a bounce or a complaint"
    outcome = recipient.outcome
    if outcome is Outcome.DELIVERED:
        return ReportAction.NONE, f"delivered ({recipient.action or 'delivered'})"
    if outcome is Outcome.POLICY:
        return ReportAction.NONE, "policy (5.7.x): refused for the sender's reasons, not the address's"
    standing, resubscribed = (
        session.connection()
        .execute(_STANDING, {"b_subscriber": match.subscriber_id, "b_delivery": match.delivery_id})
        .one()
    )
    status = SubscriberStatus(standing)
    if status is not SubscriberStatus.SUBSCRIBED:
        return ReportAction.NONE, f"already {status}"
    if resubscribed:
        # Subscribed again by the team after this message went out: their word is newer.
        return ReportAction.NONE, "about a message sent before they were subscribed again"
    what = " ".join(v for v in (recipient.status, recipient.diagnostic) if v)
    detail = f"{_reference(report)}: {what}" if what else _reference(report)
    if outcome is Outcome.PERMANENT:
        if subscribers.bounce(session, match.subscriber_id, detail):
            return ReportAction.BOUNCED, ""
        return ReportAction.NONE, "already bounced"
    if outcome is Outcome.TEMPORARY:
        rules = settings.bounces
        soft = subscribers.soft_bounce(
            session,
            match.subscriber_id,
            _failed_at(report, now, rules.match_days),
            threshold=rules.soft_threshold,
            reset_days=rules.soft_reset_days,
            detail=detail,
        )
        if soft.suppressed:
            return ReportAction.SUPPRESSED, f"soft bounces on {soft.score} days"
        counted = "" if soft.rose else ", counted today already"
        return ReportAction.SOFT, f"score {soft.score} of {rules.soft_threshold}{counted}"
    # A complaint: the dispatch's list, or every list when asked or when the list is not known.
    scope = match.list_id if settings.bounces.complaint == "list" else None
    feedback = f"{_reference(report)}: {report.feedback_type or 'abuse'} report"
    if subscribers.complain(session, match.subscriber_id, scope, feedback):
        return (ReportAction.UNSUBSCRIBED if scope is not None else ReportAction.COMPLAINED), ""
    return ReportAction.NONE, "already unsubscribed"


_RECORD_REPORT = insert(_reports)
_RECORD_RECIPIENT = insert(cast(Table, ReportRecipient.__table__))
_SETTLE_REPORT = update(_reports).where(_reports.c.id == bindparam("b_report"))


def handle(
    session: Session, settings: Settings, signer: Signer, report: Report, *, now: dt.datetime | None = None
) -> Result:
    """Match and act on one report in ``session`` and record it; the caller commits.

    The report's row is written first: when another process has recorded the same
    report meanwhile, this raises ``IntegrityError`` before anything is changed
    (`apply` turns that into `Verdict.RACE`). ``now`` is the clock of the soft-bounce
    rules and of the record (by default, the time now).
    """
    now = now or utcnow()
    matched, forged = _matches(session, settings, signer, report, now)
    conn = session.connection()
    # Written first: its unique keys are checked before anything is changed.
    key = conn.execute(
        _RECORD_REPORT,
        {
            "message_id": stored_message_id(report.identity.message_id),
            "sha256": report.identity.sha256,
            "kind": report.kind.value,
            "matched_by": MatchedBy.NONE,
            "settled": False,
            "summary": "",
            "processed_at": now,
        },
    ).inserted_primary_key
    assert key is not None
    report_id = key[0]
    from .privacy import is_erased, scrubber  # privacy.erase calls this module

    lines: list[Line] = []
    for recipient, match in matched:
        if forged:
            action, note = ReportAction.NONE, f"forged or mistyped return address {forged}"
        else:
            action, note = _act(session, settings, report, recipient, match, now)
        address = (recipient.address if recipient else match.address)[:320]
        diagnostic = ((recipient.diagnostic or "") if recipient else "")[:MAX_DIAGNOSTIC]
        if (
            _is_erased(conn, match.subscriber_id)
            if match.subscriber_id is not None
            else bool(address) and is_erased(conn, signer, address)
        ):
            # A late report about someone erased (matched to their erased row, or naming
            # their erased address): kept, for the dispatch's counts, without them.
            scrub = scrubber({a for a in (address, match.address) if a}, ())
            address, diagnostic = "", scrub(diagnostic)
        lines.append(
            Line(
                address=address,
                outcome=recipient.outcome.value if recipient else None,
                status=(recipient.status or None) if recipient else None,
                diagnostic=diagnostic,
                matched_by=match.by,
                action=action,
                note=note[:200],
                subscriber_id=match.subscriber_id,
                dispatch_id=match.dispatch_id,
                delivery_id=match.delivery_id,
                list_id=match.list_id,
            )
        )
    lines = [line for line in lines if line.matched_by is not MatchedBy.NONE or line.outcome is not None]
    if lines:
        conn.execute(
            _RECORD_RECIPIENT,
            [
                {
                    "report_id": report_id,
                    "subscriber_id": line.subscriber_id,
                    "dispatch_id": line.dispatch_id,
                    "delivery_id": line.delivery_id,
                    "list_id": line.list_id,
                    "address": line.address,
                    "outcome": line.outcome,
                    "status": line.status[:16] if line.status else None,
                    "diagnostic": line.diagnostic,
                    "matched_by": line.matched_by,
                    "action": line.action,
                    "note": line.note,
                }
                for line in lines
            ],
        )
    matched_by = next(
        (line.matched_by for line in lines if line.matched_by is not MatchedBy.NONE), MatchedBy.NONE
    )
    settled = (
        not forged
        and report.kind in (ReportKind.DSN, ReportKind.COMPLAINT)
        and bool(lines)
        and all(line.matched_by is not MatchedBy.NONE for line in lines)
    )
    summary = _summary(report, lines, forged)[:MAX_DIAGNOSTIC]
    conn.execute(
        _SETTLE_REPORT,
        {"b_report": report_id, "matched_by": matched_by, "settled": settled, "summary": summary},
    )
    return Result(
        Verdict.HANDLED, report.kind.value, matched_by, settled, summary, tuple(lines),
        report.identity.message_id, report.identity.sha256,
    )  # fmt: skip


def _summary(report: Report, lines: list[Line], forged: str) -> str:
    if forged:
        return f"{report.kind}: forged or mistyped return address {forged}: nothing done"
    if report.kind in (ReportKind.AUTOREPLY, ReportKind.UNKNOWN):
        return f"{report.kind}: {report.reason or 'left for a person to read'}"
    counts: dict[str, int] = {}
    for line in lines:
        counts[line.action.value] = counts.get(line.action.value, 0) + 1
    done = ", ".join(f"{n} {action}" for action, n in counts.items()) or "no recipient"
    unmatched = sum(line.matched_by is MatchedBy.NONE for line in lines)
    return f"{report.kind}: {done}" + (f" ({unmatched} matched nothing)" if unmatched else "")


def _before(found: Seen, identity: ReportIdentity) -> Result:
    return Result(
        Verdict.BEFORE, found.kind, found.matched_by, found.settled, found.summary,
        message_id=identity.message_id, sha256=identity.sha256,
    )  # fmt: skip


def apply(
    engine: Engine, settings: Settings, signer: Signer, report: Report, *, now: dt.datetime | None = None
) -> Result:
    """Handle ``report`` in a transaction of its own; `Verdict.RACE` when another process recorded it first."""
    try:
        with transaction(engine) as session:
            return handle(session, settings, signer, report, now=now)
    except IntegrityError:
        # The report's row is written before anything else: a clash on its unique keys
        # means another process recorded it meanwhile, and its record stands.
        with transaction(reader(engine)) as session:
            if handled_before(session, report) is None:
                raise  # some other clash: a bug, not a race
        return _race(report)


def _race(report: Report) -> Result:
    return Result(
        Verdict.RACE, report.kind.value, MatchedBy.NONE, False, "handled by another process",
        message_id=report.identity.message_id, sha256=report.identity.sha256,
    )  # fmt: skip


def process(
    engine: Engine, settings: Settings, signer: Signer, raw: bytes, *, now: dt.datetime | None = None
) -> Result:
    """Read one message of the bounce mailbox and handle it, unless it was handled before."""
    report = read_report(raw)
    with transaction(reader(engine)) as session:
        found = handled_before(session, report)
        if found is not None:
            return _before(found, report.identity)
    return apply(engine, settings, signer, report, now=now)


#: A run handles the mailbox in groups of this many messages: each group is read and
#: parsed with no lock held, then written in one transaction, each report in a savepoint.
GROUP = 100


def run(
    engine: Engine,
    settings: Settings,
    signer: Signer,
    source: MailSource,
    *,
    dry_run: bool = False,
    clock: Callable[[], dt.datetime] = utcnow,
    stop: Callable[[], bool] | None = None,
) -> Iterator[Result]:
    """Handle every message of ``source``, each report atomically, yielding what each did.

    The messages are taken in groups (`GROUP`). For each group: what was handled
    before is looked up and the new reports are read, holding no lock; then one
    transaction handles them, each in a savepoint of its own (all a report does, or
    nothing), and commits. A commit per report would wait for the disk more than the
    report takes, and the database's write lock is held only while the group is
    written, so a dispatch or the web app waits at most that long. What a report did
    is yielded, and the report marked done in the mailbox, only after its group is
    committed; a run killed before that leaves the group to the next run, which
    handles it as if for the first time. A settled report is marked done also when
    an earlier run committed it but stopped before marking it. ``stop`` is asked
    before each group: true ends the run there (a group is never left half printed,
    committed but unmarked, or marked but unprinted). ``dry_run`` decides
    the same way, in one transaction rolled back at the end, and touches no mail.
    """
    if dry_run:
        yield from _dry_run(engine, settings, signer, source, clock)
        return
    items = iter(source)
    while not (stop and stop()) and (group := list(itertools.islice(items, GROUP))):
        yield from _group(engine, settings, signer, source, group, clock)


def _group(
    engine: Engine,
    settings: Settings,
    signer: Signer,
    source: MailSource,
    group: list[Item],
    clock: Callable[[], dt.datetime],
) -> Iterator[Result]:
    identities = [identity_of(item.raw) for item in group]
    with transaction(reader(engine)) as session:
        seen = [handled_before(session, identity) for identity in identities]
    pending: list[Result | Report] = [
        _before(found, identity) if found is not None else read_report(item.raw, identity)
        for item, identity, found in zip(group, identities, seen, strict=True)
    ]
    done: list[Result] = []
    with transaction(engine) as session:
        earlier: dict[str, Result] = {}  # a copy of a report earlier in this group is that report
        for result in pending:
            if isinstance(result, Report):
                keys = [result.identity.sha256, stored_message_id(result.identity.message_id) or ""]
                first = next((earlier[key] for key in keys if key in earlier), None)
                if first is not None:
                    result = replace(first, verdict=Verdict.BEFORE, lines=())
                else:
                    result = _one(session, settings, signer, result, clock())
                    earlier.update((key, result) for key in keys if key)
            done.append(result)
    for item, result in zip(group, done, strict=True):
        if result.settled and result.verdict is not Verdict.RACE:
            source.done(item.key)
    yield from done


def _one(session: Session, settings: Settings, signer: Signer, report: Report, now: dt.datetime) -> Result:
    """Handle one new report in a savepoint of ``session``."""
    try:
        with session.begin_nested():
            return handle(session, settings, signer, report, now=now)
    except IntegrityError:
        # Another process recorded the same report since it was looked up (PostgreSQL
        # also while this one waited on the unique key): its record stands.
        if handled_before(session, report) is None:
            raise  # some other clash: a bug, not a race
        return _race(report)
    except DataError as error:
        # The database refused a value of this report (what reports.py lets through should
        # never be refused; this is the net under it): recorded as unknown, left for a
        # person, and the run goes on. A lost connection or a lock is not this: it stops
        # the run, and the next run handles the report.
        reason = f"could not be recorded ({type(error.orig).__name__}); left for a person"
        with session.begin_nested():
            return handle(
                session, settings, signer, Report(ReportKind.UNKNOWN, report.identity, reason=reason)
            )


def _dry_run(
    engine: Engine, settings: Settings, signer: Signer, source: MailSource, clock: Callable[[], dt.datetime]
) -> Iterator[Result]:
    # One transaction for the whole mailbox, so that each report sees what the ones before
    # it would have done (a second report about a person finds them bounced), undone at the end.
    with Session(engine) as session:
        try:
            for item in source:
                report = read_report(item.raw)
                found = handled_before(session, report)
                if found is not None:
                    yield _before(found, report.identity)
                    continue
                try:
                    with session.begin_nested():
                        result = handle(session, settings, signer, report, now=clock())
                except IntegrityError:  # recorded by another process meanwhile
                    result = _race(report)
                yield result
        finally:
            session.rollback()


# --- reading what was done -------------------------------------------------------------------


@dataclass(frozen=True)
class Handled:
    """A report handled, as recorded, with its recipients."""

    id: int
    kind: str
    matched_by: MatchedBy
    settled: bool
    summary: str
    message_id: str | None
    processed_at: dt.datetime
    lines: list[Line] = field(default_factory=list)


def _line(row: ReportRecipient) -> Line:
    return Line(
        row.address, row.outcome, row.status, row.diagnostic, row.matched_by, row.action, row.note,
        row.subscriber_id, row.dispatch_id, row.delivery_id, row.list_id,
    )  # fmt: skip


def recent(engine: Engine, limit: int = 20) -> list[Handled]:
    """Return the ``limit`` reports handled last, newest first, with what was done for each recipient."""
    with transaction(reader(engine)) as session:
        reports = session.scalars(select(HandledReport).order_by(HandledReport.id.desc()).limit(limit)).all()
        lines: dict[int, list[Line]] = {r.id: [] for r in reports}
        if lines:
            rows = session.scalars(
                select(ReportRecipient)
                .where(ReportRecipient.report_id.in_(lines))
                .order_by(ReportRecipient.id)
            )
            for row in rows:
                lines[row.report_id].append(_line(row))
        return [
            Handled(
                r.id, r.kind, r.matched_by, r.settled, r.summary, r.message_id, r.processed_at, lines[r.id]
            )
            for r in reports
        ]


def about(session: Session, subscriber_id: int, limit: int = 50) -> list[tuple[Handled, Line]]:
    """Return the reports about one subscriber, newest first, each with its line about them."""
    rows = session.execute(
        select(HandledReport, ReportRecipient)
        .join(ReportRecipient, ReportRecipient.report_id == HandledReport.id)
        .where(ReportRecipient.subscriber_id == subscriber_id)
        .order_by(HandledReport.id.desc(), ReportRecipient.id)
        .limit(limit)
    )
    return [
        (Handled(r.id, r.kind, r.matched_by, r.settled, r.summary, r.message_id, r.processed_at), _line(line))
        for r, line in rows
    ]


#: The actions counted as bounced, and as complained, by `dispatch_counts`.
BOUNCED = (ReportAction.BOUNCED, ReportAction.SUPPRESSED)
COMPLAINED = (ReportAction.UNSUBSCRIBED, ReportAction.COMPLAINED)


def dispatch_counts(session: Session, dispatch_id: int) -> tuple[int, int]:
    """Return how many recipients of a dispatch reports bounced (hard, or soft to the end) and complained."""
    counted = {}
    for name, actions in (("bounced", BOUNCED), ("complained", COMPLAINED)):
        counted[name] = session.scalar(
            select(func.count(func.distinct(ReportRecipient.subscriber_id))).where(
                ReportRecipient.dispatch_id == dispatch_id, ReportRecipient.action.in_(actions)
            )
        )
    return int(counted["bounced"] or 0), int(counted["complained"] or 0)


# --- erasure (``privacy.erase``) -------------------------------------------------------------------


# FOR SHARE (PostgreSQL): an erasure under way holds the row; this waits for it, then reads
# ``erased``, instead of reading the status before it and writing the address after it.
_ERASED = (
    select(cast(Table, Subscriber.__table__).c.status)
    .where(cast(Table, Subscriber.__table__).c.id == bindparam("b_subscriber"))
    .with_for_update(read=True)
)


def _is_erased(conn: Connection, subscriber_id: int) -> bool:
    """Whether a matched subscriber was erased (``privacy.erase``): their row holds no address."""
    status = conn.execute(_ERASED, {"b_subscriber": subscriber_id}).scalar()
    return status == SubscriberStatus.ERASED


def erase_reports(
    conn: Connection,
    scrub: Callable[[str], str],
    scrub_own: Callable[[str], str],
    subscriber_id: int | None,
) -> dict[str, int]:
    """Erase a person from the handled reports: addresses, diagnostics and summaries; return counts.

    ``scrub`` replaces the person's address, ``scrub_own`` their address and their
    name: the name only in the lines and reports that are about them (matched to
    ``subscriber_id``, or naming their address as the recipient), since a name can be
    a word of other people's text. A recipient's address ``scrub`` changes is the
    person's and becomes ""; the line stays (with its subscriber, for the dispatch's
    bounce and complaint counts). Every row is read: a report that matched nobody,
    or another's diagnostic, may name their address.
    """
    lines = 0
    own_reports: set[int] = set()
    for line_id, report_id, line_subscriber, address, diagnostic, note in conn.execute(
        select(
            ReportRecipient.id,
            ReportRecipient.report_id,
            ReportRecipient.subscriber_id,
            ReportRecipient.address,
            ReportRecipient.diagnostic,
            ReportRecipient.note,
        )
    ).all():
        theirs = scrub(address) != address
        own = theirs or (subscriber_id is not None and line_subscriber == subscriber_id)
        if own:
            own_reports.add(report_id)
        clean = scrub_own if own else scrub
        values = {"address": "" if theirs else address, "diagnostic": clean(diagnostic), "note": clean(note)}
        if (values["address"], values["diagnostic"], values["note"]) != (address, diagnostic, note):
            conn.execute(update(ReportRecipient).where(ReportRecipient.id == line_id).values(**values))
            lines += 1
    reports = 0
    for report_id, summary in conn.execute(select(HandledReport.id, HandledReport.summary)).all():
        cleaned = (scrub_own if report_id in own_reports else scrub)(summary)
        if cleaned != summary:
            conn.execute(update(HandledReport).where(HandledReport.id == report_id).values(summary=cleaned))
            reports += 1
    return {"report_recipients": lines, "handled_reports": reports}
