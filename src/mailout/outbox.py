"""Dispatches and deliveries: the durable, resume-safe record of who got what.

A dispatch is written with one delivery per recipient, all ``queued``, in the
same transaction (recipients and the rendered variant frozen). Then:

    queued --claim--> claimed --on the wire--> sending --250--> sent
                         |                        |--4xx--> deferred --due--> claimed ...
                         |                        |--5xx--> failed
                         +--unsubscribed--> skipped

Each step is committed before the next message goes on the same connection,
so a process killed at any moment leaves at most one ``sending`` delivery per
connection: those become ``unknown`` (never resent unless asked), while its
``claimed`` deliveries go back to ``queued``. A process is known dead when its
heartbeat in ``workers`` is older than ``sending.worker_timeout``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    Connection,
    DateTime,
    Integer,
    String,
    and_,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, Select

from .errors import MailoutError
from .models import (
    ConsentEvent,
    Delivery,
    DeliveryStatus,
    Dispatch,
    EventKind,
    MailingList,
    Source,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Worker,
    utcnow,
)
from .render import Variant

ACTIVE = (DeliveryStatus.QUEUED, DeliveryStatus.CLAIMED, DeliveryStatus.SENDING, DeliveryStatus.DEFERRED)


class DispatchExists(MailoutError):
    """The issue was already sent to this list."""


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


def find_dispatch(session: Session, issue: str, lst: MailingList) -> Dispatch | None:
    """Return the newest dispatch of ``issue`` to ``lst``, if any."""
    return session.scalars(
        select(Dispatch)
        .where(Dispatch.issue == issue, Dispatch.list_id == lst.id)
        .order_by(Dispatch.id.desc())
        .limit(1)
    ).first()


def recipients_query(lst: MailingList) -> Select[int, str, str]:
    """Select who a dispatch to ``lst`` goes to: subscribed people with a subscribed subscription."""
    return (
        select(Subscriber.id, Subscriber.email, Subscriber.name)
        .join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .where(
            Subscription.list_id == lst.id,
            Subscription.status == SubscriptionStatus.SUBSCRIBED,
            Subscriber.status == SubscriberStatus.SUBSCRIBED,
        )
    )


def count_recipients(session: Session, lst: MailingList) -> int:
    return int(session.scalar(select(func.count()).select_from(recipients_query(lst).subquery())) or 0)


def create_dispatch(
    session: Session,
    issue: str,
    lst: MailingList,
    variant: Variant,
    *,
    from_name: str,
    from_address: str,
    reply_to: str,
) -> Dispatch:
    """Freeze the variant and the recipients: one dispatch, one queued delivery per recipient."""
    dispatch = Dispatch(
        key=f"mo{secrets.token_hex(8)}",
        issue=issue,
        list_id=lst.id,
        segment=str(variant.segment),
        subject=variant.subject,
        preheader=variant.preheader,
        html=variant.html,
        text=variant.text,
        tokens=json.dumps(dict(variant.tokens)),
        greeting_fallback=variant.greeting_fallback,
        from_name=from_name,
        from_address=from_address,
        reply_to=reply_to,
        total=0,
        paused_reason="",
    )
    session.add(dispatch)
    session.flush()
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
            ).order_by(recipients.c.id),
        )
    )
    dispatch.total = int(
        session.scalar(select(func.count()).select_from(Delivery).where(Delivery.dispatch_id == dispatch.id))
        or 0
    )
    return dispatch


def frozen_variant(dispatch: Dispatch) -> Variant:
    """Return the variant exactly as frozen with the dispatch."""
    from .issues import Segment

    return Variant(
        slug=dispatch.issue,
        segment=Segment(dispatch.segment),
        subject=dispatch.subject,
        preheader=dispatch.preheader,
        html=dispatch.html,
        text=dispatch.text,
        tokens=json.loads(dispatch.tokens),
        greeting_fallback=dispatch.greeting_fallback,
        items_shown=0,
        items_hidden=0,
    )


def counts(conn: Connection | Session, dispatch_id: int) -> dict[DeliveryStatus, int]:
    """Return how many deliveries are in each state (every state listed, zero or not)."""
    rows = conn.execute(
        select(Delivery.status, func.count())
        .where(Delivery.dispatch_id == dispatch_id)
        .group_by(Delivery.status)
    ).all()
    found = {DeliveryStatus(status): int(n) for status, n in rows}
    return {status: found.get(status, 0) for status in DeliveryStatus}


# --- workers -------------------------------------------------------------------


def worker_name() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}"


def register_worker(conn: Connection, dispatch_id: int, name: str) -> None:
    now = utcnow()
    conn.execute(
        insert(Worker).values(
            id=name,
            dispatch_id=dispatch_id,
            host=socket.gethostname()[:200],
            pid=os.getpid(),
            started_at=now,
            heartbeat_at=now,
        )
    )


def heartbeat(conn: Connection, name: str) -> None:
    conn.execute(update(Worker).where(Worker.id == name).values(heartbeat_at=utcnow()))


def live_workers(conn: Connection, dispatch_id: int, timeout: float) -> list[str]:
    cutoff = utcnow() - dt.timedelta(seconds=timeout)
    return list(
        conn.scalars(
            select(Worker.id).where(Worker.dispatch_id == dispatch_id, Worker.heartbeat_at >= cutoff)
        )
    )


def recover(conn: Connection, dispatch_id: int, timeout: float) -> tuple[int, int]:
    """Take over from dead workers: claimed go back to queued, sending become unknown.

    Returns how many deliveries were requeued and how many became unknown.
    """
    cutoff = utcnow() - dt.timedelta(seconds=timeout)
    dead = list(
        conn.scalars(select(Worker.id).where(Worker.dispatch_id == dispatch_id, Worker.heartbeat_at < cutoff))
    )
    # Deliveries claimed by a worker that left no row (its row was removed) are orphans too.
    alive = select(Worker.id).where(Worker.dispatch_id == dispatch_id, Worker.heartbeat_at >= cutoff)
    orphan = and_(
        Delivery.dispatch_id == dispatch_id, or_(Delivery.worker.in_(dead), Delivery.worker.not_in(alive))
    )
    now = utcnow()
    requeued = conn.execute(
        update(Delivery)
        .where(orphan, Delivery.status == DeliveryStatus.CLAIMED)
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
    return int(requeued), int(unknown)


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


def claim(conn: Connection, dispatch_id: int, worker: str, limit: int) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries; skip those who unsubscribed meanwhile.

    On PostgreSQL, ``FOR UPDATE SKIP LOCKED`` lets several processes claim at once
    without ever taking the same row; SQLite runs one writer at a time anyway.
    """
    now = utcnow()

    def due(condition: ColumnElement[bool], n: int) -> list[int]:
        # One status at a time: each is a range of the (dispatch_id, status, id) index, read
        # in order from its start. An OR of the two made every claim scan the rows already
        # sent, and a large dispatch slowed down as it went.
        query = (
            select(Delivery.id)
            .where(Delivery.dispatch_id == dispatch_id, condition)
            .order_by(Delivery.id)
            .limit(n)
            .with_for_update(skip_locked=True)
        )
        return list(conn.scalars(query))

    ids = due(Delivery.status == DeliveryStatus.QUEUED, limit)
    if len(ids) < limit:
        ids += due(
            and_(Delivery.status == DeliveryStatus.DEFERRED, Delivery.next_attempt_at <= now),
            limit - len(ids),
        )
    if not ids:
        return []
    rows = conn.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids))
        .values(status=DeliveryStatus.CLAIMED, worker=worker, updated_at=now)
        .returning(Delivery.id, Delivery.subscriber_id, Delivery.email, Delivery.name, Delivery.attempts)
    ).all()
    if not rows:
        return []
    # Checked now, not when the dispatch was written: someone who left since gets nothing more.
    # Looked up by subscriber only (their few subscriptions, through the unique index) and
    # filtered here: a condition on the list let SQLite scan the list's whole membership.
    list_id = conn.scalar(select(Dispatch.list_id).where(Dispatch.id == dispatch_id))
    memberships = conn.execute(
        select(Subscription.subscriber_id, Subscription.list_id, Subscription.status, Subscriber.status)
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Subscription.subscriber_id.in_([r.subscriber_id for r in rows]))
    ).all()
    keep = {
        subscriber_id
        for subscriber_id, member_of, status, person in memberships
        if member_of == list_id
        and status is SubscriptionStatus.SUBSCRIBED
        and person is SubscriberStatus.SUBSCRIBED
    }
    gone = [r.id for r in rows if r.subscriber_id not in keep]
    if gone:
        conn.execute(
            update(Delivery)
            .where(Delivery.id.in_(gone))
            .values(status=DeliveryStatus.SKIPPED, reply="unsubscribed before sending", updated_at=now)
        )
    return [
        Claimed(r.id, r.subscriber_id, r.email, r.name, r.attempts) for r in rows if r.subscriber_id in keep
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


# The two transitions every message makes run twice per message: they go to the driver
# as plain SQL, skipping SQLAlchemy's statement machinery, which cost more than the
# statements themselves. ``?`` placeholders, rewritten for drivers that want ``%s``.
_SENDING_SQL = (
    "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, updated_at = ? WHERE id = ?"
)
_SENT_SQL = "UPDATE deliveries SET status = 'sent', reply = ?, updated_at = ? WHERE id = ?"


def _driver(conn: Connection, sql: str, params: tuple[object, ...]) -> None:
    if conn.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    conn.exec_driver_sql(sql, params)


def _now_param(conn: Connection) -> object:
    """Return the current time as the column type would have stored it."""
    now = utcnow()
    if conn.dialect.name == "sqlite":
        # SQLAlchemy's SQLite DateTime storage format (UTC, no offset).
        return now.strftime("%Y-%m-%d %H:%M:%S.%f")
    return now


def mark_sending(conn: Connection, delivery_id: int) -> None:
    """Record that this delivery is going on the wire now."""
    _driver(conn, _SENDING_SQL, (_now_param(conn), delivery_id))


def mark_sent(conn: Connection, delivery_id: int, reply: str) -> None:
    """Record the server's acceptance."""
    _driver(conn, _SENT_SQL, (reply[:2000], _now_param(conn), delivery_id))


def mark_bounced(conn: Connection, subscriber_id: int, detail: str) -> None:
    """Suppress an address the server says does not exist, for every later dispatch."""
    changed = conn.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id, Subscriber.status == SubscriberStatus.SUBSCRIBED)
        .values(status=SubscriberStatus.BOUNCED, updated_at=utcnow())
    ).rowcount
    if changed:
        # Every list ends: resubscribing later brings back only the list it names.
        conn.execute(
            update(Subscription)
            .where(
                Subscription.subscriber_id == subscriber_id,
                Subscription.status == SubscriptionStatus.SUBSCRIBED,
            )
            .values(status=SubscriptionStatus.UNSUBSCRIBED, updated_at=utcnow())
        )
        conn.execute(
            insert(ConsentEvent).values(
                subscriber_id=subscriber_id,
                list_id=None,
                kind=EventKind.BOUNCED,
                source=Source.BOUNCE,
                detail=detail[:500],
                created_at=utcnow(),
            )
        )


def resend_unknown(conn: Connection, dispatch_id: int) -> int:
    """Queue the ``unknown`` deliveries again (they may get the message twice)."""
    return int(
        conn.execute(
            update(Delivery)
            .where(Delivery.dispatch_id == dispatch_id, Delivery.status == DeliveryStatus.UNKNOWN)
            .values(status=DeliveryStatus.QUEUED, worker="", updated_at=utcnow())
        ).rowcount
    )


def next_due(conn: Connection, dispatch_id: int) -> dt.datetime | None:
    """Return when the earliest deferred delivery is due, if any."""
    value = conn.scalar(
        select(func.min(Delivery.next_attempt_at)).where(
            Delivery.dispatch_id == dispatch_id, Delivery.status == DeliveryStatus.DEFERRED
        )
    )
    return as_utc(value) if value is not None else None


def finish_if_done(conn: Connection, dispatch_id: int) -> bool:
    """Mark the dispatch finished when nothing is queued, claimed, sending or deferred."""
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
    return conn.execute(
        select(Delivery.id, Delivery.email)
        .where(Delivery.dispatch_id == dispatch_id, Delivery.status == DeliveryStatus.UNKNOWN)
        .order_by(Delivery.id)
    ).all()
