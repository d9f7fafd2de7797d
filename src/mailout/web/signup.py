"""The public sign-up form and the confirmation pages (double opt-in), on the app's blueprint.

- ``GET /subscribe`` (``/subscribe/<list>`` for one list): the form. Address,
  optional name, language, the lists open to sign-up (``public_signup``), the
  consent text, a hidden honeypot field and a signed form token (the time it was
  shown and a random nonce, ``tokens.Purpose.FORM``).
- ``POST /subscribe``: one answer, the same page with the same words, whatever the
  address's state. The request checks the form's fields only; the sign-up is
  recorded, and its confirmation message sent, by a background queue
  (``confirmmail.ConfirmationQueue``), never in the request. A POST without a form
  token comes from a form pasted into another website (``mailout signup-form``):
  it gets mailout's own form back, filled in, to be sent once more.
- ``/subscribe/confirm/<token>``: the link in the confirmation message. A GET
  within ``signup.button_seconds`` of the message's sending shows one button (a
  mail scanner fetches links at once); a later GET confirms; a POST confirms; a
  HEAD never does. Every link that is no longer valid gets one 404 page.

What each web process keeps in memory (``SignupDesk``): the form nonces already
used, until their form expires, and how many POSTs each client address made in
the hour. Several web processes each keep their own: a replayed form or a client
over its limit may get one more try per process (the database's one message per
address per hour holds across all of them).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Response, current_app, request, url_for

from .. import signup
from ..config import ListSettings, Settings
from ..db import reader
from ..i18n import language_name, newsletter_text
from ..segments import Segment
from ..subscribers import InvalidSubscriber, normalise_email
from ..tokens import Purpose
from . import Mailout
from .views import blueprint, mailout, page, requested_language
from .words import N_

if TYPE_CHECKING:
    from ..confirmmail import ConfirmationQueue

_log = logging.getLogger(__name__)

#: The most form nonces and client addresses a process remembers (a few MB at most).
MEMORY_ENTRIES = 100_000
#: The longest name and "page" kept from a form; longer ones are cut (not refused: a name is free text).
NAME_CHARS = 200
PAGE_CHARS = 500
#: The form's fields, as the pasted snippet (``mailout signup-form``) must name them.
FIELDS = ("email", "name", "language", "lists", "website", "form_token", "page")
#: The key of this module's state in ``app.extensions``.
EXTENSION = "mailout.signup"


class Remembered:
    """Keys remembered for a while: at most ``size``, the oldest forgotten first. Thread-safe."""

    def __init__(self, size: int = MEMORY_ENTRIES) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._until: OrderedDict[object, float] = OrderedDict()

    def add_new(self, key: object, until: float, now: float) -> bool:
        """Remember ``key`` until ``until``; return False if it was remembered already (a replay)."""
        with self._lock:
            self._expire(now)
            if key in self._until:
                return False
            self._until[key] = until
            while len(self._until) > self.size:
                self._until.popitem(last=False)
            return True

    def _expire(self, now: float) -> None:
        # Looked at from the oldest arrival: one that expires sooner than an older one waits
        # for it. That costs memory only: no entry goes before its time (but for the bound).
        while self._until and next(iter(self._until.values())) <= now:
            self._until.popitem(last=False)


@dataclass
class Window:
    """One client's hour: when it started, and the POSTs counted in it."""

    started: float
    count: int = 0


class ClientLimit:
    """At most ``limit`` POSTs per client address in an hour (a fixed window from its first). Thread-safe."""

    HOUR = 3600.0

    def __init__(self, limit: int, size: int = MEMORY_ENTRIES) -> None:
        self.limit = limit
        self.size = size
        self._lock = threading.Lock()
        self._windows: OrderedDict[str, Window] = OrderedDict()

    def allow(self, client: str, now: float) -> bool:
        """Count one POST of ``client``; return whether it is within the limit."""
        with self._lock:
            while self._windows and now - next(iter(self._windows.values())).started >= self.HOUR:
                self._windows.popitem(last=False)
            window = self._windows.get(client)
            if window is None:
                window = self._windows[client] = Window(now)
                while len(self._windows) > self.size:
                    self._windows.popitem(last=False)
            window.count += 1
            return window.count <= self.limit


def client_key(address: str | None) -> str:
    """Return the key a client is counted under: its IPv4 address, or its IPv6 /64 network.

    One IPv6 connection usually has a whole /64 to choose addresses from.
    """
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)


@dataclass
class SignupDesk:
    """What the sign-up routes keep per app: used nonces, client counts, the confirmation queue."""

    settings: Settings
    make_queue: Callable[[], ConfirmationQueue]
    used: Remembered = field(default_factory=Remembered)
    clients: ClientLimit = field(init=False)
    _queue: ConfirmationQueue | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.clients = ClientLimit(self.settings.signup.client_limit)

    def queue(self) -> ConfirmationQueue:
        """Return the app's confirmation queue, started at the first sign-up that needs it."""
        with self._lock:
            if self._queue is None:
                self._queue = self.make_queue()
            return self._queue

    def close(self) -> None:
        """Send what is queued and stop the queue's threads (``mailout serve`` stopping)."""
        with self._lock:
            queue, self._queue = self._queue, None
        if queue is not None:
            queue.close()


def install(app: Any, state: Mailout) -> SignupDesk:
    """Give ``app`` its sign-up state (``create_app`` calls it once)."""

    def make_queue() -> ConfirmationQueue:
        from ..confirmmail import ConfirmationQueue

        # The queue's writes wait in the app's write queue with the other writes (SQLite).
        return ConfirmationQueue(state.settings, state.engine, state.signer, writes=state.writes)

    desk = SignupDesk(state.settings, make_queue)
    app.extensions[EXTENSION] = desk
    return desk


def desk() -> SignupDesk:
    found: SignupDesk = current_app.extensions[EXTENSION]
    return found


# --- what the form offers ------------------------------------------------------------


def open_lists(settings: Settings) -> list[ListSettings]:
    """Return the lists open to sign-up, in the order of the settings.

    ``signup.signup_lists``; a members' list never, even if the settings were made
    without their check (loading refuses ``public_signup`` on one).
    """
    return [lst for lst in signup.signup_lists(settings) if lst.segment != Segment.MEMBER]


def offered_languages(state: Mailout) -> list[str]:
    """Return the languages a reader may choose: the newsletter's that the pages have words in.

    The newsletter's languages: ``newsletter.language`` (always offered) and those of
    ``[newsletter.translations.<tag>]``.
    """
    news = state.settings.newsletter
    wanted = [news.language, *news.translations]
    words = state.words.languages
    found = [news.language] + [tag for tag in wanted[1:] if tag in words]
    return list(dict.fromkeys(found))


@dataclass
class Filled:
    """The form's values, as given (shown again when the form comes back)."""

    email: str = ""
    name: str = ""
    language: str = ""
    lists: tuple[str, ...] = ()
    page: str = ""


def _form_token(shown: int | None = None) -> str:
    """Return a fresh form token: when the form was first shown (default: now), and a new nonce."""
    when = int(time.time()) if shown is None else shown
    return mailout().signer.sign(Purpose.FORM, when, secrets.randbelow(10**18))


def _action(list_name: str | None, language: str) -> str:
    if list_name:
        return url_for("mailout.subscribe_list_post", list_name=list_name, lang=language)
    return url_for("mailout.subscribe_post", lang=language)


def _form(
    list_name: str | None,
    filled: Filled,
    *,
    status: int = 200,
    notice: str = "",
    error: str = "",
    shown: int | None = None,
) -> Response:
    """Return the sign-up form in the request's language, filled with ``filled``."""
    state = mailout()
    language = requested_language()
    _ = state.words.translator(language)
    lists = open_lists(state.settings)
    if list_name:
        lists = [lst for lst in lists if lst.name == list_name]
    offered = offered_languages(state)
    chosen_language = filled.language if filled.language in offered else None
    if chosen_language is None:
        chosen_language = language if language in offered else offered[0]
    checked = set(filled.lists) if filled.lists else ({lists[0].name} if len(lists) == 1 else set())
    response = page(
        "mailout/subscribe.html",
        status,
        language=language,
        title=_("Subscribe to %(name)s", name=newsletter_text(state.settings, language, "name")[0]),
        action=_action(list_name, language),
        filled=filled,
        lists=lists,
        checked=checked,
        languages=[(tag, language_name(tag)) for tag in offered],
        chosen_language=chosen_language,
        consent=signup.consent_text(state.settings, language),
        form_token=_form_token(shown),
        notice=_(notice) if notice else "",
        error=_(error) if error else "",
    )
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def _no_list() -> Response:
    _ = mailout().words.translator(requested_language())
    return page("mailout/message.html", 404, title=_("No such list"), text=_(_NO_LIST))


_NO_LIST = N_("There is no list open to sign-up at this address.")
_SEND_AGAIN = N_("This form was too old, or damaged on its way. Please check it and send it again.")
_PRESS_AGAIN = N_("Almost done: please check what you entered and press the button once more.")
_BAD_ADDRESS = N_("This is not an email address we can write to. Please check it.")
_NO_LISTS_CHOSEN = N_("Choose at least one list.")


@blueprint.get("/subscribe")
def subscribe_form() -> Response:
    """The sign-up form, with every list open to sign-up."""
    if not open_lists(mailout().settings):
        return _no_list()
    return _form(None, Filled())


@blueprint.get("/subscribe/<list_name>")
def subscribe_list_form(list_name: str) -> Response:
    """The sign-up form for one list; 404 for a list that is not open to sign-up."""
    if list_name not in {lst.name for lst in open_lists(mailout().settings)}:
        return _no_list()
    return _form(list_name, Filled())


@blueprint.post("/subscribe")
def subscribe_post() -> Response:
    return _post(None)


@blueprint.post("/subscribe/<list_name>")
def subscribe_list_post(list_name: str) -> Response:
    return _post(list_name)


def _check_inbox() -> Response:
    """The one answer to a sign-up, whatever became of it: nothing on it depends on the address."""
    _ = mailout().words.translator(requested_language())
    response = page("mailout/subscribe_sent.html", title=_("Check your inbox"))
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def _too_many() -> Response:
    _ = mailout().words.translator(requested_language())
    response = page("mailout/message.html", 429, title=_("Please try again later"), text=_(_TOO_MANY))
    response.headers["Retry-After"] = "3600"
    return response


_TOO_MANY = N_("Too many sign-ups came from your network in the last hour. Please try again later.")


def _page_of(given: str, list_name: str | None) -> str:
    """Return the page the form was on: a pasted form's (an http or https address), else the form's own."""
    given = given.strip()[:PAGE_CHARS]
    parts = urlsplit(given)
    if parts.scheme in ("http", "https") and parts.netloc and given.isprintable():
        return given
    return (
        url_for("mailout.subscribe_list_form", list_name=list_name)
        if list_name
        else url_for("mailout.subscribe_form")
    )


def _post(list_name: str | None) -> Response:
    """Take a sign-up; see the module's docstring for each answer."""
    state = mailout()
    settings = state.settings
    open_names = [lst.name for lst in open_lists(settings)]
    if list_name is not None and list_name not in open_names:
        return _no_list()
    now = time.time()
    if not desk().clients.allow(client_key(request.remote_addr), now):
        return _too_many()
    form = request.form
    asked = [list_name] if list_name else form.getlist("lists")
    filled = Filled(
        email=form.get("email", "")[:320],
        # One line of printable characters: what a name can be stored as (clean_fields).
        name=" ".join("".join(c for c in form.get("name", "") if c.isprintable()).split())[:NAME_CHARS],
        language=form.get("language", ""),
        lists=tuple(name for name in dict.fromkeys(asked) if name in open_names),
        page=_page_of(form.get("page", "") or request.referrer or "", list_name),
    )
    if form.get("website"):
        # The honeypot: people never see it, robots fill every field.
        return _check_inbox()
    token = form.get("form_token")
    if token is None:
        # A form pasted into another website (``mailout signup-form``): it carries no token,
        # since a page elsewhere cannot ask for one without a script. Nothing is done yet.
        return _form(list_name, filled, notice=_PRESS_AGAIN)
    claim = state.signer.verify(Purpose.FORM, token)
    max_age = settings.signup.form_max_hours * 3600
    if claim is None or not 0 <= now - claim.subscriber_id <= max_age + 60:
        return _form(list_name, filled, notice=_SEND_AGAIN)
    if now - claim.subscriber_id < settings.signup.form_min_seconds:
        # Sent back faster than anyone reads: a robot, most likely; nothing is done. A
        # person (a browser that filled the form in) gets the form back and presses once more;
        # its new token keeps the time the form was first shown, so that press counts.
        return _form(list_name, filled, notice=_PRESS_AGAIN, shown=claim.subscriber_id)
    if not desk().used.add_new(claim.list_id, claim.subscriber_id + max_age + 60, now):
        # Sent twice (a double click, the back button, a replay): the second does nothing,
        # and gets the page the first one got.
        return _check_inbox()
    try:
        normalise_email(filled.email)
    except InvalidSubscriber:
        return _form(list_name, filled, error=_BAD_ADDRESS)
    if not filled.lists:
        return _form(list_name, filled, error=_NO_LISTS_CHOSEN)
    language = requested_language()
    offered = offered_languages(state)
    chosen = (
        filled.language if filled.language in offered else (language if language in offered else offered[0])
    )
    asked_for = signup.SignupRequest(
        address=filled.email,
        name=filled.name,
        language=chosen,
        lists=filled.lists,
        page=filled.page,
        consent_text=signup.consent_text(settings, language),
        consent_language=language,
        ip=request.remote_addr if settings.signup.store_ip else None,
    )
    # Recorded and answered by the queue's thread: the request reads and writes nothing
    # about the address, so its answer and its time are the same whatever the address's
    # state (new, pending, subscribed, unsubscribed, bounced, erased).
    desk().queue().submit_request(asked_for, dt.datetime.fromtimestamp(now, dt.UTC))
    return _check_inbox()


# --- the confirmation link ---------------------------------------------------------------


def _invalid_confirmation() -> Response:
    # Forged, truncated, expired, replaced by a newer message's, or used already: one answer.
    language = requested_language()
    _ = mailout().words.translator(language)
    response = page(
        "mailout/subscribe_invalid.html",
        404,
        title=_("This link is not valid"),
        form_url=url_for("mailout.subscribe_form", lang=language),
    )
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def _confirmed(done: signup.Confirmed) -> Response:
    state = mailout()
    _ = state.words.translator(requested_language())
    response = page(
        "mailout/subscribe_confirmed.html",
        title=_("You are subscribed"),
        lists=signup.list_titles(state.settings, done.lists),
    )
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def _confirm(signup_id: int, nonce: int) -> Response:
    state = mailout()
    with state.writes.transaction() as conn:
        done = signup.confirm(
            conn, state.settings, state.signer, signup_id, nonce, now=dt.datetime.now(dt.UTC)
        )
    return _invalid_confirmation() if done is None else _confirmed(done)


@blueprint.get("/subscribe/confirm/<token>")
def confirm_link(token: str) -> Response:
    """Confirm, or show one button when the message left only moments ago (a mail scanner's fetch).

    A HEAD (Flask answers it with this view) never confirms.
    """
    state = mailout()
    claim = state.signer.verify(Purpose.CONFIRM, token)
    if claim is None:
        return _invalid_confirmation()
    now = dt.datetime.now(dt.UTC)
    with reader(state.engine).connect() as conn:
        pending = signup.look(conn, state.settings, claim.subscriber_id, claim.list_id, now=now)
    if pending is None:
        return _invalid_confirmation()
    age = (now - pending.sent_at).total_seconds()  # ``look`` gives it in UTC
    if request.method == "GET" and age > state.settings.signup.button_seconds:
        return _confirm(claim.subscriber_id, claim.list_id)
    language = requested_language()
    _ = state.words.translator(language)
    response = page(
        "mailout/subscribe_confirm.html",
        title=_("Confirm your subscription"),
        lists=signup.list_titles(state.settings, pending.lists),
        action=url_for("mailout.confirm_post", token=token, lang=language),
    )
    response.headers["X-Robots-Tag"] = "noindex"
    return response


@blueprint.post("/subscribe/confirm/<token>")
def confirm_post(token: str) -> Response:
    """Confirm: the button of the confirmation page. Harmless to repeat (the second gets the 404 page)."""
    claim = mailout().signer.verify(Purpose.CONFIRM, token)
    if claim is None:
        return _invalid_confirmation()
    return _confirm(claim.subscriber_id, claim.list_id)
