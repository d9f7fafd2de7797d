"""Settings: built-in defaults, then ``mailout.toml``, then ``MAILOUT_*`` variables, then flags.

Everything lands in one frozen, typed ``Settings`` object. Each table of
``mailout.toml`` is a section dataclass below; a key ``[sender] address`` can
be overridden by the environment variable ``MAILOUT_SENDER_ADDRESS`` and by a
command-line flag. Secrets (the SMTP password, the signing key) are read only
from the environment: a secret written into ``mailout.toml`` is refused, so it
never ends up in git.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import string
import tomllib
import types
import typing
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .segments import Segment

CONFIG_FILE = "mailout.toml"
#: A language tag as mailout writes it: "en", "fr", "pt-BR".
LANGUAGE_TAG = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")
ENV_PREFIX = "MAILOUT_"
#: Settings that must never be written in a file, with the variable that carries each.
#: Names of a [dkim] key that would hold the private key itself: refused.
DKIM_KEY_NAMES = ("key", "private_key", "ed25519_key", "ed25519_private_key")
SECRETS = {
    "smtp.password": "MAILOUT_SMTP_PASSWORD",
    "web.preview_password": "MAILOUT_PREVIEW_PASSWORD",
    "secret_key": "MAILOUT_SECRET_KEY",
    # The bounce mailbox's IMAP password (mailsource.py reads it when SOURCE is imap(s)://).
    "bounces.imap_password": "MAILOUT_IMAP_PASSWORD",
}
#: A file of the certificate authorities an IMAP server's certificate is checked against.
IMAP_CA_FILE_ENV = "MAILOUT_IMAP_CA_FILE"
#: Variables that are not settings but are read where they are used: known, not misspelt ones.
OTHER_VARIABLES = (IMAP_CA_FILE_ENV,)


@dataclass(frozen=True)
class Newsletter:
    name: str = "Newsletter"
    language: str = "en"
    #: Where the web archive and the unsubscribe pages are served; the only host
    #: besides the issue's own links and images that the emails reference.
    public_base_url: str = "http://127.0.0.1:8025"
    #: The sender's postal address, shown in every footer (required by anti-spam laws).
    postal_address: str = ""
    #: Why the reader gets this email, shown in the footer.
    reason: str = "You receive this newsletter because you subscribed to it."
    #: Used in the greeting when a subscriber has no name.
    greeting_fallback: str = "reader"
    #: One line shown to the public where members-only items were left out;
    #: ``{count}`` becomes the number of items, ``{s}`` an "s" when it is not 1.
    #: Empty: show nothing.
    members_teaser: str = "{count} more item{s} in this issue for members of the network"
    members_teaser_url: str = ""
    #: Whether every language of a multilingual issue must be complete: a missing (or
    #: still marked untranslated) translation is then an error, not a warning.
    require_translations: bool = False
    #: The texts above in other languages, by language tag: ``[newsletter.translations.fr]``
    #: with any of ``name``, ``reason``, ``greeting_fallback``, ``members_teaser``, and
    #: ``signup_consent`` (the sign-up form's consent text, ``[signup] consent``).
    translations: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Sender:
    name: str = "Newsletter"
    address: str = "newsletter@example.org"
    reply_to: str = ""
    #: The envelope sender (SMTP ``MAIL FROM``), where servers send bounce reports:
    #: a mailbox read by machine. Empty: ``address`` (the ``From``) is used.
    return_path: str = ""

    @property
    def envelope(self) -> str:
        """The address given in ``MAIL FROM``."""
        return self.return_path or self.address


#: The separators ``bounces.verp_separator`` accepts (Postfix, Gmail, Microsoft 365: "+"; qmail, Exim: "-").
VERP_SEPARATORS = ("+", "-")
#: What ``bounces.complaint`` accepts: the dispatch's list, or every list.
COMPLAINT_SCOPES = ("list", "all")


@dataclass(frozen=True)
class Bounces:
    """``[bounces]``: how bounce reports find their way back to the message they are about."""

    #: With ``sender.return_path`` set, give each message its own return address
    #: (``bounces+DISPATCH.DELIVERY.CODE@domain``), so that a report names its delivery.
    #: The bounce mailbox must accept sub-addresses (``bounces+anything``).
    verp: bool = True
    #: Between ``sender.return_path``'s local part and the delivery's code.
    verp_separator: str = "+"
    #: Without VERP, a report that names only its failed recipient is matched to the
    #: dispatches of the last this many days that mailed that address.
    match_days: int = 30
    #: Temporary failures on this many different UTC days suppress the address.
    soft_threshold: int = 3
    #: A temporary failure more than this many days after the last one starts the count again.
    soft_reset_days: int = 7
    #: What a complaint ends: ``"list"``, the subscription to the dispatch's list (every
    #: list when the list is not known); ``"all"``, every list.
    complaint: str = "list"
    #: The bounce mailbox `mailout worker` reads at each pass (and every ``poll_minutes``
    #: with ``--watch``): a SOURCE as ``mailout bounces process`` takes. "": not read.
    mailbox: str = ""
    #: With ``mailout worker --watch``: minutes between two readings of ``mailbox``.
    poll_minutes: float = 10.0
    #: The folder handled reports are moved to; "": they are marked seen (flagged in IMAP).
    move_to: str = ""
    #: Delete handled reports instead of marking or moving them.
    delete: bool = False


@dataclass(frozen=True)
class Paths:
    issues: Path = Path("issues")
    templates: Path = Path("templates/email")
    #: The workspace's own catalogs, which win over the built-in ones string by string:
    #: ``<locale>/<lang>/LC_MESSAGES/email.po`` (and ``web.po``).
    locale: Path = Path("locale")
    subscribers: Path = Path("subscribers")
    build: Path = Path("build")
    outbox: Path = Path("outbox")


@dataclass(frozen=True)
class Smtp:
    host: str = ""
    port: int = 587
    security: str = "starttls"
    username: str = ""
    password: str = field(default="", repr=False)
    #: Seconds to wait for the server to accept the TCP connection (and, with ``tls``, the handshake).
    connect_timeout: float = 30.0
    #: Seconds to wait for each answer (greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA) and to
    #: hand over the message: RFC 5321 4.5.3.2 asks for at least 5 minutes for most of them.
    timeout: float = 300.0
    #: Seconds to wait for the answer to the message's final "." (RFC 5321: at least 10 minutes).
    #: Without an answer the message may have been accepted: it is recorded ``unknown``.
    data_timeout: float = 600.0
    #: Allow ``security = "plain"`` to a host other than loopback (a trusted relay).
    allow_plain: bool = False


@dataclass(frozen=True)
class Route:
    """One ``[smtp.routes.NAME]`` table: an SMTP server of its own, with its limits.

    The quotas hold across processes and restarts (``quota``, in the database); 0 is no limit.
    """

    name: str
    #: Host, port, security, login and timeouts, as in ``[smtp]`` (the password from
    #: ``MAILOUT_SMTP_ROUTES_<NAME>_PASSWORD``).
    smtp: Smtp = field(default_factory=Smtp)
    #: SMTP connections (threads) per sending process on this route; 0: ``sending.concurrency``.
    concurrency: int = 0
    per_second: int = 0
    per_minute: int = 0
    per_hour: int = 0
    per_day: int = 0
    #: The route that takes the rest of a dispatch after repeated policy refusals (5.7.x) or
    #: connection failures on this one; "": none (the dispatch pauses, as without routes).
    failover: str = ""


@dataclass(frozen=True)
class Sending:
    #: SMTP connections (threads) per sending process.
    concurrency: int = 8
    #: Messages per second across every process of a dispatch; 0 means no limit.
    rate_limit: float = 0.0
    #: Deliveries a thread claims at a time.
    batch_size: int = 20
    #: First wait after a temporary failure (4xx), doubled at each retry, in seconds.
    retry_delay: float = 60.0
    #: Give up on a deferred delivery this many seconds after the dispatch began.
    retry_max_age: float = 86_400.0
    #: Pause the dispatch after this many 5.7.x refusals in a row (a problem with our sending).
    policy_failures_pause: int = 5
    #: A sending process that has not been heard of for this long is taken for dead.
    worker_timeout: float = 30.0
    #: The team's time zone (IANA name): ``send --at`` reads times in it, and ``status`` and
    #: ``schedule list`` show them in it.
    timezone: str = "UTC"
    #: A scheduled dispatch that no worker started within this many seconds of its instant
    #: is ``missed``: it does not start late; ``send --now`` sends it.
    max_lateness: float = 7200.0
    #: A dispatch starts only once someone other than its writer ran ``mailout approve``.
    require_approval: bool = False
    #: The route of a list without its own (``[lists.NAME] route``): a ``[smtp.routes.NAME]``;
    #: "" is ``[smtp]``.
    route: str = ""


#: The values of ``database.sqlite_synchronous``, as SQLite names them (``PRAGMA synchronous``).
SQLITE_SYNCHRONOUS = ("full", "normal")


@dataclass(frozen=True)
class Database:
    #: A SQLAlchemy URL. A relative SQLite path is relative to the workspace.
    #: PostgreSQL: ``postgresql+psycopg://user@host/dbname``; a URL with a password
    #: belongs in the environment (``MAILOUT_DATABASE_URL``), not in this file.
    url: str = "sqlite:///mailout.db"
    #: SQLite only: when a commit reaches the disk (``PRAGMA synchronous``). ``full``: at
    #: every commit, which then survives a power loss; ``normal``: at checkpoints only, so a
    #: power loss or an operating-system crash may undo the last commits (a process crash
    #: loses nothing either way). See docs/reliability.md.
    sqlite_synchronous: str = "full"


@dataclass(frozen=True)
class ListSettings:
    """One ``[lists.NAME]`` table: who is on the list may see which segment."""

    name: str
    segment: Segment = Segment.PUBLIC
    description: str = ""
    #: Whether the sign-up form offers this list (double opt-in). Never a ``member`` list.
    public_signup: bool = False
    #: The route its dispatches go through (a ``[smtp.routes.NAME]``); "" is ``sending.route``.
    route: str = ""


DEFAULT_LISTS = (
    ListSettings("members", Segment.MEMBER, "Members of the network"),
    ListSettings("public", Segment.PUBLIC, "Everyone who signed up on the website", public_signup=True),
)


@dataclass(frozen=True)
class Signup:
    """``[signup]``: the sign-up form, its confirmation (double opt-in), and pending sign-ups."""

    #: The consent text shown above the form's button, in ``newsletter.language``; other
    #: languages in ``[newsletter.translations.<tag>] signup_consent``. "": mailout's own text
    #: (translated in its catalogs). Each version shown is kept (``consent_texts``).
    consent: str = ""
    #: Days a confirmation link works.
    confirm_days: float = 7.0
    #: A GET of the confirmation link this many seconds or less after its message was sent
    #: shows a page with one button (a mail scanner fetches links at once); a later GET
    #: confirms directly.
    button_seconds: float = 60.0
    #: Unconfirmed sign-ups are deleted after this many days (``mailout worker``, or
    #: ``mailout subscribers purge-pending``).
    pending_days: float = 30.0
    #: A form sent back sooner than this many seconds after it was shown is taken for a robot.
    form_min_seconds: float = 2.0
    #: A form older than this many hours must be loaded again (its signed time refuses replays).
    form_max_hours: float = 24.0
    #: Sign-up POSTs one client address may make per hour (each web process counts its own).
    client_limit: int = 10
    #: Keep the client's IP address with the consent event. Off: no IP address is stored.
    store_ip: bool = False


@dataclass(frozen=True)
class Preview:
    #: Warn when a variant's HTML grows past this many bytes (Gmail clips at about 102 KB).
    html_warn_bytes: int = 90_000
    test_recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class Web:
    #: Where ``mailout serve`` listens. On loopback the team's preview is open;
    #: bound anywhere else it asks for ``MAILOUT_PREVIEW_PASSWORD`` (and is off without one).
    host: str = "127.0.0.1"
    port: int = 8025
    #: Requests ``mailout serve`` handles at once; more wait in its queue. Pages are
    #: Python work under one lock (the GIL), so more threads help only with slow requests.
    threads: int = 4
    preview_password: str = field(default="", repr=False)
    #: How many proxies in front of the app add themselves to ``X-Forwarded-For``: the
    #: client's address (the sign-up form's limit per client) is read that many hops back.
    #: 0: the address the connection comes from.
    proxy_hops: int = 0


@dataclass(frozen=True)
class Dkim:
    """``[dkim]``: sign every message when ``domain`` is set. The key itself is never in this file."""

    #: The signing domain (``d=``): sender.address's domain or a parent of it, for DMARC.
    domain: str = ""
    #: The RSA key's selector: its public key is published at SELECTOR._domainkey.DOMAIN.
    selector: str = ""
    #: The RSA private key (PEM): a file, relative to the workspace, kept out of git...
    key_file: str = ""
    #: ...or the name of an environment variable that holds the PEM text.
    key_env: str = ""
    #: A second signature with an Ed25519 key (RFC 8463), under its own selector: off when empty.
    ed25519_selector: str = ""
    ed25519_key_file: str = ""
    ed25519_key_env: str = ""
    #: Seconds after signing when a signature expires (``x=``); 0: never.
    expire_after: int = 0


#: The checks of ``mailout doctor``, in the order they run: what ``doctor.skip`` may name.
#: Kept here rather than in doctor.py so that reading the settings does not load DNS code.
CHECK_IDS = (
    "spf-record",
    "spf-lookups",
    "spf-authorizes-relay",
    "dkim-record",
    "dkim-record-ed25519",
    "dmarc-record",
    "dmarc-alignment",
    "mx-return-path",
    "mx-unsubscribe",
    "https-base-url",
    "smtp-connect",
    "smtp-tls",
    "smtp-login",
    "secret-key",
)


@dataclass(frozen=True)
class Doctor:
    """``[doctor]``: how ``mailout doctor`` and the checks before a real send ask DNS and SMTP."""

    #: Check ids switched off where the team knows better (``mailout doctor --json`` lists the ids).
    skip: tuple[str, ...] = ()
    #: DNS servers to ask instead of the system's (``"192.0.2.53"``, ``"127.0.0.1:5353"``,
    #: ``"[2001:db8::53]:53"``): e.g. the domain's own server, right after publishing.
    nameservers: tuple[str, ...] = ()
    #: Seconds to wait for each DNS answer and each step of the SMTP check.
    timeout: float = 5.0
    #: Run the checks before ``send`` (refusing on an error) and ``test`` (warning) to a real server.
    before_send: bool = True


@dataclass(frozen=True)
class Settings:
    """Every setting of one workspace, resolved and validated."""

    root: Path = Path(".")
    config_file: Path | None = None
    newsletter: Newsletter = field(default_factory=Newsletter)
    sender: Sender = field(default_factory=Sender)
    paths: Paths = field(default_factory=Paths)
    smtp: Smtp = field(default_factory=Smtp)
    preview: Preview = field(default_factory=Preview)
    database: Database = field(default_factory=Database)
    sending: Sending = field(default_factory=Sending)
    web: Web = field(default_factory=Web)
    dkim: Dkim = field(default_factory=Dkim)
    doctor: Doctor = field(default_factory=Doctor)
    bounces: Bounces = field(default_factory=Bounces)
    signup: Signup = field(default_factory=Signup)
    lists: tuple[ListSettings, ...] = DEFAULT_LISTS
    #: The ``[smtp.routes.NAME]`` tables, by name, in the file's order.
    routes: Mapping[str, Route] = field(default_factory=dict)
    secret_key: str = field(default="", repr=False)
    #: Where each setting given came from ("mailout.toml:12: dkim.key_file"), for error messages.
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def sends_mail(self) -> bool:
        """Whether messages go to a real SMTP server (``[smtp]`` or a route), not the local outbox.

        Every check meant for mail to real people (the secret key, https links, the
        doctor's checks before a send) asks this, never ``smtp.host`` alone: a workspace
        may send through its routes only.
        """
        return bool(self.smtp.host or self.routes)

    def where(self, dotted: str) -> str:
        """Return where the setting ``dotted`` came from, for an error message about its value."""
        return self.sources.get(dotted, f"{dotted} (built-in default)")

    def path(self, name: str) -> Path:
        """Return a ``[paths]`` entry resolved against the workspace root."""
        value: Path = getattr(self.paths, name)
        return value if value.is_absolute() else self.root / value

    def database_url(self) -> str:
        """Return the database URL, a relative SQLite path made relative to the workspace."""
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != prefix + ":memory:":
            path = Path(url[len(prefix) :])
            if not path.is_absolute():
                return prefix + str(self.root / path)
        return url

    def route(self, name: str) -> Route:
        """Return the ``[smtp.routes.NAME]`` settings; raise ``ConfigError`` for an unknown route."""
        found = self.routes.get(name)
        if found is None:
            known = ", ".join(self.routes) or "none"
            raise ConfigError(
                f"no route '{name}' in the settings (routes: {known}); add an [smtp.routes.{name}] table"
                " to mailout.toml"
            )
        return found

    def mailing_list(self, name: str) -> ListSettings:
        """Return the ``[lists.NAME]`` settings; raise ``ConfigError`` for an unknown list."""
        for entry in self.lists:
            if entry.name == name:
                return entry
        known = ", ".join(entry.name for entry in self.lists)
        raise ConfigError(
            f"no list '{name}' in the settings (lists: {known}); add a [lists.{name}] table to mailout.toml"
        )


SECTIONS: dict[str, type] = {
    "newsletter": Newsletter,
    "sender": Sender,
    "paths": Paths,
    "smtp": Smtp,
    "preview": Preview,
    "database": Database,
    "sending": Sending,
    "web": Web,
    "dkim": Dkim,
    "doctor": Doctor,
    "bounces": Bounces,
    "signup": Signup,
}


@dataclass(frozen=True)
class Range:
    """The values one numeric setting accepts."""

    low: float
    high: float = math.inf
    #: Refuse ``low`` itself: a timeout of 0 seconds would never wait.
    above: bool = False
    unit: str = ""

    def refuse(self, value: float) -> str | None:
        """Return why ``value`` is out of range, or None when it is within."""
        if (value > self.low if self.above else value >= self.low) and value <= self.high:
            return None
        unit = f" {self.unit}" if self.unit else ""
        low, high = _number(self.low), _number(self.high)
        if self.high != math.inf:
            span = f"more than {low} and at most {high}" if self.above else f"from {low} to {high}"
        else:
            span = f"more than {low}" if self.above else f"at least {low}"
        return f"must be {span}{unit}, got {_number(value)}"


def _number(value: float) -> str:
    """Write 30.0 as 30 and 1e99 as 1e+99, as a user would."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


#: The range of every numeric setting; a new number needs its entry here (a test checks).
#: Upper bounds catch typos that would open hundreds of connections, or overflow a
#: timer: the operating system refuses socket timeouts beyond a few centuries.
NUMBER_RANGES: dict[str, Range] = {
    "smtp.port": Range(1, 65535),
    "smtp.connect_timeout": Range(0, 3600, above=True, unit="seconds"),
    "smtp.timeout": Range(0, 3600, above=True, unit="seconds"),
    "smtp.data_timeout": Range(0, 3600, above=True, unit="seconds"),
    "sending.concurrency": Range(1, 100),
    "sending.rate_limit": Range(0, unit="messages per second"),
    "sending.batch_size": Range(1, 1000),
    "sending.retry_delay": Range(0, 86_400, above=True, unit="seconds"),
    "sending.retry_max_age": Range(0, 30 * 86_400, unit="seconds"),
    "sending.policy_failures_pause": Range(1),
    # The heartbeat beats every third of it (every 0.5 s at least): under 2 s, a live
    # process could be taken for dead between two beats.
    "sending.worker_timeout": Range(2, 86_400, unit="seconds"),
    # At least a minute: the worker's rounds come a minute apart at best (a timer, cron), and
    # a smaller value would find every dispatch missed before a round could start it.
    "sending.max_lateness": Range(60, 30 * 86_400, unit="seconds"),
    "preview.html_warn_bytes": Range(0, unit="bytes"),
    "web.port": Range(1, 65535),
    "dkim.expire_after": Range(0, 366 * 86_400, unit="seconds"),
    "web.threads": Range(1, 64),
    "doctor.timeout": Range(0, 60, above=True, unit="seconds"),
    "bounces.match_days": Range(1, 3660, unit="days"),
    "bounces.soft_threshold": Range(1, 1000),
    "bounces.soft_reset_days": Range(1, 3660, unit="days"),
    # Fractions are accepted (a test reads the mailbox every second); a day at most.
    "bounces.poll_minutes": Range(0, 1440, above=True, unit="minutes"),
    "signup.confirm_days": Range(0, 365, above=True, unit="days"),
    "signup.button_seconds": Range(0, 86_400, unit="seconds"),
    "signup.pending_days": Range(1, 3660, unit="days"),
    "signup.form_min_seconds": Range(0, 3600, unit="seconds"),
    "signup.form_max_hours": Range(0, 24 * 365, above=True, unit="hours"),
    "signup.client_limit": Range(1, 100_000, unit="sign-ups per hour"),
    "web.proxy_hops": Range(0, 10),
    # [smtp.routes.NAME]: their host keys take the ranges of [smtp]'s; 0 is "no limit".
    "route.concurrency": Range(0, 100),
    "route.per_second": Range(0, 1_000_000, unit="messages"),
    "route.per_minute": Range(0, 60_000_000, unit="messages"),
    "route.per_hour": Range(0, 3_600_000_000, unit="messages"),
    "route.per_day": Range(0, 86_400_000_000, unit="messages"),
}


def find_config(start: Path) -> Path | None:
    """Return the ``mailout.toml`` in ``start`` or its nearest parent, if any."""
    start = start.resolve()
    for folder in (start, *start.parents):
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    root: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    require_file: bool = True,
) -> Settings:
    """Resolve settings for the workspace at ``root`` (default: found from the current folder).

    ``overrides`` maps dotted keys (``"sender.address"``) to values from flags;
    ``None`` values are ignored so that unset flags do not mask other layers.
    """
    env = os.environ if env is None else env
    config_path = find_config(root or Path.cwd()) if root is None else root / CONFIG_FILE
    if config_path is None or not config_path.is_file():
        if require_file:
            where = root or Path.cwd()
            raise ConfigError(f"no {CONFIG_FILE} in {where}: run `mailout init` to create a workspace")
        config_path = None
    layers: dict[str, dict[str, tuple[Any, str]]] = {name: {} for name in SECTIONS}

    if config_path is not None:
        _read_file(config_path, layers)
    _read_env(env, layers)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if dotted in SECRETS:
            raise ConfigError(
                f"--set {dotted}: a secret is read only from the environment ({SECRETS[dotted]})"
            )
        if section not in SECTIONS:
            raise ConfigError(f"--set {dotted}: unknown section '{section}' (known: {', '.join(SECTIONS)})")
        layers[section][key] = (value, f"command-line option --set {dotted}")

    sections: dict[str, Any] = {name: _build(cls, name, layers[name]) for name, cls in SECTIONS.items()}
    if "lists" in layers:
        sections["lists"] = layers["lists"][""][0]
    password = env.get(SECRETS["smtp.password"], "")
    sections["smtp"] = dataclasses.replace(sections["smtp"], password=password)
    sections["web"] = dataclasses.replace(
        sections["web"], preview_password=env.get(SECRETS["web.preview_password"], "")
    )
    routes: Mapping[str, Route] = layers.pop("routes", {}).get("", ({}, ""))[0]
    sections["routes"] = {
        name: dataclasses.replace(
            route,
            smtp=dataclasses.replace(route.smtp, password=env.get(route_password_variable(name), "")),
        )
        for name, route in routes.items()
    }
    sources = {
        f"{section}.{key}": source for section, keys in layers.items() for key, (_, source) in keys.items()
    }
    settings = Settings(
        root=(config_path.parent if config_path else (root or Path.cwd())).resolve(),
        config_file=config_path,
        secret_key=env.get(SECRETS["secret_key"], ""),
        sources=sources,
        **sections,
    )
    _validate(settings, sources)
    from .languages import canonical

    # One spelling of the newsletter's language everywhere (`lang=` of the HTML, the
    # catalogs, the dispatch's default variant): `en-gb` is read as `en-GB`.
    tag = canonical(settings.newsletter.language)
    if tag is not None and tag != settings.newsletter.language:
        newsletter = dataclasses.replace(settings.newsletter, language=tag)
        settings = dataclasses.replace(settings, newsletter=newsletter)
    return settings


def _read_file(path: Path, layers: dict[str, dict[str, tuple[Any, str]]]) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path.name}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None
    lists = data.pop("lists", None)
    if lists is not None:
        layers["lists"] = {"": (_read_lists(path, text, lists), "")}
    smtp = data.get("smtp")
    routes = (
        _read_routes(path, text, smtp.pop("routes")) if isinstance(smtp, dict) and "routes" in smtp else {}
    )
    layers["routes"] = {"": (routes, "")}
    for entry in layers["lists"][""][0] if "lists" in layers else ():
        if entry.route and entry.route not in routes:
            raise ConfigError(
                f"{_where(path, text, 'route', f'lists.{entry.name}')}: lists.{entry.name}.route: no route"
                f" '{entry.route}'{_known_routes(entry.route, routes)}"
            )
    for section, table in data.items():
        if section in ("password", "secret_key"):
            raise ConfigError(_secret_message(path, text, section, section))
        if section not in SECTIONS:
            raise ConfigError(
                f"{_where(path, text, section)}: unknown section [{section}] (known: {', '.join(SECTIONS)})"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{_where(path, text, section)}: '{section}' must be a table [{section}]")
        for key, value in table.items():
            dotted = f"{section}.{key}"
            if dotted in SECRETS or key in ("password", "secret_key"):
                raise ConfigError(_secret_message(path, text, key, dotted))
            if section == "dkim" and key in DKIM_KEY_NAMES:
                raise ConfigError(
                    f"{_where(path, text, key, section)}: the DKIM private key may not be written in"
                    f" {path.name}; give the file that holds it (dkim.key_file) or the environment"
                    " variable (dkim.key_env)"
                )
            if (
                dotted == "database.url"
                and isinstance(value, str)
                and re.match(r"^[\w+]+://[^/@]*:[^/@]*@", value)
            ):
                raise ConfigError(
                    f"{_where(path, text, key, section)}: database.url holds a password, which is a secret;"
                    " set the environment variable MAILOUT_DATABASE_URL instead"
                )
            layers[section][key] = (value, f"{_where(path, text, key, section)}: {dotted}")


#: The keys of a ``[lists.NAME]`` table.
LIST_KEYS = ("segment", "description", "public_signup", "route")


def _read_lists(path: Path, text: str, tables: Any) -> tuple[ListSettings, ...]:
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ConfigError(f"{_where(path, text, 'lists')}: write each list as a table, e.g. [lists.members]")
    found = []
    for name, table in tables.items():
        where = f"{_where(path, text, f'lists.{name}')}: lists.{name}"
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name):
            raise ConfigError(f"{where}: a list name is up to 64 lower-case letters, digits, '-' or '_'")
        for key, value in table.items():
            if key not in LIST_KEYS:
                raise ConfigError(f"{where}.{key}: unknown setting{_closest(key, set(LIST_KEYS))}")
            if key == "public_signup":
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
            elif not isinstance(value, str):
                raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
        if len(table.get("description", "")) > 500:
            raise ConfigError(f"{where}.description: at most 500 characters")
        segment = table.get("segment", Segment.PUBLIC.value)
        if segment not in tuple(Segment):
            choices = " or ".join(f"'{s}'" for s in Segment)
            raise ConfigError(f"{where}.segment: must be {choices}, got {segment!r}")
        public_signup = table.get("public_signup", False)
        if public_signup and segment == Segment.MEMBER:
            raise ConfigError(
                f"{where}.public_signup: a members' list is never open to sign-up"
                " (anyone could read the members' items); leave it out or use a public list"
            )
        found.append(
            ListSettings(
                name, Segment(segment), table.get("description", ""), public_signup, table.get("route", "")
            )
        )
    return tuple(found)


#: The keys of a ``[smtp.routes.NAME]`` table: its server's, as in ``[smtp]``, then its own.
ROUTE_SMTP_KEYS = (
    "host", "port", "security", "username", "connect_timeout", "timeout", "data_timeout", "allow_plain",
)  # fmt: skip
ROUTE_KEYS = (*ROUTE_SMTP_KEYS, "concurrency", "per_second", "per_minute", "per_hour", "per_day", "failover")
#: A route's name: it is kept in the database (``dispatches.route``, the quotas' counts).
ROUTE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def route_password_variable(name: str) -> str:
    """Return the environment variable that holds route ``name``'s SMTP password."""
    return f"{ENV_PREFIX}SMTP_ROUTES_{name.upper().replace('-', '_')}_PASSWORD"


def _known_routes(name: str, routes: Mapping[str, Route]) -> str:
    if not routes:
        return " (no [smtp.routes.NAME] table in the settings)"
    return _closest(name, set(routes))


def _read_routes(path: Path, text: str, tables: Any) -> dict[str, Route]:
    """Read the ``[smtp.routes.NAME]`` tables; each error names its file and line."""
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ConfigError(
            f"{_where(path, text, 'smtp.routes')}: write each route as a table, e.g. [smtp.routes.m365]"
        )
    smtp_hints, route_hints = typing.get_type_hints(Smtp), typing.get_type_hints(Route)
    found: dict[str, Route] = {}
    variables: dict[str, str] = {}
    for name, table in tables.items():
        section = f"smtp.routes.{name}"
        where = f"{_where(path, text, section)}: {section}"
        if not ROUTE_NAME.fullmatch(name):
            raise ConfigError(f"{where}: a route name is up to 64 lower-case letters, digits, '-' or '_'")
        variable = route_password_variable(name)
        if variable in variables:
            raise ConfigError(
                f"{where}: routes '{variables[variable]}' and '{name}' would share the password variable"
                f" {variable}; rename one"
            )
        variables[variable] = name
        smtp: dict[str, Any] = {}
        own: dict[str, Any] = {}
        for key, value in table.items():
            source = f"{_where(path, text, key, section)}: {section}.{key}"
            if key == "password":
                raise ConfigError(
                    f"{source} is a secret and may not be written in {path.name};"
                    f" set the environment variable {variable} instead"
                )
            if key not in ROUTE_KEYS:
                raise ConfigError(f"{source}: unknown setting{_closest(key, set(ROUTE_KEYS))}")
            smtp_key = key in ROUTE_SMTP_KEYS
            coerced = _coerce(value, (smtp_hints if smtp_key else route_hints)[key], source)
            bounds = NUMBER_RANGES.get(f"smtp.{key}" if smtp_key else f"route.{key}")
            reason = bounds.refuse(coerced) if bounds and not isinstance(coerced, bool) else None
            if reason:
                raise ConfigError(f"{source}: {reason}")
            (smtp if smtp_key else own)[key] = coerced
        if not smtp.get("host"):
            raise ConfigError(f'{where}: give the route\'s SMTP server (host = "smtp.example.org")')
        if smtp.get("security", Smtp.security) not in ("starttls", "tls", "plain"):
            raise ConfigError(
                f"{_where(path, text, 'security', section)}: {section}.security: must be 'starttls', 'tls'"
                f" or 'plain', got {smtp['security']!r}"
            )
        found[name] = Route(name, Smtp(**smtp), **own)
    for name, route in found.items():
        if not route.failover:
            continue
        source = f"{_where(path, text, 'failover', f'smtp.routes.{name}')}: smtp.routes.{name}.failover"
        if route.failover == name:
            raise ConfigError(f"{source}: a route cannot fail over to itself")
        if route.failover not in found:
            raise ConfigError(f"{source}: no route '{route.failover}'{_closest(route.failover, set(found))}")
    return found


def _secret_message(path: Path, text: str, key: str, dotted: str) -> str:
    variable = SECRETS.get(dotted, f"{ENV_PREFIX}{dotted.replace('.', '_').upper()}")
    return (
        f"{_where(path, text, key)}: {dotted} is a secret and may not be written in {path.name};"
        f" set the environment variable {variable} instead"
    )


def _where(path: Path, text: str, key: str, section: str | None = None) -> str:
    """Return ``file:line`` for ``key`` (inside ``[section]`` when given), best effort."""
    in_section = section is None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            name = stripped.strip("[] ")
            if section is None and name == key:
                return f"{path.name}:{number}"
            in_section = section is None or name == section
            continue
        if in_section and re.match(rf"{re.escape(key)}\s*=", stripped):
            return f"{path.name}:{number}"
    return path.name


def _read_env(env: Mapping[str, str], layers: dict[str, dict[str, tuple[Any, str]]]) -> None:
    known = {
        f"{ENV_PREFIX}{section}_{f.name}".upper()
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
    }
    known |= set(SECRETS.values()) | set(OTHER_VARIABLES)
    routes: Mapping[str, Route] = layers.get("routes", {}).get("", ({}, ""))[0]
    known |= {route_password_variable(name) for name in routes}
    # The variables that [dkim] names as holding its keys (in the file or the environment).
    for key in ("key_env", "ed25519_key_env"):
        named = layers["dkim"].get(key, ("", ""))[0]
        known |= {v for v in (named, env.get(f"{ENV_PREFIX}DKIM_{key}".upper(), "")) if isinstance(v, str)}
    for name in env:
        if name.startswith(ENV_PREFIX) and name not in known:
            match = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {match[0]}?)" if match else ""
            raise ConfigError(f"environment variable {name}: unknown setting{hint}")
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            name = f"{ENV_PREFIX}{section}_{f.name}".upper()
            if name in env and f"{section}.{f.name}" not in SECRETS:
                layers[section][f.name] = (env[name], f"environment variable {name} ({section}.{f.name})")


def _build(cls: type, section: str, values: dict[str, tuple[Any, str]]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, (value, source) in values.items():
        if key not in known:
            hint = _closest(key, known)
            raise ConfigError(f"{source}: unknown setting{hint}")
        if cls is Newsletter and key == "translations":
            kwargs[key] = _coerce_translations(value, source)
            continue
        kwargs[key] = _coerce(value, hints[key], source)
    return cls(**kwargs)


def _closest(key: str, known: set[str]) -> str:
    match = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean '{match[0]}'?)" if match else f" (known: {', '.join(sorted(known))})"


def _coerce(value: Any, hint: Any, source: str) -> Any:
    """Turn a TOML value or an environment string into the type the setting declares."""
    from_env = isinstance(value, str)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if from_env and value.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{source}: expected true or false, got {value!r}")
    if hint is int or hint is float:
        return _coerce_number(value, hint, source)
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{source}: expected a path (a string), got {value!r}")
        return Path(value)
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: expected a list of strings, got {value!r}")
        return tuple(value)
    if hint is str or (isinstance(hint, types.UnionType) and str in typing.get_args(hint)):
        if not isinstance(value, str):
            raise ConfigError(f"{source}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: unsupported setting type {hint!r}")  # pragma: no cover


def _coerce_number(value: Any, hint: type[float], source: str) -> float:
    """Turn a TOML number or an environment string into a finite ``int`` or ``float``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{source}: expected a number, got {value!r}")
    if hint is int and isinstance(value, (int, str)):
        try:
            return int(value)
        except ValueError:
            pass  # "2.5" or "twenty": told apart below
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{source}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{source}: expected a finite number, got {value!r}")
    if hint is int:
        if not number.is_integer():
            raise ConfigError(f"{source}: expected a whole number, got {value!r}")
        return int(number)
    return number


#: The ``[newsletter]`` texts a team may write per language, in ``[newsletter.translations.<tag>]``.
TRANSLATABLE_TEXTS = ("name", "reason", "greeting_fallback", "members_teaser", "signup_consent")


def _coerce_translations(value: Any, source: str) -> dict[str, dict[str, str]]:
    """Read ``[newsletter.translations.<tag>]`` tables: per language, some of the texts above."""
    from .languages import canonical

    if isinstance(value, str):
        raise ConfigError(
            f"{source}: write the translations in {CONFIG_FILE}, one [newsletter.translations.<tag>] table each"
        )
    if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
        raise ConfigError(f"{source}: write each language as a table, e.g. [newsletter.translations.fr]")
    found: dict[str, dict[str, str]] = {}
    for tag, table in value.items():
        language = canonical(tag)
        if language is None or language != tag:
            hint = f" (write '{language}')" if language else ""
            raise ConfigError(f"{source}.{tag}: not a language tag such as 'fr' or 'pt-BR'{hint}")
        for key, text in table.items():
            if key not in TRANSLATABLE_TEXTS:
                raise ConfigError(
                    f"{source}.{tag}.{key}: unknown text{_closest(key, set(TRANSLATABLE_TEXTS))}"
                )
            if not isinstance(text, str):
                raise ConfigError(f"{source}.{tag}.{key}: expected a string, got {text!r}")
            if key == "members_teaser":
                _check_teaser(text, f"{source}.{tag}.{key}")
        found[tag] = dict(table)
    return found


def _check_teaser(teaser: str, where: str) -> None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(teaser) if name is not None}
    except ValueError:
        names = {"?"}
    if not names <= {"count", "s"}:
        raise ConfigError(f"{where}: only {{count}} and {{s}} may appear in braces, got {teaser!r}")


#: Characters refused in ``newsletter.public_base_url`` besides non-ASCII and control characters.
URL_REFUSED = ' <>"\\'
#: The longest ``newsletter.public_base_url``: its unsubscribe links stay one header line.
BASE_URL_MAX = 500


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: An envelope address (RFC 5321 Mailbox, dot-atom local part, a domain of two labels or more).
_ENVELOPE_ADDRESS = re.compile(rf"(?=.{{3,254}}$){_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+")


def _validate(settings: Settings, sources: Mapping[str, str]) -> None:
    """Check values across layers; each message names where the wrong value came from."""

    def fail(dotted: str, message: str) -> ConfigError:
        return ConfigError(f"{sources.get(dotted, f'{dotted} (built-in default)')}: {message}")

    base_url = settings.newsletter.public_base_url
    url = urlsplit(base_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise fail("newsletter.public_base_url", f"must be an absolute http(s) URL, got {base_url!r}")
    if not base_url.isascii() or any(c in base_url for c in URL_REFUSED) or not base_url.isprintable():
        # It goes as it is into List-Unsubscribe, a header of ASCII without spaces.
        raise fail(
            "newsletter.public_base_url",
            f"must be ASCII without spaces, quotes or angle brackets, got {base_url!r}"
            " (write an international domain in its xn-- form and percent-encode the path)",
        )
    if len(base_url) > BASE_URL_MAX:
        # With an unsubscribe token it must fit in one line of List-Unsubscribe (998 at most).
        raise fail(
            "newsletter.public_base_url", f"is {len(base_url)} characters long; at most {BASE_URL_MAX}"
        )
    if "@" not in settings.sender.address or any(c in settings.sender.address for c in " \r\n<>"):
        raise fail("sender.address", f"not an email address: {settings.sender.address!r}")
    for name in ("name", "reply_to"):
        if any(c in getattr(settings.sender, name) for c in "\r\n\0"):
            raise fail(f"sender.{name}", "must be one line")
    return_path = settings.sender.return_path
    if return_path and (
        return_path.count("@") != 1
        or not all(return_path.split("@"))
        or any(c in return_path for c in ' \t\r\n\0<>,;:"()[]\\')
    ):
        raise fail("sender.return_path", f"not an email address: {return_path!r}")
    if not return_path.isascii():
        # A non-ASCII envelope sender needs SMTPUTF8 at every server on the way, and a bounce
        # to it would be refused by those without it: bounces would be lost, unseen.
        raise fail(
            "sender.return_path",
            f"{return_path!r} has characters outside ASCII; the envelope sender must be ASCII"
            " (write an international domain in its xn-- form)",
        )
    if return_path and not _ENVELOPE_ADDRESS.fullmatch(return_path):
        # Checked strictly: a server that refuses MAIL FROM (501 5.1.7) fails every delivery.
        raise fail(
            "sender.return_path",
            f"not an address a mail server accepts in MAIL FROM: {return_path!r}"
            " (a local part of letters, digits and .+-_ without a dot at either end, and a domain"
            " name such as bounces@mail.example.org)",
        )
    if settings.bounces.complaint not in COMPLAINT_SCOPES:
        raise fail(
            "bounces.complaint",
            f"must be {' or '.join(map(repr, COMPLAINT_SCOPES))}, got {settings.bounces.complaint!r}",
        )
    _validate_mailbox(settings.bounces, fail)
    if return_path and settings.bounces.verp:
        _validate_verp(return_path, settings.bounces.verp_separator, fail)
    if "://" not in settings.database.url:
        raise fail(
            "database.url", f"not a database URL: {settings.database.url!r} (e.g. sqlite:///mailout.db)"
        )
    for section in SECTIONS:
        values = getattr(settings, section)
        for f in dataclasses.fields(values):
            bounds = NUMBER_RANGES.get(f"{section}.{f.name}")
            reason = bounds.refuse(getattr(values, f.name)) if bounds else None
            if reason:
                raise fail(f"{section}.{f.name}", reason)
    if settings.smtp.security not in ("starttls", "tls", "plain"):
        raise fail("smtp.security", f"must be 'starttls', 'tls' or 'plain', got {settings.smtp.security!r}")
    try:
        zone = settings.sending.timezone
        if not zone or zone != zone.strip():
            raise ValueError(zone)
        zoneinfo.ZoneInfo(zone)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise fail(
            "sending.timezone",
            f"not a time zone: {settings.sending.timezone!r} (an IANA name such as 'Europe/Brussels' or 'UTC')",
        ) from None
    if settings.database.sqlite_synchronous not in SQLITE_SYNCHRONOUS:
        raise fail(
            "database.sqlite_synchronous",
            f"must be {' or '.join(map(repr, SQLITE_SYNCHRONOUS))}, got {settings.database.sqlite_synchronous!r}",
        )
    teaser = settings.newsletter.members_teaser
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(teaser) if name is not None}
    except ValueError:
        fields = {"?"}
    if not fields <= {"count", "s"}:
        raise fail(
            "newsletter.members_teaser", f"only {{count}} and {{s}} may appear in braces, got {teaser!r}"
        )
    if settings.sending.route and settings.sending.route not in settings.routes:
        raise fail(
            "sending.route",
            f"no route '{settings.sending.route}'{_known_routes(settings.sending.route, settings.routes)}",
        )
    _validate_dkim(settings.dkim, fail)
    _validate_doctor(settings.doctor, fail)
    if not LANGUAGE_TAG.fullmatch(settings.newsletter.language):
        raise fail(
            "newsletter.language",
            f"expected a language tag such as 'en' or 'fr', got {settings.newsletter.language!r}",
        )


def _validate_mailbox(bounces: Bounces, fail: typing.Callable[[str, str], ConfigError]) -> None:
    """Refuse a bounce mailbox with its password written in, and two ways to end a report."""
    scheme, sep, rest = bounces.mailbox.partition("://")
    user, at, _ = rest.partition("@")  # an @ in the user is written %40
    if sep and at and ":" in user:
        # The value is not repeated: it holds a password, which belongs in the environment.
        raise fail(
            "bounces.mailbox",
            f"{scheme}://...: the IMAP password is not written in the settings (they are read by"
            f" everyone who can read the workspace); set {SECRETS['bounces.imap_password']} instead",
        )
    if bounces.move_to and bounces.delete:
        raise fail(
            "bounces.delete", "handled reports are either moved (bounces.move_to) or deleted, not both"
        )


def _validate_verp(return_path: str, separator: str, fail: typing.Callable[[str, str], ConfigError]) -> None:
    """Check that each message's return address (VERP) fits the limits of RFC 5321."""
    from .envelope import VERP_ROOM

    if separator not in VERP_SEPARATORS:
        raise fail(
            "bounces.verp_separator",
            f"must be {' or '.join(map(repr, VERP_SEPARATORS))}, got {separator!r}",
        )
    local = return_path.rpartition("@")[0]
    if len(local) + VERP_ROOM > 64 or len(return_path) + VERP_ROOM > 254:
        # A longer address is refused by servers, or its bounce lost: refuse it now.
        raise fail(
            "sender.return_path",
            f"its local part {local!r} leaves no room for each message's code ({VERP_ROOM} characters"
            " of the 64 RFC 5321 allows); use at most"
            f" {64 - VERP_ROOM} characters before the @, or set bounces.verp = false",
        )


def _validate_dkim(dkim: Dkim, fail: typing.Callable[[str, str], ConfigError]) -> None:
    """Check that ``[dkim]`` names a domain, a selector and exactly one place for each key."""
    from .dkim import valid_domain, valid_selector

    # Where the key is, or its selector, without a domain: a signature half set up.
    given = [f.name for f in dataclasses.fields(dkim) if f.name != "expire_after" and getattr(dkim, f.name)]
    if not dkim.domain:
        if given:
            raise fail(f"dkim.{given[0]}", "set dkim.domain too, or nothing is signed")
        return
    if not valid_domain(dkim.domain):
        raise fail("dkim.domain", f"expected a domain name such as 'example.org', got {dkim.domain!r}")
    for prefix in ("", "ed25519_"):
        selector = getattr(dkim, f"{prefix}selector")
        key_file, key_env = getattr(dkim, f"{prefix}key_file"), getattr(dkim, f"{prefix}key_env")
        if not selector:
            if prefix and (key_file or key_env):
                raise fail(
                    f"dkim.{prefix}key_{'file' if key_file else 'env'}", "set dkim.ed25519_selector too"
                )
            if prefix:
                continue
            raise fail(
                "dkim.domain", "set dkim.selector too: the name under which the public key is published"
            )
        if not valid_selector(selector):
            raise fail(
                f"dkim.{prefix}selector", f"expected DNS labels such as 'mailout2026', got {selector!r}"
            )
        if bool(key_file) == bool(key_env):
            raise fail(
                f"dkim.{prefix}selector",
                f"give the private key in exactly one of dkim.{prefix}key_file (a path) and"
                f" dkim.{prefix}key_env (an environment variable's name)",
            )
        if key_file and ("-----BEGIN" in key_file or "\n" in key_file or len(key_file) > 1024):
            # Never repeated: this is a private key pasted where its path belongs.
            raise fail(
                f"dkim.{prefix}key_file",
                "holds a key, not a path: put the PEM key in a file readable only by the sending"
                f" user and give its path, or name an environment variable in dkim.{prefix}key_env",
            )
        if key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
            raise fail(
                f"dkim.{prefix}key_env",
                f"expected the name of an environment variable, got {key_env[:20]!r}...",
            )
    if dkim.ed25519_selector and dkim.ed25519_selector == dkim.selector:
        raise fail("dkim.ed25519_selector", "must differ from dkim.selector: each key has its own DNS record")


def _validate_doctor(doctor: Doctor, fail: typing.Callable[[str, str], ConfigError]) -> None:
    """Check that ``doctor.skip`` names known checks and ``doctor.nameservers`` addresses."""
    from .net import parse_nameserver

    for check in doctor.skip:
        if check not in CHECK_IDS:
            raise fail("doctor.skip", f"unknown check '{check}'{_closest(check, set(CHECK_IDS))}")
    for entry in doctor.nameservers:
        try:
            parse_nameserver(entry)
        except ValueError as exc:
            raise fail("doctor.nameservers", str(exc)) from None
