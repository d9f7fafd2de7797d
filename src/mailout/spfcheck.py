"""The SPF checks of ``mailout doctor``: spf-record, spf-lookups and spf-authorizes-relay.

SPF is read at the envelope domain (``sender.return_path``'s, or the From
address's), which receivers check; the record is then counted (``spf.count``)
and evaluated for each address of ``smtp.host`` (``spf.evaluate``), as a
receiver would.
"""

from __future__ import annotations

import ipaddress
import socket

from . import dmarc, spf
from .config import Settings
from .doctor import DNS_FIX, Status, _Doctor
from .resolver import DnsFailure

#: Networks whose addresses are not what receivers see: a relay here sends from another address.
_INSIDE = [
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
]


class SpfChecks:
    """The three SPF checks, adding their findings to a ``doctor._Doctor`` run."""

    def __init__(self, doctor: _Doctor) -> None:
        self.settings, self.lookup, self.envelope = doctor.settings, doctor.lookup, doctor.envelope
        self.add, self.wanted, self.skip = doctor.add, doctor.wanted, doctor.skip
        self.absent = doctor.absent
        self._spf_record = ""

    def run(self) -> None:
        domain = self.envelope
        wanted = [c for c in ("spf-record", "spf-lookups", "spf-authorizes-relay") if self.wanted(c)]
        later = [c for c in wanted if c != "spf-record"]
        if "spf-record" in wanted:
            missing = self._spf_exists(domain)
            if missing:
                self.skip(later, missing)
                return
        if later and not self._spf_record:  # spf-record switched off: the others still need the record
            try:
                found, _ = spf.records(domain, self.lookup)
            except DnsFailure as exc:
                self.skip(later, f"cannot read the SPF record: {exc}")
                return
            if len(found) != 1:
                self.skip(later, f"needs one SPF record at {domain}")
                return
            self._spf_record = found[0]
        if "spf-lookups" in later:
            self._spf_lookups(domain)
        if "spf-authorizes-relay" in later:
            self._spf_relay(domain)

    def _spf_exists(self, domain: str) -> str:
        """Check the one SPF record at ``domain``; return why the later SPF checks cannot run, or ""."""
        check = "spf-record"
        needs = f"needs one SPF record at {domain}"
        try:
            found, _ = spf.records(domain, self.lookup)
        except DnsFailure as exc:
            self.add(check, Status.ERROR, f"cannot read the SPF record of {domain}: {exc}", DNS_FIX)
            return f"cannot read the SPF record: {exc}"
        if not found:
            self.add(
                check,
                Status.ERROR,
                f"no SPF record at {domain} (the envelope domain, {_envelope_source(self.settings)});"
                f" {self.absent(domain, 'TXT')}",
                f'publish {domain}. IN TXT "v=spf1 {self._relay_term()} ~all"',
            )
            return needs
        if len(found) > 1:
            listed = " | ".join(found)
            self.add(
                check,
                Status.ERROR,
                f"{len(found)} SPF records at {domain}, and receivers then ignore them all: {listed}",
                "merge them into one v=spf1 record and remove the others",
            )
            return needs
        try:
            spf.parse(found[0])
        except spf.SpfSyntaxError as exc:
            self.add(
                check,
                Status.ERROR,
                f"the SPF record of {domain} does not parse: {exc}",
                f"correct the record (RFC 7208 syntax): {found[0]}",
            )
            return needs
        self._spf_record = found[0]
        self.add(check, Status.OK, f"{domain}: {found[0]}")
        return ""

    def _relay_term(self) -> str:
        """Return the SPF term that authorizes ``smtp.host``, or a placeholder for the relay's include."""
        host = self.settings.smtp.host
        if host:
            try:
                found = [a for a in self._relay_addresses(host) if not _inside(a)]
            except DnsFailure:
                found = []
            if found:
                return " ".join(f"ip{a.version}:{a}" for a in found)
        return "include:<your relay's SPF domain>"

    def _relay_addresses(self, host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Return the addresses of ``smtp.host``: from DNS, or this machine's for ``localhost`` (RFC 6761)."""
        if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
            try:
                found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise DnsFailure(f"{host}: {exc.strerror or exc}") from None
            return list(
                dict.fromkeys(ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in found)
            )
        return self.lookup.addresses(host)

    def _spf_lookups(self, domain: str) -> None:
        check = "spf-lookups"
        try:
            tally = spf.count(domain, self.lookup)
        except DnsFailure as exc:
            self.add(check, Status.ERROR, f"cannot follow the SPF record of {domain}: {exc}", DNS_FIX)
            return
        n, void = len(tally.lookups), len(tally.void)
        if tally.over:
            self.add(
                check,
                Status.ERROR,
                f"the SPF record of {domain} takes more than {spf.MAX_LOOKUPS} DNS look-ups, the most RFC 7208"
                f" allows (receivers stop at the next one and fail it): {', '.join(tally.lookups)}",
                "drop the includes of services you no longer use, or replace includes by the ip4:/ip6:"
                " ranges they list",
            )
        elif tally.problems:
            self.add(
                check,
                Status.ERROR,
                f"the SPF record of {domain} is a permanent error for receivers: {'; '.join(tally.problems)}",
                "remove or correct those terms",
            )
        elif void > spf.MAX_VOID:
            self.add(
                check,
                Status.ERROR,
                f"{void} look-ups of the SPF record of {domain} find nothing, more than the {spf.MAX_VOID}"
                f" RFC 7208 allows: {', '.join(tally.void)}",
                "remove the terms that name domains without records",
            )
        elif tally.unfollowed:
            self.add(
                check,
                Status.WARNING,
                f"{n} of {spf.MAX_LOOKUPS} DNS look-ups, but terms with macros cannot be followed without a"
                f" message: {', '.join(tally.unfollowed)}",
            )
        else:
            self.add(
                check, Status.OK, f"{n} of {spf.MAX_LOOKUPS} DNS look-ups, {void} of {spf.MAX_VOID} void"
            )

    def _spf_relay(self, domain: str) -> None:
        check = "spf-authorizes-relay"
        host = self.settings.smtp.host
        if not host:
            why = (
                "no smtp.host: the routes' servers are not checked against SPF here"
                if self.settings.routes
                else "no smtp.host: the local outbox sends nothing"
            )
            self.add(check, Status.SKIPPED, why)
            return
        try:
            addresses = self._relay_addresses(host)
        except DnsFailure as exc:
            self.add(check, Status.ERROR, f"cannot find the addresses of smtp.host: {exc}", DNS_FIX)
            return
        if not addresses:
            self.add(check, Status.ERROR, f"smtp.host {host} has no address in DNS", "correct smtp.host")
            return
        refused: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str]] = []
        said: list[str] = []
        unknown, passed, broken = [], [], []
        for address in addresses:
            verdict = spf.evaluate(address, domain, self.lookup)
            if verdict.result == "pass":
                passed.append(f"{address} by {verdict.why}")
            elif verdict.result == "unknown":
                unknown.append(f"{address}: {verdict.why}")
            elif verdict.result in ("temperror", "permerror"):
                broken.append((verdict.result, f"{address}: {verdict.result}, {verdict.why}"))
            else:
                refused.append((address, verdict.result))
                said.append(f"{address}: {verdict.result}, {verdict.why}")
        if broken:
            # Not a missing term: DNS failed, or the record is broken for every address.
            results = {result for result, _ in broken}
            self.add(
                check,
                Status.ERROR,
                f"SPF of {domain} gives {' and '.join(sorted(results))} for smtp.host {host}:"
                f" {'; '.join(text for _, text in broken)}",
                DNS_FIX if "temperror" in results else "correct the SPF record (see the spf-lookups line)",
            )
            return
        # An address of this machine or a private network may be hidden behind another: a record
        # that works but does not list it is a warning.
        hidden = all(_inside(a) for a, _ in refused)
        # The address one connects to is often not the one the relay sends from: a record that
        # passes another address of smtp.host, or includes the relay's SPF, is probably right.
        third_party = self._third_party_includes()
        if refused and (hidden or passed or third_party):
            if hidden:
                why = "smtp.host is on this machine or a private network, so receivers see the relay's public"
                why += " address instead"
            elif passed:
                why = f"it does authorize {', '.join(passed)}; the relay may send from that address only"
            else:
                why = (
                    f"it includes {', '.join(third_party)}, which may list the addresses the relay sends from"
                )
            self.add(
                check,
                Status.WARNING,
                f"SPF of {domain} does not authorize {'; '.join(said)}; {why}",
                f"make sure the SPF record of {domain} authorizes the address the relay sends from",
            )
        elif refused:
            terms = " ".join(f"ip{a.version}:{a}" for a, _ in refused)
            self.add(
                check,
                Status.ERROR,
                f"SPF of {domain} does not authorize smtp.host {host}: {'; '.join(said)}",
                f'publish {domain}. IN TXT "{spf.with_term(self._spf_record, terms)}" (or the include your'
                " relay documents)",
            )
        elif unknown:
            self.add(check, Status.WARNING, f"cannot evaluate SPF of {domain}: {'; '.join(unknown)}")
        else:
            self.add(check, Status.OK, f"SPF of {domain} authorizes smtp.host {host}: {', '.join(passed)}")

    def _third_party_includes(self) -> list[str]:
        """Return the include: and redirect= terms of the envelope's record naming another organization's domain."""
        try:
            terms = spf.parse(self._spf_record)
        except spf.SpfSyntaxError:
            return []
        own = dmarc.organizational_domain(self.envelope)
        return [
            t.text
            for t in terms
            if t.name in ("include", "redirect")
            and not t.macro
            and dmarc.organizational_domain(t.value) != own
        ]


def _envelope_source(settings: Settings) -> str:
    return "sender.return_path" if settings.sender.return_path else "sender.address: no sender.return_path"


def _inside(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        address.is_loopback
        or address.is_link_local
        or any(address in net for net in _INSIDE if net.version == address.version)
    )
