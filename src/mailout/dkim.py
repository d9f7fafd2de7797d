"""Sign messages with DKIM (RFC 6376): relaxed/relaxed, RSA-SHA256, and Ed25519-SHA256 (RFC 8463) on request.

A ``DkimSigner`` is made once per dispatch from the ``[dkim]`` settings
(``load_signer``). It returns the ``DKIM-Signature`` header lines to put in
front of a message: ``sign`` takes any message; ``sign_parts`` takes the
header block and a body hash, which ``BodyTemplate`` computes fast for
messages that share most of their body.

What is signed, and why:

- ``h=`` names From, Reply-To, To, Subject, Date, Message-ID, MIME-Version,
  Content-Type, List-Id, List-Unsubscribe, List-Unsubscribe-Post and
  Feedback-ID (Gmail counts complaints by it only under the sender's signature), each
  once more than the message has it ("over-signing"): a verifier then hashes
  an empty header for the extra name, so a header of these names added on
  the way (a second From, a List-Unsubscribe pointing elsewhere) breaks the
  signature. A name the message lacks (Reply-To) is listed once, so none can
  be added either.
- ``t=`` is the signing time; ``x=`` (expiry) only when configured. No
  ``l=``: a body length limit would let anyone append content.

The body hash is computed on the relaxed form (RFC 6376, 3.4.4): white space
at the end of each line removed, other runs of spaces and tabs made one space,
empty lines at the end removed, and a CRLF added after a last line without
one. Every step looks at one line at a time except the last, so a body made of
whole lines can be hashed piece by piece, and the hash of the pieces all
recipients share before the first personal value taken once and copied
(``hashlib`` objects can be copied).

Signing uses OpenSSL through ``cryptography``: about 1 ms for RSA-2048 on a
current machine, against 10 ms for a pure-Python implementation.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Settings

CRLF = b"\r\n"
#: The headers every signature covers, in the order they are listed in ``h=``.
SIGNED_HEADERS = (
    "from",
    "reply-to",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
)
#: Below this an RSA key is refused: RFC 8301 forbids verifiers to accept it.
RSA_MIN_BITS = 1024
#: Below this an RSA key draws a warning: RFC 8301 asks signers for 2048 bits at least.
RSA_GOOD_BITS = 2048
#: The longest line of the DKIM-Signature header (RFC 5322's recommended limit).
LINE = 78

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

_TAB_TO_SPACE = bytes.maketrans(b"\t", b" ")
_SPACES = re.compile(rb"  +")
_WSP = re.compile(rb"[ \t]+")
# A header field ends at a CRLF not followed by white space (which would fold it).
_FIELD_END = re.compile(rb"\r\n(?![ \t])")
_SELECTOR = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_DOMAIN = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE
)


def relaxed_lines(data: bytes) -> bytes:
    """Return whole lines in relaxed form: no white space at line ends, other runs one space."""
    # A tab ends up as a space either way (in a run made one space, or dropped at a line's
    # end), so tabs become spaces first; then runs of two spaces or more are made one, and
    # a line's last space, the only white space left there, is dropped.
    if b"\t" in data:
        data = data.translate(_TAB_TO_SPACE)
    if b"  " in data:
        data = _SPACES.sub(b" ", data)
    return data.replace(b" \r\n", CRLF)


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """Return one header field in relaxed form, without its CRLF: ``name:value``, unfolded."""
    value = value.replace(CRLF, b"")
    if b"\t" in value or b"  " in value:
        value = _WSP.sub(b" ", value)
    return name.strip().lower() + b":" + value.strip(b" \t")


class BodyHash:
    """The SHA-256 of a body in relaxed form, fed in pieces of any size."""

    __slots__ = ("_empty_lines", "_partial", "_sha")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._partial = b""  # the start of a line whose end has not come yet
        self._empty_lines = 0  # empty lines held back: dropped if nothing but empty lines follows

    def copy(self) -> BodyHash:
        """Return an independent copy, to continue from the same state."""
        other = BodyHash.__new__(BodyHash)
        other._sha = self._sha.copy()
        other._partial = self._partial
        other._empty_lines = self._empty_lines
        return other

    def update(self, data: bytes) -> None:
        """Add raw body bytes."""
        data = self._partial + data
        end = data.rfind(CRLF)
        if end < 0:
            self._partial = data
            return
        self._partial = data[end + 2 :]
        self._feed(relaxed_lines(data[: end + 2]))

    def update_canonical(self, lines: bytes) -> None:
        """Add whole lines already in relaxed form (from ``relaxed_lines``), at the start of a line."""
        if self._partial:
            raise ValueError("update_canonical in the middle of a line")
        self._feed(lines)

    def _feed(self, lines: bytes) -> None:
        end = len(lines)
        while end >= 2 and lines[end - 2] == 13 and lines[end - 1] == 10:
            end -= 2  # the CRLFs at the end: the last line's own, then empty lines
        if end == 0:
            self._empty_lines += len(lines) // 2
            return
        if self._empty_lines:
            self._sha.update(CRLF * self._empty_lines)
        self._sha.update(lines[: end + 2] if end + 2 < len(lines) else lines)
        self._empty_lines = (len(lines) - end - 2) // 2

    def digest(self) -> bytes:
        """Return the hash of everything added, as if it were the whole body."""
        sha = self._sha.copy()
        last = _WSP.sub(b" ", self._partial).rstrip(b" ")
        if last:
            sha.update(CRLF * self._empty_lines + last + CRLF)
        return sha.digest()


def body_hash(body: bytes) -> bytes:
    """Return the SHA-256 of ``body`` in relaxed form."""
    hasher = BodyHash()
    hasher.update(body)
    return hasher.digest()


class BodyTemplate:
    """Bodies made of fixed pieces around per-message values, canonicalized and partly hashed once.

    ``pieces`` has one item more than the values each message brings. When every
    piece but the last ends a line (or is empty) and every value does too, the
    fixed pieces are hashed in their relaxed form computed here, and the hash of
    the first piece is copied rather than recomputed; otherwise every message is
    hashed in full, with the same result.
    """

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self.pieces = list(pieces)
        self.aligned = all(not p or p.endswith(CRLF) for p in self.pieces[:-1])
        if not self.aligned:
            return
        self._start = BodyHash()
        if len(self.pieces) == 1:
            self._start.update(self.pieces[0])  # a body without values: hashed once, whole
            return
        self._start.update_canonical(relaxed_lines(self.pieces[0]))
        self._middle = [relaxed_lines(p) for p in self.pieces[1:-1]]
        last = self.pieces[-1]
        cut = last.rfind(CRLF) + 2  # 0 when the last piece has no line end
        self._last_lines, self._last_rest = relaxed_lines(last[:cut]), last[cut:]

    def digest(self, values: Sequence[bytes]) -> bytes:
        """Return the body hash of the message with ``values`` between the pieces."""
        if len(values) != len(self.pieces) - 1:
            raise ValueError(f"{len(values)} values for {len(self.pieces)} pieces")
        if not (self.aligned and all(not v or v.endswith(CRLF) for v in values)):
            hasher = BodyHash()
            for piece, value in zip(self.pieces, values, strict=False):
                hasher.update(piece)
                hasher.update(value)
            hasher.update(self.pieces[-1])
            return hasher.digest()
        if not values:
            return self._start.digest()
        hasher = self._start.copy()
        for value, piece in zip(values, self._middle, strict=False):
            hasher.update_canonical(relaxed_lines(value))
            hasher.update_canonical(piece)
        hasher.update_canonical(relaxed_lines(values[-1]))
        hasher.update_canonical(self._last_lines)
        hasher.update(self._last_rest)
        return hasher.digest()


@dataclass(frozen=True)
class DkimKey:
    """One signing identity: a private key, published as ``SELECTOR._domainkey.DOMAIN``."""

    domain: str
    selector: str
    key: PrivateKey = field(repr=False)

    @property
    def algorithm(self) -> str:
        return "ed25519-sha256" if isinstance(self.key, ed25519.Ed25519PrivateKey) else "rsa-sha256"

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def record(self) -> str:
        """Return the TXT record that publishes the public key (RFC 6376, 3.6.1)."""
        public = self.key.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            # RFC 8463: the raw 32-byte key, not the SubjectPublicKeyInfo structure.
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"

    def zone_line(self) -> str:
        """Return the record as a zone file line, its text cut in strings of 255 characters (RFC 1035)."""
        text = self.record()
        strings = " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))
        return f"{self.record_name}. IN TXT {strings}"

    def sign(self, data: bytes) -> bytes:
        """Return the signature of ``data`` (the canonical headers) for this key's algorithm."""
        digest = hashlib.sha256(data).digest()
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(digest)  # RFC 8463, 3: PureEdDSA over the SHA-256 hash
        return self.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


class DkimSigner:
    """Make the DKIM-Signature header lines of messages, one per key."""

    def __init__(
        self,
        keys: Sequence[DkimKey],
        *,
        expire_after: int = 0,
        clock: Callable[[], float] = time.time,
        headers: Sequence[str] = SIGNED_HEADERS,
    ) -> None:
        if not keys:
            raise ValueError("a DkimSigner needs at least one key")
        self.keys = tuple(keys)
        self.expire_after = expire_after
        self.clock = clock
        self.headers = tuple(h.lower() for h in headers)

    @property
    def identity(self) -> str:
        """Say who signs: ``d=DOMAIN s=SELECTOR (ALGORITHM)`` for each key, comma-separated."""
        return ", ".join(f"d={k.domain} s={k.selector} ({k.algorithm})" for k in self.keys)

    def sign(self, message: bytes) -> bytes:
        """Return the DKIM-Signature header lines for a whole message (CRLF line ends)."""
        if message.startswith(CRLF):
            headers, body = b"", message[2:]
        else:
            end = message.find(b"\r\n\r\n")
            headers, body = (message, b"") if end < 0 else (message[: end + 2], message[end + 4 :])
        return self.sign_parts(headers, body_hash(body))

    def sign_parts(self, headers: bytes, body_digest: bytes) -> bytes:
        """Return the DKIM-Signature header lines for a header block and its body's ``body_hash``."""
        found: dict[bytes, list[bytes]] = {}
        for fld in _FIELD_END.split(headers):
            name, colon, value = fld.partition(b":")
            if colon:
                found.setdefault(name.strip().lower(), []).append(value)
        names: list[str] = []
        canonical: list[bytes] = []
        for name in self.headers:
            instances = found.get(name.encode("ascii"), [])
            names.extend([name] * (len(instances) + 1))
            # Several instances: the last one in the message is signed first (RFC 6376, 5.4.2).
            canonical.extend(relaxed_header(name.encode("ascii"), v) + CRLF for v in reversed(instances))
        signed = b"".join(canonical)
        now = int(self.clock())
        tags = [f"t={now};"]
        if self.expire_after:
            tags.append(f"x={now + self.expire_after};")
        bh = base64.b64encode(body_digest).decode("ascii")
        out = []
        for key in self.keys:
            head = _fold(
                [
                    "DKIM-Signature:",
                    "v=1;",
                    f"a={key.algorithm};",
                    "c=relaxed/relaxed;",
                    f"d={key.domain};",
                    f"s={key.selector};",
                    *tags,
                    *_h_words(names),
                    f"bh={bh};",
                    "b=",
                ]
            )
            name, _, value = head.partition(":")
            hashed = signed + relaxed_header(name.encode("ascii"), value.encode("ascii"))
            b = base64.b64encode(key.sign(hashed)).decode("ascii")
            out.append((head + _fold_value(head, b) + "\r\n").encode("ascii"))
        return b"".join(out)


def _h_words(names: list[str]) -> list[str]:
    """Return ``h=a:b:c;`` as words, each but the first starting with the colon it is glued by."""
    return ["h=" + names[0], *(":" + n for n in names[1:-1]), ":" + names[-1] + ";"]


def _fold(words: list[str]) -> str:
    """Join words by a space (by nothing before a colon), or by a fold where a line would pass 78."""
    lines = [words[0]]
    for word in words[1:]:
        glue = "" if word.startswith(":") else " "
        if len(lines[-1]) + len(glue) + len(word) <= LINE:
            lines[-1] += glue + word
        else:
            lines.append(" " + word)
    return "\r\n".join(lines)


def _fold_value(head: str, value: str) -> str:
    """Return ``value`` to follow ``head``, folded inside (base64 may hold folding white space)."""
    room = LINE - (len(head) - head.rfind("\n") - 1)
    parts = [value[:room]]
    for start in range(room, len(value), LINE - 1):
        parts.append(" " + value[start : start + LINE - 1])
    return "\r\n".join(parts)


# --- settings ----------------------------------------------------------------------


def load_signer(settings: Settings, env: Mapping[str, str] | None = None) -> DkimSigner | None:
    """Return the signer ``[dkim]`` asks for, or None when it is not configured; raise ``ConfigError``."""
    env = os.environ if env is None else env
    dkim = settings.dkim
    if not dkim.domain:
        return None
    keys = [DkimKey(dkim.domain.lower(), dkim.selector, _load_key(settings, env, "", rsa.RSAPrivateKey))]
    if dkim.ed25519_selector:
        key = _load_key(settings, env, "ed25519_", ed25519.Ed25519PrivateKey)
        keys.append(DkimKey(dkim.domain.lower(), dkim.ed25519_selector, key))
    return DkimSigner(keys, expire_after=dkim.expire_after)


def _key_path(settings: Settings, key_file: str) -> Path:
    """Return ``dkim.*key_file`` resolved: ``~`` expanded, a relative path under the workspace."""
    path = Path(key_file).expanduser()
    return path if path.is_absolute() else settings.root / path


def _load_key(settings: Settings, env: Mapping[str, str], prefix: str, kind: type) -> PrivateKey:
    dkim = settings.dkim
    key_file: str = getattr(dkim, f"{prefix}key_file")
    key_env: str = getattr(dkim, f"{prefix}key_env")
    if key_file:
        where = settings.where(f"dkim.{prefix}key_file")
        path = _key_path(settings, key_file)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot read the key file {key_file}: {exc.strerror or exc}"
            ) from None
        source = f"the key file {key_file}"
    else:
        where = settings.where(f"dkim.{prefix}key_env")
        if not env.get(key_env):
            raise ConfigError(
                f"{where}: the environment variable {key_env} is not set (it holds the PEM key)"
            )
        data = env[key_env].encode("utf-8", "replace")
        if b"\\n" in data and b"\n" not in data.strip():
            # A PEM squeezed onto one line with its line ends written as \n, as .env files
            # and CI secret stores often hold it: the same key.
            data = data.replace(b"\\r\\n", b"\n").replace(b"\\n", b"\n")
        source = f"the environment variable {key_env}"
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"{where}: {source} holds an encrypted key; mailout needs it unencrypted"
            " (openssl pkey -in KEY -out PLAIN), kept readable only by the sending user"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{where}: {source} is not a PEM private key (-----BEGIN PRIVATE KEY-----);"
            " make one with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`"
        ) from None
    if not isinstance(key, kind):
        wanted = "an RSA" if kind is rsa.RSAPrivateKey else "an Ed25519"
        raise ConfigError(f"{where}: {source} is not {wanted} private key")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < RSA_MIN_BITS:
        raise ConfigError(
            f"{where}: {source} is an RSA key of {key.key_size} bits; receivers ignore signatures"
            f" with keys under {RSA_MIN_BITS} bits (RFC 8301): make one of {RSA_GOOD_BITS}"
        )
    assert isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey))
    return key


def check(settings: Settings, signer: DkimSigner | None) -> list[str]:
    """Return warnings about a configured signature: a short key, a domain DMARC will not align."""
    if signer is None:
        return []
    warnings = []
    for key in signer.keys:
        if isinstance(key.key, rsa.RSAPrivateKey) and key.key.key_size < RSA_GOOD_BITS:
            warnings.append(
                f"dkim: the RSA key of selector {key.selector} has {key.key.key_size} bits;"
                f" RFC 8301 asks for {RSA_GOOD_BITS}, and some receivers treat a shorter one as no signature"
            )
    for prefix in ("", "ed25519_"):
        key_file = getattr(settings.dkim, f"{prefix}key_file")
        with contextlib.suppress(OSError):
            if key_file and _key_path(settings, key_file).stat().st_mode & 0o077:
                warnings.append(
                    f"dkim.{prefix}key_file {key_file} can be read by other users than its owner:"
                    f" chmod 600 {key_file}"
                )
    if 0 < settings.dkim.expire_after < 86_400:
        warnings.append(
            f"dkim.expire_after is {settings.dkim.expire_after} s: a message held in a relay's queue"
            " longer than that fails its check on arrival; a few days is usual"
        )
    domain = settings.dkim.domain.lower()
    sender = settings.sender.address.rpartition("@")[2].lower()
    if not aligned(domain, sender):
        warnings.append(
            f"dkim.domain {domain} is not sender.address's domain {sender} nor a parent or subdomain"
            " of it: the signature verifies but does not count for DMARC, which needs them aligned"
        )
    return warnings


def aligned(signing: str, author: str) -> bool:
    """Tell whether DMARC's relaxed alignment can hold: the same domain, or one under the other.

    Relaxed alignment compares organizational domains, which needs the public
    suffix list; one domain being a subdomain of the other is the case that
    matters in practice (``d=example.org`` for ``news.example.org``).
    """
    return signing == author or author.endswith("." + signing) or signing.endswith("." + author)


def valid_selector(selector: str) -> bool:
    """Tell whether ``selector`` may stand before ``._domainkey``: DNS labels separated by dots."""
    return bool(_SELECTOR.fullmatch(selector))


def valid_domain(domain: str) -> bool:
    """Tell whether ``domain`` is an ASCII domain name of two labels at least."""
    return bool(_DOMAIN.fullmatch(domain))
