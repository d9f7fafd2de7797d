"""The envelope sender (SMTP ``MAIL FROM``) of every message mailout sends.

The envelope sender is where receiving servers send their bounce reports; the
``From`` header, what a reader sees, stays ``sender.address``. Every path that
sends asks ``envelope_sender`` (or ``for_dispatch``, its form for the send
loop) and nothing else: ``mailout test``, a dispatch's send loop (``mailer``)
and so ``mailout worker``; the local outbox writes the same address as the
``Return-Path`` line of its ``.eml`` files.

Without ``sender.return_path`` it is the message's ``From`` address: the
dispatch's own, frozen with it, so that a run resumed after ``sender.address``
changed keeps ``MAIL FROM`` and ``From`` in one domain (SPF alignment). With
it, a test message uses the return path as it is, and each message of a
dispatch gets an address of its own that names its delivery (VERP, unless
``bounces.verp = false``)::

    bounces+12.3456.k3vq7d2mxa@mail.example.org
    ------- | -- ---- ----------
    local   |  | |    a MAC of "12.3456": 10 base32 letters, 50 bits
    part    |  | delivery id
       separator dispatch id
            (bounces.verp_separator)

The MAC is an HMAC under ``MAILOUT_SECRET_KEY`` (``tokens.Signer``, with the
purpose ``return-path``, so it can never stand for an unsubscribe token), cut
to 50 bits: a forged, mistyped or truncated address matches nothing
(``parse_verp``), and guessing one takes about 2**49 reports. Every configured
key verifies, so that rotating the key does not orphan the bounces of messages
already sent.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable

from .config import Settings
from .errors import ConfigError
from .tokens import Purpose, Signer

#: Letters of the MAC in an address: 10 base32 letters carry 50 bits.
MAC_CHARS = 10
#: The most digits of a dispatch id and of a delivery id that config time makes room for
#: (a trillion deliveries); a longer id is refused when its address is made.
ID_DIGITS = 12
#: What VERP adds to the return path's local part, at most: separator, two ids, two dots, MAC.
VERP_ROOM = 1 + ID_DIGITS + 1 + ID_DIGITS + 1 + MAC_CHARS
#: RFC 5321 4.5.3.1.1: the longest local part.
LOCAL_PART_MAX = 64

_SHAPE = re.compile(r"[0-9]+\.[0-9]+\.[0-9a-z]+")
_CODE = re.compile(
    rf"([1-9][0-9]{{0,{ID_DIGITS - 1}}})\.([1-9][0-9]{{0,{ID_DIGITS - 1}}})\.([a-z2-7]{{{MAC_CHARS}}})"
)


#: Every pair of lower-case base32 letters (RFC 4648 alphabet), by the 10 bits they stand for.
_PAIRS = [a + b for a in "abcdefghijklmnopqrstuvwxyz234567" for b in "abcdefghijklmnopqrstuvwxyz234567"]


def _letters(digest: bytes) -> str:
    """Return the first 50 bits of ``digest`` as 10 lower-case base32 letters.

    The same letters as ``base64.b32encode(digest)[:10].lower()``, in a fifth of its time:
    this runs once per message.
    """
    n = int.from_bytes(digest[:7]) >> 6
    return (
        _PAIRS[n >> 40]
        + _PAIRS[(n >> 30) & 1023]
        + _PAIRS[(n >> 20) & 1023]
        + _PAIRS[(n >> 10) & 1023]
        + _PAIRS[n & 1023]
    )


def uses_verp(settings: Settings) -> bool:
    """Return whether each message of a dispatch gets a return address of its own (VERP)."""
    return bool(settings.sender.return_path) and settings.bounces.verp


def for_dispatch(
    settings: Settings, dispatch_id: int, *, from_address: str | None = None, signer: Signer | None = None
) -> Callable[[int], str]:
    """Return the ``MAIL FROM`` address of each delivery of a dispatch, by delivery id.

    The work that is the same for every message is done here, once: per message, one
    copy of a keyed HMAC, a digest and a string. Raises ``ConfigError`` when VERP is
    on and there is no ``signer`` (no secret key).
    """
    return_path = settings.sender.return_path
    if not uses_verp(settings):
        plain = return_path or from_address or settings.sender.address
        return lambda delivery_id: plain
    if signer is None:
        raise ConfigError("no secret key (MAILOUT_SECRET_KEY): the return addresses (VERP) cannot be signed")
    local, _, domain = return_path.rpartition("@")
    head = f"{local}{settings.bounces.verp_separator}{dispatch_id}."
    tail = f"@{domain}"
    # The signing key's HMAC, already fed the purpose and "DISPATCH.": each message copies it.
    keyed = signer.keyed(Purpose.RETURN_PATH, f"{dispatch_id}.".encode())[0]
    room = min(ID_DIGITS, LOCAL_PART_MAX - len(head) - 1 - MAC_CHARS)
    if len(str(dispatch_id)) > ID_DIGITS:
        raise ConfigError(f"dispatch {dispatch_id}: the id is too long for a return address (VERP)")

    def address(delivery_id: int) -> str:
        digits = str(delivery_id)
        if len(digits) > room:
            raise ConfigError(f"delivery {delivery_id}: the id is too long for a return address (VERP)")
        mac = keyed.copy()
        mac.update(digits.encode())
        return f"{head}{digits}.{_letters(mac.digest())}{tail}"

    return address


def envelope_sender(
    settings: Settings,
    dispatch_id: int | None = None,
    delivery_id: int | None = None,
    *,
    from_address: str | None = None,
    signer: Signer | None = None,
) -> str:
    """Return the ``MAIL FROM`` address of a message (of a test when ``dispatch_id`` is None).

    ``from_address`` is the message's ``From`` (a dispatch's, as frozen with it); without
    it, ``sender.address``. Without ``delivery_id``: what the dispatch's messages share,
    as recorded with the dispatch and shown by ``mailout status``; with VERP, the pattern
    of their addresses (``bounces+12.<delivery>.<mac>@mail.example.org``). With VERP and a
    delivery, ``signer`` makes the MAC.
    """
    if dispatch_id is None or not uses_verp(settings):
        return settings.sender.return_path or from_address or settings.sender.address
    if delivery_id is None:
        local, _, domain = settings.sender.return_path.rpartition("@")
        return f"{local}{settings.bounces.verp_separator}{dispatch_id}.<delivery>.<mac>@{domain}"
    return for_dispatch(settings, dispatch_id, from_address=from_address, signer=signer)(delivery_id)


def looks_like_verp(settings: Settings, address: str) -> bool:
    """Return whether ``address`` has the form of a return address (VERP), signed rightly or not.

    The return path's local part and the separator, then anything, at the return
    path's domain, in any case. A report sent to such an address that `parse_verp`
    refuses names a delivery falsely: forged, or mistyped on the way.
    """
    if not uses_verp(settings):
        return False
    local, _, domain = settings.sender.return_path.rpartition("@")
    given_local, at, given_domain = address.lower().rpartition("@")
    head = f"{local}{settings.bounces.verp_separator}".lower()
    return (
        bool(at)
        and given_domain == domain.lower()
        and given_local.startswith(head)
        # DISPATCH.DELIVERY.CODE, however mangled the code: ``bounces+fbl@`` is another address.
        and _SHAPE.fullmatch(given_local, len(head)) is not None
    )


def parse_verp(settings: Settings, signer: Signer, address: str) -> tuple[int, int] | None:
    """Return the (dispatch id, delivery id) a return address names; None for any other address.

    ``address`` is a bare address, as a report names it. The local part is read in any
    case (some servers lower-case it, a few upper-case it); the return path's local part,
    the separator and the domain must be today's settings. The MAC must come from one of
    the keys of ``MAILOUT_SECRET_KEY``, compared in constant time with each of them. A
    forged, mistyped or truncated address, or one signed by a key no longer configured,
    gives None; so does every address when VERP is off.
    """
    if not uses_verp(settings) or len(address) > 254:
        return None
    local, _, domain = settings.sender.return_path.rpartition("@")
    head = f"{local}{settings.bounces.verp_separator}".lower()
    given_local, at, given_domain = address.lower().rpartition("@")
    if not at or given_domain != domain.lower() or not given_local.startswith(head):
        return None
    match = _CODE.fullmatch(given_local, len(head))
    if match is None:
        return None
    dispatch, delivery, mac = match.groups()
    # Every key, always: no timing tells which key matched, or how close a guess came.
    valid = False
    for keyed in signer.keyed(Purpose.RETURN_PATH, f"{dispatch}.{delivery}".encode()):
        valid |= hmac.compare_digest(_letters(keyed.digest()), mac)
    return (int(dispatch), int(delivery)) if valid else None
