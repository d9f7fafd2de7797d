"""The web pages' own words in the reader's language, and which language a request gets.

The pages' words are English msgids in the templates (``{{ _("Unsubscribe") }}``)
and in ``views.py``, translated through the "web" gettext domain
(``locale/<language>/LC_MESSAGES/web.po``, read by ``i18n.translations``).

A page's language comes from its link (``?lang=`` on the unsubscribe pages, the
path of an issue page), from the visitor's choice on the archive's index, else
from the browser's ``Accept-Language``, else ``newsletter.language``. Whatever the
request says is only ever compared with the languages mailout has words for, and
the page writes the one chosen from those: never the value it was given.
"""

from __future__ import annotations

import gettext as _gettext
import logging
import threading
from collections.abc import Callable, Iterable

from markupsafe import Markup, escape

from .. import i18n
from ..config import Settings
from ..errors import ConfigError
from ..languages import base, canonical, choose

DOMAIN = "web"
_log = logging.getLogger(__name__)

#: ``_(msgid, **values)``: the translated text, escaped, with the values escaped into it.
Translate = Callable[..., Markup]


def catalog_languages(settings: Settings) -> tuple[str, ...]:
    """Return the languages the web pages have words for: English, mailout's catalogs, the workspace's."""
    own = settings.path("locale").glob(f"*/LC_MESSAGES/{DOMAIN}.po")
    found = [*i18n.available_languages(DOMAIN), *sorted(p.parent.parent.name for p in own)]
    return tuple(dict.fromkeys(tag for tag in map(canonical, found) if tag is not None))


class Words:
    """The pages' words, one catalog per language, loaded once per app and shared by its threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.languages = catalog_languages(settings)
        #: The pages' language when the request names none (or one mailout has no words for).
        self.default = choose(settings.newsletter.language, self.languages, "en")
        self._lock = threading.Lock()
        self._catalogs: dict[str, _gettext.NullTranslations] = {}
        for language in self.languages:  # a broken catalog stops the app at its start, said in one line
            i18n.translations(settings, language, DOMAIN)

    def language(self, requested: str | None) -> str:
        """Return the language of the pages for a requested tag: exact, its base, else the default."""
        return choose(requested or "", self.languages, self.default)

    def best(self, accepted: Iterable[tuple[str, float]], available: Iterable[str], default: str) -> str:
        """Return which of ``available`` a browser's ``Accept-Language`` asks for, else ``default``.

        In the order of the browser's preference; a regional tag (``fr-BE``) takes its
        base language's page when there is none of its own.
        """
        offered = list(available)
        for value, quality in sorted(accepted, key=lambda pair: -pair[1]):
            tag = canonical(value)
            if tag is None or quality <= 0:
                continue
            if tag in offered:
                return tag
            if base(tag) in offered:
                return base(tag)
        return default

    def catalog(self, language: str) -> _gettext.NullTranslations:
        with self._lock:
            found = self._catalogs.get(language)
        if found is None:
            try:
                found = i18n.translations(self.settings, language, DOMAIN)
            except ConfigError as exc:  # a catalog edited into a broken one while the app runs
                _log.error("%s; the pages in %s are shown in English", exc, language)
                found = _gettext.NullTranslations()
            with self._lock:
                self._catalogs[language] = found
        return found

    def translator(self, language: str) -> Translate:
        """Return ``_`` for templates and views: the msgid in ``language``, escaped, values filled in."""
        catalog = self.catalog(language)

        def translate(message: str, **values: object) -> Markup:
            text = escape(catalog.gettext(message))
            return text % values if values else text

        return translate

    def context(self, language: str) -> dict[str, object]:
        """Return what every page template needs for its language: ``_``, ``language``, ``direction``."""
        return {"_": self.translator(language), "language": language, "direction": i18n.direction(language)}


def N_(message: str) -> str:
    """Mark a msgid written away from where it is translated (extraction finds it; nothing changes)."""
    return message


def strong(value: object) -> Markup:
    """Return ``value`` escaped inside ``<strong>``, to fill into a translated sentence."""
    return Markup("<strong>%s</strong>") % (value,)
