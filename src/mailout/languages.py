"""Language tags (BCP 47): their one written form, and which of an issue's languages a reader gets.

A subscriber's language comes from a CSV file typed by people (``FR``, ``fr_BE``,
``fr-be``); an issue declares the languages it is written in. Both are reduced
to one canonical form here, so that comparing two tags is comparing two strings:
the language in lower case, a script in title case, a region in upper case
(``fr``, ``fr-BE``, ``zh-Hant-TW``, ``es-419``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from babel import localedata

#: language[-Script][-REGION][-variant...]: the subtags mailout accepts (RFC 5646, section
#: 2.1, without extended languages, extensions and private use, which no mail client sends).
_TAG = re.compile(
    r"(?P<language>[A-Za-z]{2,3})"
    r"(?:-(?P<script>[A-Za-z]{4}))?"
    r"(?:-(?P<region>[A-Za-z]{2}|[0-9]{3}))?"
    r"(?P<variants>(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*)"
)
#: The longest tag stored (``subscribers.language`` is 16 characters).
MAX_LENGTH = 16


def canonical(tag: str) -> str | None:
    """Return ``tag`` in its canonical form, or None if it is not a tag of a known language.

    ``FR`` and ``fr`` give ``fr``; ``fr_be`` and ``FR-be`` give ``fr-BE``. The primary
    language must be one the Unicode CLDR knows (so ``xx`` and ``english`` are refused);
    the region and script need only be well formed.
    """
    text = tag.strip().replace("_", "-")
    match = _TAG.fullmatch(text)
    if match is None or len(text) > MAX_LENGTH:
        return None
    language = match["language"].lower()
    if not localedata.exists(language):
        return None
    parts = [language]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    parts += [v.lower() for v in match["variants"].split("-") if v]
    return "-".join(parts)


def base(tag: str) -> str:
    """Return the primary language of a canonical tag: ``fr`` for ``fr-BE``."""
    return tag.split("-", 1)[0]


def choose(tag: str, available: Sequence[str], default: str) -> str:
    """Return which of ``available`` (canonical tags) a reader whose language is ``tag`` gets.

    The exact language, else its primary language (``fr-BE`` reads ``fr``), else
    ``default``. ``tag`` may be empty or stored before mailout checked it: it is
    compared without regard to case.
    """
    wanted = canonical(tag) if tag else None
    if wanted is None:
        return default
    if wanted in available:
        return wanted
    primary = base(wanted)
    return primary if primary in available else default
