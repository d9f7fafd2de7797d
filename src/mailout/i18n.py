"""The words mailout itself writes, in each reader's language: catalogs, dates, countries.

The words come from gettext catalogs, ``.po`` files read at run time with Babel
(no compiled ``.mo`` is kept anywhere): the package's own under
``src/mailout/locale/<lang>/LC_MESSAGES/<domain>.po``, and a workspace's under
``<workspace>/locale/<lang>/LC_MESSAGES/<domain>.po`` (``paths.locale``), which win
string by string. The message ids are the English text, so a string missing
everywhere shows in English. Two domains: ``email`` (the email templates) and
``web`` (the pages of ``mailout serve``).

A catalog is read once per process and read again when its file changes (the
cache is keyed by each file's path, size and modification time).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import gettext as _gettext
import io
import re
from dataclasses import fields
from pathlib import Path

from babel import Locale
from babel.dates import format_date as _babel_date
from babel.dates import match_skeleton, parse_pattern
from babel.messages.mofile import write_mo
from babel.messages.pofile import PoFileError, read_po
from babel.support import Translations

from .config import Newsletter, Settings
from .errors import ConfigError
from .languages import base
from .paths import display_path

#: The catalogs: the words of the email templates, and those of the web pages.
DOMAINS = ("email", "web")
#: The package's catalogs: ``<lang>/LC_MESSAGES/<domain>.po``.
LOCALE_DIR = Path(__file__).parent / "locale"
#: The templates whose words make up each domain (``missing_strings`` reads them).
DOMAIN_TEMPLATES = {
    "email": Path(__file__).parent / "templates" / "email",
    "web": Path(__file__).parent / "web" / "templates",
}
#: The Python modules whose words belong to a domain: msgids passed to ``_()`` (the pages'
#: translator), ``N_()`` (marked where written, translated later) or ``i18n.gettext``
#: (its third argument). Extracted with Babel's Python extractor, like the templates.
DOMAIN_MODULES = {
    "email": (Path(__file__).parent / "confirmmail.py",),
    "web": tuple(
        Path(__file__).parent / module
        for module in (
            "web/views.py",
            "web/words.py",
            "archive.py",
            "cli/web.py",
            "signup.py",
            "web/signup.py",
            "web/preferences.py",
        )
    ),
}
#: The keywords of ``DOMAIN_MODULES``: function name -> the msgid's argument (1-based).
PYTHON_KEYWORDS: dict[str, tuple[int, ...] | None] = {"_": None, "N_": None, "gettext": (3,)}
#: The language whose text the message ids are.
SOURCE_LANGUAGE = "en"
#: The texts of ``[newsletter]`` a team may write per language (``[newsletter.translations.fr]``).
TEXTS = ("name", "reason", "greeting_fallback", "members_teaser")
#: The built-in members' teaser, with its plural (the setting's default in ``{count}`` form).
TEASER = (
    "%(count)d more item in this issue for members of the network",
    "%(count)d more items in this issue for members of the network",
)
_DEFAULTS = {f.name: f.default for f in fields(Newsletter)}


def _code_messages() -> tuple[str | tuple[str, str], ...]:
    """Return the "email" msgids written from code rather than the templates."""
    from .confirmmail import PLURALS
    from .issues import DEFAULT_LINK_LABELS, DEFAULT_TITLES

    return (
        *dict.fromkeys([*DEFAULT_TITLES.values(), *DEFAULT_LINK_LABELS.values()]),
        str(_DEFAULTS["reason"]),
        str(_DEFAULTS["greeting_fallback"]),
        TEASER,
        *PLURALS,
    )


# -- catalogs ------------------------------------------------------------------


def _folders(language: str) -> list[str]:
    """Return the catalog folders to look in for ``language``: the tag, then its base language."""
    names = [language.replace("-", "_")]
    if base(language) != language:
        names.append(base(language))
    return names


def catalog_files(settings: Settings | None, language: str, domain: str = "email") -> list[Path]:
    """Return the ``.po`` files that may hold ``language``'s strings, the first one winning.

    ``settings`` None: the package's own catalogs only.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown catalog domain {domain!r} (known: {', '.join(DOMAINS)})")
    roots = [LOCALE_DIR] if settings is None else [settings.path("locale"), LOCALE_DIR]
    return [root / name / "LC_MESSAGES" / f"{domain}.po" for root in roots for name in _folders(language)]


def _stamp(path: Path) -> tuple[str, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (str(path), info.st_mtime_ns, info.st_size)


#: A named placeholder of a msgid or its translation: ``%(count)s``.
_PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")


@functools.lru_cache(maxsize=256)
def _read(stamp: tuple[str, int, int]) -> Translations:
    """Return one ``.po`` file as translations (fuzzy and empty strings left out).

    A file that is not a catalog, or a translation that names a placeholder its
    English text lacks (which would fail every render of it), is a ``ConfigError``
    naming the file and the line: the team's catalogs are checked like its settings.
    """
    path = Path(stamp[0])
    try:
        with path.open("rb") as handle:
            catalog = read_po(handle, abort_invalid=True)
    except PoFileError as exc:
        line = getattr(exc, "lineno", None)
        where = f"{display_path(path)}:{line}" if line else display_path(path)
        raise ConfigError(f"{where}: not a gettext catalog: {exc}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{display_path(path)}: cannot read the catalog: {exc}") from None
    for message in catalog:
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        texts = message.string if isinstance(message.string, tuple) else (message.string,)
        known = {name for text in ids for name in _PLACEHOLDER.findall(str(text))}
        for text in texts:
            unknown = sorted(set(_PLACEHOLDER.findall(str(text or ""))) - known)
            if unknown:
                raise ConfigError(
                    f"{display_path(path)}:{message.lineno}: the translation of {str(ids[0])!r} uses"
                    f" %({unknown[0]})s, which the English text does not have"
                    f" (it has: {', '.join(sorted(known)) or 'none'})"
                )
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled)


@functools.lru_cache(maxsize=256)
def _chain(stamps: tuple[tuple[str, int, int], ...]) -> _gettext.NullTranslations:
    head: _gettext.NullTranslations = _gettext.NullTranslations()  # English: the msgid itself
    for stamp in reversed(stamps):
        link = copy.copy(_read(stamp))  # the cached file's strings, shared; a fallback of its own
        link.add_fallback(head)
        head = link
    return head


def translations(settings: Settings, language: str, domain: str = "email") -> _gettext.NullTranslations:
    """Return the catalog of ``language``: the workspace's strings, the built-in ones, then English."""
    stamps = tuple(s for s in map(_stamp, catalog_files(settings, language, domain)) if s is not None)
    return _chain(stamps)


def gettext(settings: Settings, language: str, message: str, domain: str = "email") -> str:
    """Return ``message`` (an English msgid) in ``language``."""
    return translations(settings, language, domain).gettext(message)


def has_catalog(settings: Settings, language: str, domain: str = "email") -> bool:
    """Return whether ``language`` has words of its own: English, or a catalog file for it."""
    return base(language) == SOURCE_LANGUAGE or any(
        p.is_file() for p in catalog_files(settings, language, domain)
    )


def _translated(settings: Settings | None, language: str, domain: str) -> set[str | tuple[str, int]]:
    keys: set[str | tuple[str, int]] = set()
    for path in catalog_files(settings, language, domain):
        stamp = _stamp(path)
        if stamp is not None:
            keys |= set(_read(stamp)._catalog)
    return keys


def template_files(settings: Settings | None, domain: str = "email") -> dict[str, Path]:
    """Return the templates in use for ``domain`` by name: the workspace's, else the built-in one."""
    found: dict[str, Path] = {}
    folders = [DOMAIN_TEMPLATES[domain]]
    if settings is not None and domain == "email":
        folders.insert(0, settings.path("templates"))
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.rglob("*.j2")) + sorted(folder.rglob("*.html")):
                found.setdefault(path.relative_to(folder).as_posix(), path)
    return found


@functools.lru_cache(maxsize=64)
def _extract(stamp: tuple[str, int, int]) -> tuple[str | tuple[str, str], ...]:
    from jinja2.ext import babel_extract

    found: list[str | tuple[str, str]] = []
    with open(stamp[0], "rb") as handle:
        options = {"extensions": "jinja2.ext.i18n", "trimmed": "false"}
        for _line, _function, message, _comments in babel_extract(
            handle, ("_", "gettext", "ngettext"), [], options
        ):
            if isinstance(message, str):
                found.append(message)
            elif isinstance(message, tuple) and len(message) >= 2 and message[0] and message[1]:
                found.append((str(message[0]), str(message[1])))
            elif isinstance(message, tuple) and message and message[0]:
                found.append(str(message[0]))
    return tuple(found)


@functools.lru_cache(maxsize=16)
def _extract_python(stamp: tuple[str, int, int]) -> tuple[str, ...]:
    from babel.messages.extract import extract_from_file

    # A call whose msgid is not a literal (``catalog.gettext(message)``) yields nothing.
    return tuple(
        message
        for _line, message, _comments, _context in extract_from_file(
            "python", stamp[0], keywords=PYTHON_KEYWORDS
        )
        if isinstance(message, str) and message
    )


def messages(settings: Settings | None, domain: str = "email") -> list[str | tuple[str, str]]:
    """Return every msgid the templates in use and the code ask for; plurals as pairs."""
    found: dict[str | tuple[str, str], None] = {}
    for path in template_files(settings, domain).values():
        stamp = _stamp(path)
        if stamp is not None:
            found.update(dict.fromkeys(_extract(stamp)))
    for path in DOMAIN_MODULES[domain]:
        stamp = _stamp(path)
        if stamp is not None:
            found.update(dict.fromkeys(_extract_python(stamp)))
    if domain == "email":
        found.update(dict.fromkeys(_code_messages()))
    return list(found)


def missing_strings(settings: Settings | None, language: str, domain: str = "email") -> list[str]:
    """Return the msgids the templates in use ask for that no catalog of ``language`` translates.

    English needs none; a language with no catalog at all is missing every string.
    """
    if base(language) == SOURCE_LANGUAGE:
        return []
    known = _translated(settings, language, domain)
    missing = []
    for message in messages(settings, domain):
        if isinstance(message, tuple):
            if (message[0], 0) not in known:
                missing.append(message[0])
        elif message not in known:
            missing.append(message)
    return missing


# -- the newsletter's own texts ----------------------------------------------


def newsletter_text(settings: Settings, language: str, name: str) -> tuple[str, bool]:
    """Return a ``[newsletter]`` text (see ``TEXTS``) for ``language``, and whether it is in it.

    In order: ``[newsletter.translations.<language>]`` (the tag, then its base
    language); the built-in catalog's text when the setting is still the built-in
    default; the setting itself, which is in ``newsletter.language``. The answer
    is False when that last text is shown in another language.
    """
    news = settings.newsletter
    for tag in dict.fromkeys((language, base(language))):
        value = news.translations.get(tag, {}).get(name)
        if value is not None:
            return value, True
    value = str(getattr(news, name))
    if name == "name":  # a name stays as it is unless the team writes it per language
        return value, True
    if value == _DEFAULTS[name]:
        # The built-in text: the catalogs have it (the teaser's plural forms: members_teaser).
        text = value if name == "members_teaser" else gettext(settings, language, value)
        return text, has_catalog(settings, language)
    return value, base(language) == base(news.language)


def members_teaser(settings: Settings, language: str, count: int) -> str:
    """Return the line shown where ``count`` members-only items were left out ("" for none)."""
    if not count:
        return ""
    template, _ = newsletter_text(settings, language, "members_teaser")
    if template == _DEFAULTS["members_teaser"]:
        return translations(settings, language).ngettext(*TEASER, count) % {"count": count}
    return template.format(count=count, s="" if count == 1 else "s")


# -- dates, places, languages --------------------------------------------------


@functools.lru_cache(maxsize=64)
def _locale(language: str) -> Locale:
    """Return Babel's locale for a tag; plain ``en`` is British English, anything unknown too."""
    if language == SOURCE_LANGUAGE:
        return Locale("en", "GB")
    try:
        return Locale.parse(language, sep="-")
    except (ValueError, LookupError, TypeError):
        try:
            return Locale.parse(base(language))
        except (ValueError, LookupError, TypeError):
            return Locale("en", "GB")


def direction(language: str) -> str:
    """Return ``rtl`` for a language written right to left, else ``ltr``."""
    try:
        order = Locale.parse(language, sep="-").character_order
    except (ValueError, LookupError):
        return "ltr"
    return "rtl" if order == "right-to-left" else "ltr"


def _british(value: dt.date) -> str:
    return f"{value.day} {value:%B %Y}"


@functools.lru_cache(maxsize=4096)
def format_date(value: dt.date, language: str) -> str:
    """Return a date the way ``language`` writes it in full ("16 janvier 2019")."""
    if language == SOURCE_LANGUAGE:
        return _british(value)
    return _babel_date(value, "long", locale=_locale(language))


def _full(pattern: str) -> str:
    """Widen an interval pattern of CLDR's ``yMMMd`` to full month names and plain day numbers."""
    pattern = re.sub(r"(?<![ML])(MMM|LLL)(?![ML])", lambda m: m.group(1) + m.group(1)[0], pattern)
    return re.sub(r"(?<!d)dd(?!d)", "d", pattern)


@functools.lru_cache(maxsize=4096)  # an issue writes the same few dates in every variant
def format_date_range(start: dt.date, end: dt.date | None, language: str) -> str:
    """Return a date range the way ``language`` writes it: "16–17 janvier 2019", "27–28 February 2019".

    The pattern is CLDR's interval format for day, month and year, with the month
    written in full. Plain English keeps mailout's British form.
    """
    if end is None or end == start:
        return format_date(start, language)
    if language == SOURCE_LANGUAGE:
        if (start.year, start.month) == (end.year, end.month):
            return f"{start.day}\u2013{_british(end)}"
        if start.year == end.year:
            return f"{start.day} {start:%B} \u2013 {_british(end)}"
        return f"{_british(start)} \u2013 {_british(end)}"
    locale = _locale(language)
    skeleton = match_skeleton("yMMMMd", locale.interval_formats)
    patterns = locale.interval_formats[skeleton] if skeleton else {}
    for part, differs in (("y", start.year != end.year), ("M", start.month != end.month), ("d", True)):
        if differs and part in patterns:
            first, second = (parse_pattern(_full(p)) for p in patterns[part])
            # CLDR puts thin spaces around the dash; the plain space of mailout's English.
            return (first.apply(start, locale) + second.apply(end, locale)).replace("\u2009", " ")
    fallback = str(locale.interval_formats.get(None) or "{0} \u2013 {1}")
    return fallback.format(format_date(start, language), format_date(end, language))


def country_name(code: str, language: str) -> str:
    """Return a country's name in ``language`` (DE: "Allemagne" in French), else the code."""
    territories = _locale(language).territories
    return str(territories.get(code.upper(), code)) if code else ""


def language_name(tag: str) -> str:
    """Return a language's name in itself ("français" for fr), for menus and labels."""
    try:
        return Locale.parse(tag, sep="-").get_display_name() or tag
    except (ValueError, LookupError):
        return tag


def available_languages(domain: str = "email") -> list[str]:
    """Return the languages the package has a catalog for, English first."""
    found = sorted(
        p.parent.parent.name.replace("_", "-") for p in LOCALE_DIR.glob(f"*/LC_MESSAGES/{domain}.po")
    )
    return [SOURCE_LANGUAGE, *(tag for tag in found if tag != SOURCE_LANGUAGE)]
