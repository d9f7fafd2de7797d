"""SPF (RFC 7208) for ``mailout doctor``: parse a record, count its DNS look-ups, evaluate an address.

Three questions about the envelope domain's SPF, each answered over a
``resolver.Lookup``:

- ``parse``: is the record well formed (``SpfSyntaxError`` says where not)?
- ``count``: how many DNS-querying terms (include, a, mx, ptr, exists,
  redirect) does it take, following every include and redirect, and how many
  of their look-ups come back empty ("void")? RFC 7208 4.6.4 makes more than
  10 of the first, or more than 2 of the second, a permanent error. The count
  is of the whole tree, as a receiver evaluating a message that matches no
  term (a forgery) walks it; include loops are found on the way. The walk
  stops at the 11th look-up, as a receiver does: a record whose includes
  branch (each level including the next twice) would otherwise take work
  doubling with every level, and ``send`` runs this check.
- ``evaluate``: what result would a receiver give for mail from this address?
  ip4, ip6, a, mx, include, redirect and all are evaluated; a term with a
  macro (``%{i}``) or ``ptr`` needs the message itself and a reverse look-up,
  so reaching one gives ``unknown`` rather than a guess.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from .resolver import DnsFailure, Lookup

#: RFC 7208 4.6.4: at most 10 DNS-querying terms, and (SHOULD) 2 look-ups that find nothing.
MAX_LOOKUPS = 10
MAX_VOID = 2
#: RFC 7208 4.6.4: an mx term may look up the addresses of 10 mail servers at most.
MAX_MX_NAMES = 10
LOOKUP_TERMS = ("include", "a", "mx", "ptr", "exists")
MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
RESULTS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)")
_MECHANISM = re.compile(r"([+?~-]?)([A-Za-z][A-Za-z0-9]*)(?::([^/]*))?(?:/(\d+))?(?://(\d+))?")
_DOMAIN = re.compile(r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{1,63}\.?")


class SpfSyntaxError(ValueError):
    """A record that does not parse as SPF: receivers treat it as a permanent error."""


@dataclass(frozen=True)
class Term:
    """One directive (``-all``, ``include:x``, ``ip4:192.0.2.0/24``) or modifier (``redirect=x``)."""

    text: str
    name: str
    qualifier: str = "+"
    value: str = ""
    cidr4: int | None = None
    cidr6: int | None = None
    modifier: bool = False

    @property
    def macro(self) -> bool:
        return "%" in self.value

    def target(self, domain: str) -> str:
        """Return the domain the term looks up: its own, or the record's."""
        return self.value or domain


def parse(text: str) -> list[Term]:
    """Return the terms of an SPF record; raise ``SpfSyntaxError`` naming the first bad one."""
    words = text.split()
    if not words or words[0].lower() != "v=spf1":
        raise SpfSyntaxError(f"does not start with v=spf1: {text[:40]!r}")
    terms: list[Term] = []
    for word in words[1:]:
        modifier = _MODIFIER.fullmatch(word)
        if modifier:
            name, value = modifier.group(1).lower(), modifier.group(2)
            if name in ("redirect", "exp"):
                if any(t.name == name for t in terms):
                    raise SpfSyntaxError(f"'{name}=' appears twice")
                _check_domain(word, value)
            terms.append(Term(word, name, value=value, modifier=True))
            continue
        terms.append(_mechanism(word))
    return terms


def _mechanism(word: str) -> Term:
    match = _MECHANISM.fullmatch(word)
    if match is None:
        raise SpfSyntaxError(f"'{word}' is not an SPF term")
    qualifier, name, value, cidr4, cidr6 = match.groups()
    name = name.lower()
    if name not in MECHANISMS:
        raise SpfSyntaxError(f"unknown mechanism '{name}' in '{word}' (known: {', '.join(MECHANISMS)})")
    if name in ("ip4", "ip6"):
        if value is None or cidr6 is not None:
            raise SpfSyntaxError(f"'{word}': write {name}:ADDRESS or {name}:ADDRESS/PREFIX")
        try:
            network = ipaddress.ip_network(value + (f"/{cidr4}" if cidr4 else ""), strict=False)
        except ValueError:
            raise SpfSyntaxError(f"'{word}': not an IPv{name[-1]} address or network") from None
        if network.version != int(name[-1]):
            raise SpfSyntaxError(f"'{word}': not an IPv{name[-1]} address")
        return Term(word, name, qualifier or "+", str(network))
    if name in ("all", "include", "exists", "ptr") and (cidr4 is not None or cidr6 is not None):
        raise SpfSyntaxError(f"'{word}': {name} takes no prefix length")
    if name == "all" and value is not None:
        raise SpfSyntaxError(f"'{word}': all takes no argument")
    if name in ("include", "exists") and not value:
        raise SpfSyntaxError(f"'{word}': {name} needs a domain ({name}:example.org)")
    if value is not None:
        _check_domain(word, value)
    if (cidr4 is not None and int(cidr4) > 32) or (cidr6 is not None and int(cidr6) > 128):
        raise SpfSyntaxError(f"'{word}': prefix length out of range")
    return Term(
        word,
        name,
        qualifier or "+",
        value or "",
        int(cidr4) if cidr4 is not None else None,
        int(cidr6) if cidr6 is not None else None,
    )


def _check_domain(word: str, value: str) -> None:
    if "%" not in value and not _DOMAIN.fullmatch(value):
        raise SpfSyntaxError(f"'{word}': {value!r} is not a domain name")


def records(domain: str, lookup: Lookup) -> tuple[list[str], bool]:
    """Return the SPF records at ``domain`` (TXT starting ``v=spf1``), and whether the look-up was void."""
    answer = lookup.query(domain, "TXT")
    found = [t for t in answer.texts() if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
    return found, not answer.records


# --- counting ---------------------------------------------------------------------------


@dataclass
class Count:
    """The DNS look-ups a record takes, over the whole tree of its includes and redirects."""

    lookups: list[str] = field(default_factory=list)  # "include:x in a.example", in order
    void: list[str] = field(default_factory=list)
    #: Permanent errors found below the record: a loop, an include without SPF, a bad record.
    problems: list[str] = field(default_factory=list)
    #: Terms whose target has a macro: counted, not followed.
    unfollowed: list[str] = field(default_factory=list)
    #: True when the walk stopped at look-up MAX_LOOKUPS + 1: ``lookups`` holds the first ones only.
    over: bool = False


class _TooMany(Exception):
    """The walk passed MAX_LOOKUPS: a receiver stops there with a permanent error."""


def count(domain: str, lookup: Lookup) -> Count:
    """Count the DNS-querying terms under ``domain``'s record; raise ``DnsFailure`` if DNS fails."""
    tally = Count()
    try:
        _count(domain, lookup, tally, (domain.lower(),), top=True)
    except _TooMany:
        tally.over = True
    return tally


def _count(domain: str, lookup: Lookup, tally: Count, stack: tuple[str, ...], *, top: bool = False) -> None:
    found, void = records(domain, lookup)
    if not found:
        if not top:
            tally.problems.append(f"{domain} has no SPF record")
            if void:
                tally.void.append(f"{domain} TXT")
        return
    if len(found) > 1:
        tally.problems.append(f"{domain} has {len(found)} SPF records")
        return
    try:
        terms = parse(found[0])
    except SpfSyntaxError as exc:
        if not top:
            tally.problems.append(f"the SPF record of {domain}: {exc}")
        return
    has_all = any(t.name == "all" for t in terms)
    for term in terms:
        if term.name not in (*LOOKUP_TERMS, "redirect") or (term.name == "redirect" and has_all):
            continue
        where = f"{term.text} in {domain}"
        tally.lookups.append(where)
        if len(tally.lookups) > MAX_LOOKUPS:
            raise _TooMany
        if term.macro:
            tally.unfollowed.append(where)
            continue
        target = term.target(domain).lower().rstrip(".")
        if term.name in ("include", "redirect"):
            if target in stack:
                tally.problems.append(f"{where} loops back to {target}: {' → '.join((*stack, target))}")
                continue
            _count(target, lookup, tally, (*stack, target))
        elif term.name == "mx":
            names = lookup.query(target, "MX").records
            if not names:
                tally.void.append(f"{target} MX")
            elif len(names) > MAX_MX_NAMES:
                tally.problems.append(f"{where}: {len(names)} mail servers, more than {MAX_MX_NAMES}")
        elif term.name in ("a", "exists") and not lookup.addresses(target):
            tally.void.append(f"{target} A/AAAA")


# --- evaluating ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What a receiver would conclude for one address: ``pass``, ``fail``... or ``unknown``."""

    result: str
    why: str


@dataclass
class _Budget:
    lookups: int = 0

    def spend(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _Stop("permerror", f"more than {MAX_LOOKUPS} DNS look-ups")


class _Stop(Exception):
    def __init__(self, result: str, why: str) -> None:
        super().__init__(why)
        self.result, self.why = result, why


def evaluate(address: IPAddress, domain: str, lookup: Lookup) -> Verdict:
    """Return the SPF result a receiver gives mail from ``address`` with ``domain`` as its envelope."""
    try:
        return _check_host(address, domain.lower().rstrip("."), lookup, _Budget(), (domain.lower(),))
    except _Stop as stop:
        return Verdict(stop.result, stop.why)
    except DnsFailure as exc:
        return Verdict("temperror", str(exc))


def _check_host(
    address: IPAddress, domain: str, lookup: Lookup, budget: _Budget, stack: tuple[str, ...]
) -> Verdict:
    found, _ = records(domain, lookup)
    if not found:
        return Verdict("none", f"{domain} has no SPF record")
    if len(found) > 1:
        return Verdict("permerror", f"{domain} has {len(found)} SPF records")
    try:
        terms = parse(found[0])
    except SpfSyntaxError as exc:
        return Verdict("permerror", f"the SPF record of {domain}: {exc}")
    for term in terms:
        if term.modifier:
            continue
        if term.macro or term.name == "ptr":
            raise _Stop("unknown", f"{term.text} in {domain} needs the message itself to evaluate")
        if term.name in LOOKUP_TERMS:
            budget.spend()
        matched = _matches(term, address, domain, lookup, budget, stack)
        if matched:
            # An include that passes names the term inside it that matched.
            why = matched if term.name == "include" else f"{term.text} in {domain}"
            return Verdict(RESULTS[term.qualifier], why)
    redirect = next((t for t in terms if t.name == "redirect"), None)
    if redirect is not None and not any(t.name == "all" for t in terms):
        budget.spend()
        target = redirect.value.lower().rstrip(".")
        if redirect.macro:
            raise _Stop("unknown", f"{redirect.text} in {domain} needs the message itself to evaluate")
        if target in stack:
            raise _Stop("permerror", f"{redirect.text} in {domain} loops back to {target}")
        verdict = _check_host(address, target, lookup, budget, (*stack, target))
        return Verdict("permerror", verdict.why) if verdict.result == "none" else verdict
    return Verdict("neutral", f"no term of {domain}'s record matches (the result is then neutral)")


def _matches(
    term: Term, address: IPAddress, domain: str, lookup: Lookup, budget: _Budget, stack: tuple[str, ...]
) -> str:
    """Return why ``term`` matches ``address`` (for an include: the term inside), or "" when it does not."""
    yes = f"{term.text} in {domain}"
    if term.name == "all":
        return yes
    if term.name in ("ip4", "ip6"):
        return yes if address in ipaddress.ip_network(term.value) else ""
    target = term.target(domain).lower().rstrip(".")
    if term.name == "include":
        if target in stack:
            raise _Stop("permerror", f"{term.text} in {domain} loops back to {target}")
        verdict = _check_host(address, target, lookup, budget, (*stack, target))
        if verdict.result in ("temperror", "unknown"):
            raise _Stop(verdict.result, verdict.why)
        if verdict.result in ("permerror", "none"):
            raise _Stop("permerror", f"{term.text} in {domain}: {verdict.why}")
        return verdict.why if verdict.result == "pass" else ""
    if term.name == "exists":
        return yes if lookup.query(target, "A").records else ""
    if term.name == "a":
        hosts = [target]
    else:  # mx
        hosts = [str(r.exchange).rstrip(".") for r in lookup.query(target, "MX").records]
        if len(hosts) > MAX_MX_NAMES:  # RFC 7208 4.6.4: a permanent error, not the first 10
            raise _Stop(
                "permerror", f"{term.text} in {domain}: {len(hosts)} mail servers, more than {MAX_MX_NAMES}"
            )
    found = any(_within(address, one, term) for host in hosts for one in _addresses(host, address, lookup))
    return yes if found else ""


def _addresses(host: str, address: IPAddress, lookup: Lookup) -> Iterator[IPAddress]:
    for record in lookup.query(host, "A" if address.version == 4 else "AAAA").records:
        yield ipaddress.ip_address(record.address)


def _within(address: IPAddress, found: IPAddress, term: Term) -> bool:
    prefix = term.cidr4 if address.version == 4 else term.cidr6
    if prefix is None:
        return address == found
    return address in ipaddress.ip_network(f"{found}/{prefix}", strict=False)


def with_term(record: str, term: str) -> str:
    """Return ``record`` with ``term`` added before its ``all`` or ``redirect`` (or at its end)."""
    words = record.split()
    for index, word in enumerate(words):
        if word.lstrip("+-~?").lower() == "all" or word.lower().startswith("redirect="):
            return " ".join([*words[:index], term, *words[index:]])
    return " ".join([*words, term])
