"""Unsubscribe requests that arrive by mail, at the ``mailto:`` of ``List-Unsubscribe``.

Every message offers ``mailto:unsubscribe@<sender's domain>?subject=unsubscribe
<token>``. Mail clients that do not do the one-click POST send that message
instead. This reads such messages from a Maildir or an mbox file:

- a subject (or first lines of the body) with a valid token unsubscribes the
  subscriber and list the token names, whoever the message is from (it may come
  from an alias);
- otherwise a message that says "unsubscribe" unsubscribes its sender (``From``)
  from every list, as a reply to an issue asks;
- anything else is left for a person and reported.

In a Maildir, read messages are marked seen and moved to ``cur/``; a later run
looks only at unseen ones. Unsubscribing twice changes nothing, so reading an
mbox again is harmless.
"""

from __future__ import annotations

import email.policy
import mailbox
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path

from sqlalchemy.orm import Session

from .errors import WorkspaceError
from .models import MailingList, Source, Subscriber
from .subscribers import InvalidSubscriber, SubscriberNotFound, find, unsubscribe
from .tokens import Purpose, Signer

_TOKEN = re.compile(r"\bunsubscribe\s+([A-Za-z0-9_-]{1,40}\.[A-Za-z0-9_-]{10,40})", re.IGNORECASE)
_WORD = re.compile(r"\b(unsubscribe|d[ée]sinscri|abmelden|darse de baja|cancella)", re.IGNORECASE)


@dataclass(frozen=True)
class Outcome:
    """What was done with one message."""

    message_id: str
    sender: str
    action: str  # "unsubscribed", "already", "unknown sender", "ignored"
    detail: str


def messages(path: Path) -> Iterator[tuple[str, EmailMessage, mailbox.Mailbox[mailbox.Message]]]:
    """Yield (key, message, box) for each unread message of a Maildir, or each of an mbox file."""
    if path.is_dir():
        if not all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            raise WorkspaceError(f"{path}: a folder but not a Maildir (no cur/, new/ and tmp/)")
        box: mailbox.Mailbox[mailbox.Message] = mailbox.Maildir(path, factory=None, create=False)
    elif path.is_file():
        box = mailbox.mbox(path, create=False)
    else:
        raise WorkspaceError(f"{path}: no such Maildir or mbox file")
    try:
        for key in box.iterkeys():  # iterating a Mailbox itself yields messages, not keys
            message = box.get_message(key)
            if isinstance(message, mailbox.MaildirMessage) and "S" in message.get_flags():
                continue
            parsed = email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            yield key, parsed, box
    finally:
        box.close()  # an mbox holds its file open; a Maildir can still be marked after this


def mark_seen(box: mailbox.Mailbox[mailbox.Message], key: str) -> None:
    """Mark a Maildir message seen (and move it to ``cur/``); an mbox is left as it is."""
    if isinstance(box, mailbox.Maildir):
        message = box.get_message(key)
        message.set_subdir("cur")
        message.add_flag("S")
        box[key] = message


def _body_start(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    if part is None:
        return ""
    try:
        return str(part.get_content())[:2000]
    except (LookupError, ValueError):
        return ""


def process(session: Session, signer: Signer, message: EmailMessage) -> Outcome:
    """Act on one message: unsubscribe what it asks, in ``session``."""
    message_id = str(message.get("Message-ID", "")).strip()
    sender = parseaddr(str(message.get("From", "")))[1]
    subject = str(message.get("Subject", ""))
    body = _body_start(message)
    for text in (subject, body):
        for match in _TOKEN.finditer(text):
            claim = signer.verify(Purpose.UNSUBSCRIBE, match.group(1))
            if claim is None:
                continue
            person = session.get(Subscriber, claim.subscriber_id)
            lst = session.get(MailingList, claim.list_id)
            if person is None or lst is None:
                continue
            changed = unsubscribe(session, person, Source.MAIL, lst=lst, detail=f"message {message_id}")
            return Outcome(
                message_id, sender, "unsubscribed" if changed else "already", f"from list {lst.name}"
            )
    if not _WORD.search(subject) and not _WORD.search(body[:300]):
        return Outcome(message_id, sender, "ignored", "no unsubscribe request in it")
    try:
        person = find(session, sender)
    except (SubscriberNotFound, InvalidSubscriber):
        return Outcome(message_id, sender, "unknown sender", "no subscriber with this address")
    changed = unsubscribe(session, person, Source.MAIL, detail=f"message {message_id}, no token")
    return Outcome(message_id, sender, "unsubscribed" if changed else "already", "from every list")
