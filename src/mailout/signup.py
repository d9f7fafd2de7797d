"""Sign-ups with double opt-in: a pending sign-up, its confirmation message and link, and the purge.

A sign-up is not a subscriber: the form's POST writes a row of ``signups`` (one per
address) and, at most once an hour per address, sends one confirmation message.
Only the link in that message subscribes, through ``subscribers.join_by_signup``,
which records the consent event (sign-up time, confirmation time, page, the
consent text's SHA-256). Unconfirmed sign-ups are deleted after
``signup.pending_days``.

The confirmation link names (signup id, nonce), signed (``tokens.Purpose.CONFIRM``);
a new confirmation message draws a new nonce, so older links stop working. The
link works for ``signup.confirm_days`` after its message was sent.

The rule against mail scanners (docs/web.md): a GET of the link within
``signup.button_seconds`` of its message's sending shows a page with one button
(POST confirms); a later GET confirms at once. A POST always confirms.

This module owns the ``signups`` table.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import i18n, privacy, subscribers
from .config import ListSettings, Settings
from .languages import base
from .models import Signup
from .outbox import as_utc
from .tokens import Signer

#: The consent text mailout shows when the team wrote none ("web" catalog).
DEFAULT_CONSENT = (
    "I want to receive this newsletter by email. My address is used for nothing else,"
    " and I can unsubscribe at any time with the link in every message."
)
#: At most one confirmation message per address in this time.
RESEND_AFTER = dt.timedelta(hours=1)
#: The largest nonce (exclusive): tokens carry numbers below 10**18.
NONCE_LIMIT = 10**18

_signups = cast(Table, Signup.__table__)


@dataclass(frozen=True)
class SignupRequest:
    """What the form sent, checked by the web app: every field's value as the person gave it."""

    #: As typed; ``request`` normalises it (``subscribers.InvalidSubscriber`` if it is no address).
    address: str
    name: str
    #: A canonical language tag among those the form offered, or "".
    language: str
    #: The names of the lists asked for; each must be open to sign-up (``public_signup``).
    lists: tuple[str, ...]
    #: The form's page (``/subscribe/public``, or the page a pasted form was on).
    page: str
    #: The exact consent text the form showed, and its language.
    consent_text: str
    consent_language: str
    #: The client's address, or None (always None unless ``signup.store_ip``).
    ip: str | None = None


@dataclass(frozen=True)
class Confirmation:
    """A confirmation message to send now: to whom, in which language, and its link's numbers."""

    signup_id: int
    nonce: int
    address: str
    name: str
    language: str
    lists: tuple[str, ...]


@dataclass(frozen=True)
class Pending:
    """A valid confirmation link's sign-up, as the confirmation page shows it."""

    signup_id: int
    address: str
    language: str
    lists: tuple[str, ...]
    sent_at: dt.datetime


@dataclass(frozen=True)
class Confirmed:
    """What a confirmation did: the lists the person is now on, in their language."""

    lists: tuple[str, ...]
    language: str


def request(
    conn: Connection, settings: Settings, signer: Signer, form: SignupRequest, *, now: dt.datetime
) -> Confirmation | None:
    """Record a sign-up; return the confirmation message due now, or None when none is.

    None when one was sent for the address within the hour, when the address is
    on every list asked already, bounced, or erased (``privacy.is_erased``). The
    caller answers the same page either way and sends the message away from the
    request (so its time tells nothing). Two requests at once for one address
    give at most one Confirmation (the claim of the hour is one conditional UPDATE).

    Raises ``subscribers.InvalidSubscriber`` for an address, a name or a language
    that cannot be stored, or a list that is not open to sign-up (the form offers
    only those: someone made the request by hand).

    Every state takes the same statements: the look-ups, the consent text's
    INSERT, the sign-up's INSERT and the claim's UPDATE. For a refused address the
    last two name no row (an erased address is never written down again). A
    request within the hour changes nothing: the message already sent, and what
    its link confirms, stay as they were.
    """
    now = now.astimezone(dt.UTC)
    address = subscribers.normalise_email(form.address)
    key = address.lower()
    name, _, language = subscribers.clean_fields(form.name, "", form.language)
    chosen = open_lists(settings, form.lists)
    consent_language = subscribers.clean_fields("", "", form.consent_language)[2]
    digest = subscribers.store_consent_text(conn, form.consent_text, consent_language, now)
    erased = privacy.is_erased(conn, signer, address)
    status, on_every_list = subscribers.signup_state(conn, key, [lst.name for lst in chosen])
    refused = erased or status == "bounced" or on_every_list
    # The same two statements for every state; a refused address names no row ("" is no key).
    target = "" if refused else key
    values = {
        "name": name,
        "language": language,
        "lists": ",".join(lst.name for lst in chosen),
        "page": form.page[:500],
        "consent_sha256": digest,
        "ip": form.ip if settings.signup.store_ip else None,
    }
    if target:
        conn.execute(
            _insert(conn)
            .values(
                email=address,
                email_key=target,
                nonce=0,
                created_at=now,
                sent_at=None,
                sends=0,
                reply="",
                **values,
            )
            .on_conflict_do_nothing(index_elements=["email_key"])
        )
    else:
        _same_work(conn)
    nonce = secrets.randbelow(NONCE_LIMIT)
    claimed = conn.execute(
        update(_signups)
        .where(
            _signups.c.email_key == target,
            or_(_signups.c.sent_at.is_(None), _signups.c.sent_at < now - RESEND_AFTER),
        )
        .values(
            email=address,
            sent_at=now,
            nonce=nonce,
            created_at=now,
            sends=_signups.c.sends + 1,
            reply="",
            **values,
        )
        .returning(_signups.c.id)
    ).first()
    if claimed is None:
        return None
    return Confirmation(int(claimed[0]), nonce, address, name, language, tuple(lst.name for lst in chosen))


def _same_work(conn: Connection) -> None:
    """Look the way the sign-up's INSERT does, without writing: a refused address leaves no row."""
    conn.execute(select(_signups.c.id).where(_signups.c.email_key == "")).first()


def open_lists(settings: Settings, names: tuple[str, ...] | list[str]) -> tuple[ListSettings, ...]:
    """Return the configured lists named, each open to sign-up; raise ``InvalidSubscriber``."""
    if not names:
        raise subscribers.InvalidSubscriber("choose at least one list")
    by_name = {lst.name: lst for lst in signup_lists(settings)}
    chosen: dict[str, ListSettings] = {}
    for name in names:
        lst = by_name.get(name)
        if lst is None:
            raise subscribers.InvalidSubscriber(f"the list '{name[:64]}' is not open to sign-up")
        chosen[name] = lst
    return tuple(chosen.values())


def list_titles(settings: Settings, names: tuple[str, ...]) -> list[str]:
    """Return how the pages and the message name these lists: their description, else their name."""
    described = {lst.name: lst.description or lst.name for lst in settings.lists}
    return [described.get(name, name) for name in names]


def signup_lists(settings: Settings) -> tuple[ListSettings, ...]:
    """Return the lists open to sign-up (``lists.NAME.public_signup``), in the settings' order."""
    return tuple(lst for lst in settings.lists if lst.public_signup)


def _insert(conn: Connection) -> Any:
    return postgresql_insert(_signups) if conn.dialect.name == "postgresql" else sqlite_insert(_signups)


def record_sent(
    conn: Connection, confirmation: Confirmation, reply: str, *, now: dt.datetime, unsent: bool = False
) -> None:
    """Record the transport's answer to a confirmation message (or why it failed).

    Only on the sign-up still waiting for that very message (same nonce): a newer
    message's answer is never overwritten by an older one's. ``unsent``: the message
    surely did not go (a temporary refusal, no connection): the claim of the hour is
    given back (``sent_at`` NULL, so the link it would have carried is not valid), and
    the next request for the address sends at once.
    """
    values: dict[str, object] = {"reply": reply[:2000]}
    if unsent:
        values["sent_at"] = None
    conn.execute(
        update(_signups)
        .where(_signups.c.id == confirmation.signup_id, _signups.c.nonce == confirmation.nonce)
        .values(**values)
    )


def still_due(conn: Connection, confirmation: Confirmation) -> bool:
    """Whether a confirmation message is still to be sent: its sign-up waits for it, same nonce.

    Not when the sign-up was erased (``forget``), purged, or replaced meanwhile.
    """
    found = conn.execute(
        select(_signups.c.id).where(
            _signups.c.id == confirmation.signup_id,
            _signups.c.nonce == confirmation.nonce,
            _signups.c.sent_at.is_not(None),
        )
    ).first()
    return found is not None


def look(
    conn: Connection, settings: Settings, signup_id: int, nonce: int, *, now: dt.datetime
) -> Pending | None:
    """Return the sign-up a confirmation link names, or None when the link is no longer valid.

    Not valid: unknown or replaced (another nonce), expired, confirmed already, or the
    address erased meanwhile (``privacy.erase`` deletes the sign-up: ``forget``).
    """
    row = conn.execute(
        select(
            _signups.c.email, _signups.c.language, _signups.c.lists, _signups.c.sent_at, _signups.c.nonce
        ).where(_signups.c.id == signup_id)
    ).first()
    if row is None or not _valid(settings, row.nonce, row.sent_at, nonce, now):
        return None
    return Pending(signup_id, str(row.email), str(row.language), _names(row.lists), as_utc(row.sent_at))


def _valid(
    settings: Settings, stored: int, sent_at: dt.datetime | None, nonce: int, now: dt.datetime
) -> bool:
    if sent_at is None or int(stored) != nonce:
        return False
    return now.astimezone(dt.UTC) - as_utc(sent_at) <= dt.timedelta(days=settings.signup.confirm_days)


def _names(lists: str) -> tuple[str, ...]:
    return tuple(name for name in str(lists).split(",") if name)


def confirm(
    conn: Connection, settings: Settings, signer: Signer, signup_id: int, nonce: int, *, now: dt.datetime
) -> Confirmed | None:
    """Confirm a sign-up: subscribe the person (``subscribers.join_by_signup``) and delete it.

    None when the link is not valid (see ``look``). Harmless to repeat: a second
    confirmation finds nothing and changes nothing.

    In the caller's transaction. The sign-up's DELETE, made before anything else is
    written and conditional on the nonce, decides between two confirmations at once:
    on PostgreSQL the second waits for the first's row lock, then deletes nothing; on
    SQLite the write lock orders them. A list no longer open to sign-up (the settings
    changed since) is left out; the person's address bounced or erased meanwhile: None,
    and the sign-up is gone all the same.
    """
    now = now.astimezone(dt.UTC)
    row = conn.execute(select(_signups).where(_signups.c.id == signup_id)).first()
    if row is None or not _valid(settings, row.nonce, row.sent_at, nonce, now):
        return None
    deleted = conn.execute(
        delete(_signups).where(
            _signups.c.id == signup_id, _signups.c.nonce == nonce, _signups.c.sent_at.is_not(None)
        )
    )
    if deleted.rowcount != 1:
        return None  # confirmed (or replaced) by someone else in the meantime
    if privacy.is_erased(conn, signer, str(row.email)):
        return None
    by_name = {lst.name: lst for lst in signup_lists(settings)}
    chosen = tuple(by_name[name] for name in _names(row.lists) if name in by_name)
    if not chosen:
        return None
    joined = subscribers.join_by_signup(
        conn,
        subscribers.SignupJoin(
            email=str(row.email),
            name=str(row.name),
            language=str(row.language),
            lists=chosen,
            requested_at=as_utc(row.created_at),
            confirmed_at=now,
            page=str(row.page),
            consent_sha256=str(row.consent_sha256),
            ip=row.ip if settings.signup.store_ip else None,
        ),
    )
    if joined is None:
        return None
    return Confirmed(tuple(lst.name for lst in chosen), str(row.language))


def purge_pending(conn: Connection, settings: Settings, *, now: dt.datetime) -> int:
    """Delete the sign-ups never confirmed within ``signup.pending_days``; return how many.

    Counted from the latest request that sent a message (``created_at``): a person who
    asks again starts the time afresh. A sign-up whose link still works (a
    ``signup.confirm_days`` longer than ``pending_days``) is kept until it stops working.
    """
    days = max(settings.signup.pending_days, settings.signup.confirm_days)
    cutoff = now.astimezone(dt.UTC) - dt.timedelta(days=days)
    result = conn.execute(delete(_signups).where(_signups.c.created_at < cutoff))
    return int(result.rowcount)


def forget(conn: Connection, email_key: str) -> int:
    """Delete any sign-up of an address (erasure); return how many rows went."""
    result = conn.execute(delete(_signups).where(_signups.c.email_key == email_key.lower()))
    return int(result.rowcount)


def of_person(conn: Connection, email_key: str) -> list[dict[str, object]]:
    """Return the sign-ups held for an address, as plain values (``export-person``).

    Every column but the nonce (the secret of the link in the person's mailbox).
    Times are aware UTC ``datetime`` values.
    """
    rows = conn.execute(select(_signups).where(_signups.c.email_key == email_key.lower())).mappings()
    found: list[dict[str, object]] = []
    for row in rows:
        item = {key: value for key, value in row.items() if key != "nonce"}
        for key in ("created_at", "sent_at"):
            if isinstance(item[key], dt.datetime):
                item[key] = as_utc(item[key])
        item["lists"] = list(_names(str(row["lists"])))
        found.append(item)
    return found


def consent_text(settings: Settings, language: str) -> str:
    """Return the consent text the form shows in ``language``.

    ``[newsletter.translations.<tag>] signup_consent``, else ``[signup] consent`` for the
    newsletter's language, else mailout's own text from the "web" catalog.

    A team's ``[signup] consent`` with no translation for ``language`` is shown as
    written (in the newsletter's language): a team's own legal wording is never
    replaced by mailout's.
    """
    translations = settings.newsletter.translations
    for tag in dict.fromkeys((language, base(language) if language else "")):
        text = translations.get(tag, {}).get("signup_consent") if tag else None
        if text:
            return text
    if settings.signup.consent:
        return settings.signup.consent
    # The msgid written out (extraction reads literals only): DEFAULT_CONSENT's words.
    return i18n.gettext(
        settings,
        language or settings.newsletter.language,
        "I want to receive this newsletter by email. My address is used for nothing else,"
        " and I can unsubscribe at any time with the link in every message.",
        "web",
    )
