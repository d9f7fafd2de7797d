"""A person's data: everything held about them (``export-person``), and erasure that keeps them out.

Erasure (``erase``) removes the address and the name from every table, each
through the table's owner module, and writes a row of ``erasures``: when, by
whom, and a keyed hash of the address (``tokens.Signer.address_hashes``), no
address. ``is_erased`` and ``erased_hashes`` let imports, ``subscribers add``
and the sign-up form keep the person out.

What stays after an erasure: the subscriber row as a tombstone (``erased-<id>``,
no address, no name: their deliveries and consent events point at it, so a
dispatch's totals still add up), what happened and when (consent events,
delivery states, report lines), and the hash. In free text (server replies,
diagnostics, report summaries, consent details, mail requests) every form of the
address (any case, its domain in IDNA or Unicode, in ``<...>``, URL-encoded) and
the name are replaced by ``[erased]``.

An address erased before it was ever stored is recorded too: a person may ask to
be kept out before they join.

This module owns the ``erasures`` table.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, or_, select
from sqlalchemy.orm import Session

from . import bounces, outbox, signup, unsubmail
from . import subscribers as people
from .db import BUSY_TIMEOUT_MS, transaction
from .errors import ConfigError, MailoutError
from .models import (
    ConsentEvent,
    ConsentText,
    Delivery,
    Dispatch,
    Erasure,
    HandledReport,
    MailingList,
    MailRequest,
    ReportRecipient,
    Subscriber,
    Subscription,
    utcnow,
)
from .tokens import Signer

#: What replaces the address and the name in free text.
ERASED = "[erased]"


class ErasedAddress(MailoutError):
    """The address was erased on the person's request: mailout keeps it out."""


def is_erased(conn: Connection | Session, signer: Signer, address: str) -> bool:
    """Return whether ``address`` (any case) was erased: a sign-up or an import must keep it out."""
    hashes = signer.address_hashes(_normalised(address))
    found = conn.execute(select(Erasure.id).where(Erasure.address_hash.in_(hashes)).limit(1)).first()
    return found is not None


def erased_hashes(conn: Connection) -> set[str]:
    """Return every erasure's hash, for checking many addresses at once (an import)."""
    return set(conn.execute(select(Erasure.address_hash)).scalars())


def erasure_dates(conn: Connection) -> dict[str, dt.datetime]:
    """Return when each erasure was made, by its hash (an import says when a row's address went)."""
    return {
        str(digest): outbox.as_utc(when)
        for digest, when in conn.execute(select(Erasure.address_hash, Erasure.erased_at))
    }


def _normalised(address: str) -> str:
    """Return ``address`` as mailout stores it (its hash is of that form), or as given if it is none."""
    try:
        return people.normalise_email(address)
    except people.InvalidSubscriber:
        return address


def _erasure(
    conn: Connection | Session, signer: Signer, address: str
) -> tuple[dt.datetime, str, int | None] | None:
    """Return (when, by whom, tombstone) of the erasure of ``address``, or None."""
    row = conn.execute(
        select(Erasure.erased_at, Erasure.erased_by, Erasure.subscriber_id)
        .where(Erasure.address_hash.in_(signer.address_hashes(_normalised(address))))
        .limit(1)
    ).first()
    return None if row is None else (outbox.as_utc(row[0]), str(row[1]), row[2])


def keep_out(conn: Connection | Session, signer: Signer | None, address: str) -> None:
    """Raise ``ErasedAddress`` if ``address`` was erased (``subscribers add``, ``resubscribe``).

    Without a secret key (``signer`` None) the check cannot be made: allowed while
    nobody was erased, refused (``ConfigError``) once someone was.
    """
    if signer is None:
        if conn.execute(select(Erasure.id).limit(1)).first() is not None:
            raise ConfigError(
                "erased addresses are kept out by a hash made with the secret key: set MAILOUT_SECRET_KEY"
                ' (the key the erasures were made with, or "new,old")'
            )
        return
    found = _erasure(conn, signer, address)
    if found is not None:
        raise ErasedAddress(
            f"this address was erased on request on {found[0]:%Y-%m-%d}: mailout keeps it out"
            " (only the person's new sign-up through the form could bring them back, and the form refuses it)"
        )


# --- the address and the name in free text -------------------------------------------------------


def address_forms(address: str) -> set[str]:
    """Return the spellings of an address free text may hold: as given, domain in IDNA and in Unicode."""
    local, _, domain = address.strip().rpartition("@")
    forms = {address.strip()}
    if not local:
        return forms
    for spelling in (_idna(domain, encode=True), _idna(domain, encode=False)):
        if spelling:
            forms.add(f"{local}@{spelling}")
    # URL-encoded, as in a mailto: or a query string.
    forms |= {form.replace("@", "%40") for form in forms}
    return forms


def _idna(domain: str, *, encode: bool) -> str:
    try:
        if encode:
            return domain.encode("idna").decode("ascii")
        return domain.encode("ascii").decode("idna")
    except (UnicodeError, ValueError):
        return ""


def scrubber(addresses: Iterable[str], names: Iterable[str]) -> Callable[[str], str]:
    """Return a function replacing each address (every form, any case, also ``<...>``) and name by ``[erased]``.

    A name is replaced as whole words only ("Ana" leaves "Banana"); names of one
    character are left alone.
    """
    forms = {form for address in addresses if address.strip() for form in address_forms(address)}
    whole = [re.escape(name.strip()) for name in names if len(name.strip()) > 1]
    spelled = sorted((re.escape(form) for form in forms), key=len, reverse=True)
    parts = [rf"<\s*(?:mailto:)?(?:{'|'.join(spelled)})\s*>"] if spelled else []
    parts += spelled
    parts += [rf"(?<!\w){name}(?!\w)" for name in sorted(whole, key=len, reverse=True)]
    if not parts:
        return lambda text: text
    pattern = re.compile("|".join(parts), re.IGNORECASE)

    def scrub(text: str) -> str:
        return pattern.sub(ERASED, text) if text else text

    return scrub


# --- erasure --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Erased:
    """What an erasure did: rows changed per table (never the address), or that it was done before."""

    erased_at: dt.datetime
    erased_by: str
    #: The tombstone's number; None when mailout held no subscriber with the address.
    subscriber_id: int | None
    #: False: erased before, nothing changed now.
    done_now: bool
    counts: dict[str, int] = field(default_factory=dict)
    #: SQLite: whether the WAL file was emptied afterwards (and with ``vacuum`` the file
    #: rewritten), so that no old copy of the person's rows stays in either; False when
    #: another process kept it from that. None on PostgreSQL (its own VACUUM reclaims dead
    #: rows in time), and when nothing was held about the person.
    compacted: bool | None = None

    @property
    def held_anything(self) -> bool:
        """Whether any row held the person (else only the hash was recorded, to keep them out)."""
        return any(self.counts.values())


def erase(
    engine: Engine,
    signer: Signer,
    address: str,
    *,
    by: str,
    now: dt.datetime | None = None,
    vacuum: bool = False,
) -> Erased:
    """Erase a person: every table scrubbed by its owner, the hash recorded, in one transaction.

    Their queued and deferred deliveries are skipped first. Erasing an address
    erased before changes nothing (``done_now`` False). An address mailout holds
    nothing about is recorded all the same: the person is kept out from now on.
    On SQLite the WAL file is emptied afterwards, and with ``vacuum`` the whole file
    rewritten (``_compact``).
    """
    given = address.strip()
    normalised = people.normalise_email(given)
    key = normalised.lower()
    now = now or utcnow()
    by = by.strip()[:200]
    with transaction(engine) as session:
        conn = session.connection()
        if conn.dialect.name == "postgresql":
            # The import's own lock: an import of the same address either commits before
            # this (and its row is erased here) or reads the erasure after it.
            from .importer import IMPORT_LOCK  # the importer imports this module

            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({IMPORT_LOCK})")
        before = _erasure(conn, signer, normalised)
        if before is not None:
            return Erased(before[0], before[1], before[2], done_now=False)
        # The sign-up first: a confirmation of it under way holds its row (PostgreSQL) and
        # may be creating the person. Deleting it waits for that confirmation to end; the
        # person is read after, so a subscriber it created is erased too. (A confirmation
        # that comes after finds no sign-up: it subscribes nobody.)
        pending = _signups(conn, key)
        counts: dict[str, int] = {"signups": signup.forget(conn, key)}
        person = conn.execute(
            select(Subscriber.id, Subscriber.email, Subscriber.name)
            .where(Subscriber.email_key == key)
            .with_for_update()
        ).first()
        addresses = {given, normalised}
        names: set[str] = set()
        if person is not None:
            addresses.add(person.email)
            names.add(person.name)
            names |= set(
                conn.execute(
                    select(Delivery.name).where(Delivery.subscriber_id == person.id).distinct()
                ).scalars()
            )
        names |= {str(row.get("name", "")) for row in pending}
        # Their address wherever free text holds it; their name in their own rows only (a
        # name can be a word: "Paris" is in other people's addresses at paris.fr).
        scrub = scrubber(addresses, {name for name in names if name})
        scrub_address = scrubber(addresses, ())
        if person is not None:
            counts |= outbox.erase_deliveries(conn, person.id, scrub)
            counts |= people.erase_subscriber(conn, person.id, scrub)
        counts |= bounces.erase_reports(conn, scrub_address, scrub, person.id if person is not None else None)
        counts["mail_requests"] = unsubmail.erase_requests(conn, scrub_address, scrub)
        conn.execute(
            insert(Erasure).values(
                address_hash=signer.address_hashes(normalised)[0],
                subscriber_id=person.id if person is not None else None,
                erased_at=now,
                erased_by=by,
            )
        )
    return Erased(
        now,
        by,
        person.id if person is not None else None,
        done_now=True,
        counts=counts,
        compacted=_compact(engine, vacuum=vacuum) if any(counts.values()) else None,
    )


#: How long the WAL's emptying waits for readers to let go (milliseconds): then it says so.
COMPACT_WAIT_MS = 2000


def _compact(engine: Engine, *, vacuum: bool) -> bool | None:
    """On SQLite, empty the WAL file (and with ``vacuum``, rewrite the file); say if it was done.

    Every connection overwrites the bytes of rows it deletes or changes
    (``secure_delete``, see ``db``), so the erasure's own writes leave no old copy in
    the file; older copies of the person's pages may still sit in the WAL file until it
    is emptied. ``vacuum`` rewrites the whole file as well (rows deleted before
    ``secure_delete`` was on, by an older mailout): it holds the write lock while it
    runs, so a dispatch sending at that moment waits.
    """
    if engine.dialect.name != "sqlite":
        return None
    # The driver's own connection, in autocommit (VACUUM cannot run in a transaction, and
    # the engine begins one for every statement).
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(f"PRAGMA busy_timeout={COMPACT_WAIT_MS}")  # a reader holds it back: say so, soon
        if vacuum:
            cursor.execute("VACUUM")
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        busy = cursor.fetchone()
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()
    except sqlite3.OperationalError:
        return False  # another process writing, or reading: the team runs it later
    finally:
        raw.close()
    return busy is None or not busy[0]


def _signups(conn: Connection, key: str) -> list[dict[str, object]]:
    return signup.of_person(conn, key)


# --- export ---------------------------------------------------------------------------------------


def _time(value: dt.datetime | dt.date | None) -> str | None:
    """Return a date-time in ISO 8601, in UTC (SQLite hands back naive ones, in UTC)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return outbox.as_utc(value).astimezone(dt.UTC).isoformat()
    return value.isoformat()


def _plain(value: object) -> object:
    if isinstance(value, dt.date):
        return _time(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def export_person(engine_or_session: Engine | Session, signer: Signer, address: str) -> dict[str, Any]:
    """Return everything held about the person with ``address``, as plain JSON values.

    The subscriber row, subscriptions (with list names), consent history (with the
    consent texts shown), deliveries, bounce and complaint report lines (with their
    report's summary), mail requests from the address, pending sign-ups, and
    whether the address was erased. ``found`` is False when nothing at all is held.
    """
    normalised = people.normalise_email(address)
    key = normalised.lower()
    if isinstance(engine_or_session, Session):
        return _export(engine_or_session, signer, normalised, key)
    with transaction(engine_or_session) as session:
        return _export(session, signer, normalised, key)


def _export(conn: Session, signer: Signer, address: str, key: str) -> dict[str, Any]:
    row = conn.scalars(select(Subscriber).where(Subscriber.email_key == key)).first()
    erased = _erasure(conn, signer, address)
    data: dict[str, Any] = {
        "address": address,
        "exported_at": _time(utcnow()),
        "found": False,
        "erased": None
        if erased is None
        else {"erased_at": _time(erased[0]), "erased_by": erased[1], "subscriber_id": erased[2]},
        "subscriber": None,
        "subscriptions": [],
        "consent_events": [],
        "deliveries": [],
        "reports": [],
        "mail_requests": [],
        "signups": [_plain(s) for s in signup.of_person(conn.connection(), key)],
    }
    if row is not None:
        sid = row.id
        data["subscriber"] = {
            "id": sid,
            "email": row.email,
            "name": row.name,
            "organisation": row.organisation,
            "language": row.language,
            "status": str(row.status),
            "created_at": _time(row.created_at),
            "updated_at": _time(row.updated_at),
            "soft_score": row.soft_score,
            "soft_day": _time(row.soft_day),
            "soft_bounced_at": _time(row.soft_bounced_at),
        }
        data["subscriptions"] = [
            {"list": name, "status": str(status), "created_at": _time(created), "updated_at": _time(updated)}
            for name, status, created, updated in conn.execute(
                select(
                    MailingList.name, Subscription.status, Subscription.created_at, Subscription.updated_at
                )
                .join(MailingList, MailingList.id == Subscription.list_id)
                .where(Subscription.subscriber_id == sid)
                .order_by(MailingList.name)
            )
        ]
        events = conn.execute(
            select(ConsentEvent, MailingList.name, ConsentText.language, ConsentText.text)
            .outerjoin(MailingList, MailingList.id == ConsentEvent.list_id)
            .outerjoin(ConsentText, ConsentText.sha256 == ConsentEvent.consent_sha256)
            .where(ConsentEvent.subscriber_id == sid)
            .order_by(ConsentEvent.id)
        )
        data["consent_events"] = [
            {
                "id": e.id,
                "list": list_name,
                "kind": str(e.kind),
                "source": str(e.source),
                "detail": e.detail,
                "created_at": _time(e.created_at),
                "requested_at": _time(e.requested_at),
                "page": e.page,
                "consent_sha256": e.consent_sha256,
                "consent_text": None if text is None else {"language": language, "text": text},
                "ip": e.ip,
            }
            for e, list_name, language, text in events
        ]
        deliveries = conn.execute(
            select(Delivery, Dispatch.issue, Dispatch.subject, MailingList.name)
            .join(Dispatch, Dispatch.id == Delivery.dispatch_id)
            .join(MailingList, MailingList.id == Dispatch.list_id)
            .where(Delivery.subscriber_id == sid)
            .order_by(Delivery.id)
        )
        data["deliveries"] = [
            {
                "id": d.id,
                "dispatch_id": d.dispatch_id,
                "issue": issue,
                "subject": subject,
                "list": list_name,
                "email": d.email,
                "name": d.name,
                "status": str(d.status),
                "attempts": d.attempts,
                "language": d.language,
                "reply": d.reply,
                "updated_at": _time(d.updated_at),
                "next_attempt_at": _time(d.next_attempt_at),
            }
            for d, issue, subject, list_name in deliveries
        ]
    about = ReportRecipient.subscriber_id == row.id if row is not None else None
    named = func.lower(ReportRecipient.address) == key
    lines = conn.execute(
        select(ReportRecipient, HandledReport)
        .join(HandledReport, HandledReport.id == ReportRecipient.report_id)
        .where(or_(about, named) if about is not None else named)
        .order_by(ReportRecipient.id)
    )
    data["reports"] = [
        {
            "report_id": report.id,
            "kind": report.kind,
            "processed_at": _time(report.processed_at),
            "summary": report.summary,
            "address": line.address,
            "dispatch_id": line.dispatch_id,
            "outcome": line.outcome,
            "status": line.status,
            "diagnostic": line.diagnostic,
            "matched_by": str(line.matched_by),
            "action": str(line.action),
            "note": line.note,
        }
        for line, report in lines
    ]
    # Read whole and compared here: SQLite's lower() knows only ASCII letters.
    data["mail_requests"] = [
        {"key": k, "sender": sender, "outcome": outcome, "detail": detail, "created_at": _time(created)}
        for k, sender, outcome, detail, created in conn.execute(
            select(
                MailRequest.key,
                MailRequest.sender,
                MailRequest.outcome,
                MailRequest.detail,
                MailRequest.created_at,
            ).order_by(MailRequest.created_at, MailRequest.key)
        )
        if sender.strip().lower() == key or _same_address(sender, key)
    ]
    data["found"] = any(
        data[part] for part in ("subscriber", "signups", "reports", "mail_requests", "deliveries")
    )
    return data


def _same_address(sender: str, key: str) -> bool:
    try:
        return people.normalise_email(sender).lower() == key
    except people.InvalidSubscriber:
        return False


def to_json(data: dict[str, Any]) -> str:
    """Return an export as JSON text: UTF-8 characters as they are, keys in a stable order."""
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
