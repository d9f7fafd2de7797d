"""Signed tokens for the links in every message: unsubscribe, and the members' web view.

A token names a subscriber and a list (by number, never by address) and
carries an HMAC-SHA256 of them, with the token's purpose, under the secret key
from ``MAILOUT_SECRET_KEY``. Tokens do not expire: a link in a three-year-old
issue still unsubscribes. To change the key, put the new one first and keep the
old ones after it (``MAILOUT_SECRET_KEY="new,old"``): the first key signs,
every key verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .errors import ConfigError

MIN_KEY_LENGTH = 16
#: A real send warns about a key shorter than this (``secrets.token_urlsafe(32)`` gives 43).
GOOD_KEY_LENGTH = 32
#: Keys printed in mailout's own files (the Makefile's demo): anyone can sign links with them,
#: so they may sign only what goes to the local outbox. ``tests/test_tokens.py`` scans the
#: files a user could copy a key from, so that this list misses none.
PUBLIC_KEYS = frozenset({"demo-key-for-the-local-outbox-only"})
_NEW_KEY = "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
_MAC_BYTES = 16  # 128 bits: forging one is out of reach; the URL stays short


class Purpose(StrEnum):
    UNSUBSCRIBE = "unsubscribe"
    VIEW = "view"
    #: The code in a message's return address (VERP): see ``envelope``.
    RETURN_PATH = "return-path"
    #: A sign-up's confirmation link: (signup id, nonce), see ``signup``.
    CONFIRM = "confirm"
    #: The preference page in every message's footer: (subscriber id, list id).
    PREFERENCES = "preferences"
    #: The sign-up form's signed time: (unix seconds when shown, random nonce).
    FORM = "form"
    #: The keyed hash that keeps an erased address out (``address_hashes``).
    ERASED = "erased"


@dataclass(frozen=True)
class Claim:
    """What a valid token says."""

    purpose: Purpose
    subscriber_id: int
    list_id: int


class Signer:
    """Signs and verifies tokens with the workspace's secret keys."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError(f"no secret key: set MAILOUT_SECRET_KEY (e.g. to the output of {_NEW_KEY})")
        for key in keys:
            if len(key) < MIN_KEY_LENGTH:
                raise ConfigError(f"MAILOUT_SECRET_KEY: each key needs at least {MIN_KEY_LENGTH} characters")
        self._keys = [key.encode("utf-8") for key in keys]
        # Each key's HMAC set up once (the key padded and hashed); each token copies it.
        self._macs = [hmac.new(key, digestmod=hashlib.sha256) for key in self._keys]

    @classmethod
    def from_secret(cls, secret: str) -> Signer:
        """Return a signer for ``MAILOUT_SECRET_KEY``: one key, or several separated by commas."""
        return cls(_split(secret))

    def _mac(self, key: int, purpose: Purpose, body: bytes) -> bytes:
        mac = self._macs[key].copy()
        mac.update(purpose.encode() + b"|" + body)
        return mac.digest()[:_MAC_BYTES]

    def keyed(self, purpose: Purpose, prefix: bytes = b"") -> list[hmac.HMAC]:
        """Return each key's HMAC already fed ``purpose`` and ``prefix``, the signing key first.

        For codes made by the thousand (a return address per message): set up once, then
        ``copy()`` one and ``update`` it with the rest. The same MAC as ``_mac`` would give
        for ``prefix + rest``.
        """
        fed = []
        for mac in self._macs:
            mac = mac.copy()
            mac.update(purpose.encode() + b"|" + prefix)
            fed.append(mac)
        return fed

    def address_hashes(self, address: str) -> list[str]:
        """Return the keyed hash (hex) of an address under each key, the signing key's first.

        The address is taken lower-cased (as ``subscribers.email_key``). An erasure keeps
        the first; a check compares with every one, so a key rotation keeps erased people
        out as long as the old key stays in ``MAILOUT_SECRET_KEY``.
        """
        body = address.strip().lower().encode("utf-8")
        return [
            hmac.new(key, Purpose.ERASED.encode() + b"|" + body, hashlib.sha256).hexdigest()
            for key in self._keys
        ]

    def sign(self, purpose: Purpose, subscriber_id: int, list_id: int) -> str:
        """Return the token for ``purpose`` on this subscriber and list.

        The two numbers are whatever ``purpose`` says they are (for ``CONFIRM`` a
        sign-up's id and nonce, for ``FORM`` a time and a nonce); each below 10**18.
        """
        body = f"{subscriber_id}.{list_id}".encode()
        return f"{_b64(body)}.{_b64(self._mac(0, purpose, body))}"

    def verify(self, purpose: Purpose, token: str) -> Claim | None:
        """Return what ``token`` claims if a key signed it for ``purpose``; None for any other token."""
        encoded_body, dot, encoded_mac = token.partition(".")
        if not dot or len(token) > 200:
            return None
        try:
            body, mac = _unb64(encoded_body), _unb64(encoded_mac)
        except ValueError:
            return None
        # Check every key, always, in constant time: no timing tells which key or how close.
        valid = False
        for key in range(len(self._macs)):
            valid |= hmac.compare_digest(self._mac(key, purpose, body), mac)
        match = re.fullmatch(rb"(\d{1,18})\.(\d{1,18})", body)
        if not valid or match is None:
            return None
        return Claim(purpose, int(match.group(1)), int(match.group(2)))


def _split(secret: str) -> list[str]:
    """Return the keys of ``MAILOUT_SECRET_KEY``: one, or several separated by commas."""
    return [key for key in re.split(r"[,\s]+", secret) if key]


def check_real_key(secret: str) -> list[str]:
    """Refuse a publicly known key for mail to real people; return a warning for each short key.

    The local outbox may use any key: nothing leaves the machine.
    """
    warnings = []
    keys = _split(secret)
    for n, key in enumerate(keys, start=1):
        which = f"MAILOUT_SECRET_KEY (key {n})" if len(keys) > 1 else "MAILOUT_SECRET_KEY"
        if key in PUBLIC_KEYS:
            raise ConfigError(
                f"{which} is a key published in mailout's own files (the demo's): anyone could sign"
                " unsubscribe links with it, so it may sign only messages to the local outbox;"
                f" set a key of your own for smtp.host (e.g. the output of {_NEW_KEY})"
            )
        if len(key) < GOOD_KEY_LENGTH:
            warnings.append(
                f"{which} has {len(key)} characters: a key of {GOOD_KEY_LENGTH} or more is much harder"
                f" to guess (e.g. the output of {_NEW_KEY})"
            )
    return warnings


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
