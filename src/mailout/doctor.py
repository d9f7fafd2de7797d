"""``mailout doctor``: is the sending domain set up as Gmail and Yahoo require, and can we send?

Each check has a stable id (``config.CHECK_IDS``, in the order they run) and gives
one ``Finding``: ok, a warning, an error, or skipped (switched off in
``doctor.skip``, or not applicable), with what is wrong and the exact record
or setting that fixes it. ``diagnose`` runs them all; ``preflight`` returns
the errors a real send must not go out with.

The domains: SPF is read at the envelope domain (``sender.return_path``'s, or
the From address's), which receivers check; DMARC at the From domain (or its
organizational domain); DKIM at ``SELECTOR._domainkey.DOMAIN`` of ``[dkim]``.
Whatever depends on sending for real (DKIM at all, an https base URL, a key of
our own) is an error with ``smtp.host`` set and a warning for the local outbox.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization

from . import dmarc, spf
from .config import CHECK_IDS, Settings
from .dkim import DkimKey, load_signer
from .envelope import envelope_sender
from .errors import ConfigError
from .links import Links
from .net import is_loopback
from .resolver import DnsFailure, Lookup
from .tokens import GOOD_KEY_LENGTH, check_real_key
from .transports import SmtpTransport

NEW_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
#: Networks whose addresses are not what receivers see: a relay here sends from another address.
_INSIDE = [
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
]


class Status(StrEnum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Finding:
    """The outcome of one check: its id, status, what was found, and how to fix it."""

    id: str
    status: Status
    message: str
    fix: str = ""


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def diagnose(settings: Settings, lookup: Lookup | None = None) -> list[Finding]:
    """Run every check not switched off in ``doctor.skip``; return one finding per check."""
    return _Doctor(settings, lookup).run()


def preflight(settings: Settings) -> list[Finding]:
    """Return the errors that stop a send to a real server (the same checks as ``diagnose``)."""
    return [f for f in diagnose(settings) if f.status is Status.ERROR]


class _Doctor:
    def __init__(self, settings: Settings, lookup: Lookup | None) -> None:
        self.settings = settings
        doctor = settings.doctor
        self.lookup = lookup or Lookup(doctor.nameservers, doctor.timeout)
        self.real = bool(settings.smtp.host)
        #: What sending for real requires: an error with smtp.host, a warning for the outbox.
        self.severe = Status.ERROR if self.real else Status.WARNING
        #: The envelope sender's domain, where receivers read SPF (the address from the one function
        #: that decides it for every message).
        self.return_path = envelope_sender(settings)
        self.envelope = domain_of(self.return_path)
        self.author = domain_of(settings.sender.address)
        self.findings: list[Finding] = []
        self._spf_record = ""

    def run(self) -> list[Finding]:
        for area in (self._spf, self._dkim, self._dmarc, self._mx, self._https, self._smtp, self._secret):
            area()
        # A check switched off is noted when its area starts: put every line in CHECK_IDS order.
        return sorted(self.findings, key=lambda f: CHECK_IDS.index(f.id))

    def add(self, check: str, status: Status, message: str, fix: str = "") -> None:
        self.findings.append(Finding(check, status, message, fix))

    def _absent(self, name: str, rdtype: str) -> str:
        """Say how DNS answered a question that found nothing: NXDOMAIN, or no records of the type."""
        answer = self.lookup.query(name, rdtype)
        if answer.records:
            return f"its {rdtype} records hold other things"
        if answer.exists:
            return f"the name exists but has no {rdtype} record"
        return "the name does not exist in DNS (NXDOMAIN)"

    def wanted(self, check: str) -> bool:
        """Tell whether to run ``check``; note it skipped when ``doctor.skip`` has it."""
        if check in self.settings.doctor.skip:
            self.add(check, Status.SKIPPED, "switched off in doctor.skip")
            return False
        return True

    def skip(self, checks: Iterable[str], why: str) -> None:
        for check in checks:
            if self.wanted(check):
                self.add(check, Status.SKIPPED, why)

    # --- SPF -----------------------------------------------------------------------------

    def _spf(self) -> None:
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
            self.add(check, Status.ERROR, f"cannot read the SPF record of {domain}: {exc}", _DNS_FIX)
            return f"cannot read the SPF record: {exc}"
        if not found:
            self.add(
                check,
                Status.ERROR,
                f"no SPF record at {domain} (the envelope domain, {_envelope_source(self.settings)});"
                f" {self._absent(domain, 'TXT')}",
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
            self.add(check, Status.ERROR, f"cannot follow the SPF record of {domain}: {exc}", _DNS_FIX)
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
            self.add(check, Status.SKIPPED, "no smtp.host: the local outbox sends nothing")
            return
        try:
            addresses = self._relay_addresses(host)
        except DnsFailure as exc:
            self.add(check, Status.ERROR, f"cannot find the addresses of smtp.host: {exc}", _DNS_FIX)
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
                _DNS_FIX if "temperror" in results else "correct the SPF record (see the spf-lookups line)",
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

    # --- DKIM ----------------------------------------------------------------------------

    def _dkim(self) -> None:
        dkim = self.settings.dkim
        if not dkim.domain:
            if self.wanted("dkim-record"):
                self.add(
                    "dkim-record",
                    self.severe,
                    "no [dkim]: messages go out unsigned, and Gmail and Yahoo require DKIM",
                    "set [dkim] (domain, selector, key_file); see docs/deliverability.md",
                )
            return
        checks = ["dkim-record"] + (["dkim-record-ed25519"] if dkim.ed25519_selector else [])
        wanted = [c for c in checks if self.wanted(c)]
        if not wanted:
            return
        try:
            signer = load_signer(self.settings)
        except ConfigError as exc:
            for check in wanted:
                self.add(check, Status.ERROR, f"cannot read the DKIM key: {exc}", "correct [dkim]")
            return
        assert signer is not None
        for key in signer.keys:
            check = "dkim-record-ed25519" if key.algorithm.startswith("ed25519") else "dkim-record"
            if check in wanted:
                self._dkim_record(check, key)

    def _dkim_record(self, check: str, key: DkimKey) -> None:
        name, fix = key.record_name, f"publish {key.zone_line()} (`mailout dkim record` prints it)"
        try:
            texts = self.lookup.query(name, "TXT").texts()
        except DnsFailure as exc:
            self.add(check, Status.ERROR, f"cannot read the DKIM record: {exc}", _DNS_FIX)
            return
        if not texts:
            self.add(check, Status.ERROR, f"no DKIM record at {name}; {self._absent(name, 'TXT')}", fix)
            return
        if len(texts) > 1:
            self.add(
                check, Status.ERROR, f"{len(texts)} TXT records at {name}; receivers need exactly one", fix
            )
            return
        tags = _tags(texts[0])
        kind = "ed25519" if key.algorithm.startswith("ed25519") else "rsa"
        problem = ""
        if "v" in tags and tags["v"] != "DKIM1":
            problem = f"v={tags['v']} is not DKIM1"
        elif not tags.get("p"):
            problem = "its p= is empty: the key is revoked"
        elif tags.get("k", "rsa").lower() != kind:
            problem = f"k={tags.get('k', 'rsa')}, but the key of selector {key.selector} is {kind}"
        elif _published_key(tags["p"], kind) != _own_key(key):
            problem = "its p= is another key than the one mailout signs with"
        elif "h" in tags and "sha256" not in _colon_list(tags["h"]):
            # RFC 6376 3.6.1: verifiers reject the key for a signature whose hash h= does not list.
            problem = f"h={tags['h']} does not list sha256, the hash mailout signs with"
        elif "s" in tags and not {"email", "*"} & set(_colon_list(tags["s"])):
            problem = f"s={tags['s']} lists neither email nor *: the key may not sign email"
        if problem:
            self.add(check, Status.ERROR, f"the DKIM record at {name}: {problem}", fix)
        elif "y" in _colon_list(tags.get("t", "")):
            self.add(
                check,
                Status.WARNING,
                f"the DKIM record at {name} has t=y (testing): receivers may treat signed mail as unsigned",
                f'publish {name}. IN TXT "{key.record()}" (without t=y) once messages verify',
            )
        else:
            self.add(check, Status.OK, f"{name} publishes the {kind} key mailout signs with")

    # --- DMARC ----------------------------------------------------------------------------

    def _dmarc(self) -> None:
        author, org = self.author, dmarc.organizational_domain(self.author)
        strict_dkim = strict_spf = False
        if self.wanted("dmarc-record"):
            check = "dmarc-record"
            starter = f'publish _dmarc.{org}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{org}"'
            try:
                asked, found = dmarc.find(author, self.lookup)
            except DnsFailure as exc:
                self.add(check, Status.ERROR, f"cannot read the DMARC record: {exc}", _DNS_FIX)
                asked, found = [], []
            else:
                if not found:
                    self.add(check, Status.ERROR, f"no DMARC record at {' nor '.join(asked)}", starter)
                elif len(found) > 1:
                    self.add(
                        check,
                        Status.ERROR,
                        f"{len(found)} DMARC records at {asked[-1]}; receivers then ignore them all",
                        "keep one",
                    )
                else:
                    try:
                        policy = dmarc.policy(asked[-1], found[0], author)
                    except dmarc.DmarcSyntaxError as exc:
                        self.add(check, Status.ERROR, f"the DMARC record at {asked[-1]}: {exc}", starter)
                    else:
                        strict_dkim, strict_spf = policy.strict_dkim, policy.strict_spf
                        note = " (monitoring only; quarantine or reject once reports show all is well)"
                        self.add(
                            check,
                            Status.OK,
                            f"{asked[-1]}: p={policy.policy} for {author}"
                            f"{note if policy.policy == 'none' else ''}",
                        )
        elif "dmarc-alignment" not in self.settings.doctor.skip:
            # The record's check is switched off: its alignment modes still count, if it has any.
            try:
                asked, found = dmarc.find(author, self.lookup)
                if len(found) == 1:
                    policy = dmarc.policy(asked[-1], found[0], author)
                    strict_dkim, strict_spf = policy.strict_dkim, policy.strict_spf
            except (DnsFailure, dmarc.DmarcSyntaxError):
                pass  # relaxed, as receivers take it without a usable record
        if self.wanted("dmarc-alignment"):
            self._alignment(strict_dkim, strict_spf)

    def _alignment(self, strict_dkim: bool, strict_spf: bool) -> None:
        author, signing = self.author, self.settings.dkim.domain.lower()
        mode = {True: "strict", False: "relaxed"}
        by_dkim = bool(signing) and dmarc.aligned(signing, author, strict=strict_dkim)
        by_spf = dmarc.aligned(self.envelope, author, strict=strict_spf)
        if by_dkim:
            extra = f", and the envelope domain {self.envelope} too" if by_spf else ""
            self.add(
                "dmarc-alignment",
                Status.OK,
                f"DKIM d={signing} aligns with the From domain {author} ({mode[strict_dkim]}){extra}",
            )
        elif by_spf:
            self.add(
                "dmarc-alignment",
                Status.WARNING,
                f"only SPF aligns ({self.envelope} with {author}, {mode[strict_spf]}): forwarded mail fails"
                " DMARC",
                f'set dkim.domain = "{author}" and publish its key',
            )
        else:
            what = f"DKIM d={signing}" if signing else "no DKIM signature"
            self.add(
                "dmarc-alignment",
                Status.ERROR,
                f"nothing aligns with the From domain {author}: {what} ({mode[strict_dkim]} adkim), envelope"
                f" domain {self.envelope} ({mode[strict_spf]} aspf)",
                f'set dkim.domain = "{author}" and publish its key'
                + ("; or relax the DMARC record: adkim=r" if strict_dkim else ""),
            )

    # --- MX, the base URL -------------------------------------------------------------------

    def _mx(self) -> None:
        envelope = self.return_path
        for check, domain, what in (
            ("mx-return-path", self.envelope, f"bounces to {envelope}"),
            ("mx-unsubscribe", self.author, f"unsubscribe requests to unsubscribe@{self.author}"),
        ):
            if self.wanted(check):
                self._mail_domain(check, domain, what)

    def _mail_domain(self, check: str, domain: str, what: str) -> None:
        fix = f"publish {domain}. IN MX 10 <the server that receives {domain}'s mail>."
        try:
            answer = self.lookup.query(domain, "MX")
            if answer.records:
                hosts = sorted((r.preference, str(r.exchange).rstrip(".") or ".") for r in answer.records)
                if [h for _, h in hosts] == ["."]:
                    self.add(
                        check,
                        Status.ERROR,
                        f"{domain} has a null MX: it takes no mail, so {what} are lost",
                        fix,
                    )
                else:
                    self.add(check, Status.OK, f"{domain}: MX {', '.join(f'{p} {h}' for p, h in hosts)}")
                return
            if answer.exists and self.lookup.addresses(domain):
                self.add(check, Status.OK, f"{domain}: no MX; mail goes to its address record (RFC 5321 5.1)")
                return
        except DnsFailure as exc:
            self.add(check, Status.ERROR, f"cannot read the MX of {domain}: {exc}", _DNS_FIX)
            return
        self.add(check, Status.ERROR, f"{domain} has no MX nor address record: {what} cannot arrive", fix)

    def _https(self) -> None:
        if not self.wanted("https-base-url"):
            return
        # The one-click link (RFC 8058) as List-Unsubscribe carries it, from the one place that makes it.
        url = Links(self.settings).base
        parts = urlsplit(url)
        fix = 'set newsletter.public_base_url = "https://<your domain>" and serve `mailout serve` behind it'
        if parts.scheme != "https":
            self.add(
                "https-base-url",
                self.severe,
                f"newsletter.public_base_url is {url}: one-click unsubscribe (RFC 8058) needs an https link",
                fix,
            )
        elif is_loopback(parts.hostname or ""):
            self.add("https-base-url", self.severe, f"newsletter.public_base_url {url} is this machine", fix)
        else:
            self.add("https-base-url", Status.OK, f"newsletter.public_base_url is {url}")

    # --- SMTP, the secret key -------------------------------------------------------------------

    def _smtp(self) -> None:
        later = ("smtp-tls", "smtp-login")
        if not self.real:
            self.skip(("smtp-connect", *later), "no smtp.host: messages go to the local outbox")
            return
        if not self.wanted("smtp-connect"):
            self.skip(later, "needs smtp-connect")
            return
        try:
            SmtpTransport(self.settings.smtp)
        except ConfigError as exc:
            self.add("smtp-connect", Status.ERROR, str(exc), "correct [smtp]")
            self.skip(later, "needs smtp-connect")
            return
        from .smtpcheck import probe

        for finding in probe(self.settings.smtp, self.settings.doctor.timeout):
            if self.wanted(finding.id):
                self.findings.append(finding)

    def _secret(self) -> None:
        if not self.wanted("secret-key"):
            return
        key, check = self.settings.secret_key, "secret-key"
        fix = f"export MAILOUT_SECRET_KEY=$({NEW_KEY})"
        if not key:
            self.add(check, Status.ERROR, "MAILOUT_SECRET_KEY is not set: links cannot be signed", fix)
            return
        try:
            short = check_real_key(key)
        except ConfigError as exc:
            self.add(check, self.severe, str(exc), fix)
            return
        if short:
            # A warning, as send, test and worker give it: a short key still signs, and existing
            # workspaces with one must not find send refused by an upgrade.
            rule = f"the rule: {GOOD_KEY_LENGTH} characters or more of random text"
            self.add(check, Status.WARNING, f"{'; '.join(short)} ({rule})", fix)
        else:
            self.add(
                check,
                Status.OK,
                f"MAILOUT_SECRET_KEY: {GOOD_KEY_LENGTH} characters or more, not a published key",
            )


_DNS_FIX = "check that DNS answers (or set doctor.nameservers to the domain's own server) and run again"


def _envelope_source(settings: Settings) -> str:
    return "sender.return_path" if settings.sender.return_path else "sender.address: no sender.return_path"


def _inside(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        address.is_loopback
        or address.is_link_local
        or any(address in net for net in _INSIDE if net.version == address.version)
    )


def _tags(text: str) -> dict[str, str]:
    """Return the tags of a DKIM key record (``v=DKIM1; k=rsa; p=...``), white space removed."""
    tags = {}
    for part in text.split(";"):
        name, _, value = part.partition("=")
        if name.strip():
            tags[name.strip().lower()] = "".join(value.split())
    return tags


def _colon_list(value: str) -> list[str]:
    """Return the entries of a colon-separated DKIM tag value (``h=sha1:sha256``), lowercased."""
    return [entry.strip().lower() for entry in value.split(":")]


def _own_key(key: DkimKey) -> bytes:
    """Return the configured public key as DKIM publishes it: SubjectPublicKeyInfo, or Ed25519's raw bytes."""
    public = key.key.public_key()
    if key.algorithm.startswith("ed25519"):
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _published_key(p: str, kind: str) -> bytes | None:
    """Return the published key in the form of ``_own_key``, or None when ``p=`` holds no such key."""
    try:
        data = base64.b64decode(p, validate=True)
    except ValueError:
        return None
    if kind == "ed25519":
        return data
    try:  # SubjectPublicKeyInfo, or the bare RSAPublicKey that RFC 6376's text names
        public = serialization.load_der_public_key(data)
    except (ValueError, TypeError):
        return None
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
