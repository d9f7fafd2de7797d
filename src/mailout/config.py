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
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

CONFIG_FILE = "mailout.toml"
ENV_PREFIX = "MAILOUT_"
#: Settings that must never be written in a file, with the variable that carries each.
SECRETS = {"smtp.password": "MAILOUT_SMTP_PASSWORD", "secret_key": "MAILOUT_SECRET_KEY"}


@dataclass(frozen=True)
class Newsletter:
    name: str = "Newsletter"
    language: str = "en"
    #: Where the web archive and the unsubscribe pages are served; the only host
    #: besides the issue's own links and images that the emails reference.
    public_base_url: str = "http://127.0.0.1:8025"
    #: The sender's postal address, shown in every footer (required by anti-spam laws).
    postal_address: str = ""
    #: Why the reader gets this email, shown in the footer; ``{list}`` is replaced
    #: by the list's description at send time.
    reason: str = "You receive this newsletter because you subscribed to it."
    #: Used in the greeting when a subscriber has no name.
    greeting_fallback: str = "reader"
    #: One line shown to the public where members-only items were left out;
    #: ``{count}`` becomes the number of items, ``{s}`` an "s" when it is not 1.
    #: Empty: show nothing.
    members_teaser: str = "{count} more item{s} in this issue for members of the network"
    members_teaser_url: str = ""


@dataclass(frozen=True)
class Sender:
    name: str = "Newsletter"
    address: str = "newsletter@example.org"
    reply_to: str = ""


@dataclass(frozen=True)
class Paths:
    issues: Path = Path("issues")
    templates: Path = Path("templates/email")
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
    timeout: float = 30.0


@dataclass(frozen=True)
class Preview:
    #: Warn when a variant's HTML grows past this many bytes (Gmail clips at about 102 KB).
    html_warn_bytes: int = 90_000
    test_recipients: tuple[str, ...] = ()


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
    secret_key: str = field(default="", repr=False)

    def path(self, name: str) -> Path:
        """Return a ``[paths]`` entry resolved against the workspace root."""
        value: Path = getattr(self.paths, name)
        return value if value.is_absolute() else self.root / value


SECTIONS: dict[str, type] = {
    "newsletter": Newsletter,
    "sender": Sender,
    "paths": Paths,
    "smtp": Smtp,
    "preview": Preview,
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
        layers[section][key] = (value, f"command-line option for {dotted}")

    sections = {name: _build(cls, name, layers[name]) for name, cls in SECTIONS.items()}
    password = env.get(SECRETS["smtp.password"], "")
    sections["smtp"] = dataclasses.replace(sections["smtp"], password=password)
    settings = Settings(
        root=(config_path.parent if config_path else (root or Path.cwd())),
        config_file=config_path,
        secret_key=env.get(SECRETS["secret_key"], ""),
        **sections,
    )
    _validate(settings)
    return settings


def _read_file(path: Path, layers: dict[str, dict[str, tuple[Any, str]]]) -> None:
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None
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
            layers[section][key] = (value, f"{_where(path, text, key, section)}: {dotted}")


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
        kwargs[key] = _coerce(value, hints[key], source)
    return cls(**kwargs)


def _closest(key: str, known: set[str]) -> str:
    import difflib

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
        if isinstance(value, bool):
            raise ConfigError(f"{source}: expected a number, got {value!r}")
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: expected a number, got {value!r}") from None
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


def _validate(settings: Settings) -> None:
    origin = f"{settings.config_file.name}: " if settings.config_file else ""
    url = urlsplit(settings.newsletter.public_base_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ConfigError(
            f"{origin}newsletter.public_base_url: must be an absolute http(s) URL,"
            f" got {settings.newsletter.public_base_url!r}"
        )
    if "@" not in settings.sender.address or any(c in settings.sender.address for c in " \r\n<>"):
        raise ConfigError(f"{origin}sender.address: not an email address: {settings.sender.address!r}")
    for name in ("name", "reply_to"):
        if any(c in getattr(settings.sender, name) for c in "\r\n\0"):
            raise ConfigError(f"{origin}sender.{name}: must be one line")
    if settings.smtp.security not in ("starttls", "tls", "plain"):
        raise ConfigError(
            f"{origin}smtp.security: must be 'starttls', 'tls' or 'plain', got {settings.smtp.security!r}"
        )
    teaser = settings.newsletter.members_teaser
    try:
        teaser.format(count=1, s="")
    except (KeyError, IndexError, ValueError):
        raise ConfigError(
            f"{origin}newsletter.members_teaser: only {{count}} and {{s}} may appear in braces, got {teaser!r}"
        ) from None
    if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", settings.newsletter.language):
        raise ConfigError(
            f"{origin}newsletter.language: expected a language tag such as 'en' or 'fr',"
            f" got {settings.newsletter.language!r}"
        )
