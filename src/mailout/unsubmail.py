"""Unsubscribe requests that arrive by mail, at the ``mailto:`` of ``List-Unsubscribe``.

Every message offers ``mailto:unsubscribe@<sender's domain>?subject=unsubscribe
<token>``. Mail clients that do not do the one-click POST send that message
instead. This reads such messages from a Maildir or an mbox file:

- a subject (or first lines of the body) with a valid token unsubscribes the
  subscriber and list the token names, whoever the message is from (it may come
  from an alias);
- the pseudo-tokens of test messages and previews (``test``, ``preview``)
  unsubscribe nobody;
- otherwise a message whose subject or first lines say "unsubscribe"
  unsubscribes its sender (``From``) from every list, as a reply to an issue asks;
- anything else is left for a person and reported.

Each message is handled once, ever: its Message-ID (or a digest of its bytes)
is recorded in ``mail_requests`` in the same transaction as what it changed, so
reading the mailbox again, or a person opening it first, changes nothing and
loses nothing. In a Maildir, messages that led to an unsubscribe are marked
seen; the others stay as they were, for a person to read.
"""

from __future__ import annotations

import email.policy
import hashlib
import mailbox
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path

from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session

from .errors import WorkspaceError
from .models import MailingList, MailRequest, Source, Subscriber
from .subscribers import InvalidSubscriber, SubscriberNotFound, find, unsubscribe
from .tokens import Purpose, Signer

# "unsubscribe TOKEN", also with the space left URL-encoded by a careless client.
_TOKEN = re.compile(r"\bunsubscribe(?:\s+|%20)([A-Za-z0-9_-]{1,40}\.[A-Za-z0-9_-]{10,40})", re.IGNORECASE)
_SAMPLE = re.compile(r"\bunsubscribe(?:\s+|%20)(test|preview)\b", re.IGNORECASE)
_WORD = re.compile(
    r"\b(unsubscribe|d[ée]sinscri(re|ption|vez)|d[ée]sabonne|abmelden|darse de baja)\b", re.IGNORECASE
)


@dataclass(frozen=True)
class Outcome:
    """What was done with one message."""

    key: str
    sender: str
    action: str  # "unsubscribed", "already", "unknown sender", "ignored", "error"
    detail: str


@dataclass
class Read:
    """One message of the mailbox: its key there, its identity, and the parsed message (or why not)."""

    box_key: str
    identity: str
    message: EmailMessage | None
    problem: str = ""


def open_mailbox(path: Path) -> mailbox.Mailbox[mailbox.Message]:
    """Open a Maildir folder or an mbox file, or say clearly what ``path`` is not."""
    if path.is_dir():
        if not all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            raise WorkspaceError(f"{path}: a folder but not a Maildir (no cur/, new/ and tmp/)")
        return mailbox.Maildir(path, create=False)
    if path.is_file():
        return mailbox.mbox(path, create=False)
    raise WorkspaceError(f"{path}: no such Maildir or mbox file")


def messages(box: mailbox.Mailbox[mailbox.Message]) -> Iterator[Read]:
    """Yield every message of ``box``, read flags or not (each is handled once anyway)."""
    for key in box.iterkeys():  # iterating a Mailbox itself yields messages, not keys
        raw = box.get_bytes(key)
        try:
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            identity = str(parsed.get("Message-ID", "")).strip()
        except Exception as exc:  # a message broken beyond parsing: report it, go on
            yield Read(key, _digest(raw), None, f"unreadable message: {exc}")
            continue
        assert isinstance(parsed, EmailMessage)
        yield Read(key, identity[:250] if identity else _digest(raw), parsed)


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def mark_seen(box: mailbox.Mailbox[mailbox.Message], key: str) -> None:
    """Mark a Maildir message seen (and move it to ``cur/``); an mbox is left as it is."""
    if isinstance(box, mailbox.Maildir):
        message = box.get_message(key)
        message.set_subdir("cur")
        message.add_flag("S")
        box[key] = message


def _body_start(message: EmailMessage) -> str:
    try:
        part = message.get_body(preferencelist=("plain",))
        return str(part.get_content())[:300] if part is not None else ""
    except (LookupError, ValueError, KeyError):
        return ""


def handled(session: Session, identity: str) -> bool:
    """Return whether this message was handled by an earlier run."""
    return session.get(MailRequest, identity) is not None


def process(session: Session, signer: Signer, read: Read) -> Outcome:
    """Act on one message in ``session`` and record it as handled (an unreadable one too)."""
    if read.message is None:
        outcome = Outcome(read.identity, "", "error", read.problem)
    else:
        outcome = _decide(session, signer, read.identity, read.message)
    sender, key, detail = outcome.sender[:320], read.identity, outcome.detail[:2000]
    if sender and "@" in sender:
        from .privacy import is_erased, scrubber  # privacy.erase calls this module

        if is_erased(session, signer, sender):
            # Someone erased writing again: their request is kept, without them (as the
            # erasure leaves the requests it found).
            scrub = scrubber({sender}, ())
            sender, key, detail = "", scrub(key), scrub(detail)
    session.add(
        MailRequest(
            key=key,
            sender=sender,
            outcome=outcome.action,
            detail=detail,
        )
    )
    return outcome


def _decide(session: Session, signer: Signer, identity: str, message: EmailMessage) -> Outcome:
    # Printed to the terminal and stored: no control characters (escape sequences) from a stranger.
    sender = "".join(c for c in parseaddr(str(message.get("From", "")))[1] if c.isprintable())
    subject = str(message.get("Subject", ""))
    body = _body_start(message)
    detail = f"message {identity}"
    for text in (subject, body):
        if _SAMPLE.search(text):
            return Outcome(identity, sender, "ignored", "the link of a test message or a preview")
        for match in _TOKEN.finditer(text):
            claim = signer.verify(Purpose.UNSUBSCRIBE, match.group(1))
            if claim is None:
                continue
            person = session.get(Subscriber, claim.subscriber_id)
            lst = session.get(MailingList, claim.list_id)
            if person is None or lst is None:
                continue
            changed = unsubscribe(session, person, Source.MAIL, lst=lst, detail=detail)
            return Outcome(
                identity, sender, "unsubscribed" if changed else "already", f"from list {lst.name}"
            )
    if not _WORD.search(subject) and not _WORD.search(body):
        return Outcome(identity, sender, "ignored", "no unsubscribe request in it")
    try:
        person = find(session, sender)
    except (SubscriberNotFound, InvalidSubscriber):
        return Outcome(identity, sender, "unknown sender", "no subscriber with this address")
    changed = unsubscribe(session, person, Source.MAIL, detail=f"{detail}, no token")
    return Outcome(identity, sender, "unsubscribed" if changed else "already", "from every list")


def erase_requests(conn: Connection, scrub: Callable[[str], str], scrub_own: Callable[[str], str]) -> int:
    """Erase a person from the mail requests: their address as sender, and from every detail.

    ``scrub`` replaces the person's address, ``scrub_own`` their address and name:
    the name only in their own requests (a sender ``scrub`` changes is the person,
    and becomes ""), since a name can be a word of someone else's. Every row is read:
    a detail may name their address in a request of someone else. The key (the
    message's Message-ID) changes only where it holds their address. Returns how
    many rows changed.
    """
    changed = 0
    for key, sender, detail in conn.execute(
        select(MailRequest.key, MailRequest.sender, MailRequest.detail)
    ).all():
        theirs = scrub(sender) != sender
        values = {
            "key": scrub(key),
            "sender": "" if theirs else sender,
            "detail": (scrub_own if theirs else scrub)(detail),
        }
        if (values["key"], values["sender"], values["detail"]) != (key, sender, detail):
            conn.execute(update(MailRequest).where(MailRequest.key == key).values(**values))
            changed += 1
    return changed
