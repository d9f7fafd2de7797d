"""DMARC (RFC 7489) for ``mailout doctor``: find the policy of a From domain and check alignment.

The policy is published at ``_dmarc.<From domain>``, or else at
``_dmarc.<organizational domain>``: the domain one label below its public
suffix (``efus.example`` for ``news.efus.example``, ``efus.co.uk`` for
``news.efus.co.uk``). The public suffix list comes with the
``publicsuffixlist`` package, offline; a suffix it does not know counts as
one label, as the list's own default rule says.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from .resolver import Lookup

POLICIES = ("none", "quarantine", "reject")


@functools.cache
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # reads the list shipped with the package, once


def organizational_domain(domain: str) -> str:
    """Return the registered domain of ``domain`` (itself when it is one, or a public suffix)."""
    domain = domain.lower().rstrip(".")
    return _suffixes().privatesuffix(domain) or domain


def aligned(identifier: str, author: str, *, strict: bool) -> bool:
    """Tell whether a DKIM ``d=`` or envelope domain aligns with the From domain (RFC 7489 3.1)."""
    identifier, author = identifier.lower().rstrip("."), author.lower().rstrip(".")
    if strict:
        return identifier == author
    return organizational_domain(identifier) == organizational_domain(author)


class DmarcSyntaxError(ValueError):
    """A ``v=DMARC1`` record whose tags do not parse: receivers ignore it."""


@dataclass(frozen=True)
class Policy:
    """A DMARC record, found at ``name``: its policy for the domain asked about, and alignment modes."""

    name: str
    text: str
    policy: str
    strict_dkim: bool
    strict_spf: bool


def parse(text: str) -> dict[str, str]:
    """Return the tags of a DMARC record; raise ``DmarcSyntaxError`` when it is not one."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, equals, value = part.partition("=")
        if not equals:
            raise DmarcSyntaxError(f"'{part.strip()}' is not a tag=value pair")
        tags[name.strip().lower()] = value.strip()
    if not is_dmarc(text):
        raise DmarcSyntaxError("does not start with v=DMARC1")
    if tags.get("p", "").lower() not in POLICIES:
        raise DmarcSyntaxError(f"p= must be none, quarantine or reject, got {tags.get('p', '(missing)')!r}")
    for tag in ("adkim", "aspf"):
        if tags.get(tag, "r").lower() not in ("r", "s"):
            raise DmarcSyntaxError(f"{tag}= must be r (relaxed) or s (strict), got {tags[tag]!r}")
    if "sp" in tags and tags["sp"].lower() not in POLICIES:
        raise DmarcSyntaxError(f"sp= must be none, quarantine or reject, got {tags['sp']!r}")
    return tags


def is_dmarc(text: str) -> bool:
    """Tell whether a TXT record is a DMARC record: its first tag is exactly ``v=DMARC1`` (RFC 7489 6.4)."""
    name, equals, value = text.split(";", 1)[0].partition("=")
    return name.strip() == "v" and equals == "=" and value.strip() == "DMARC1"


def find(domain: str, lookup: Lookup) -> tuple[list[str], list[str]]:
    """Return the names asked, and the ``v=DMARC1`` records of the first that has any.

    ``_dmarc.<domain>`` first, then the organizational domain's (RFC 7489 6.6.3).
    Raises ``resolver.DnsFailure`` when DNS does not answer.
    """
    domain = domain.lower().rstrip(".")
    asked = []
    for candidate in dict.fromkeys((domain, organizational_domain(domain))):
        name = f"_dmarc.{candidate}"
        asked.append(name)
        texts = [t for t in lookup.query(name, "TXT").texts() if is_dmarc(t)]
        if texts:
            return asked, texts
    return asked, []


def policy(name: str, text: str, domain: str) -> Policy:
    """Return the policy ``text`` (found at ``name``) sets for mail from ``domain``."""
    tags = parse(text)
    own = name == f"_dmarc.{domain.lower().rstrip('.')}"
    chosen = tags["p"] if own else tags.get("sp", tags["p"])
    return Policy(
        name,
        text,
        chosen.lower(),
        strict_dkim=tags.get("adkim", "r").lower() == "s",
        strict_spf=tags.get("aspf", "r").lower() == "s",
    )
