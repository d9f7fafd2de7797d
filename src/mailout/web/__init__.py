"""The web side of mailout: what answers the links in every message, and the team's preview.

``create_app(settings)`` builds the Flask app; nothing is built at import time.
``mailout serve`` runs it under waitress (``server.py``), in production too;
another WSGI server can run it from the workspace folder, with the same
database and ``MAILOUT_SECRET_KEY`` as the sender::

    gunicorn --workers 2 --bind 127.0.0.1:8025 'mailout.web:create_app()'

Routes (blueprint ``mailout``):

- ``/unsubscribe/<token>``: GET confirms (a GET never unsubscribes: mail scanners
  fetch every link), POST unsubscribes, also RFC 8058 one-click from the mail client;
  ``?lang=`` says the language of the pages (``words.py``).
- ``/issues/``, ``/issues/<slug>`` and ``/issues/<slug>/<language>``: the public
  archive, a page per issue and language; ``?t=<token>`` shows a member their own
  members' version.
- ``/subscribe`` and ``/subscribe/<list>``: the sign-up form (GET) and the sign-up
  (POST); ``/subscribe/confirm/<token>``: the link in the confirmation message
  (``signup.py``).
- ``/preferences/<token>``: the reader's own page (name, language, lists, unsubscribe
  from everything), linked from every message's footer; GET shows, POST changes
  (``preferences.py``).
- ``/preview/<slug>``: every variant, re-rendered on each reload; open on loopback,
  behind a password elsewhere.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from flask import Flask
from sqlalchemy import Engine
from werkzeug.middleware.proxy_fix import ProxyFix

from ..config import Settings, load_settings
from ..db import WriteQueue, open_engine
from ..links import Links
from ..tokens import Signer
from .words import Words, strong

PACKAGE = Path(__file__).resolve().parent


class TimedCache:
    """A small thread-safe cache whose entries expire: at most ``size`` of them, each ``ttl`` seconds."""

    def __init__(self, ttl: float = 60.0, size: int = 256) -> None:
        self.ttl = ttl
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, key: str, compute: Callable[[], Any], *, keep: Callable[[Any], bool] = bool) -> Any:
        """Return the value for ``key``, computed again when absent or expired; kept only if ``keep`` says so."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self.ttl:
            return entry[1]
        value = compute()
        if keep(value):
            with self._lock:
                self._entries[key] = (now, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return value


@dataclass(frozen=True)
class CachedPage:
    """A page's bytes as sent, and its entity tag (the digest of those bytes)."""

    body: bytes
    etag: str


class PageCache:
    """Pages that never change once made, the least recently used dropped past ``limit`` bytes.

    Thread-safe. The key must hold everything the page depends on: an entry is
    never checked again, only dropped.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, CachedPage] = OrderedDict()

    def get(self, key: Hashable) -> CachedPage | None:
        """Return the page kept under ``key``, if any."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: Hashable, body: bytes) -> CachedPage:
        """Keep ``body`` under ``key`` (unless it alone is over the limit) and return it as a page."""
        made = CachedPage(body, hashlib.sha256(body).hexdigest()[:32])
        if len(body) > self.limit:
            return made
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.size -= len(old.body)
            self._entries[key] = made
            self.size += len(body)
            while self.size > self.limit:
                _, dropped = self._entries.popitem(last=False)
                self.size -= len(dropped.body)
        return made

    def held(self) -> list[Hashable]:
        """Return the keys held, least recently used first."""
        with self._lock:
            return list(self._entries)


#: How long the app takes an issue's newest public dispatch as known: a new dispatch, or one
#: removed, shows on the issue's page this much later at most (browsers keep it 300 s anyway).
NEWEST_SECONDS = 1.0
#: The memory the public issue pages may take in each web process: about 500 pages of 60 KB.
PAGE_CACHE_BYTES = 32 * 1024 * 1024


class Mailout:
    """What the views share: settings, database, signer, links, and who may see the preview."""

    def __init__(self, settings: Settings, engine: Engine, signer: Signer, preview_open: bool) -> None:
        self.settings = settings
        self.engine = engine
        self.signer = signer
        self.links = Links(settings, signer)
        self.preview_open = preview_open
        #: Issue slug -> the pictures its public dispatches load (messages load them on every open).
        self.images = TimedCache()
        #: Issue slug -> the number and key of its newest public dispatch (unknown slugs: not kept).
        self.newest = TimedCache(ttl=NEWEST_SECONDS)
        #: (dispatch id, dispatch key, mount point) -> its public page; see ``views._public_issue_page``.
        self.pages = PageCache(PAGE_CACHE_BYTES)
        #: The unsubscribe POSTs' transactions, one at a time on SQLite.
        self.writes = WriteQueue(engine)
        #: The pages' own words, in each language mailout has them in.
        self.words = Words(settings)
        #: "<dispatch id>:<key>" -> its subject and preheader in each language, for the index.
        self.versions = TimedCache(ttl=3600, size=1024)


def create_app(settings: Settings | None = None, *, local: bool = False) -> Flask:
    """Return the web app for a workspace (default: found from the current folder and environment).

    ``local`` says the app listens on loopback only (``mailout serve`` decides): then
    the team's preview needs no password. Anywhere else it needs
    ``MAILOUT_PREVIEW_PASSWORD``, and without one it is switched off.
    Raises ``ConfigError`` without ``MAILOUT_SECRET_KEY``: the links could not be verified.
    """
    from . import (
        preferences,  # noqa: F401  (its routes, on the same blueprint)
        signup,  # its routes join the blueprint
    )
    from .views import LanguageConverter, blueprint

    settings = settings or load_settings()
    signer = Signer.from_secret(settings.secret_key)
    engine = open_engine(settings.database_url(), sqlite_synchronous=settings.database.sqlite_synchronous)
    try:
        app = Flask(
            __name__, static_folder=str(PACKAGE / "static"), template_folder=str(PACKAGE / "templates")
        )
        app.config.update(
            MAX_CONTENT_LENGTH=64 * 1024,
            TEMPLATES_AUTO_RELOAD=False,
        )

        # No sessions and no cookies: the links carry their own signed tokens.
        app.extensions["mailout"] = Mailout(settings, engine, signer, preview_open=local)
        app.url_map.converters["language"] = LanguageConverter
        app.register_blueprint(blueprint)
        signup.install(app, app.extensions["mailout"])
        if settings.web.proxy_hops:
            # The client's address from X-Forwarded-For, as the proxies in front add it.
            app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.web.proxy_hops)  # type: ignore[method-assign]
    except BaseException:
        # open_engine has read the schema's revision: its pool holds an open connection,
        # which nobody could close once the engine is dropped (the pages' words failing
        # to load, say). Left to the garbage collector, psycopg warns of it.
        engine.dispose()
        raise
    return app


def standalone_page(template: str, settings: Settings, *, language: str = "en", **context: Any) -> str:
    """Render one of the app's page templates outside a request (the static archive, the preview grid)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PACKAGE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    words = Words(settings)
    context = {"strong": strong, **words.context(words.language(language)), **context}
    return env.get_template(template).render(newsletter=settings.newsletter, **context)
