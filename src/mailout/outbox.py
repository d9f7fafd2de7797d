"""Dispatches and deliveries: the durable, resume-safe record of who got what.

A dispatch is written with one delivery per recipient, all ``queued``, in the
same transaction (recipients and the rendered variant frozen). Then:

    queued --claim--> claimed --on the wire--> sending --250--> sent
                         |                        |--4xx--> deferred --due--> claimed ...
                         |                        |--5xx--> failed
                         |                        |--no answer after the final "."--> unknown
                         |                        +--not handed over (login refused...)--> queued
                         +--unsubscribed--> skipped

A delivery's ``sending`` mark is committed before its message goes on the wire,
and its outcome with the mark of the message after next on the same connection
(see ``mailer``), so a process killed at any moment leaves at most two
``sending`` deliveries per connection: those become ``unknown`` (never resent
unless asked), while its ``claimed`` deliveries go back to ``queued``. A process is known dead at once
when it ran on this machine and runs no more (see ``processes``), and otherwise
when its heartbeat in ``workers`` is older than ``sending.worker_timeout``. A
transport that can tell whether a message was delivered (the local outbox: its
file is there or not) settles a ``sending`` delivery as ``sent`` or ``queued``
instead.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    Update,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql import ColumnElement, Select

from . import processes
from .db import stored_time
from .models import (
    Delivery,
    DeliveryStatus,
    Dispatch,
    DispatchVariant,
    MailingList,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Worker,
    utcnow,
)
from .processes import Liveness
from .render import Variant

ACTIVE = (DeliveryStatus.QUEUED, DeliveryStatus.CLAIMED, DeliveryStatus.SENDING, DeliveryStatus.DEFERRED)


def as_utc(value: dt.datetime) -> dt.datetime:
    """Return ``value`` as an aware UTC time (SQLite hands back naive ones)."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Claimed:
    """A delivery a worker has claimed, with what it needs to build the message."""

    id: int
    subscriber_id: int
    email: str
    name: str
    attempts: int
    #: The language of the variant they get ("": the dispatch's own, for a delivery written
    #: before mailout chose one).
    language: str = ""


def find_dispatch(session: Session, issue: str, lst: MailingList, *, lock: bool = False) -> Dispatch | None:
    """Return the newest dispatch of ``issue`` to ``lst``, if any.

    With ``lock``, first lock the list's row until the transaction ends (PostgreSQL; on
    SQLite every writing transaction holds the database): two processes deciding at once
    whether to write a dispatch to the list then decide one after the other.
    """
    if lock:
        session.execute(select(MailingList.id).where(MailingList.id == lst.id).with_for_update())
    return session.scalars(
        select(Dispatch)
        .where(Dispatch.issue == issue, Dispatch.list_id == lst.id)
        .order_by(Dispatch.generation.desc())
        .limit(1)
    ).first()


def recipients_query(lst: MailingList) -> Select[int, str, str, str]:
    """Select who a dispatch to ``lst`` goes to: subscribed people with a subscribed subscription."""
    return (
        select(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.language)
        .join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .where(
            Subscription.list_id == lst.id,
            Subscription.status == SubscriptionStatus.SUBSCRIBED,
            Subscriber.status == SubscriberStatus.SUBSCRIBED,
        )
    )


def count_recipients(session: Session, lst: MailingList) -> int:
    """Return how many people a dispatch to ``lst`` would go to now."""
    return int(session.scalar(select(func.count()).select_from(recipients_query(lst).subquery())) or 0)


def language_choice(column: ColumnElement[str], available: Sequence[str], default: str) -> ColumnElement[str]:
    """Return, in SQL, which of ``available`` a reader whose language is ``column`` gets.

    The rule of ``languages.choose`` (the exact language, else its primary language,
    else ``default``) as one CASE, the same on SQLite and PostgreSQL, compared without
    regard to case. ``available`` are canonical tags; the stored languages are canonical
    or empty (migration 0010, and every writer checks them), for which this and
    ``languages.choose`` agree. A value written into the table by hand in another form
    (``fr_BE``, `` fr``) may be read differently: the import reports such a value.
    """
    if not available or list(available) == [default]:
        return literal(default, String)
    tag = func.lower(column)
    # Every exact match first: a reader of fr-BE gets fr-BE when there is one, before fr.
    whens = [(tag == literal(lang.lower(), String), literal(lang, String)) for lang in available]
    whens += [
        (tag.like(literal(lang.lower() + "-%", String)), literal(lang, String))
        for lang in available
        if "-" not in lang  # a primary language: fr for fr-BE, fr-CA, fr-Latn-BE...
    ]
    return case(*whens, else_=literal(default, String))


def count_by_language(
    session: Session, lst: MailingList, available: Sequence[str], default: str
) -> dict[str, int]:
    """Return how many of a dispatch to ``lst`` would now get each of ``available``, in that order."""
    if not available or list(available) == [default]:
        return {default: count_recipients(session, lst)}
    recipients = recipients_query(lst).subquery()
    # Grouped by a column of a subquery: a CASE of bound values in GROUP BY would be another
    # expression than the one selected (PostgreSQL refuses it, SQLite groups each row apart).
    chosen = select(language_choice(recipients.c.language, available, default).label("chosen")).subquery()
    rows = session.execute(select(chosen.c.chosen, func.count()).group_by(chosen.c.chosen)).all()
    found = {str(lang): int(n) for lang, n in rows}
    return {lang: found.get(lang, 0) for lang in available}


def create_dispatch(
    session: Session,
    issue: str,
    lst: MailingList,
    variant: Variant,
    *,
    from_name: str,
    from_address: str,
    reply_to: str,
    generation: int,
    others: Sequence[Variant] = (),
    scheduled_at: dt.datetime | None = None,
    created_by: str = "",
    route: str = "",
    start: bool | None = None,
) -> Dispatch:
    """Freeze the variants and the recipients: one dispatch, one queued delivery per recipient.

    ``variant`` is in the issue's default language, ``others`` in its other languages
    (one each, with ``Variant.language`` set). Each recipient's variant is chosen from
    their language in the same statement that writes the deliveries (``language_choice``)
    and frozen with them. ``generation`` numbers the dispatches of the issue to the list:
    the database refuses a second one with the same number (``IntegrityError``, see
    ``is_duplicate_dispatch``).

    ``start`` says whether it is started as it is written (``started_at`` set, its
    deliveries free to be claimed); by default it is unless ``scheduled_at`` is given.
    A dispatch not started waits for ``start_dispatch``: at its instant, or once approved.
    ``created_by`` is who wrote it, ``route`` the ``[smtp.routes.NAME]`` it goes through
    ("" for ``[smtp]``).
    """
    languages = [variant.language, *(other.language for other in others)]
    if len(set(languages)) != len(languages) or (others and not all(languages)):
        raise ValueError(f"one variant per language, each with its language: got {languages}")
    dispatch = Dispatch(
        key=f"mo{secrets.token_hex(8)}",
        issue=issue,
        list_id=lst.id,
        generation=generation,
        segment=variant.segment,
        **_frozen(variant),
        from_name=from_name,
        from_address=from_address,
        reply_to=reply_to,
        total=0,
        paused_reason="",
        scheduled_at=scheduled_at,
        started_at=utcnow() if (scheduled_at is None if start is None else start) else None,
        created_by=created_by,
        route=route,
    )
    session.add(dispatch)
    session.flush()
    if others:
        session.execute(
            insert(DispatchVariant),
            [{"dispatch_id": dispatch.id, **_frozen(other)} for other in others],
        )
    now = utcnow()
    recipients = recipients_query(lst).subquery()
    # One INSERT ... SELECT: the recipient list never passes through Python.
    session.execute(
        insert(Delivery).from_select(
            [
                "dispatch_id",
                "subscriber_id",
                "email",
                "name",
                "status",
                "worker",
                "attempts",
                "reply",
                "updated_at",
                "language",
            ],
            select(
                literal(dispatch.id, Integer),
                recipients.c.id,
                recipients.c.email,
                recipients.c.name,
                literal(DeliveryStatus.QUEUED.value, String),
                literal("", String),
                literal(0, Integer),
                literal("", String),
                literal(now, DateTime(timezone=True)),
                language_choice(recipients.c.language, languages, variant.language),
            ).order_by(recipients.c.id),
        )
    )
    dispatch.total = int(
        session.scalar(select(func.count()).select_from(Delivery).where(Delivery.dispatch_id == dispatch.id))
        or 0
    )
    return dispatch


def _frozen(variant: Variant) -> dict[str, str]:
    """Return the columns a variant is frozen in: the dispatch's own row and ``dispatch_variants`` alike."""
    return {
        "language": variant.language,
        "subject": variant.subject,
        "preheader": variant.preheader,
        "html": variant.html,
        "text": variant.text,
        "tokens": json.dumps(dict(variant.tokens)),
        "greeting_fallback": variant.greeting_fallback,
    }


def is_duplicate_dispatch(error: IntegrityError) -> bool:
    """Return whether ``error`` is the database refusing a second dispatch of one generation."""
    # PostgreSQL names the constraint; SQLite names its columns.
    text = str(error.orig)
    return "uq_dispatches_issue_list_id_generation" in text or "dispatches.generation" in text


def frozen_variant(dispatch: Dispatch) -> Variant:
    """Return the variant of the dispatch's own row (its default language) exactly as frozen."""
    return _variant(dispatch, dispatch.language or "", dispatch)


def _variant(dispatch: Dispatch, language: str, row: Any) -> Variant:
    """Return a frozen variant of ``dispatch`` from ``row``: its own row, or one of ``dispatch_variants``."""
    from .segments import Segment

    return Variant(
        slug=dispatch.issue,
        segment=Segment(dispatch.segment),
        language=language,
        subject=row.subject,
        preheader=row.preheader,
        html=row.html,
        text=row.text,
        tokens=json.loads(row.tokens),
        greeting_fallback=row.greeting_fallback,
        items_shown=None,
        items_hidden=None,
    )


def frozen_variants(conn: Connection | Session, dispatch: Dispatch) -> dict[str, Variant]:
    """Return every variant frozen with the dispatch by language, its default language first.

    The key of the default is ``dispatch.language``; "" for a dispatch written before
    mailout froze several (its one variant, in the newsletter's language then). The
    other languages follow in alphabetical order.
    """
    variants = {dispatch.language or "": frozen_variant(dispatch)}
    # Columns, not the ORM class: read the same way through a Connection as a Session.
    rows = conn.execute(
        select(
            DispatchVariant.language,
            DispatchVariant.subject,
            DispatchVariant.preheader,
            DispatchVariant.html,
            DispatchVariant.text,
            DispatchVariant.tokens,
            DispatchVariant.greeting_fallback,
        )
        .where(DispatchVariant.dispatch_id == dispatch.id)
        .order_by(DispatchVariant.language)
    )
    for row in rows:
        variants[row.language] = _variant(dispatch, row.language, row)
    return variants


def language_counts(conn: Connection | Session, dispatch_id: int) -> dict[str, int]:
    """Return how many deliveries get each language's variant ("": written before mailout chose)."""
    rows = conn.execute(
        select(Delivery.language, func.count())
        .where(Delivery.dispatch_id == dispatch_id)
        .group_by(Delivery.language)
        .order_by(Delivery.language)
    ).all()
    return {str(lang or ""): int(n) for lang, n in rows}


def route_counts(conn: Connection | Session, dispatch_id: int) -> dict[str, int]:
    """Return how many deliveries went through each route ("" is ``[smtp]``), those never sent left out."""
    rows = conn.execute(
        select(Delivery.route, func.count())
        .where(Delivery.dispatch_id == dispatch_id, Delivery.route.is_not(None))
        .group_by(Delivery.route)
        .order_by(Delivery.route)
    ).all()
    return {str(route): int(n) for route, n in rows}


def counts(conn: Connection | Session, dispatch_id: int) -> dict[DeliveryStatus, int]:
    """Return how many deliveries are in each state (every state listed, zero or not)."""
    rows = conn.execute(
        select(Delivery.status, func.count())
        .where(Delivery.dispatch_id == dispatch_id)
        .group_by(Delivery.status)
    ).all()
    found = {DeliveryStatus(status): int(n) for status, n in rows}
    return {status: found.get(status, 0) for status in DeliveryStatus}


def _with_list() -> Select[Dispatch, MailingList]:
    return select(Dispatch, MailingList).join(MailingList, MailingList.id == Dispatch.list_id)


def dispatch_with_list(session: Session, dispatch_id: int) -> tuple[Dispatch, MailingList] | None:
    """Return one dispatch and its list, or None when there is no such dispatch."""
    row = session.execute(_with_list().where(Dispatch.id == dispatch_id)).first()
    return (row[0], row[1]) if row else None


def recent_dispatches(session: Session, limit: int) -> list[tuple[Dispatch, MailingList]]:
    """Return the ``limit`` newest dispatches with their lists, newest first."""
    rows = session.execute(_with_list().order_by(Dispatch.id.desc()).limit(limit))
    return [(dispatch, lst) for dispatch, lst in rows]


def unfinished_dispatches(
    session: Session, dispatch_id: int | None = None
) -> list[tuple[Dispatch, MailingList]]:
    """Return the unfinished dispatches (or only ``dispatch_id``, if unfinished) with their lists."""
    query = _with_list().where(Dispatch.finished_at.is_(None)).order_by(Dispatch.id)
    if dispatch_id is not None:
        query = query.where(Dispatch.id == dispatch_id)
    return [(dispatch, lst) for dispatch, lst in session.execute(query)]


def failure_replies(conn: Connection | Session, dispatch_id: int) -> list[tuple[str, int]]:
    """Return the replies of failed and deferred deliveries with how many got each, commonest first."""
    rows = conn.execute(
        select(Delivery.reply, func.count())
        .where(
            Delivery.dispatch_id == dispatch_id,
            Delivery.status.in_([DeliveryStatus.FAILED, DeliveryStatus.DEFERRED]),
        )
        .group_by(Delivery.reply)
        .order_by(func.count().desc())
    ).all()
    return [(reply, int(n)) for reply, n in rows]


def pause(conn: Connection | Session, dispatch_id: int, reason: str) -> None:
    """Mark the dispatch paused, saying why (its senders stop; ``unpause`` lets them go on)."""
    conn.execute(update(Dispatch).where(Dispatch.id == dispatch_id).values(paused_reason=reason))


def paused_reason(conn: Connection | Session, dispatch_id: int) -> str:
    """Return why the dispatch is paused ("" when it is not)."""
    return str(conn.scalar(select(Dispatch.paused_reason).where(Dispatch.id == dispatch_id)) or "")


def unpause(conn: Connection | Session, dispatch_id: int) -> None:
    """Clear the dispatch's pause."""
    conn.execute(update(Dispatch).where(Dispatch.id == dispatch_id).values(paused_reason=""))


# --- starting ------------------------------------------------------------------
#
# A dispatch's deliveries are claimed only once it is started (``started_at`` set) and
# while it is not cancelled: ``claim`` checks both in the statement that claims. Every
# change below is one conditional UPDATE, so two processes deciding at the same instant
# (two workers starting it, a cancel racing a start) change the row once: the second
# finds the condition false and changes nothing. The row decides, never a timer: a
# restored backup of a started dispatch is started, of a cancelled one cancelled.


def _waiting() -> ColumnElement[bool]:
    """Select the dispatches not started and not cancelled."""
    return and_(
        Dispatch.started_at.is_(None), Dispatch.cancelled_at.is_(None), Dispatch.finished_at.is_(None)
    )


def _in_time(now: dt.datetime, lateness: float) -> ColumnElement[bool]:
    """Select the waiting dispatches a worker may start at ``now``: due, and not too late."""
    earliest = now - dt.timedelta(seconds=lateness)
    return and_(
        Dispatch.missed_at.is_(None),
        or_(
            Dispatch.scheduled_at.is_(None),
            and_(Dispatch.scheduled_at <= now, Dispatch.scheduled_at >= earliest),
        ),
    )


def start_dispatch(
    conn: Connection | Session, dispatch_id: int, now: dt.datetime, lateness: float | None
) -> bool:
    """Start the dispatch at ``now`` if it is waiting; return whether this call started it.

    With ``lateness`` (``sending.max_lateness``), only when it is due, neither missed nor
    more than ``lateness`` seconds past its instant: what a worker may start. With None,
    whatever its instant, missed or not (``send --now``). Never a cancelled one.
    """
    condition = _waiting() if lateness is None else and_(_waiting(), _in_time(now, lateness))
    result = conn.execute(
        update(Dispatch).where(Dispatch.id == dispatch_id, condition).values(started_at=now)
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


def due_dispatches(conn: Connection | Session, now: dt.datetime, lateness: float) -> list[int]:
    """Return the ids of the waiting dispatches a worker may start at ``now``, oldest first."""
    return list(
        conn.scalars(select(Dispatch.id).where(_waiting(), _in_time(now, lateness)).order_by(Dispatch.id))
    )


def mark_missed(conn: Connection | Session, now: dt.datetime, lateness: float) -> list[int]:
    """Mark missed the waiting dispatches more than ``lateness`` seconds past their instant; return them."""
    late = now - dt.timedelta(seconds=lateness)
    return list(
        conn.scalars(
            update(Dispatch)
            .where(_waiting(), Dispatch.missed_at.is_(None), Dispatch.scheduled_at < late)
            .values(missed_at=now)
            .returning(Dispatch.id)
        )
    )


def reschedule(conn: Connection | Session, dispatch_id: int, at: dt.datetime) -> bool:
    """Move a waiting dispatch to the instant ``at`` (a missed one is scheduled again); return whether it was."""
    result = conn.execute(
        update(Dispatch).where(Dispatch.id == dispatch_id, _waiting()).values(scheduled_at=at, missed_at=None)
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


def cancel_dispatch(conn: Connection | Session, dispatch_id: int, now: dt.datetime) -> int | None:
    """Cancel a waiting dispatch: it never starts, its deliveries are skipped, it is finished.

    Returns how many deliveries were skipped, or None when it was not waiting (started,
    cancelled or finished already; the caller says which).
    """
    result = conn.execute(
        update(Dispatch)
        .where(Dispatch.id == dispatch_id, _waiting())
        .values(cancelled_at=now, finished_at=now)
    )
    if int(result.rowcount) != 1:  # type: ignore[attr-defined]
        return None
    skipped = conn.execute(
        update(Delivery)
        .where(Delivery.dispatch_id == dispatch_id, Delivery.status.in_(ACTIVE))
        .values(status=DeliveryStatus.SKIPPED, reply="cancelled", worker="", updated_at=now)
    )
    return int(skipped.rowcount)  # type: ignore[attr-defined]


def waiting_dispatches(session: Session) -> list[tuple[Dispatch, MailingList]]:
    """Return the dispatches not started nor cancelled (scheduled, missed, awaiting approval), by instant."""
    query = _with_list().where(_waiting()).order_by(Dispatch.scheduled_at, Dispatch.id)
    return [(dispatch, lst) for dispatch, lst in session.execute(query)]


# --- workers -------------------------------------------------------------------


@dataclass(frozen=True)
class SendingProcess:
    """A process registered as sending a dispatch, as another process sees it."""

    name: str
    host: str
    pid: int
    #: On this machine, where whether it runs is known at once (see ``processes``).
    here: bool
    #: Seconds since its last heartbeat.
    silent_for: float
    #: On this machine and still running (taken as stopped only for its silence: hung, or Ctrl-Z).
    running: bool = False

    def __str__(self) -> str:
        return f"process {self.pid} on {'this machine' if self.here else self.host}"


@dataclass(frozen=True)
class Recovery:
    """What taking over from gone processes did: deliveries requeued, deliveries now unknown."""

    requeued: int = 0
    unknown: int = 0
    gone: tuple[SendingProcess, ...] = ()


def worker_name() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}"


def register_worker(conn: Connection, dispatch_id: int, name: str) -> None:
    """Record that this process sends the dispatch, with what tells when it is gone."""
    now = utcnow()
    conn.execute(
        insert(Worker).values(
            id=name,
            dispatch_id=dispatch_id,
            host=socket.gethostname()[:200],
            pid=os.getpid(),
            process=processes.identity(),
            started_at=now,
            heartbeat_at=now,
        )
    )


@dataclass(frozen=True)
class RunRecord:
    """What a dispatch's messages were sent with, one item per send run that changed it, oldest first.

    ``signing``: ``d=DOMAIN s=SELECTOR (ALGORITHM)`` per key, comma-separated, or "" for
    not signed. None: the dispatch was sent before mailout recorded it (or no run started).
    """

    signing: tuple[str, ...] | None
    envelope_sender: tuple[str, ...] | None


def _history(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value.split("\n"))


def run_record(conn: Connection | Session, dispatch_id: int) -> RunRecord:
    """Return the signing identities and envelope senders the dispatch's runs used."""
    row = conn.execute(
        select(Dispatch.signing, Dispatch.envelope_sender).where(Dispatch.id == dispatch_id)
    ).one()
    return RunRecord(_history(row.signing), _history(row.envelope_sender))


def _then(column: Any, value: str) -> ColumnElement[str]:
    """Return ``column`` with ``value`` as its last line: unchanged when it is so already."""
    new = literal(value, String)
    tail = literal("\n" + value, String)
    return case(
        (column.is_(None), new),
        (column == new, column),
        (func.substr(column, func.length(column) - func.length(tail) + 1) == tail, column),
        else_=column + tail,
    )


def record_run(conn: Connection, dispatch_id: int, *, signing: str, envelope_sender: str) -> RunRecord:
    """Record that a send run of the dispatch starts with this signing identity and envelope sender.

    Each column keeps one line per run that changed it, oldest first (a run like the one
    before adds nothing), in one statement: two processes starting together add one line.
    Returns what was recorded before.
    """
    before = run_record(conn, dispatch_id)
    conn.execute(
        update(Dispatch)
        .where(Dispatch.id == dispatch_id)
        .values(
            signing=_then(Dispatch.signing, signing),
            envelope_sender=_then(Dispatch.envelope_sender, envelope_sender),
        )
    )
    return before


def heartbeat(conn: Connection, name: str) -> None:
    conn.execute(update(Worker).where(Worker.id == name).values(heartbeat_at=utcnow()))


def _workers(
    conn: Connection, dispatch_id: int, timeout: float
) -> tuple[list[SendingProcess], list[SendingProcess]]:
    """Return the dispatch's processes that still send, and those that are gone, oldest first."""
    now = utcnow()
    alive: list[SendingProcess] = []
    gone: list[SendingProcess] = []
    rows = conn.execute(
        select(Worker.id, Worker.host, Worker.pid, Worker.process, Worker.heartbeat_at)
        .where(Worker.dispatch_id == dispatch_id)
        .order_by(Worker.started_at, Worker.id)
    )
    for row in rows:
        state = processes.liveness(row.process, row.pid)
        silent = max(0.0, (now - as_utc(row.heartbeat_at)).total_seconds())
        found = SendingProcess(
            row.id, row.host, row.pid, state is not Liveness.UNKNOWN, silent, state is Liveness.ALIVE
        )
        # On this machine a dead process is known at once; elsewhere (or without /proc) by
        # its silence. A silent one that still runs here is hung: taken as gone too, as
        # before; what it claimed is requeued, so it can send none of that (``mark_sending``
        # needs the claim), and its one message on the wire is reported unknown.
        (gone if state is Liveness.GONE or silent > timeout else alive).append(found)
    return alive, gone


def live_workers(conn: Connection, dispatch_id: int, timeout: float) -> list[SendingProcess]:
    """Return the processes sending the dispatch that are alive (or not yet known dead)."""
    return _workers(conn, dispatch_id, timeout)[0]


def _orphans(
    conn: Connection, dispatch_id: int, timeout: float
) -> tuple[list[SendingProcess], ColumnElement[bool]]:
    """Return the gone processes of the dispatch, and what selects the deliveries they left behind."""
    _, gone = _workers(conn, dispatch_id, timeout)
    dead = [process.name for process in gone]
    # Deliveries claimed by a process that left no row (its row was removed) are orphans
    # too. The rows still there are read by the UPDATE itself: a process that registers
    # meanwhile, and claims, keeps what it claimed.
    registered = select(Worker.id).where(Worker.dispatch_id == dispatch_id, Worker.id.not_in(dead))
    return gone, and_(Delivery.dispatch_id == dispatch_id, Delivery.worker.not_in(registered))


def in_flight_of_dead(conn: Connection, dispatch_id: int, timeout: float) -> list[int]:
    """Return the ids of the deliveries that gone processes left ``sending`` (``recover`` settles them)."""
    _, orphan = _orphans(conn, dispatch_id, timeout)
    return list(
        conn.scalars(
            select(Delivery.id).where(orphan, Delivery.status == DeliveryStatus.SENDING).order_by(Delivery.id)
        )
    )


def recover(
    conn: Connection,
    dispatch_id: int,
    timeout: float,
    settle: Callable[[int], bool | None] | None = None,
) -> Recovery:
    """Take over from gone processes: claimed go back to queued, sending become unknown.

    A process on this machine is gone as soon as it no longer runs; one elsewhere when its
    heartbeat is older than ``timeout`` seconds (``sending.worker_timeout``). ``settle``
    answers, for a delivery that was ``sending``, whether its message was delivered, when
    the transport can know (the local outbox; None when it cannot): then it becomes
    ``sent`` or ``queued`` instead of ``unknown``.
    """
    gone, orphan = _orphans(conn, dispatch_id, timeout)
    dead = [process.name for process in gone]
    now = utcnow()
    requeued = conn.execute(
        update(Delivery)
        .where(orphan, Delivery.status == DeliveryStatus.CLAIMED)
        .values(status=DeliveryStatus.QUEUED, worker="", updated_at=now)
    ).rowcount
    if settle is not None:
        for delivery_id in in_flight_of_dead(conn, dispatch_id, timeout):
            delivered = settle(delivery_id)
            if delivered is None:
                continue
            if delivered:
                reply = "delivered; its sending process stopped before recording it"
                conn.execute(
                    update(Delivery)
                    .where(Delivery.id == delivery_id)
                    .values(status=DeliveryStatus.SENT, reply=reply, updated_at=now)
                )
            else:
                requeued += conn.execute(
                    update(Delivery)
                    .where(Delivery.id == delivery_id)
                    .values(status=DeliveryStatus.QUEUED, worker="", updated_at=now)
                ).rowcount
    unknown = conn.execute(
        update(Delivery)
        .where(orphan, Delivery.status == DeliveryStatus.SENDING)
        .values(
            status=DeliveryStatus.UNKNOWN, reply="in flight when its sending process stopped", updated_at=now
        )
    ).rowcount
    if dead:
        conn.execute(delete(Worker).where(Worker.id.in_(dead)))
    return Recovery(int(requeued), int(unknown), tuple(gone))


def retire_worker(conn: Connection, name: str) -> int:
    """Give back what ``name`` claimed but did not send, and remove it; return how many."""
    released = conn.execute(
        update(Delivery)
        .where(Delivery.worker == name, Delivery.status == DeliveryStatus.CLAIMED)
        .values(status=DeliveryStatus.QUEUED, worker="", updated_at=utcnow())
    ).rowcount
    conn.execute(delete(Worker).where(Worker.id == name))
    return int(released)


# --- deliveries ----------------------------------------------------------------


@contextmanager
def loop_connection(engine: Engine) -> Iterator[Connection]:
    """Yield a connection for the send loop: on PostgreSQL, each statement commits by itself.

    The loop's steps are single statements (a claim; the previous message's outcome with
    the next one's ``sending`` mark), and a transaction adds two round trips to the server,
    each awaited: BEGIN, and COMMIT. In autocommit the statement is one round trip, and it
    is committed, as durable as by any COMMIT, when it returns. On SQLite the connection is
    the usual one: its transactions run in-process. Steps of several statements that must
    hold together use ``atomic(conn)``.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


@contextmanager
def atomic(conn: Connection) -> Iterator[None]:
    """Run a block as one transaction, also on a ``loop_connection`` (all or nothing)."""
    autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    if autocommit:
        conn.execution_options(isolation_level=conn.default_isolation_level)
    try:
        with conn.begin():
            yield
    finally:
        if autocommit and not conn.invalidated:
            conn.execution_options(isolation_level="AUTOCOMMIT")


def _constant(value: str) -> ColumnElement[str]:
    """Return one of our own constants written into the SQL, not sent as a parameter."""
    return literal_column(f"'{value}'", String)


def _claim_statement(status: DeliveryStatus) -> Update:
    """UPDATE the first due deliveries in ``status`` to ``claimed`` (or ``skipped``), RETURNING them.

    One statement, so that it holds on its own in autocommit: the rows are picked, locked
    (``FOR UPDATE SKIP LOCKED`` on PostgreSQL: several processes claim at once and never
    take the same row) and changed together, subscription check included. Built once.

    The states and the limit are written into the SQL: psycopg prepares a statement run
    often, and PostgreSQL's generic plan for it, not knowing how few rows the limit lets
    through, read every delivery and every subscription of the list at each claim.
    """
    now = bindparam("now", type_=DateTime(timezone=True))
    queue = aliased(Delivery)
    # One state at a time, in id order along the (dispatch_id, status, id) index from its
    # start: an OR of two states made every claim scan the rows already sent.
    # Only from a started dispatch that is not cancelled: whatever runs the loop (send,
    # worker, a Mailer of its own), a scheduled, missed or cancelled one sends nothing.
    started = (
        select(Dispatch.id)
        .where(
            Dispatch.id == bindparam("dispatch"),
            Dispatch.started_at.is_not(None),
            Dispatch.cancelled_at.is_(None),
        )
        .exists()
    )
    due = select(queue.id).where(
        queue.dispatch_id == bindparam("dispatch"), queue.status == _constant(status.value), started
    )
    if status is DeliveryStatus.DEFERRED:
        due = due.where(queue.next_attempt_at <= now)
    due = (
        due.order_by(queue.id)
        .limit(bindparam("limit", type_=Integer, literal_execute=True))
        .with_for_update(skip_locked=True)
    )
    # Checked now, not when the dispatch was written: someone who left since gets nothing
    # more. The subscription is looked up by its whole unique key, (subscriber_id, list_id),
    # and its status compared outside: with the status in the lookup too, the (list_id,
    # status) index matched as fully, and PostgreSQL, before it had statistics on a list
    # just imported, chose it and read the list's whole membership for every row claimed.
    subscription = (
        select(Subscription.status)
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(
            Subscription.subscriber_id == Delivery.subscriber_id,
            Subscription.list_id
            == select(Dispatch.list_id).where(Dispatch.id == bindparam("dispatch")).scalar_subquery(),
            Subscriber.status == _constant(SubscriberStatus.SUBSCRIBED.value),
        )
        .scalar_subquery()
    )
    subscribed = subscription == _constant(SubscriptionStatus.SUBSCRIBED.value)
    return (
        update(Delivery)
        .where(Delivery.id.in_(due.scalar_subquery()))
        .values(
            status=case(
                (subscribed, _constant(DeliveryStatus.CLAIMED.value)),
                else_=_constant(DeliveryStatus.SKIPPED.value),
            ),
            reply=case((subscribed, Delivery.reply), else_=_constant("unsubscribed before sending")),
            worker=bindparam("claimer"),
            updated_at=now,
        )
        .returning(
            Delivery.id,
            Delivery.subscriber_id,
            Delivery.email,
            Delivery.name,
            Delivery.attempts,
            Delivery.status,
            Delivery.language,
        )
    )


_CLAIM_QUEUED = _claim_statement(DeliveryStatus.QUEUED)
_CLAIM_DEFERRED = _claim_statement(DeliveryStatus.DEFERRED)


def claim(conn: Connection, dispatch_id: int, worker: str, limit: int) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries, in id order; skip those who unsubscribed meanwhile.

    Queued deliveries first, then deferred ones whose time has come. Each of the two
    statements holds on its own, so a ``loop_connection`` may run them in autocommit.
    """
    params: dict[str, object] = {
        "dispatch": dispatch_id,
        "claimer": worker,
        "now": utcnow(),
        "limit": limit,
    }
    rows = list(conn.execute(_CLAIM_QUEUED, params))
    if len(rows) < limit:
        rows += conn.execute(_CLAIM_DEFERRED, {**params, "limit": limit - len(rows)})
    rows.sort(key=lambda row: row.id)
    return [
        Claimed(r.id, r.subscriber_id, r.email, r.name, r.attempts, r.language or "")
        for r in rows
        if r.status is DeliveryStatus.CLAIMED
    ]


def mark(
    conn: Connection,
    delivery_id: int,
    status: DeliveryStatus,
    *,
    reply: str | None = None,
    next_attempt_at: dt.datetime | None = None,
) -> None:
    """Move one delivery to ``status`` (committed by the caller before anything else is sent)."""
    values: dict[str, object] = {"status": status, "updated_at": utcnow()}
    if reply is not None:
        values["reply"] = reply[:2000]
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    conn.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))


def requeue_unsent(conn: Connection, delivery_id: int, worker: str) -> None:
    """Put back in the queue a delivery that never reached the server, its attempt not counted.

    Only while ``worker`` still has it on the wire: a process taken over while it was
    stopped must not queue again what another process has sent since.
    """
    conn.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.status == DeliveryStatus.SENDING,
            Delivery.worker == worker,
        )
        .values(
            status=DeliveryStatus.QUEUED,
            worker="",
            attempts=case((Delivery.attempts > 0, Delivery.attempts - 1), else_=0),
            updated_at=utcnow(),
        )
    )


@dataclass(frozen=True)
class Sent:
    """A message the server accepted: recorded with the next one's ``sending`` mark."""

    delivery_id: int
    reply: str


# The transitions every message makes go to the driver as plain SQL, skipping
# SQLAlchemy's statement machinery, which cost more than the statements themselves.
# ``?`` placeholders, rewritten for drivers that want ``%s``.
# The states are the enum's own values, written into the SQL (S608: no outside input).
_SENDING = f"'{DeliveryStatus.SENDING.value}'"
_SENT = f"'{DeliveryStatus.SENT.value}'"
_CLAIMED = f"'{DeliveryStatus.CLAIMED.value}'"
_SENDING_SQL = (
    f"UPDATE deliveries SET status = {_SENDING}, attempts = attempts + 1,"  # noqa: S608
    " envelope_sender = ?, route = ?, updated_at = ?"
    f" WHERE id = ? AND status = {_CLAIMED} AND worker = ?"
)
_SENT_SQL = f"UPDATE deliveries SET status = {_SENT}, reply = ?, updated_at = ? WHERE id = ?"  # noqa: S608
# Both at once, on two rows: the previous message sent, the next one sending.
_SENT_AND_SENDING_SQL = (
    "UPDATE deliveries SET"  # noqa: S608
    f" status = CASE WHEN id = ? THEN {_SENDING} ELSE {_SENT} END,"
    " attempts = CASE WHEN id = ? THEN attempts + 1 ELSE attempts END,"
    " envelope_sender = CASE WHEN id = ? THEN ? ELSE envelope_sender END,"
    " route = CASE WHEN id = ? THEN ? ELSE route END,"
    " reply = CASE WHEN id = ? THEN reply ELSE ? END,"
    " updated_at = ?"
    # The next one only if it is still claimed, by this process: an unsubscribe may have
    # skipped it since, or another process taken over from this one while it was stopped.
    f" WHERE id = ? OR (id = ? AND status = {_CLAIMED} AND worker = ?)"
)


_PYFORMAT: dict[str, str] = {}


def _driver(conn: Connection, sql: str, params: tuple[object, ...]) -> int:
    """Run ``sql`` on the driver's own connection; return how many rows it changed.

    Outside a transaction the statement commits by itself: on PostgreSQL a
    ``loop_connection`` is in autocommit, and SQLite's driver runs in autocommit
    (see ``db``), where a writing statement takes the write lock before it reads,
    as ``BEGIN IMMEDIATE`` would, and waits for it as long as the busy timeout.
    Inside a transaction it is part of it. Errors come out as SQLAlchemy's, as
    from ``Connection.execute``.
    """
    raw: Any = conn.connection.driver_connection
    dialect = conn.dialect
    try:
        if dialect.paramstyle == "qmark":
            return int(raw.execute(sql, params).rowcount)
        if sql not in _PYFORMAT:
            _PYFORMAT[sql] = sql.replace("?", "%s")
        # psycopg: prepared once per connection, then only executed.
        return int(raw.execute(_PYFORMAT[sql], params, prepare=True).rowcount)
    except dialect.loaded_dbapi.Error as error:
        raise DBAPIError.instance(sql, params, error, dialect.loaded_dbapi.Error) from error


def _now_param(conn: Connection) -> object:
    """Return the current time as the column type would have stored it."""
    return stored_time(conn, utcnow())


def mark_sending(
    conn: Connection, delivery_id: int, worker: str, envelope: str | None = None, route: str | None = None
) -> bool:
    """Record that this delivery is going on the wire now, with ``envelope`` as its ``MAIL FROM``.

    ``route`` is the route it goes through ("" for ``[smtp]``). Returns False if ``worker``
    no longer has it claimed. Without ``envelope`` or ``route``: NULL, not known.
    """
    return _driver(conn, _SENDING_SQL, (envelope, route, _now_param(conn), delivery_id, worker)) == 1


def mark_sent(conn: Connection, delivery_id: int, reply: str) -> None:
    """Record the server's acceptance."""
    _driver(conn, _SENT_SQL, (reply[:2000], _now_param(conn), delivery_id))


def advance(
    conn: Connection,
    sent: Sent | None,
    sending: int | None,
    worker: str,
    envelope: str | None = None,
    route: str | None = None,
) -> bool:
    """Record ``sent`` and mark delivery ``sending`` as going on the wire, in one statement.

    ``envelope`` is the ``MAIL FROM`` of ``sending``'s message, kept with the delivery (so
    that a bounce to it is matched even if the process dies now), and ``route`` the route
    it goes through. Either may be None. The caller commits before the next message goes
    on the wire; on a ``loop_connection`` to PostgreSQL the statement is committed when it
    returns. Returns whether ``sending`` was marked (not if ``worker`` stopped having it claimed).
    """
    if sent is None:
        return mark_sending(conn, sending, worker, envelope, route) if sending is not None else False
    if sending is None:
        mark_sent(conn, sent.delivery_id, sent.reply)
        return False
    now = _now_param(conn)
    reply = sent.reply[:2000]
    params = (
        sending, sending, sending, envelope, sending, route, sending, reply, now, sent.delivery_id, sending, worker,
    )  # fmt: skip
    return _driver(conn, _SENT_AND_SENDING_SQL, params) == 2


def current_route(conn: Connection | Session, dispatch_id: int) -> str:
    """Return the route the dispatch sends through now ("" is ``[smtp]``)."""
    return conn.execute(select(Dispatch.route).where(Dispatch.id == dispatch_id)).scalar_one()


def switch_route(conn: Connection | Session, dispatch_id: int, before: str, after: str, why: str) -> bool:
    """Move the dispatch from route ``before`` to ``after``, with why; return whether this call did.

    One UPDATE, conditional on ``before``: when two processes fail over at once, one moves
    it and the other finds it moved. ``route_changes`` keeps one line per move, for status.
    """
    line = f"{utcnow():%Y-%m-%d %H:%M} UTC: route {before or '[smtp]'} -> {after} after {why}"
    changes = func.coalesce(Dispatch.route_changes + "\n", "") + line
    moved = conn.execute(
        update(Dispatch)
        .where(Dispatch.id == dispatch_id, Dispatch.route == before)
        .values(route=after, route_changes=changes)
    ).rowcount  # type: ignore[attr-defined]
    return bool(moved)


def resend_unknown(conn: Connection | Session, dispatch_id: int) -> int:
    """Queue the ``unknown`` deliveries again (they may get the message twice); return how many.

    A finished dispatch is open again when any were queued: it finishes when they are sent.
    """
    ids = [delivery_id for delivery_id, _ in unknown_deliveries(conn, dispatch_id)]
    return requeue(conn, dispatch_id, ids, DeliveryStatus.UNKNOWN)


def requeue(conn: Connection | Session, dispatch_id: int, ids: Sequence[int], status: DeliveryStatus) -> int:
    """Queue these deliveries again if they are still in ``status``; return how many were.

    A finished dispatch is open again when any were queued: it finishes when they are sent.
    """
    _lock_dispatch(conn, dispatch_id)  # see finish_if_done
    queued = 0
    for start in range(0, len(ids), 500):  # keep within the database's limit of parameters
        queued += int(
            conn.execute(
                update(Delivery)
                .where(
                    Delivery.dispatch_id == dispatch_id,
                    Delivery.id.in_(ids[start : start + 500]),
                    Delivery.status == status,
                )
                .values(status=DeliveryStatus.QUEUED, worker="", next_attempt_at=None, updated_at=utcnow())
            ).rowcount  # type: ignore[attr-defined]
        )
    if queued:
        conn.execute(update(Dispatch).where(Dispatch.id == dispatch_id).values(finished_at=None))
    return queued


def skip_pending(conn: Connection | Session, subscriber_id: int, list_id: int | None) -> int:
    """Skip what a running dispatch still has waiting for a person (on ``list_id``, or every list).

    A sending process checks each batch when it claims it; this takes the person out
    of the queue at once, even from a batch already claimed: only a delivery already
    marked ``sending`` can still reach them (the message on the wire on a connection,
    and the next one, marked while the server reads it: at most two per connection).
    """
    values = {"b_subscriber": subscriber_id, "b_now": utcnow()}
    if list_id is None:
        result = conn.execute(_SKIP_PENDING_EVERY_LIST, values)
    else:
        result = conn.execute(_SKIP_PENDING, {**values, "b_list": list_id})
    return int(result.rowcount)  # type: ignore[attr-defined]


def _skip_pending(one_list: bool) -> Update:
    # Built once (below): every unsubscribe runs it, the web app's one-click POST included.
    deliveries, dispatches = cast(Table, Delivery.__table__), cast(Table, Dispatch.__table__)
    running = select(dispatches.c.id).where(dispatches.c.finished_at.is_(None))
    if one_list:
        running = running.where(dispatches.c.list_id == bindparam("b_list"))
    return (
        update(deliveries)
        .where(
            deliveries.c.subscriber_id == bindparam("b_subscriber"),
            deliveries.c.dispatch_id.in_(running.scalar_subquery()),
            # Claimed too: a sending process marks a delivery "sending" only while it is
            # still claimed, and drops it otherwise.
            deliveries.c.status.in_([DeliveryStatus.QUEUED, DeliveryStatus.CLAIMED, DeliveryStatus.DEFERRED]),
        )
        .values(
            status=DeliveryStatus.SKIPPED, reply="unsubscribed before sending", updated_at=bindparam("b_now")
        )
    )


_SKIP_PENDING = _skip_pending(one_list=True)
_SKIP_PENDING_EVERY_LIST = _skip_pending(one_list=False)


def next_due(conn: Connection, dispatch_id: int) -> dt.datetime | None:
    """Return when the earliest deferred delivery is due, if any."""
    value = conn.scalar(
        select(func.min(Delivery.next_attempt_at)).where(
            Delivery.dispatch_id == dispatch_id, Delivery.status == DeliveryStatus.DEFERRED
        )
    )
    return as_utc(value) if value is not None else None


def _lock_dispatch(conn: Connection | Session, dispatch_id: int) -> None:
    """Hold the dispatch's row until the transaction ends (PostgreSQL; SQLite has one writer)."""
    conn.execute(select(Dispatch.id).where(Dispatch.id == dispatch_id).with_for_update())


def finish_if_done(conn: Connection, dispatch_id: int) -> bool:
    """Mark the dispatch finished when nothing is queued, claimed, sending or deferred."""
    # Counted and marked under the dispatch's lock, which ``requeue`` takes too: deliveries
    # queued again by another process between the count and the mark would otherwise be
    # left queued in a dispatch marked finished.
    _lock_dispatch(conn, dispatch_id)
    active = conn.scalar(
        select(func.count()).where(Delivery.dispatch_id == dispatch_id, Delivery.status.in_(ACTIVE))
    )
    if active:
        return False
    conn.execute(
        update(Dispatch)
        .where(Dispatch.id == dispatch_id, Dispatch.finished_at.is_(None))
        .values(finished_at=utcnow())
    )
    return True


def unknown_deliveries(conn: Connection | Session, dispatch_id: int) -> Sequence[tuple[int, str]]:
    """Return (id, address) of every ``unknown`` delivery, in id order."""
    return conn.execute(
        select(Delivery.id, Delivery.email)
        .where(Delivery.dispatch_id == dispatch_id, Delivery.status == DeliveryStatus.UNKNOWN)
        .order_by(Delivery.id)
    ).all()


def failed_deliveries(conn: Connection | Session, dispatch_id: int) -> Sequence[tuple[int, str]]:
    """Return (id, server reply) of every ``failed`` delivery, in id order."""
    return conn.execute(
        select(Delivery.id, Delivery.reply)
        .where(Delivery.dispatch_id == dispatch_id, Delivery.status == DeliveryStatus.FAILED)
        .order_by(Delivery.id)
    ).all()


def erase_deliveries(conn: Connection, subscriber_id: int, scrub: Callable[[str], str]) -> dict[str, int]:
    """Erase a person from their deliveries: skip what is still waiting, then drop address and name.

    The skip comes first, in the same transaction: a sending process marks a delivery
    ``sending`` only while it is still claimed, so nothing more goes to the person once
    this commits. The rows stay (the dispatch's totals add up), with no address and no
    name; each server reply loses the address and the name (``scrub``). Returns
    ``deliveries`` (rows erased) and ``skipped``.
    """
    skipped = skip_pending(conn, subscriber_id, None)
    rows = conn.execute(
        select(Delivery.id, Delivery.reply).where(Delivery.subscriber_id == subscriber_id)
    ).all()
    conn.execute(update(Delivery).where(Delivery.subscriber_id == subscriber_id).values(email="", name=""))
    for delivery_id, reply in rows:
        if scrub(reply) != reply:
            conn.execute(update(Delivery).where(Delivery.id == delivery_id).values(reply=scrub(reply)))
    return {"deliveries": len(rows), "skipped": skipped}
