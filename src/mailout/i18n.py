"""The words mailout itself writes, in each reader's language (SKELETON: issue 14 fills it in).

The signatures below are the contract the other modules code against; the
implementation is English only until the catalogs land.
"""

from __future__ import annotations

import datetime as dt
import gettext as _gettext

from babel import Locale

from .config import Settings

#: The catalogs: the words of the email templates, and those of the web pages.
DOMAINS = ("email", "web")


def translations(settings: Settings, language: str, domain: str = "email") -> _gettext.NullTranslations:
    """Return the catalog of ``language``: the workspace's strings, the built-in ones, then English."""
    return _gettext.NullTranslations()


def gettext(settings: Settings, language: str, message: str, domain: str = "email") -> str:
    """Return ``message`` (an English msgid) in ``language``."""
    return translations(settings, language, domain).gettext(message)


def direction(language: str) -> str:
    """Return ``rtl`` for a language written right to left, else ``ltr``."""
    try:
        order = Locale.parse(language, sep="-").character_order
    except (ValueError, LookupError):
        return "ltr"
    return "rtl" if order == "right-to-left" else "ltr"


def format_date(value: dt.date, language: str) -> str:
    """Return a date the way ``language`` writes it in full ("16 janvier 2019")."""
    return f"{value.day} {value:%B %Y}"


def language_name(tag: str) -> str:
    """Return a language's name in itself ("français" for fr), for menus and labels."""
    try:
        return Locale.parse(tag, sep="-").get_display_name() or tag
    except (ValueError, LookupError):
        return tag
