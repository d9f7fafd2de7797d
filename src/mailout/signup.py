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
from dataclasses import dataclass

from sqlalchemy import Connection

from .config import Settings
from .tokens import Signer


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
    """
    raise NotImplementedError


def record_sent(conn: Connection, confirmation: Confirmation, reply: str, *, now: dt.datetime) -> None:
    """Record the transport's answer to a confirmation message (or why it failed)."""
    raise NotImplementedError


def look(
    conn: Connection, settings: Settings, signup_id: int, nonce: int, *, now: dt.datetime
) -> Pending | None:
    """Return the sign-up a confirmation link names, or None when the link is no longer valid.

    Not valid: unknown or replaced (another nonce), expired, confirmed already, or the
    address erased meanwhile.
    """
    raise NotImplementedError


def confirm(
    conn: Connection, settings: Settings, signer: Signer, signup_id: int, nonce: int, *, now: dt.datetime
) -> Confirmed | None:
    """Confirm a sign-up: subscribe the person (``subscribers.join_by_signup``) and delete it.

    None when the link is not valid (see ``look``). Harmless to repeat: a second
    confirmation finds nothing and changes nothing.
    """
    raise NotImplementedError


def purge_pending(conn: Connection, settings: Settings, *, now: dt.datetime) -> int:
    """Delete the sign-ups never confirmed within ``signup.pending_days``; return how many."""
    raise NotImplementedError


def forget(conn: Connection, email_key: str) -> int:
    """Delete any sign-up of an address (erasure); return how many rows went."""
    raise NotImplementedError


def of_person(conn: Connection, email_key: str) -> list[dict[str, object]]:
    """Return the sign-ups held for an address, as plain values (``export-person``)."""
    raise NotImplementedError


def consent_text(settings: Settings, language: str) -> str:
    """Return the consent text the form shows in ``language``.

    ``[newsletter.translations.<tag>] signup_consent``, else ``[signup] consent`` for the
    newsletter's language, else mailout's own text from the "web" catalog.
    """
    raise NotImplementedError
