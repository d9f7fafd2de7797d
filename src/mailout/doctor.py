"""``mailout doctor``: is the sending domain set up as Gmail and Yahoo require, and can we send?

Each check has a stable id (``config.CHECK_IDS``, in the order they run) and gives
one ``Finding``: ok, a warning, an error, or skipped (switched off in
``doctor.skip``, or not applicable), with what is wrong and the exact record
or setting that fixes it. ``diagnose`` runs them all; ``preflight`` returns
the errors a real send must not go out with.

The SPF checks are in ``spfcheck``, the SMTP ones in ``smtpcheck``. The
domains: SPF is read at the envelope domain (``sender.return_path``'s, or
the From address's), which receivers check; DMARC at the From domain (or its
organizational domain); DKIM at ``SELECTOR._domainkey.DOMAIN`` of ``[dkim]``.
Whatever depends on sending for real (DKIM at all, an https base URL, a key of
our own) is an error with ``smtp.host`` set and a warning for the local outbox.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization

from . import dmarc
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
        self.real = settings.sends_mail
        #: What sending for real requires: an error with smtp.host, a warning for the outbox.
        self.severe = Status.ERROR if self.real else Status.WARNING
        #: The envelope sender's domain, where receivers read SPF (the address from the one function
        #: that decides it for every message).
        self.return_path = envelope_sender(settings)
        self.envelope = domain_of(self.return_path)
        self.author = domain_of(settings.sender.address)
        self.findings: list[Finding] = []

    def run(self) -> list[Finding]:
        for area in (self._spf, self._dkim, self._dmarc, self._mx, self._https, self._smtp, self._secret):
            area()
        # A check switched off is noted when its area starts: put every line in CHECK_IDS order.
        return sorted(self.findings, key=lambda f: CHECK_IDS.index(f.id))

    def add(self, check: str, status: Status, message: str, fix: str = "") -> None:
        self.findings.append(Finding(check, status, message, fix))

    def absent(self, name: str, rdtype: str) -> str:
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
        from .spfcheck import SpfChecks  # it takes Status and Finding from here: imported once this is

        SpfChecks(self).run()

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
            self.add(check, Status.ERROR, f"cannot read the DKIM record: {exc}", DNS_FIX)
            return
        if not texts:
            self.add(check, Status.ERROR, f"no DKIM record at {name}; {self.absent(name, 'TXT')}", fix)
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
                self.add(check, Status.ERROR, f"cannot read the DMARC record: {exc}", DNS_FIX)
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
            self.add(check, Status.ERROR, f"cannot read the MX of {domain}: {exc}", DNS_FIX)
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
        if not self.settings.smtp.host:
            why = (
                "no smtp.host: the routes ([smtp.routes.NAME]) are not tried here; `send` logs in to its route first"
                if self.real
                else "no smtp.host: messages go to the local outbox"
            )
            self.skip(("smtp-connect", *later), why)
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


DNS_FIX = "check that DNS answers (or set doctor.nameservers to the domain's own server) and run again"


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
