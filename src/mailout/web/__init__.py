"""The web side of mailout: what answers the links in every message, and the team's preview.

``create_app(settings)`` builds the Flask app; nothing is built at import time.
For production, run it behind a WSGI server from the workspace folder, with the
same database and ``MAILOUT_SECRET_KEY`` as the sender::

    gunicorn --workers 2 --bind 127.0.0.1:8025 'mailout.web:create_app()'

Routes (blueprint ``mailout``):

- ``/unsubscribe/<token>``: GET confirms (a GET never unsubscribes: mail scanners
  fetch every link), POST unsubscribes, also RFC 8058 one-click from the mail client.
- ``/issues/`` and ``/issues/<slug>``: the public archive; ``?t=<token>`` shows a
  member their own members' version.
- ``/preview/<slug>``: every variant, re-rendered on each reload; open on loopback,
  behind a password elsewhere.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from flask import Flask
from sqlalchemy import Engine

from ..config import Settings, load_settings
from ..db import open_engine
from ..links import Links
from ..tokens import Signer

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


def create_app(settings: Settings | None = None, *, local: bool = False) -> Flask:
    """Return the web app for a workspace (default: found from the current folder and environment).

    ``local`` says the app listens on loopback only (``mailout serve`` decides): then
    the team's preview needs no password. Anywhere else it needs
    ``MAILOUT_PREVIEW_PASSWORD``, and without one it is switched off.
    Raises ``ConfigError`` without ``MAILOUT_SECRET_KEY``: the links could not be verified.
    """
    from .views import blueprint

    settings = settings or load_settings()
    signer = Signer.from_secret(settings.secret_key)
    engine = open_engine(settings.database_url(), sqlite_synchronous=settings.database.sqlite_synchronous)
    app = Flask(__name__, static_folder=str(PACKAGE / "static"), template_folder=str(PACKAGE / "templates"))
    app.config.update(
        MAX_CONTENT_LENGTH=64 * 1024,
        TEMPLATES_AUTO_RELOAD=False,
    )

    # No sessions and no cookies: the links carry their own signed tokens.
    app.extensions["mailout"] = Mailout(settings, engine, signer, preview_open=local)
    app.register_blueprint(blueprint)
    return app


def standalone_page(template: str, settings: Settings, **context: Any) -> str:
    """Render one of the app's page templates outside a request (for the static archive)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PACKAGE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template(template).render(newsletter=settings.newsletter, **context)
