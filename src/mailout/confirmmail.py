"""The confirmation message of a sign-up (double opt-in), and the queue that sends it away from the request.

``send_confirmation`` builds one message in the sign-up's language (words from
the "email" catalogs), HTML and plain text: the newsletter's name, the lists
asked for, the link (``links.Links.confirm``), how long it works, and that
someone who did not ask is not added. From ``sender``, signed when ``[dkim]`` is
set, the envelope sender from ``envelope`` (never VERP: it is no delivery of a
dispatch), through ``transports.make_transport`` (SMTP, or the local outbox).

``ConfirmationQueue`` is what the web app hands each sign-up to
(``submit_request``): one daemon thread records it (``signup.request``, in the
app's write queue) and hands the message it calls for to a second thread, which
sends it (a slow relay never holds up the recording), so that the form's answer
takes the same time whatever the address's state (nothing about the address is
read or written during the request). A bounded queue: a full queue drops the
sign-up with a log line (the request never waits). Every outcome is recorded with
``signup.record_sent`` (a refusal's text too). A message lost to a crash (of the
process, between the claim of the hour and the send) leaves the sign-up with
``reply`` empty: the person gets no message, and a new request after the hour
sends one.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import queue
import secrets
import threading
from dataclasses import dataclass
from email.utils import format_datetime

from . import i18n, privacy, signup
from .config import Settings
from .db import Engine, WriteQueue, reader
from .dkim import load_signer
from .envelope import envelope_sender
from .errors import MailoutError
from .headers import address_header, one_line, unstructured_header
from .links import Links
from .message import qp_encode
from .subscribers import InvalidSubscriber
from .tokens import Signer
from .transports import TemporaryFailure, TransportUnavailable, make_transport

log = logging.getLogger(__name__)

CRLF = b"\r\n"


#: The plural msgids of ``validity`` ("email" catalog; ``i18n`` lists them for the catalogs).
PLURALS = (("%(count)d day", "%(count)d days"), ("%(count)d hour", "%(count)d hours"))


def validity(settings: Settings, language: str) -> str:
    """Return how long a confirmation link works, in words of ``language`` ("7 days", "12 hours")."""
    catalog = i18n.translations(settings, language)
    days = settings.signup.confirm_days
    if days >= 1 and float(days).is_integer():
        count = int(days)
        return catalog.ngettext(*PLURALS[0], count) % {"count": count}
    hours = max(1, round(days * 24))
    return catalog.ngettext(*PLURALS[1], hours) % {"count": hours}


def texts(settings: Settings, signer: Signer, c: signup.Confirmation) -> dict[str, str]:
    """Return the message's words and link in the sign-up's language: subject, lines, link."""
    language = c.language or settings.newsletter.language
    name, _ = i18n.newsletter_text(settings, language, "name")
    lists = ", ".join(signup.list_titles(settings, c.lists))
    values = {"name": name, "lists": lists, "time": validity(settings, language)}
    return {
        "language": language,
        "subject": i18n.gettext(settings, language, "Please confirm your subscription to %(name)s") % values,
        "greeting": i18n.gettext(settings, language, "Hello,"),
        "asked": i18n.gettext(
            settings, language, "Someone, probably you, asked to receive %(name)s at this address."
        )
        % values,
        "lists": i18n.gettext(settings, language, "Lists: %(lists)s") % values,
        "action": i18n.gettext(settings, language, "To confirm, follow this link:"),
        "button": i18n.gettext(settings, language, "Confirm my subscription"),
        "expiry": i18n.gettext(settings, language, "The link works for %(time)s.") % values,
        "ignore": i18n.gettext(
            settings,
            language,
            "If you did not ask for this, ignore this message: you will not be added, and you will"
            " receive nothing more.",
        ),
        "link": Links(settings, signer).confirm(c.signup_id, c.nonce, c.language),
    }


def _plain(words: dict[str, str]) -> str:
    return "\n".join(
        [
            words["greeting"],
            "",
            words["asked"],
            words["lists"],
            "",
            words["action"],
            words["link"],
            "",
            words["expiry"],
            words["ignore"],
            "",
        ]
    )


def _html(words: dict[str, str]) -> str:
    e = {key: html.escape(value) for key, value in words.items()}
    direction = i18n.direction(words["language"])
    return (
        f'<!DOCTYPE html>\n<html lang="{e["language"]}" dir="{direction}">\n<head>\n'
        '<meta charset="utf-8">\n<meta name="viewport" content="width=device-width">\n'
        f"<title>{e['subject']}</title>\n</head>\n"
        '<body style="font-family: sans-serif; line-height: 1.5; color: #222; max-width: 40em;">\n'
        f"<p>{e['greeting']}</p>\n<p>{e['asked']}<br>\n{e['lists']}</p>\n"
        f'<p><a href="{e["link"]}" style="display: inline-block; padding: 0.6em 1.2em; background: #1a5fb4;'
        f' color: #fff; text-decoration: none; border-radius: 4px;">{e["button"]}</a></p>\n'
        f'<p>{e["action"]}<br>\n<a href="{e["link"]}">{e["link"]}</a></p>\n'
        f"<p>{e['expiry']}</p>\n<p>{e['ignore']}</p>\n</body>\n</html>\n"
    )


def build(
    settings: Settings, signer: Signer, c: signup.Confirmation, *, date: dt.datetime | None = None
) -> tuple[str, bytes]:
    """Return the message's Message-ID and its bytes (CRLF line ends, DKIM-signed when configured)."""
    words = texts(settings, signer, c)
    domain = settings.sender.address.rpartition("@")[2].lower()
    message_id = f"signup.{c.signup_id}.{secrets.token_hex(8)}@{domain}"
    boundary = f"=_mailout_{secrets.token_hex(12)}"
    headers = [
        b"Date: " + format_datetime(date or dt.datetime.now(dt.UTC)).encode("ascii") + CRLF,
        address_header("From", settings.sender.name, settings.sender.address),
    ]
    if settings.sender.reply_to:
        headers.append(address_header("Reply-To", "", settings.sender.reply_to))
    headers += [
        # The address alone: the name is the form's free text, and nobody has confirmed yet
        # that it belongs with this address (a stranger's words in a signed message to them).
        address_header("To", "", c.address),
        unstructured_header("Subject", words["subject"]),
        f"Message-ID: <{message_id}>".encode("ascii") + CRLF,
        b"MIME-Version: 1.0" + CRLF,
        # RFC 3834: sent by a program on a form's request; auto-responders do not answer it.
        b"Auto-Submitted: auto-generated" + CRLF,
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"'.encode("ascii") + CRLF,
        b"Content-Language: " + one_line(words["language"]).encode("ascii", "replace") + CRLF,
    ]
    part = 'Content-Type: text/{kind}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
    body = b"".join(
        [
            f"--{boundary}\r\n".encode("ascii"),
            part.format(kind="plain").encode("ascii"),
            qp_encode(_plain(words), soft_end=False),
            f"\r\n--{boundary}\r\n".encode("ascii"),
            part.format(kind="html").encode("ascii"),
            qp_encode(_html(words), soft_end=False),
            f"\r\n--{boundary}--\r\n".encode("ascii"),
        ]
    )
    message = b"".join(headers) + CRLF + body
    dkim = load_signer(settings)
    if dkim is not None:
        message = dkim.sign(message) + message
    return message_id, message


def send_confirmation(settings: Settings, signer: Signer, c: signup.Confirmation) -> str:
    """Send the confirmation message now; return the transport's reply, or raise ``MailoutError``."""
    _, data = build(settings, signer, c)
    # Through the route sends go through by default: a workspace may have routes and no [smtp].
    connection = make_transport(settings, settings.sending.route).connect()
    try:
        return str(connection.send(envelope_sender(settings), c.address, data))
    finally:
        connection.close()


@dataclass(frozen=True)
class _Request:
    """A sign-up waiting in the queue, and when it was made."""

    form: signup.SignupRequest
    now: dt.datetime


class ConfirmationQueue:
    """Send confirmation messages from one daemon thread; record each outcome on its sign-up.

    ``submit`` never blocks: past ``maxsize`` waiting messages, the message is dropped
    with a log line (the person may ask again after the hour). ``writes``: the web
    app's ``db.WriteQueue``, so that recording queues with the requests' writes.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        signer: Signer,
        *,
        maxsize: int = 1000,
        writes: WriteQueue | None = None,
    ) -> None:
        self.settings = settings
        self.signer = signer
        self.writes = writes or WriteQueue(engine)
        self.engine = engine
        self._queue: queue.Queue[signup.Confirmation | _Request | None] = queue.Queue(maxsize=maxsize)
        # The messages to send, apart: a slow relay never holds up the recording of sign-ups.
        self._sends: queue.Queue[signup.Confirmation | None] = queue.Queue(maxsize=maxsize)
        self._pending = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="mailout-signups", daemon=True)
        self._sender = threading.Thread(target=self._send_all, name="mailout-confirmations", daemon=True)
        self._thread.start()
        self._sender.start()

    def submit(self, c: signup.Confirmation) -> bool:
        """Queue a message to send; return False when the queue was full (the message is dropped)."""
        return self._put(c, f"message for sign-up {c.signup_id}")

    def submit_request(self, form: signup.SignupRequest, now: dt.datetime) -> bool:
        """Queue a sign-up made at ``now``: recorded, then its message sent if one is due.

        Return False when the queue was full (the sign-up is dropped, with a log line).
        """
        return self._put(_Request(form, now), "sign-up")

    def _put(self, item: signup.Confirmation | _Request, what: str) -> bool:
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._done()
            log.warning("confirmation queue full: %s dropped", what)
            return False
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every message submitted is sent and recorded; False if ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Record what is queued and send it, then stop the threads (waiting at most ``timeout`` seconds each).

        The sign-ups are recorded whatever the relay does; messages that a slow relay
        keeps waiting past ``timeout`` are left (their sign-ups can ask again after the hour).
        """
        if self._thread.is_alive():
            self._queue.put(None)  # after what is queued: the recorder then stops the sender
            self._thread.join(timeout)
        if self._sender.is_alive():
            self._sender.join(timeout)

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _run(self) -> None:
        """Record each sign-up as it comes, and hand the messages it calls for to the sender."""
        while True:
            item = self._queue.get()
            if item is None:
                self._sends.put(None)
                return
            c: signup.Confirmation | None = None
            try:
                c = self._record(item) if isinstance(item, _Request) else item
            except Exception:  # never let one sign-up stop the thread
                log.exception("sign-up")
            if c is None:
                self._done()
                continue
            try:
                self._sends.put_nowait(c)
            except queue.Full:
                log.warning("confirmation queue full: message for sign-up %d dropped", c.signup_id)
                self._give_back(c, "dropped: too many messages waiting")
                self._done()

    def _send_all(self) -> None:
        while True:
            c = self._sends.get()
            if c is None:
                return
            try:
                self._send_one(c)
            except Exception:  # never let one message stop the thread
                log.exception("confirmation for sign-up %d", c.signup_id)
            finally:
                self._done()

    def _give_back(self, c: signup.Confirmation, reply: str) -> None:
        """Record that a message did not go, and give its address's hour back."""
        try:
            with self.writes.transaction() as conn:
                signup.record_sent(conn, c, reply, now=dt.datetime.now(dt.UTC), unsent=True)
        except Exception:
            log.exception("confirmation for sign-up %d", c.signup_id)

    def _record(self, item: _Request) -> signup.Confirmation | None:
        """Record a sign-up (``signup.request``); return the message it calls for, if any."""
        try:
            with self.writes.transaction() as conn:
                return signup.request(conn, self.settings, self.signer, item.form, now=item.now)
        except InvalidSubscriber as error:
            # The web app checks every field before it queues: this is a list closed meanwhile.
            log.warning("sign-up not recorded: %s", error)
            return None

    def _send_one(self, c: signup.Confirmation) -> None:
        with reader(self.engine).connect() as conn:
            due = signup.still_due(conn, c)
            # Erased after its sign-up was recorded (a request and an erasure at the same
            # moment, on PostgreSQL): the sign-up goes, and nothing is sent.
            erased = due and privacy.is_erased(conn, self.signer, c.address)
        if erased:
            with self.writes.transaction() as conn:
                signup.forget(conn, c.address.lower())
        if not due or erased:
            return  # erased, purged or replaced while it waited: nobody to write to
        unsent = False
        try:
            reply = send_confirmation(self.settings, self.signer, c)
        except (TemporaryFailure, TransportUnavailable) as error:
            # Not sent (a 4xx, the relay down or refusing the login): the hour is given back,
            # so that the person's next try sends at once instead of an hour later.
            reply, unsent = f"failed: {error}", True
            log.warning("confirmation for sign-up %d: %s", c.signup_id, error)
        except MailoutError as error:
            reply = f"failed: {error}"
            log.warning("confirmation for sign-up %d: %s", c.signup_id, error)
        except Exception as error:
            reply = f"failed: {type(error).__name__}: {error}"
            log.exception("confirmation for sign-up %d", c.signup_id)
        with self.writes.transaction() as conn:
            signup.record_sent(conn, c, reply, now=dt.datetime.now(dt.UTC), unsent=unsent)
