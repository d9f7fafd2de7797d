"""Import a CSV file into a list, and sync every ``subscribers/<list>.csv`` into its list.

The file is streamed in chunks; each chunk is looked up and written with a few
statements in plain SQL (``subscribers`` writes them). The whole import is one
transaction: the good rows are written together at the end, an interrupted
import (Ctrl-C, a crash, kill -9) or one that fails half-way leaves the
database as it was, and ``--dry-run`` rolls the same work back. Two imports at
once take turns: on SQLite the write lock, on PostgreSQL an advisory lock
orders them, so neither waits on the other's rows half-way (a deadlock).

Which addresses the file held so far is kept in a temporary table, not in
memory, so that duplicates across chunks are found and ``sync`` can tell who is
on the list but missing from the file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from . import csvfile, privacy
from . import subscribers as people
from .config import ListSettings
from .db import copy_rows
from .errors import ConfigError
from .models import (
    MailingList,
    Source,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    utcnow,
)
from .paths import display_path
from .subscribers import InvalidSubscriber, clean_fields, ensure_list, normalise_email
from .tokens import Signer

CHUNK = 2000
#: PostgreSQL's advisory lock that an import holds until it commits ("mailout import").
IMPORT_LOCK = 0x6D61696C_696D7074
#: How many invalid or kept-out rows a report keeps in detail; the rest are counted.
DETAIL_LIMIT = 1000


@dataclass
class ImportReport:
    """What an import did, or would do with ``--dry-run``; counts add up to ``rows``."""

    file: str
    list_name: str
    dry_run: bool = False
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_out: int = 0
    duplicates: int = 0
    invalid: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)
    kept_out_rows: list[tuple[int, str, str]] = field(default_factory=list)
    missing: int = 0
    missing_sample: list[str] = field(default_factory=list)
    removed: int = 0
    #: --remove-missing was asked for, but the file had invalid rows: nobody was removed.
    removal_refused: bool = False
    format: csvfile.CsvFormat | None = None

    def note_invalid(self, line: int, reason: str) -> None:
        self.invalid += 1
        if len(self.problems) < DETAIL_LIMIT:
            self.problems.append((line, reason))

    def note_kept_out(self, line: int, email: str, reason: str) -> None:
        self.kept_out += 1
        if len(self.kept_out_rows) < DETAIL_LIMIT:
            self.kept_out_rows.append((line, email, reason))


@dataclass
class _Candidate:
    line: int
    email: str
    name: str
    organisation: str
    language: str

    def fill_from(self, other: _Candidate) -> None:
        """Merge a duplicate row in: its values fill the fields this one left empty."""
        self.name = self.name or other.name
        self.organisation = self.organisation or other.organisation
        self.language = self.language or other.language


_scratch = MetaData()
_SEEN = Table(
    "mailout_import_seen",
    _scratch,
    Column("email", String(320), primary_key=True),
    Column("line", Integer, nullable=False),
    prefixes=["TEMPORARY"],
)


def import_file(
    engine: Engine,
    path: Path,
    settings: ListSettings,
    *,
    encoding: str | None = None,
    delimiter: str | None = None,
    dry_run: bool = False,
    remove_missing: bool = False,
    report_missing: bool = False,
    progress: Callable[[int], None] | None = None,
    signer: Signer | None = None,
) -> ImportReport:
    """Import ``path`` into the list ``settings.name``; see the module docstring.

    ``signer`` tells erased addresses (``privacy``) by their keyed hash; without it
    (no ``MAILOUT_SECRET_KEY``) an import works only while nobody was erased.
    """
    name = display_path(path)
    report = ImportReport(file=name, list_name=settings.name, dry_run=dry_run)
    with (
        csvfile.read_rows(path, encoding=encoding, delimiter=delimiter) as (fmt, rows),
        engine.connect() as conn,
    ):
        report.format = fmt
        _SEEN.drop(conn, checkfirst=True)
        _SEEN.create(conn)
        conn.commit()
        try:
            with Session(bind=conn, expire_on_commit=False) as session:
                transaction = session.begin()
                if conn.dialect.name == "postgresql":  # through the session: in its transaction
                    session.connection().exec_driver_sql(f"SELECT pg_advisory_xact_lock({IMPORT_LOCK})")
                    # Each statement reaches its rows by an index. The tables grow in this
                    # transaction, where they have no statistics: the planner would scan
                    # the whole table for every chunk (five times slower at 50,000 rows).
                    session.connection().exec_driver_sql("SET LOCAL enable_seqscan = off")
                lst = ensure_list(session, settings)
                session.flush()
                # Read once, after the lock: an erasure takes it too, so an address erased
                # while this import waited is kept out, and one erased later is erased
                # with what this import wrote.
                keep_out = _Erased(privacy.erasure_dates(session.connection()), signer)
                for chunk in _chunks(rows, CHUNK):
                    _import_chunk(session, lst, chunk, name, report, keep_out)
                    if progress and len(chunk) == CHUNK:  # a long file: say it is alive
                        progress(report.rows)
                if report_missing or remove_missing:
                    # A file with bad rows may be missing people only because of them:
                    # never unsubscribe anyone on the word of such a file.
                    report.removal_refused = remove_missing and report.invalid > 0
                    _missing(session, lst, name, report, remove=remove_missing and not report.removal_refused)
                if dry_run:
                    transaction.rollback()
                else:
                    transaction.commit()
        finally:
            if conn.in_transaction():
                conn.rollback()
            _SEEN.drop(conn, checkfirst=True)
            conn.commit()
    return report


@dataclass(frozen=True)
class _Erased:
    """The erased addresses, by their keyed hash, and the signer that hashes a row's address."""

    dates: dict[str, dt.datetime]
    signer: Signer | None

    def __post_init__(self) -> None:
        if self.dates and self.signer is None:
            raise ConfigError(
                "erased addresses are kept out by a hash made with the secret key, and this database"
                ' holds erasures: set MAILOUT_SECRET_KEY (the key they were made with, or "new,old")'
            )

    def when(self, email: str) -> dt.datetime | None:
        """Return when ``email`` was erased, or None (one HMAC per key, and only if anyone was)."""
        if not self.dates or self.signer is None:
            return None
        for digest in self.signer.address_hashes(email):
            if digest in self.dates:
                return self.dates[digest]
        return None


def _chunks(rows: Iterable[csvfile.Row], size: int) -> Iterator[list[csvfile.Row]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _import_chunk(
    session: Session,
    lst: MailingList,
    rows: list[csvfile.Row],
    name: str,
    report: ImportReport,
    keep_out: _Erased,
) -> None:
    """Import one chunk of rows with a few statements, whatever its size."""
    conn = session.connection()
    candidates, seen_invalid = _read_rows(rows, report)
    earlier = _remember_seen(conn, candidates, seen_invalid)
    if not candidates:
        return
    plan = _classify(candidates, _stored(conn, lst, candidates), earlier, lst, report, keep_out)
    now = utcnow()
    new_ids = people.add_many(
        conn, [people.NewPerson(c.email, c.name, c.organisation, c.language) for c in plan.new_people], now
    )
    joining = plan.joining + [(new_ids[c.email.lower()], c) for c in plan.new_people]
    joined = people.subscribe_many(
        conn, lst.id, [(sid, f"{name}:{c.line}") for sid, c in joining], Source.IMPORT, now
    )
    if joined < len(joining):
        # PostgreSQL only: another process added or unsubscribed some of them meanwhile.
        report.added -= len(joining) - joined
        report.unchanged += len(joining) - joined
    people.update_fields_many(conn, plan.changes, now)


def _read_rows(rows: list[csvfile.Row], report: ImportReport) -> tuple[dict[str, _Candidate], dict[str, int]]:
    """Return the chunk's valid rows by lower-cased address, and the lines of those with a bad field.

    Invalid rows are noted in ``report``; a row repeating an address of this chunk
    is counted as a duplicate and fills the blanks of the first.
    """
    # Keyed by the lower-cased address: Ana@ and ana@ are one person.
    candidates: dict[str, _Candidate] = {}
    # A row with a valid address but a bad field is invalid, yet the person is in the
    # file: sync must not count them as missing.
    seen_invalid: dict[str, int] = {}
    for row in rows:
        report.rows += 1
        email = ""
        try:
            email = normalise_email(row.email)
            fields = clean_fields(row.name, row.organisation, row.language)
        except InvalidSubscriber as exc:
            report.note_invalid(row.line, str(exc))
            if email:
                seen_invalid.setdefault(email.lower(), row.line)
            continue
        candidate = _Candidate(row.line, email, *fields)
        key = email.lower()
        if key in candidates:
            report.duplicates += 1
            candidates[key].fill_from(candidate)
        else:
            candidates[key] = candidate
    return candidates, seen_invalid


def _remember_seen(
    conn: Connection, candidates: dict[str, _Candidate], seen_invalid: dict[str, int]
) -> dict[str, int]:
    """Record the chunk's addresses as seen in the file; return those an earlier chunk held, with their line."""
    keys = list(set(candidates) | set(seen_invalid))
    if not keys:
        return {}
    where, params = _among("email", keys, conn)
    found = conn.exec_driver_sql(f"SELECT email, line FROM {_SEEN.name} WHERE {where}", params)  # noqa: S608
    earlier: dict[str, int] = dict(found.all())
    fresh = {key: c.line for key, c in candidates.items()} | seen_invalid
    new_seen = [(key, line) for key, line in fresh.items() if key not in earlier]
    if new_seen and conn.dialect.name == "postgresql":
        copy_rows(conn, f"COPY {_SEEN.name} (email, line) FROM STDIN", new_seen)
    elif new_seen:
        conn.exec_driver_sql(f"INSERT INTO {_SEEN.name} (email, line) VALUES (?, ?)", new_seen)  # noqa: S608
    return earlier


def _among(column: str, keys: list[str], conn: Connection) -> tuple[str, tuple[object, ...]]:
    """Return the condition that ``column`` is one of ``keys``, and its parameters, for plain SQL."""
    if conn.dialect.name == "postgresql":
        return f"{column} = ANY(%s)", (keys,)
    return f"{column} IN ({', '.join('?' * len(keys))})", tuple(keys)


class _Stored(NamedTuple):
    """A stored person, with their subscription to the list being imported (None: not on it)."""

    id: int
    email: str
    email_key: str
    name: str
    organisation: str
    language: str
    status: SubscriberStatus
    subscription: SubscriptionStatus | None


def _stored(conn: Connection, lst: MailingList, candidates: dict[str, _Candidate]) -> dict[str, _Stored]:
    """Return the stored people among ``candidates`` by address key, with their subscription to ``lst``."""
    where, params = _among("s.email_key", list(candidates), conn)
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    rows = conn.exec_driver_sql(
        "SELECT s.id, s.email, s.email_key, s.name, s.organisation, s.language, s.status,"  # noqa: S608
        # A subquery, not a join: one probe of the unique index per person, whatever the
        # planner believes of a table that has grown in this transaction.
        f" (SELECT l.status FROM subscriptions l WHERE l.subscriber_id = s.id AND l.list_id = {mark})"
        f" FROM subscribers s WHERE {where}",
        (lst.id, *params),
    ).all()
    return {
        key: _Stored(
            sid,
            email,
            key,
            name,
            organisation,
            language,
            SubscriberStatus(status),
            None if joined is None else SubscriptionStatus(joined),
        )
        for sid, email, key, name, organisation, language, status, joined in rows
    }


@dataclass
class _Plan:
    """What to write for one chunk."""

    new_people: list[_Candidate] = field(default_factory=list)
    #: Stored people who join the list: (subscriber id, the row that brought them).
    joining: list[tuple[int, _Candidate]] = field(default_factory=list)
    changes: list[people.FieldChange] = field(default_factory=list)


def _classify(
    candidates: dict[str, _Candidate],
    existing: dict[str, _Stored],
    earlier: dict[str, int],
    lst: MailingList,
    report: ImportReport,
    keep_out: _Erased,
) -> _Plan:
    """Decide what each valid row does (add, join, update, keep out, nothing) and count it in ``report``."""
    plan = _Plan()
    for email, cand in candidates.items():
        stored = existing.get(email)
        if email in earlier:
            report.duplicates += 1
            if stored is not None and (change := _update(stored, cand, file_wins=False)):
                plan.changes.append(change)
            continue
        erased = keep_out.when(email)
        if erased is not None:
            report.note_kept_out(cand.line, email, f"erased on request on {erased:%Y-%m-%d}: kept out")
            continue
        if stored is None:
            plan.new_people.append(cand)
            report.added += 1
            continue
        if stored.status is not SubscriberStatus.SUBSCRIBED:
            report.note_kept_out(cand.line, email, f"{stored.status}; never re-subscribed by an import")
            continue
        if stored.subscription is SubscriptionStatus.UNSUBSCRIBED:
            report.note_kept_out(
                cand.line, email, f"unsubscribed from '{lst.name}'; never re-subscribed by an import"
            )
            continue
        change = _update(stored, cand, file_wins=True)
        if change:
            plan.changes.append(change)
        if stored.subscription is None:
            plan.joining.append((stored.id, cand))
            report.added += 1
        elif change:
            report.updated += 1
        else:
            report.unchanged += 1
    return plan


def _update(stored: _Stored, cand: _Candidate, *, file_wins: bool) -> people.FieldChange | None:
    """Return the update that merges ``cand`` into ``stored``, or None if nothing changes.

    With ``file_wins`` the file's non-empty values replace the stored ones; without
    it (a later duplicate row) they only fill the stored row's empty fields. An empty
    cell never blanks a stored value.
    """
    first, second = (cand, stored) if file_wins else (stored, cand)
    new = {key: getattr(first, key) or getattr(second, key) for key in ("name", "organisation", "language")}
    if all(new[key] == getattr(stored, key) for key in new):
        return None
    return people.FieldChange(stored.id, new["name"], new["organisation"], new["language"])


def _missing(session: Session, lst: MailingList, name: str, report: ImportReport, *, remove: bool) -> None:
    """Count (and with ``remove``, unsubscribe) those on the list but not in the file, a page at a time."""
    conn: Connection = session.connection()
    query = (
        select(Subscription.id, Subscriber.id.label("subscriber_id"), Subscriber.email, Subscriber.email_key)
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .outerjoin(_SEEN, _SEEN.c.email == Subscriber.email_key)
        .where(
            Subscription.list_id == lst.id,
            Subscription.status == SubscriptionStatus.SUBSCRIBED,
            _SEEN.c.email.is_(None),
        )
        .order_by(Subscriber.email_key)
        .limit(CHUNK)
    )
    now = utcnow()
    last = ""
    while page := conn.execute(query.where(Subscriber.email_key > last)).all():
        last = page[-1].email_key
        report.missing += len(page)
        report.missing_sample += [row.email for row in page][: max(0, 20 - len(report.missing_sample))]
        if not remove:
            continue
        leaving = [(row.id, row.subscriber_id, f"not in {name}") for row in page]
        people.unsubscribe_many(conn, lst.id, leaving, Source.SYNC, now)
        report.removed += len(page)


def sync_paths(folder: Path, lists: Iterable[ListSettings]) -> list[tuple[ListSettings, Path]]:
    """Return every configured list that has a ``<folder>/<list>.csv``, with that file."""
    return [(lst, folder / f"{lst.name}.csv") for lst in lists if (folder / f"{lst.name}.csv").is_file()]
