"""DNS look-ups for ``mailout doctor``: dnspython's resolver, answers cached, failures told apart.

A ``Lookup`` asks the system's DNS servers, or those of ``doctor.nameservers``
(the domain's own server right after publishing a record, bypassing caches;
the tests' server on loopback). An authoritative server answers only for its
own zones: for a name outside them (the relay's SPF include, ``smtp.host``) it
answers REFUSED, or refers the question elsewhere without answering it. Such a
question is asked again of the system's DNS servers, so pointing
``doctor.nameservers`` at the domain's own server gives no false errors about
other people's names. Each question is asked once per run. A name
that does not exist (NXDOMAIN) and a name without records of the type asked
(no answer) are answers, told apart by ``Answer.exists``; a server that does
not answer in time, or answers SERVFAIL or REFUSED, raises ``DnsFailure``
with one line saying which. After two time-outs the servers are taken to be
unreachable, and later questions fail at once rather than each waiting its
turn: a check run before a send must stay quick.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

from .net import parse_nameserver

#: Time-outs after which the DNS servers are taken for unreachable in this run.
GIVE_UP_AFTER = 2


class DnsFailure(Exception):
    """No usable answer: a time-out, SERVFAIL or REFUSED, a malformed name, no resolver at all."""


@dataclass(frozen=True)
class Answer:
    """The records of one type at one name: none when the name does not exist or has none."""

    name: str
    rdtype: str
    records: tuple[Any, ...]
    #: False for NXDOMAIN: the name does not exist at all.
    exists: bool = True

    def texts(self) -> list[str]:
        """Return each TXT record's strings joined, as SPF, DKIM and DMARC read them."""
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self.records]


class Lookup:
    """Ask DNS through one dnspython resolver; remember every answer of this run."""

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.timeouts = 0
        self._cache: dict[tuple[str, str], Answer | DnsFailure] = {}
        self._setup_error = ""
        #: The system's resolver, asked when ``doctor.nameservers`` does not serve a name.
        self._system: dns.resolver.Resolver | None = None
        self.own = bool(nameservers)
        if nameservers:
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(entry)) for entry in nameservers
            ]
            self.where = ", ".join(nameservers)
        else:
            try:
                self.resolver = system_resolver()
            except dns.resolver.NoResolverConfiguration:
                self.resolver = dns.resolver.Resolver(configure=False)
                self._setup_error = "no DNS server is configured on this machine; set doctor.nameservers"
            self.where = "the system's DNS servers"
        self.resolver.timeout = timeout
        self.resolver.lifetime = timeout

    def query(self, name: str, rdtype: str) -> Answer:
        """Return the records of ``rdtype`` at ``name``; raise ``DnsFailure`` when DNS does not tell."""
        key = (name.lower().rstrip("."), rdtype)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._ask(*key)
            self._cache[key] = cached
        if isinstance(cached, DnsFailure):
            raise cached
        return cached

    def _ask(self, name: str, rdtype: str) -> Answer | DnsFailure:
        if self._setup_error:
            return DnsFailure(self._setup_error)
        if self.timeouts >= GIVE_UP_AFTER:
            return DnsFailure(
                f"{name} {rdtype}: not asked, {self.where} did not answer earlier questions within"
                f" {self.timeout:g} s"
            )
        found = self._resolve(self.resolver, self.where, name, rdtype)
        if found is not None:
            return found
        # doctor.nameservers does not serve this name: ask the system's DNS servers.
        where = f"the system's DNS servers ({self.where} does not serve {name})"
        if self._system is None:
            try:
                self._system = system_resolver()
            except dns.resolver.NoResolverConfiguration:
                return DnsFailure(
                    f"{name} {rdtype}: {self.where} does not serve it, and no DNS server is"
                    " configured on this machine to ask instead"
                )
            self._system.timeout = self._system.lifetime = self.timeout
        return self._resolve(self._system, where, name, rdtype, last=True) or DnsFailure(
            f"{name} {rdtype}: {where} refused to answer"
        )

    def _resolve(
        self, resolver: dns.resolver.Resolver, where: str, name: str, rdtype: str, *, last: bool = False
    ) -> Answer | DnsFailure | None:
        """Ask ``resolver``; return None when it is ``doctor.nameservers`` and it does not serve the name."""
        handover = self.own and not last
        try:
            answer = resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return Answer(name, rdtype, (), exists=False)
        except dns.resolver.LifetimeTimeout:
            self.timeouts += 1
            return DnsFailure(f"{name} {rdtype}: no answer from {where} within {self.timeout:g} s")
        except dns.resolver.NoNameservers as exc:
            rcodes = _rcodes(exc)
            if handover and rcodes == "REFUSED":
                return None
            return DnsFailure(f"{name} {rdtype}: {where} failed to answer ({rcodes})")
        except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel):
            return DnsFailure(f"{name!r} is not a valid domain name")
        except dns.exception.DNSException as exc:
            return DnsFailure(f"{name} {rdtype}: {exc}")
        if answer.rrset is None and handover and _referral(answer.response):
            return None
        records = tuple(answer.rrset) if answer.rrset is not None else ()
        return Answer(name, rdtype, records)

    def addresses(self, name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Return the IPv4 and IPv6 addresses of ``name`` (an address literal is its own)."""
        try:
            return [ipaddress.ip_address(name)]
        except ValueError:
            pass
        found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for rdtype in ("A", "AAAA"):
            found += [ipaddress.ip_address(r.address) for r in self.query(name, rdtype).records]
        return found


def system_resolver() -> dns.resolver.Resolver:
    """Return a resolver that asks this machine's DNS servers (``/etc/resolv.conf``)."""
    return dns.resolver.Resolver()


def _referral(response: dns.message.Message) -> bool:
    """Tell whether an empty answer is a referral: not authoritative, name servers of another zone."""
    if response.flags & dns.flags.AA:
        return False
    return any(rrset.rdtype == dns.rdatatype.NS for rrset in response.authority)


def _rcodes(exc: dns.resolver.NoNameservers) -> str:
    """Return what each server answered, e.g. ``SERVFAIL``, from dnspython's exception."""
    answers = []
    for error in exc.kwargs.get("errors", []):
        detail = error[-1]
        answers.append(dns.rcode.to_text(detail.rcode()) if hasattr(detail, "rcode") else str(detail))
    return ", ".join(dict.fromkeys(answers)) or "no usable answer"
