"""Subscribers: normalise addresses, and the everyday changes with their consent history.

Every change of consent writes a ``ConsentEvent``; nothing here deletes one.
An unsubscribed, bounced or complaining person is never subscribed again
without an explicit, recorded resubscription.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Connection, String, Table, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from . import outbox
from .config import ListSettings
from .db import copy_rows, stored_time
from .errors import MailoutError
from .languages import canonical
from .models import (
    ConsentEvent,
    ConsentText,
    EventKind,
    MailingList,
    Source,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    utcnow,
)
from .segments import Segment


def _stored_length(column: str) -> int:
    """Return the length of a ``String`` column of the subscribers table."""
    kind = Subscriber.__table__.c[column].type
    if not isinstance(kind, String) or kind.length is None:  # pragma: no cover - a schema change
        raise TypeError(f"subscribers.{column} is not a String of fixed length")
    return kind.length


#: The longest name, organisation and language the ``subscribers`` table stores.
MAX_LENGTHS = {key: _stored_length(key) for key in ("name", "organisation", "language")}


class InvalidSubscriber(MailoutError):
    """An address or a field that cannot be stored; the message says why."""


class SubscriberNotFound(MailoutError):
    """No subscriber has this address."""


# A line break or NUL in a field: refused, never cleaned.
_BREAK_OR_NUL = re.compile("[\r\n\0]")

# RFC 5322 dot-atom: the local part of nearly every real address. Anything else
# (quotes, non-ASCII) goes through email-validator's full rules.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def normalise_email(raw: str) -> str:
    """Return ``raw`` trimmed, with its domain lower-cased and IDNA-encoded; raise if invalid."""
    value = raw.strip()
    if not value:
        raise InvalidSubscriber("empty address")
    if _BREAK_OR_NUL.search(value):
        raise InvalidSubscriber("address contains a line break or NUL")
    local, at, domain = value.rpartition("@")
    if at and len(local) <= 64 and len(value) <= 254 and _DOT_ATOM.fullmatch(local):
        # Lists repeat their domains: validating each once makes a large import twice as fast.
        try:
            return f"{local}@{_checked_domain(domain)}"
        except EmailNotValidError as exc:
            raise InvalidSubscriber(f"invalid address '{value}': {exc}") from None
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidSubscriber(f"invalid address '{value}': {exc}") from None
    return f"{checked.local_part}@{checked.ascii_domain}"


@lru_cache(maxsize=4096)
def _checked_domain(domain: str) -> str:
    """Return the IDNA-encoded ``domain``, checked by email-validator (syntax only: no DNS look-ups)."""
    return validate_email(f"postmaster@{domain}", check_deliverability=False).ascii_domain


def clean_fields(name: str, organisation: str, language: str) -> tuple[str, str, str]:
    """Return the fields trimmed and checked; raise ``InvalidSubscriber`` saying which one is wrong.

    The language is a BCP 47 tag, returned in its canonical form (``languages.canonical``).
    """
    values = {"name": name.strip(), "organisation": organisation.strip(), "language": language.strip()}
    for key, value in values.items():
        if _BREAK_OR_NUL.search(value):
            raise InvalidSubscriber(f"{key} contains a line break or NUL character")
        if len(value) > MAX_LENGTHS[key]:
            raise InvalidSubscriber(f"{key} is {len(value)} characters long; at most {MAX_LENGTHS[key]}")
    # Stored in its canonical form (FR and fr give fr, fr_be gives fr-BE), so that choosing
    # a reader's variant is comparing strings, in SQL too (outbox.language_choice).
    tag = canonical(values["language"]) if values["language"] else ""
    if tag is None:
        raise InvalidSubscriber(
            f"language '{values['language']}' is not a language tag such as en, fr or pt-BR"
        )
    return values["name"], values["organisation"], tag


def ensure_list(session: Session, settings: ListSettings) -> MailingList:
    """Return the database row of a configured list, creating or updating it from the settings."""
    row = session.scalars(select(MailingList).where(MailingList.name == settings.name)).one_or_none()
    if row is None:
        row = MailingList(name=settings.name, segment=settings.segment, description=settings.description)
        session.add(row)
        session.flush()
    elif (row.segment, row.description) != (settings.segment, settings.description):
        row.segment, row.description = settings.segment, settings.description
    return row


def find(session: Session, email: str) -> Subscriber:
    """Return the subscriber with ``email`` (any spelling that normalises the same)."""
    try:
        address = normalise_email(email)
    except InvalidSubscriber:
        address = email.strip()
    found = session.scalars(select(Subscriber).where(Subscriber.email_key == address.lower())).one_or_none()
    if found is None:
        raise SubscriberNotFound(f"no subscriber with the address '{email.strip()}'")
    return found


def record(
    session: Session,
    subscriber: Subscriber,
    kind: EventKind,
    source: Source,
    *,
    lst: MailingList | None = None,
    detail: str = "",
) -> None:
    """Append one event to the consent history."""
    session.add(
        ConsentEvent(
            subscriber_id=subscriber.id,
            list_id=lst.id if lst else None,
            kind=kind,
            source=source,
            detail=detail,
        )
    )


def subscription(session: Session, subscriber: Subscriber, lst: MailingList) -> Subscription | None:
    return session.scalars(
        select(Subscription).where(
            Subscription.subscriber_id == subscriber.id, Subscription.list_id == lst.id
        )
    ).one_or_none()


def add(
    session: Session,
    lst: MailingList,
    email: str,
    *,
    name: str = "",
    organisation: str = "",
    language: str = "",
    source: Source = Source.MANUAL,
    detail: str = "",
) -> tuple[Subscriber, bool]:
    """Subscribe ``email`` to ``lst``; return the subscriber and whether anything changed.

    Someone who unsubscribed or bounced is refused: that takes ``resubscribe``.
    """
    address = normalise_email(email)
    name, organisation, language = clean_fields(name, organisation, language)
    person = session.scalars(select(Subscriber).where(Subscriber.email_key == address.lower())).one_or_none()
    if person is None:
        person = Subscriber(
            email=address, email_key=address.lower(), name=name, organisation=organisation, language=language
        )
        session.add(person)
        session.flush()
    elif person.status is not SubscriberStatus.SUBSCRIBED:
        raise InvalidSubscriber(
            f"{address} is {person.status}; use `mailout subscribers resubscribe` with a reason"
        )
    existing = subscription(session, person, lst)
    if existing is not None and existing.status is SubscriptionStatus.UNSUBSCRIBED:
        raise InvalidSubscriber(
            f"{address} unsubscribed from '{lst.name}'; use `mailout subscribers resubscribe` with a reason"
        )
    if existing is not None:
        return person, False
    session.add(Subscription(subscriber_id=person.id, list_id=lst.id))
    record(session, person, EventKind.SUBSCRIBED, source, lst=lst, detail=detail)
    return person, True


def unsubscribe(
    session: Session, person: Subscriber, source: Source, *, lst: MailingList | None = None, detail: str = ""
) -> int:
    """Unsubscribe ``person`` from ``lst``, or from every list when ``lst`` is None; return how many changed."""
    changed = _leave(session, person.id, lst.id if lst else None, source, detail)
    session.expire(person, ["status", "updated_at"])  # written below the ORM: read again when asked
    return changed


@dataclass(frozen=True)
class LinkUnsubscribe:
    """What an unsubscribe link did: the list it names, and how many subscriptions ended."""

    list_name: str
    list_description: str
    changed: int


# The statements of an unsubscribe, built once: the web app makes them for every one-click
# POST, and building and keying a statement costs more than SQLite takes to run it.
_lists, _subscribers, _subscriptions = (
    cast(Table, m.__table__) for m in (MailingList, Subscriber, Subscription)
)
_NAMED_BY_LINK = select(_lists.c.name, _lists.c.description).where(
    _lists.c.id == bindparam("b_list"),
    select(_subscribers.c.id).where(_subscribers.c.id == bindparam("b_subscriber")).exists(),
)
_END_SUBSCRIPTIONS = (
    update(_subscriptions)
    .where(
        _subscriptions.c.subscriber_id == bindparam("b_subscriber"),
        _subscriptions.c.status == SubscriptionStatus.SUBSCRIBED,
    )
    .values(status=SubscriptionStatus.UNSUBSCRIBED, updated_at=bindparam("b_now"))
)
_END_SUBSCRIPTION = _END_SUBSCRIPTIONS.where(_subscriptions.c.list_id == bindparam("b_list"))
_END_SUBSCRIBER = (
    update(_subscribers)
    .where(
        _subscribers.c.id == bindparam("b_subscriber"), _subscribers.c.status == SubscriberStatus.SUBSCRIBED
    )
    .values(status=SubscriberStatus.UNSUBSCRIBED, updated_at=bindparam("b_now"))
)
_RECORD = insert(cast(Table, ConsentEvent.__table__))


def unsubscribe_by_link(
    conn: Connection, subscriber_id: int, list_id: int, source: Source, *, every_list: bool = False
) -> LinkUnsubscribe | None:
    """Unsubscribe the person a token names from its list (or every list); None if either is unknown.

    The web app's POST, in as few statements as the work takes: one to find the
    list and check the person, one update, the consent event if anything changed,
    and the skip of their queued messages.
    """
    row = conn.execute(_NAMED_BY_LINK, {"b_list": list_id, "b_subscriber": subscriber_id}).first()
    if row is None:
        return None
    name, description = row
    detail = f"from the link to list {name}" if every_list else ""
    changed = _leave(conn, subscriber_id, None if every_list else list_id, source, detail)
    return LinkUnsubscribe(name, description, changed)


def _leave(
    conn: Connection | Session,
    subscriber_id: int,
    list_id: int | None,
    source: Source,
    detail: str,
    *,
    page: str = "",
) -> int:
    """End the subscriptions (one list, or every list and the person's own status); record it once."""
    now = utcnow()
    ids = {"b_subscriber": subscriber_id, "b_now": now}
    if list_id is not None:
        changed = _rowcount(conn.execute(_END_SUBSCRIPTION, {**ids, "b_list": list_id}))
    else:
        # The person's row before their subscriptions: an import adding them to a list
        # holds that row (FOR SHARE) until it commits, so the subscriptions ended next
        # include the one it added.
        changed = _rowcount(conn.execute(_END_SUBSCRIBER, ids))
        changed += _rowcount(conn.execute(_END_SUBSCRIPTIONS, ids))
    if changed:
        conn.execute(
            _RECORD,
            {
                "subscriber_id": subscriber_id,
                "list_id": list_id,
                "kind": EventKind.UNSUBSCRIBED,
                "source": source,
                "detail": detail,
                "created_at": now,
                "page": page,
            },
        )
    outbox.skip_pending(conn, subscriber_id, list_id)
    return changed


def _rowcount(result: object) -> int:
    return int(result.rowcount)  # type: ignore[attr-defined]


def mark_bounced(conn: Connection, subscriber_id: int, detail: str) -> bool:
    """Suppress an address the server says does not exist, for every later dispatch; return whether it changed.

    On the send loop's connection, in the transaction that records the failed delivery.
    """
    now = utcnow()
    ids = {"b_subscriber": subscriber_id, "b_now": now}
    changed = _rowcount(conn.execute(_BOUNCE_SUBSCRIBER, ids))
    if changed:
        # Every list ends: resubscribing later brings back only the list it names.
        conn.execute(_END_SUBSCRIPTIONS, ids)
        conn.execute(
            _RECORD,
            {
                "subscriber_id": subscriber_id,
                "list_id": None,
                "kind": EventKind.BOUNCED,
                "source": Source.BOUNCE,
                "detail": detail[:500],
                "created_at": now,
            },
        )
    return bool(changed)


# Built once: a bounce report runs it for every dead address, ten thousand in a run.
_BOUNCE_SUBSCRIBER = (
    update(_subscribers)
    .where(
        _subscribers.c.id == bindparam("b_subscriber"), _subscribers.c.status == SubscriberStatus.SUBSCRIBED
    )
    .values(status=SubscriberStatus.BOUNCED, updated_at=bindparam("b_now"))
)


# --- what bounce and complaint reports do (``bounces.handle`` decides) -------------------


def bounce(session: Session, subscriber_id: int, detail: str) -> bool:
    """Suppress an address a bounce report says is dead, on every list; return whether it changed.

    Also skips what running dispatches still have queued for the person.
    """
    conn = session.connection()
    changed = mark_bounced(conn, subscriber_id, detail)
    if changed:
        outbox.skip_pending(conn, subscriber_id, None)
        _forget(session, subscriber_id)
    return changed


@dataclass(frozen=True)
class SoftBounce:
    """What one temporary failure did to a person's soft-bounce score."""

    score: int
    #: False when the score had risen on this UTC day already.
    rose: bool
    #: True when the score reached the threshold and the address was suppressed.
    suppressed: bool


def soft_bounce(
    session: Session,
    subscriber_id: int,
    now: dt.datetime,
    *,
    threshold: int,
    reset_days: int,
    detail: str,
) -> SoftBounce:
    """Count a temporary failure: the score rises at most once a UTC day; at ``threshold``, suppress.

    A failure more than ``reset_days`` after the previous one starts the score from 0.
    The person's row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite holds the
    write lock already), so two reports handled at once cannot both count the same day.
    """
    row = session.execute(
        select(Subscriber.soft_score, Subscriber.soft_day, Subscriber.soft_bounced_at)
        .where(Subscriber.id == subscriber_id)
        .with_for_update()
    ).one()
    score, day, last = int(row.soft_score), row.soft_day, row.soft_bounced_at
    now = now.astimezone(dt.UTC)
    today = now.date()
    if last is not None and now - outbox.as_utc(last) > dt.timedelta(days=reset_days):
        score, day = 0, None
    # Once a UTC day, and never for a day already counted (a clock put back, a late report).
    rose = day is None or today > day
    if rose:
        score, day = score + 1, today
    session.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id)
        # The newest failure's time: a late report about an older one does not move it back.
        .values(
            soft_score=score, soft_day=day, soft_bounced_at=max(now, outbox.as_utc(last)) if last else now
        )
    )
    suppressed = score >= threshold and bounce(
        session, subscriber_id, f"soft bounces on {score} days; the last: {detail}"
    )
    _forget(session, subscriber_id)
    return SoftBounce(score, rose, suppressed)


def complain(session: Session, subscriber_id: int, list_id: int | None, detail: str) -> int:
    """Act on a complaint: end the subscription to ``list_id``, or every one (None); return how many ended.

    Every list: the person's status becomes ``complained``. The consent event is of
    kind ``complained``, on the word of the feedback loop.
    """
    now = utcnow()
    ids = {"b_subscriber": subscriber_id, "b_now": now}
    if list_id is not None:
        changed = _rowcount(session.execute(_END_SUBSCRIPTION, {**ids, "b_list": list_id}))
    else:
        changed = _rowcount(
            session.execute(
                update(Subscriber)
                .where(Subscriber.id == subscriber_id, Subscriber.status == SubscriberStatus.SUBSCRIBED)
                .values(status=SubscriberStatus.COMPLAINED, updated_at=now)
            )
        )
        changed += _rowcount(session.execute(_END_SUBSCRIPTIONS, ids))
    if changed:
        session.execute(
            _RECORD,
            {
                "subscriber_id": subscriber_id,
                "list_id": list_id,
                "kind": EventKind.COMPLAINED,
                "source": Source.FEEDBACK_LOOP,
                "detail": detail[:500],
                "created_at": now,
            },
        )
    outbox.skip_pending(session, subscriber_id, list_id)
    _forget(session, subscriber_id)
    return changed


def _forget(session: Session, subscriber_id: int) -> None:
    """Have the session read the person again when asked: their row was written below the ORM."""
    loaded = session.identity_map.get(session.identity_key(Subscriber, subscriber_id))
    if loaded is not None:
        session.expire(loaded)


def resubscribe(session: Session, person: Subscriber, lst: MailingList, *, reason: str) -> None:
    """Subscribe again someone who left or bounced, recording who decided and why."""
    if not reason.strip():
        raise InvalidSubscriber("a resubscription needs a reason (--reason), kept in the consent history")
    existing = subscription(session, person, lst)
    if (
        person.status is SubscriberStatus.SUBSCRIBED
        and existing
        and existing.status is SubscriptionStatus.SUBSCRIBED
    ):
        raise InvalidSubscriber(f"{person.email} is subscribed to '{lst.name}' already")
    # Only the named list comes back: a bounce or a global unsubscribe ended every other one.
    person.status = SubscriberStatus.SUBSCRIBED
    # A fresh start: the temporary failures before it count no more.
    person.soft_score, person.soft_day, person.soft_bounced_at = 0, None, None
    if existing is None:
        session.add(Subscription(subscriber_id=person.id, list_id=lst.id))
    else:
        existing.status = SubscriptionStatus.SUBSCRIBED
    record(session, person, EventKind.RESUBSCRIBED, Source.MANUAL, lst=lst, detail=reason.strip())


@dataclass(frozen=True)
class Membership:
    list_name: str
    status: str
    since: dt.datetime


def memberships(session: Session, person: Subscriber) -> list[Membership]:
    rows = session.execute(
        select(MailingList.name, Subscription.status, Subscription.updated_at)
        .join(Subscription, Subscription.list_id == MailingList.id)
        .where(Subscription.subscriber_id == person.id)
        .order_by(MailingList.name)
    )
    return [Membership(name, str(status), since) for name, status, since in rows]


def history(session: Session, person: Subscriber) -> list[tuple[ConsentEvent, str | None]]:
    """Return every consent event of ``person``, oldest first, with its list's name."""
    rows = session.execute(
        select(ConsentEvent, MailingList.name)
        .outerjoin(MailingList, MailingList.id == ConsentEvent.list_id)
        .where(ConsentEvent.subscriber_id == person.id)
        .order_by(ConsentEvent.id)
    )
    return [(event, name) for event, name in rows]


def members(
    session: Session, *, list_name: str | None = None, status: str | None = None, batch: int = 1000
) -> Iterator[tuple[Subscriber, str]]:
    """Stream subscribers (with their status on ``list_name``), ordered by address."""
    query = select(Subscriber, Subscription.status if list_name else Subscriber.status).order_by(
        Subscriber.email
    )
    if list_name:
        query = (
            query.join(Subscription, Subscription.subscriber_id == Subscriber.id)
            .join(MailingList, MailingList.id == Subscription.list_id)
            .where(MailingList.name == list_name)
        )
        if status:
            query = query.where(Subscription.status == status)
    elif status:
        query = query.where(Subscriber.status == status)
    for person, state in session.execute(query.execution_options(yield_per=batch)):
        yield person, str(state)


def list_counts(session: Session) -> list[tuple[str, str, int]]:
    """Return (list, status, number) for every list, plus people by overall status under '*'."""
    per_list = session.execute(
        select(MailingList.name, Subscription.status, func.count())
        .join(Subscription, Subscription.list_id == MailingList.id)
        .group_by(MailingList.name, Subscription.status)
        .order_by(MailingList.name, Subscription.status)
    )
    overall = session.execute(
        select(Subscriber.status, func.count()).group_by(Subscriber.status).order_by(Subscriber.status)
    )
    return [(name, str(state), n) for name, state, n in per_list] + [
        ("*", str(state), n) for state, n in overall
    ]


# --- in bulk, for the importer -------------------------------------------------------
# The importer decides what each row of a file does; the statements that write it are
# here, with every other write of these tables. They go to the driver as plain SQL, as
# the send loop's do: SQLAlchemy's per-row parameter processing cost more than the
# statements themselves. On SQLite, executemany of prepared statements. On PostgreSQL,
# the new people go by COPY into a temporary table of this session, then one INSERT ...
# SELECT; subscriptions and their consent events in one statement, from arrays.
#
# Another process may write the same people between the importer's look-up and these
# statements. On SQLite it cannot: the import holds the write lock from its first
# statement (BEGIN IMMEDIATE). On PostgreSQL, ON CONFLICT DO NOTHING skips a person or
# subscription written meanwhile, and a subscription is added only while the person is
# still subscribed (their row locked FOR SHARE until the import commits: see
# ``unsubscribe``). The enums' values are written into the SQL (S608: no outside input).

_SUBSCRIBED = f"'{SubscriberStatus.SUBSCRIBED.value}'"
_LIST_SUBSCRIBED = f"'{SubscriptionStatus.SUBSCRIBED.value}'"
_LIST_UNSUBSCRIBED = f"'{SubscriptionStatus.UNSUBSCRIBED.value}'"


@dataclass(frozen=True)
class NewPerson:
    """A person to add: the cleaned fields of one row of a file."""

    email: str
    name: str
    organisation: str
    language: str


@dataclass(frozen=True)
class FieldChange:
    """New values for a stored person's name, organisation and language."""

    subscriber_id: int
    name: str
    organisation: str
    language: str


def add_many(conn: Connection, people: Sequence[NewPerson], now: dt.datetime) -> dict[str, int]:
    """Insert ``people`` (subscribed); return the id of each by address key.

    On PostgreSQL, someone another process added meanwhile is left as stored, and
    their id returned too.
    """
    if not people:
        return {}
    at = stored_time(conn, now)
    rows = [(p.email, p.email.lower(), p.name, p.organisation, p.language) for p in people]
    keys = [key for _, key, *_ in rows]
    if conn.dialect.name != "postgresql":
        conn.exec_driver_sql(
            "INSERT INTO subscribers (email, email_key, name, organisation, language, status,"  # noqa: S608
            f" created_at, updated_at) VALUES (?, ?, ?, ?, ?, {_SUBSCRIBED}, ?, ?)",
            [(*row, at, at) for row in rows],
        )
        marks = ", ".join("?" * len(keys))
        found = conn.exec_driver_sql(
            f"SELECT email_key, id FROM subscribers WHERE email_key IN ({marks})",  # noqa: S608
            tuple(keys),
        ).all()
        return {str(key): int(sid) for key, sid in found}
    _stage(conn, "mailout_staged_people", _STAGED_PEOPLE, rows)
    added = conn.exec_driver_sql(
        "INSERT INTO subscribers (email, email_key, name, organisation, language, status,"  # noqa: S608
        f" created_at, updated_at) SELECT email, email_key, name, organisation, language, {_SUBSCRIBED},"
        " %s, %s FROM mailout_staged_people ORDER BY email_key ON CONFLICT DO NOTHING"
        " RETURNING email_key, id",
        (at, at),
    )
    ids = {str(key): int(sid) for key, sid in added.all()}
    if len(ids) < len(keys):  # added by another process since the importer looked
        missing = [key for key in keys if key not in ids]
        found = conn.exec_driver_sql(
            "SELECT email_key, id FROM subscribers WHERE email_key = ANY(%s)", (missing,)
        ).all()
        ids |= {str(key): int(sid) for key, sid in found}
    return ids


def subscribe_many(
    conn: Connection, list_id: int, joining: Sequence[tuple[int, str]], source: Source, now: dt.datetime
) -> int:
    """Subscribe each (subscriber id, detail) to the list, each with its consent event; return how many.

    Only people still subscribed, and not yet on the list, join it (on SQLite the
    importer's look-up, made under the same lock, has ensured it already).
    """
    if not joining:
        return 0
    at = stored_time(conn, now)
    if conn.dialect.name != "postgresql":
        conn.exec_driver_sql(
            "INSERT INTO subscriptions (subscriber_id, list_id, status, created_at, updated_at)"  # noqa: S608
            f" VALUES (?, ?, {_LIST_SUBSCRIBED}, ?, ?)",
            [(sid, list_id, at, at) for sid, _ in joining],
        )
        conn.exec_driver_sql(
            "INSERT INTO consent_events (subscriber_id, list_id, kind, source, detail, created_at)"  # noqa: S608
            f" VALUES (?, ?, '{EventKind.SUBSCRIBED.value}', ?, ?, ?)",
            [(sid, list_id, source.value, detail, at) for sid, detail in joining],
        )
        return len(joining)
    # One statement: the consent events are those of the subscriptions actually added.
    # The ids as an array, not a join: the planner then probes the primary key, even
    # when the table has grown in this very transaction and has no statistics yet.
    joined = conn.exec_driver_sql(
        "WITH joining AS (SELECT * FROM unnest(%(ids)s::integer[], %(details)s::text[]) AS j(id, detail)),"  # noqa: S608
        " joined AS ("
        " INSERT INTO subscriptions (subscriber_id, list_id, status, created_at, updated_at)"
        f" SELECT s.id, %(list)s, {_LIST_SUBSCRIBED}, %(at)s, %(at)s FROM subscribers s"
        f" WHERE s.id = ANY(%(ids)s) AND s.status = {_SUBSCRIBED} ORDER BY s.id FOR SHARE"
        " ON CONFLICT (subscriber_id, list_id) DO NOTHING RETURNING subscriber_id)"
        " INSERT INTO consent_events (subscriber_id, list_id, kind, source, detail, created_at)"
        f" SELECT joined.subscriber_id, %(list)s, '{EventKind.SUBSCRIBED.value}', %(source)s, joining.detail,"
        " %(at)s FROM joined JOIN joining ON joining.id = joined.subscriber_id",
        {
            "ids": [sid for sid, _ in joining],
            "details": [detail for _, detail in joining],
            "list": list_id,
            "at": at,
            "source": source.value,
        },
    )
    return int(joined.rowcount)


def update_fields_many(conn: Connection, changes: Sequence[FieldChange], now: dt.datetime) -> None:
    """Write changed names, organisations and languages (never the status) in one batch."""
    if not changes:
        return
    at = stored_time(conn, now)
    if conn.dialect.name != "postgresql":
        conn.exec_driver_sql(
            "UPDATE subscribers SET name = ?, organisation = ?, language = ?, updated_at = ? WHERE id = ?",
            [(c.name, c.organisation, c.language, at, c.subscriber_id) for c in changes],
        )
        return
    conn.exec_driver_sql(
        "UPDATE subscribers SET name = v.name, organisation = v.organisation, language = v.language,"
        " updated_at = %s FROM unnest(%s::integer[], %s::text[], %s::text[], %s::text[])"
        " AS v(id, name, organisation, language) WHERE subscribers.id = v.id",
        (
            at,
            [c.subscriber_id for c in changes],
            [c.name for c in changes],
            [c.organisation for c in changes],
            [c.language for c in changes],
        ),
    )


def unsubscribe_many(
    conn: Connection,
    list_id: int,
    leaving: Sequence[tuple[int, int, str]],
    source: Source,
    now: dt.datetime,
) -> None:
    """End each (subscription id, subscriber id, detail) on the list, each with its consent event."""
    if not leaving:
        return
    at = stored_time(conn, now)
    sql = f"UPDATE subscriptions SET status = {_LIST_UNSUBSCRIBED}, updated_at = ? WHERE id = ?"  # noqa: S608
    if conn.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    conn.exec_driver_sql(sql, [(at, subscription_id) for subscription_id, _, _ in leaving])
    conn.execute(
        insert(ConsentEvent),
        [
            {
                "subscriber_id": sid,
                "list_id": list_id,
                "kind": EventKind.UNSUBSCRIBED,
                "source": source,
                "detail": detail,
                "created_at": now,
            }
            for _, sid, detail in leaving
        ],
    )


# Temporary tables of this session (each connection sees only its own), emptied before
# each use and dropped at the end of the transaction.
_STAGED_PEOPLE = "email text, email_key text, name text, organisation text, language text"


def _stage(conn: Connection, table: str, columns: str, rows: Iterable[tuple[object, ...]]) -> None:
    """Copy ``rows`` into the session's temporary ``table`` (PostgreSQL), replacing what it held."""
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {table} ({columns}) ON COMMIT DROP")
    conn.exec_driver_sql(f"TRUNCATE {table}")
    names = ", ".join(column.split()[0] for column in columns.split(", "))
    copy_rows(conn, f"COPY {table} ({names}) FROM STDIN", rows)


# --- erasure (``privacy.erase`` decides; each table is scrubbed by its owner) ----------------


def erased_key(subscriber_id: int) -> str:
    """Return the address a tombstone keeps: no "@", so it never matches an address."""
    return f"erased-{subscriber_id}"


def erase_subscriber(conn: Connection, subscriber_id: int, scrub: Callable[[str], str]) -> dict[str, int]:
    """Make a person's row a tombstone and scrub their consent history; return what changed per table.

    The row stays (their deliveries and consent events point at it) with neither
    address nor name: ``erased-<id>``, status ``erased``, every subscription ended
    (with one consent event saying why). The consent events keep what happened and
    when; their detail and page lose the address and the name (``scrub``), their IP
    address goes. In the caller's transaction (``privacy.erase``).
    """
    now = utcnow()
    ids = {"b_subscriber": subscriber_id, "b_now": now}
    ended = _rowcount(conn.execute(_END_SUBSCRIPTIONS, ids))
    if ended:
        conn.execute(
            _RECORD,
            {
                "subscriber_id": subscriber_id,
                "list_id": None,
                "kind": EventKind.UNSUBSCRIBED,
                "source": Source.MANUAL,
                "detail": "erased on request",
                "created_at": now,
            },
        )
    events = conn.execute(
        select(ConsentEvent.id, ConsentEvent.detail, ConsentEvent.page, ConsentEvent.ip).where(
            ConsentEvent.subscriber_id == subscriber_id
        )
    ).all()
    scrubbed = 0
    for event_id, detail, page, ip in events:
        values = {"detail": scrub(detail), "page": scrub(page), "ip": None}
        if (values["detail"], values["page"], None) != (detail, page, ip):
            conn.execute(update(ConsentEvent).where(ConsentEvent.id == event_id).values(**values))
            scrubbed += 1
    tombstone = erased_key(subscriber_id)
    conn.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .values(
            email=tombstone,
            email_key=tombstone,
            name="",
            organisation="",
            language="",
            status=SubscriberStatus.ERASED,
            soft_score=0,
            soft_day=None,
            soft_bounced_at=None,
            updated_at=now,
        )
    )
    return {"subscribers": 1, "subscriptions": ended, "consent_events": scrubbed}


# --- sign-ups (double opt-in): the consent texts shown, and the confirmed joining -----------
# ``signup.confirm`` calls ``join_by_signup`` in its transaction; the form's request stores
# the consent text it showed with ``store_consent_text``. Plain Core statements on the
# caller's connection (the web app has no ORM session).

_consent_texts = cast(Table, ConsentText.__table__)


def consent_sha256(text: str) -> str:
    """Return the SHA-256 (hex) of a consent text, as the consent events name it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def store_consent_text(conn: Connection, text: str, language: str, now: dt.datetime) -> str:
    """Keep ``text`` (once per version, by its SHA-256) and return its SHA-256.

    The same statement whether the text is new or not; two requests at once keep it once.
    """
    digest = consent_sha256(text)
    insert_row = _dialect_insert(conn, _consent_texts).values(
        sha256=digest, language=language, text=text, created_at=now
    )
    conn.execute(insert_row.on_conflict_do_nothing(index_elements=["sha256"]))
    return digest


def consent_texts(conn: Connection, digests: Iterable[str]) -> dict[str, str]:
    """Return the texts kept under these SHA-256 digests (for an export, or a proof)."""
    wanted = sorted(set(digests))
    if not wanted:
        return {}
    rows = conn.execute(
        select(_consent_texts.c.sha256, _consent_texts.c.text).where(_consent_texts.c.sha256.in_(wanted))
    )
    return {str(sha): str(text) for sha, text in rows}


def _dialect_insert(conn: Connection, table: Table) -> Any:
    """Return the dialect's INSERT (with ``on_conflict_do_nothing``) for ``table``."""
    if conn.dialect.name == "postgresql":
        return postgresql_insert(table)
    return sqlite_insert(table)


@dataclass(frozen=True)
class SignupJoin:
    """A confirmed sign-up, as ``signup.confirm`` hands it over."""

    email: str
    name: str
    language: str
    #: The lists asked for (configured, open to sign-up).
    lists: tuple[ListSettings, ...]
    #: When the form was sent, and when the link was followed (the event's ``created_at``).
    requested_at: dt.datetime
    confirmed_at: dt.datetime
    page: str
    consent_sha256: str
    #: Only with ``signup.store_ip``; else None.
    ip: str | None = None


@dataclass(frozen=True)
class SignupJoined:
    """What ``join_by_signup`` did."""

    subscriber_id: int
    #: The lists whose subscription began (or began again): one consent event each.
    joined: tuple[str, ...]
    #: Whether the person had left before (unsubscribed or complained): RESUBSCRIBED events.
    returned: bool


#: The person's states a confirmed sign-up cannot change: the address does not exist, or
#: the person was erased (their row has no address any more, so it never matches anyway).
_SIGNUP_REFUSED = (SubscriberStatus.BOUNCED, SubscriberStatus.ERASED)


def join_by_signup(conn: Connection, join: SignupJoin) -> SignupJoined | None:
    """Subscribe a confirmed sign-up to the lists it asked for; None when the address is refused.

    A new address becomes a subscriber. Someone who unsubscribed (or complained)
    comes back on the lists asked, and only those: their confirmation is their new
    consent, recorded as RESUBSCRIBED. A bounced or erased address is refused. A
    list the person is on already changes nothing and records nothing. Each list
    joined gets one consent event with the sign-up's proof: ``requested_at``,
    ``page``, ``consent_sha256``, ``ip`` (None unless ``signup.store_ip``), source
    ``sign-up``, ``created_at`` the confirmation.

    The person's row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite holds the
    write lock already), so an unsubscription or an import at the same moment waits.
    """
    address = normalise_email(join.email)
    key = address.lower()
    name, _, language = clean_fields(join.name, "", join.language)
    at = join.confirmed_at
    list_ids = _list_ids(conn, join.lists)
    person = _locked_person(conn, key)
    if person is None:
        conn.execute(
            _dialect_insert(conn, _subscribers)
            .values(
                email=address, email_key=key, name=name, organisation="", language=language,
                status=SubscriberStatus.SUBSCRIBED, created_at=at, updated_at=at,
            )
            .on_conflict_do_nothing(index_elements=["email_key"])
        )  # fmt: skip
        person = _locked_person(conn, key)
        assert person is not None
    subscriber_id, status = int(person[0]), SubscriberStatus(person[1])
    if status in _SIGNUP_REFUSED:
        return None
    returned = status in (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.COMPLAINED)
    changes: dict[str, object] = {"updated_at": at}
    if returned:
        # A fresh start, as ``resubscribe``: the temporary failures before it count no more.
        changes |= {
            "status": SubscriberStatus.SUBSCRIBED,
            "soft_score": 0,
            "soft_day": None,
            "soft_bounced_at": None,
        }
    # Their own word on the form: the name (if given) and the language they chose.
    if name:
        changes["name"] = name
    if language:
        changes["language"] = language
    conn.execute(update(_subscribers).where(_subscribers.c.id == subscriber_id).values(**changes))
    held = {
        int(list_id): SubscriptionStatus(state)
        for list_id, state in conn.execute(
            select(_subscriptions.c.list_id, _subscriptions.c.status).where(
                _subscriptions.c.subscriber_id == subscriber_id,
                _subscriptions.c.list_id.in_(list_ids.values()),
            )
        )
    }
    joined: list[str] = []
    events: list[dict[str, object]] = []
    for lst in join.lists:
        list_id = list_ids[lst.name]
        state = held.get(list_id)
        if state is SubscriptionStatus.SUBSCRIBED and not returned:
            continue
        if state is None:
            conn.execute(
                insert(_subscriptions).values(
                    subscriber_id=subscriber_id, list_id=list_id, status=SubscriptionStatus.SUBSCRIBED,
                    created_at=at, updated_at=at,
                )
            )  # fmt: skip
        elif state is not SubscriptionStatus.SUBSCRIBED:
            conn.execute(
                update(_subscriptions)
                .where(_subscriptions.c.subscriber_id == subscriber_id, _subscriptions.c.list_id == list_id)
                .values(status=SubscriptionStatus.SUBSCRIBED, updated_at=at)
            )
        left_this_list = state is SubscriptionStatus.UNSUBSCRIBED
        joined.append(lst.name)
        events.append(
            {
                "subscriber_id": subscriber_id,
                "list_id": list_id,
                "kind": EventKind.RESUBSCRIBED if returned or left_this_list else EventKind.SUBSCRIBED,
                "source": Source.SIGNUP,
                "detail": "",
                "created_at": at,
                "requested_at": join.requested_at,
                "page": join.page[:500],
                "consent_sha256": join.consent_sha256,
                "ip": join.ip,
            }
        )
    if events:
        conn.execute(_RECORD, events)
    return SignupJoined(subscriber_id, tuple(joined), returned)


def _locked_person(conn: Connection, key: str) -> tuple[int, str] | None:
    row = conn.execute(
        select(_subscribers.c.id, _subscribers.c.status)
        .where(_subscribers.c.email_key == key)
        .with_for_update()
    ).first()
    return None if row is None else (int(row[0]), str(row[1]))


def _list_ids(conn: Connection, wanted: Sequence[ListSettings]) -> dict[str, int]:
    """Return the id of each configured list by name, writing its row first if it has none yet."""
    names = [lst.name for lst in wanted]
    found = {
        str(n): int(i)
        for n, i in conn.execute(select(_lists.c.name, _lists.c.id).where(_lists.c.name.in_(names)))
    }
    missing = [lst for lst in wanted if lst.name not in found]
    if missing:
        for lst in missing:
            conn.execute(
                _dialect_insert(conn, _lists)
                .values(name=lst.name, segment=lst.segment, description=lst.description)
                .on_conflict_do_nothing(index_elements=["name"])
            )
        found = {
            str(n): int(i)
            for n, i in conn.execute(select(_lists.c.name, _lists.c.id).where(_lists.c.name.in_(names)))
        }
    return found


def signup_state(conn: Connection, email_key: str, list_names: Sequence[str]) -> tuple[str, bool]:
    """Return a person's status ("" when unknown) and whether they are on every list named.

    For the sign-up form's request: it answers the same page whatever this says.
    """
    row = conn.execute(
        select(_subscribers.c.id, _subscribers.c.status).where(_subscribers.c.email_key == email_key)
    ).first()
    if row is None:
        return "", False
    on = conn.execute(
        select(func.count())
        .select_from(_subscriptions.join(_lists, _lists.c.id == _subscriptions.c.list_id))
        .where(
            _subscriptions.c.subscriber_id == row[0],
            _subscriptions.c.status == SubscriptionStatus.SUBSCRIBED,
            _lists.c.name.in_(list_names),
        )
    ).scalar_one()
    status = str(SubscriberStatus(row[1]))
    return status, status == SubscriberStatus.SUBSCRIBED and int(on) >= len(set(list_names))


# --- the reader's own preference page (a signed link in every message) ---------------------


@dataclass(frozen=True)
class ListChoice:
    """A list on a reader's preference page: whether they are on it, and whether they may join it."""

    id: int
    name: str
    description: str
    segment: str
    subscribed: bool
    #: False for a members list (a member may leave it there, never join it), and for a list
    #: they left (only the sign-up form's double opt-in brings them back to it).
    joinable: bool
    #: They were on it and left it.
    left: bool = False


@dataclass(frozen=True)
class Preferences:
    """What a reader's preference page shows of them."""

    subscriber_id: int
    email: str
    name: str
    language: str
    status: SubscriberStatus
    lists: tuple[ListChoice, ...]


def preferences_of(
    conn: Connection, subscriber_id: int, list_id: int, open_lists: Iterable[str]
) -> Preferences | None:
    """Return what a preference link's page shows, or None for an unknown (or erased) person or list.

    The lists: those named in ``open_lists`` (the lists open to sign-up) that have a row,
    and every list the person is on now, a members list included (to leave it).
    """
    person = conn.execute(
        select(
            _subscribers.c.email, _subscribers.c.name, _subscribers.c.language, _subscribers.c.status
        ).where(_subscribers.c.id == subscriber_id)
    ).first()
    known = conn.execute(select(_lists.c.id).where(_lists.c.id == list_id)).first()
    if person is None or known is None or person.status == SubscriberStatus.ERASED:
        return None
    held = {
        lid: status
        for lid, status in conn.execute(
            select(_subscriptions.c.list_id, _subscriptions.c.status).where(
                _subscriptions.c.subscriber_id == subscriber_id
            )
        )
    }
    on = {lid for lid, status in held.items() if status == SubscriptionStatus.SUBSCRIBED}
    gone = {lid for lid, status in held.items() if status == SubscriptionStatus.UNSUBSCRIBED}
    names = set(open_lists)
    rows = conn.execute(
        select(_lists.c.id, _lists.c.name, _lists.c.description, _lists.c.segment).order_by(_lists.c.name)
    )
    choices = tuple(
        ListChoice(
            row.id,
            row.name,
            row.description,
            str(row.segment),
            row.id in on,
            row.segment != Segment.MEMBER and row.name in names and row.id not in gone,
            row.id in gone,
        )
        for row in rows
        if row.id in on or (row.name in names and row.segment != Segment.MEMBER)
    )
    return Preferences(
        subscriber_id, person.email, person.name, person.language, SubscriberStatus(person.status), choices
    )


@dataclass(frozen=True)
class PreferenceChange:
    """What one POST of the preference page changed (names of lists, for its result page)."""

    #: "name", "language": the fields that changed.
    fields: tuple[str, ...] = ()
    joined: tuple[str, ...] = ()
    left: tuple[str, ...] = ()
    left_all: bool = False
    #: Lists asked for that were not joined: the person is not subscribed (they left, bounced
    #: or complained: only the sign-up form's double opt-in brings them back), or a members list.
    refused: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.fields or self.joined or self.left or self.left_all)


_CHANGE_FIELD = (
    update(_subscribers)
    .where(_subscribers.c.id == bindparam("b_subscriber"))
    .values(updated_at=bindparam("b_now"))
)


def update_preferences(
    conn: Connection,
    subscriber_id: int,
    list_id: int,
    *,
    name: str,
    language: str,
    lists: Mapping[int, bool],
    leave_all: bool,
    page: str,
    consent_text: str = "",
    consent_language: str = "",
) -> PreferenceChange | None:
    """Apply a preference page's POST; return what changed, or None for an unknown or erased person.

    ``lists`` says, for each list the page offered (list id -> wanted), whether the
    reader wants it; the caller offers only the lists ``preferences_of`` returned.
    Every change is a consent event (``Source.PREFERENCES``, on ``page``): a changed
    name or language is one ``changed`` event each (the detail never holds the
    address, nor the name), and each list joined or left one ``subscribed`` or
    ``unsubscribed`` event; nothing changed, no event. ``leave_all`` is the
    unsubscribe link's every-list path (the person's status too, and their queued
    messages skipped). A list is joined only by someone whose status is
    ``subscribed``, never a members list, and never a list they left (that takes the
    sign-up form's double opt-in: their new consent); a list joined records the
    SHA-256 of ``consent_text``, the text the page showed. Name and language are checked as an
    import checks them (``clean_fields``; the language canonical), and raise
    ``InvalidSubscriber`` before anything is written.

    The person's row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite holds the
    write lock already), so two POSTs, or a POST and an unsubscribe, follow one another.
    """
    name, _, language = clean_fields(name, "", language)
    person = conn.execute(
        select(_subscribers.c.name, _subscribers.c.language, _subscribers.c.status)
        .where(_subscribers.c.id == subscriber_id)
        .with_for_update()
    ).first()
    if person is None or person.status == SubscriberStatus.ERASED:
        return None
    if conn.execute(select(_lists.c.id).where(_lists.c.id == list_id)).first() is None:
        return None
    now = utcnow()
    event = {
        "subscriber_id": subscriber_id,
        "source": Source.PREFERENCES,
        "page": page[:500],
        "created_at": now,
    }
    fields = []
    if name != person.name:
        conn.execute(_CHANGE_FIELD.values(name=name), {"b_subscriber": subscriber_id, "b_now": now})
        # Which field only: a name is personal data, kept in one place (the subscriber's row).
        conn.execute(_RECORD, {**event, "list_id": None, "kind": EventKind.CHANGED, "detail": "name changed"})
        fields.append("name")
    if language != person.language:
        conn.execute(_CHANGE_FIELD.values(language=language), {"b_subscriber": subscriber_id, "b_now": now})
        detail = f"language: {person.language or '-'} -> {language or '-'}"
        conn.execute(_RECORD, {**event, "list_id": None, "kind": EventKind.CHANGED, "detail": detail})
        fields.append("language")
    known = {
        row.id: row
        for row in conn.execute(
            select(_lists.c.id, _lists.c.name, _lists.c.segment).where(_lists.c.id.in_(list(lists)))
        )
    }
    current = {
        lid: status
        for lid, status in conn.execute(
            select(_subscriptions.c.list_id, _subscriptions.c.status).where(
                _subscriptions.c.subscriber_id == subscriber_id, _subscriptions.c.list_id.in_(list(known))
            )
        )
    }
    if leave_all:
        ended = _leave(
            conn,
            subscriber_id,
            None,
            Source.PREFERENCES,
            "every list, from the preference page",
            page=page[:500],
        )
        return PreferenceChange(tuple(fields), left_all=bool(ended))
    joined, left, refused = [], [], []
    for lid, wanted in lists.items():
        row = known.get(lid)
        if row is None:
            continue
        on = current.get(lid) == SubscriptionStatus.SUBSCRIBED
        if on and not wanted:
            if _leave(conn, subscriber_id, lid, Source.PREFERENCES, "", page=page[:500]):
                left.append(row.name)
        elif wanted and not on:
            if (
                person.status != SubscriberStatus.SUBSCRIBED
                or row.segment == Segment.MEMBER
                or lid in current  # on it once, and left: only a new double opt-in brings them back
            ):
                refused.append(row.name)
                continue
            conn.execute(
                insert(_subscriptions).values(
                    subscriber_id=subscriber_id,
                    list_id=lid,
                    status=SubscriptionStatus.SUBSCRIBED,
                    created_at=now,
                    updated_at=now,
                )
            )
            consent = store_consent_text(conn, consent_text, consent_language, now) if consent_text else None
            conn.execute(
                _RECORD,
                {
                    **event,
                    "list_id": lid,
                    "kind": EventKind.SUBSCRIBED,
                    "detail": "",
                    "consent_sha256": consent,
                },
            )
            joined.append(row.name)
    return PreferenceChange(tuple(fields), tuple(joined), tuple(left), False, tuple(refused))
