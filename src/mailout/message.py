"""Build each recipient's message from a frozen variant, by substitution, not by rendering.

A ``MessageTemplate`` encodes a variant once: the headers every recipient
shares, and the text and HTML parts quoted-printable encoded piece by piece
around the per-recipient placeholders. Building a message then only encodes
the recipient's few values and joins bytes. Each value starts on a line of its
own after a soft line break (``=`` at the end of a line), which every decoder
removes, so the decoded parts are exactly ``Variant.personalize``'s.

What comes out meets RFC 5322 and RFC 2045: CRLF line ends, no line over 76
characters in the body or 998 anywhere, ``multipart/alternative`` with the
text part first, and a ``Content-Language`` header (RFC 3282) when the
variant's language is known. No line of the body starts with a dot (it is encoded as
``=2E``), so SMTP needs no dot stuffing. The header lines made of names and
subjects come from ``headers``: without control characters (no header can be
injected through them), in RFC 2047 encoded words where not plain ASCII, and
folded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import secrets
from dataclasses import dataclass
from email.utils import format_datetime

from .dkim import BodyTemplate, DkimSigner
from .headers import address_header, one_line, unstructured_header
from .languages import canonical
from .render import Recipient, Slots, Variant

CRLF = b"\r\n"
MAX_LINE = 76
# How each byte appears in quoted-printable: printable ASCII as itself, all else as =XX.
_QP = [bytes([b]) if 33 <= b <= 126 and b != ord("=") else b"=%02X" % b for b in range(256)]
_QP[ord(" ")] = b" "
# Printable ASCII without "=", not starting with a dot: quoted-printable leaves it as it is.
_PLAIN = re.compile(r"[\x21-\x2d\x2f-\x3c\x3e-\x7e][\x20-\x3c\x3e-\x7e]*")
_QP[ord("\t")] = b"\t"
# Printable ASCII (spaces, but no tab or line break): a link, most names.
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


def qp_encode(text: str, *, soft_end: bool) -> bytes:
    """Encode ``text`` as quoted-printable lines ending in CRLF.

    With ``soft_end`` the last line ends in a soft line break, so that what
    follows continues the same decoded line.
    """
    if soft_end and len(text) < MAX_LINE - 1 and _PLAIN.fullmatch(text):
        return text.encode("ascii") + b"=" + CRLF  # a short plain value: the common case, fast
    if soft_end and _PRINTABLE.fullmatch(text):
        return _qp_printable(text)  # a link of a message: its "=" and length, on string operations
    return _qp_general(text, soft_end=soft_end)


def _qp_printable(text: str) -> bytes:
    """Encode printable ASCII as ``_qp_general`` does with ``soft_end``, byte for byte, faster.

    Only "=" needs escaping (``=3D``), and a line may not start with a dot (``=2E``);
    lines are cut as late as they can be, never inside an escape.
    """
    encoded = text.replace("=", "=3D")
    if encoded.startswith("."):
        encoded = "=2E" + encoded[1:]
    lines = []
    width = MAX_LINE - 1
    while len(encoded) > width:
        cut = width
        if encoded[cut - 1] == "=":  # an escape's first character: it moves to the next line whole
            cut -= 1
        elif encoded[cut - 2] == "=":
            cut -= 2
        lines.append(encoded[:cut])
        encoded = encoded[cut:]
        if encoded.startswith("."):
            encoded = "=2E" + encoded[1:]
    lines.append(encoded)
    return "=\r\n".join(lines).encode("ascii") + b"=" + CRLF


def _qp_general(text: str, *, soft_end: bool) -> bytes:
    """Encode any text, line by line and byte by byte (``qp_encode``)."""
    lines = text.replace("\r\n", "\n").split("\n")
    out: list[bytes] = []
    for number, line in enumerate(lines):
        tokens = [_QP[b] for b in line.encode("utf-8")]
        if tokens and tokens[0] == b".":
            tokens[0] = b"=2E"  # a lone "." line would end the SMTP data; no dot stuffing needed
        last = number == len(lines) - 1
        if tokens and tokens[-1] in (b" ", b"\t") and not (last and soft_end):
            tokens[-1] = b"=%02X" % tokens[-1][0]  # trailing white space is lost in transit
        current: list[bytes] = []
        width = 0
        for token in tokens:
            if width + len(token) > MAX_LINE - 1:
                out.append(b"".join(current) + b"=" + CRLF)
                current, width = [], 0
                if token == b".":
                    token = b"=2E"  # a continuation line may not start with a dot either
            current.append(token)
            width += len(token)
        if last:
            out.append(b"".join(current) + (b"=" + CRLF if soft_end else b""))
        else:
            out.append(b"".join(current) + CRLF)
    return b"".join(out)


def encode_part(slots: Slots[str]) -> Slots[bytes]:
    """Return a variant's text or HTML encoded once, with holes for the recipient's encoded values."""
    count = len(slots.pieces)
    return Slots(
        [qp_encode(piece, soft_end=n < count - 1) for n, piece in enumerate(slots.pieces)], slots.keys
    )


@dataclass(frozen=True)
class Addressing:
    """Who sends, and how the list is named, for every message of a dispatch."""

    from_name: str
    from_address: str
    reply_to: str = ""
    list_name: str = "newsletter"
    list_description: str = ""

    @property
    def domain(self) -> str:
        return self.from_address.rpartition("@")[2].lower()


class MessageTemplate:
    """One variant of one dispatch, ready to be filled in for each recipient."""

    def __init__(
        self,
        variant: Variant,
        addressing: Addressing,
        *,
        subject: str | None = None,
        dkim: DkimSigner | None = None,
        feedback_id: str = "",
    ) -> None:
        self.variant = variant
        self.addressing = addressing
        self.boundary = f"=_mailout_{secrets.token_hex(12)}"
        shared = [
            address_header("From", addressing.from_name, addressing.from_address),
            unstructured_header("Subject", subject if subject is not None else variant.subject),
            b"MIME-Version: 1.0" + CRLF,
            address_header(
                "List-Id",
                addressing.list_description or addressing.list_name,
                f"{addressing.list_name}.{addressing.domain}",
            ),
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" + CRLF,
            f'Content-Type: multipart/alternative;\r\n boundary="{self.boundary}"'.encode("ascii") + CRLF,
        ]
        language = canonical(variant.language) if variant.language else None
        if language:
            # RFC 3282: the language the reader is addressed in, for the whole message (both
            # parts). Only a canonical tag is written: letters, digits and hyphens.
            shared.append(b"Content-Language: " + language.encode("ascii") + CRLF)
        if feedback_id:
            # Per dispatch, not per recipient: written (and DKIM-hashed) once per variant.
            shared.append(b"Feedback-ID: " + feedback_id.encode("ascii") + CRLF)
        if addressing.reply_to:
            shared.insert(1, address_header("Reply-To", "", addressing.reply_to))
        self.shared_headers = b"".join(shared)
        self.text = encode_part(variant.text_slots)
        self.html = encode_part(variant.html_slots)
        # The fields each part has a placeholder for: only those are encoded per message (a
        # variant frozen before a field existed has none for it).
        self._text_keys = tuple(dict.fromkeys(self.text.keys))
        self._html_keys = tuple(dict.fromkeys(self.html.keys))
        self.text_head = (
            f'--{self.boundary}\r\nContent-Type: text/plain; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        ).encode("ascii")
        self.html_head = (
            f'\r\n--{self.boundary}\r\nContent-Type: text/html; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        ).encode("ascii")
        self.tail = f"\r\n--{self.boundary}--\r\n".encode("ascii")
        self.dkim = dkim
        if dkim is not None:
            # The body's fixed pieces around the recipient's values, for DKIM's body hash.
            pieces, current = [], self.text_head + self.text.pieces[0]
            for piece in self.text.pieces[1:]:
                pieces.append(current)
                current = piece
            current += self.html_head + self.html.pieces[0]
            for piece in self.html.pieces[1:]:
                pieces.append(current)
                current = piece
            pieces.append(current + self.tail)
            self.dkim_body = BodyTemplate(pieces)

    def build(
        self,
        *,
        to_name: str,
        to_address: str,
        message_id: str,
        recipient: Recipient,
        unsubscribe_mailto: str,
        date: dt.datetime | None = None,
    ) -> bytes:
        """Return the complete message for one recipient, CRLF line ends, ready for SMTP DATA."""
        escaped, raw = self.variant.field_values(recipient)
        html_values = {k: qp_encode(escaped[k], soft_end=True) for k in self._html_keys}
        text_values = {k: qp_encode(one_line(raw[k]), soft_end=True) for k in self._text_keys}
        unsubscribe = f"<{one_line(recipient.unsubscribe_url)}>,\r\n <{one_line(unsubscribe_mailto)}>"
        headers = b"".join(
            [
                b"Date: " + format_datetime(date or dt.datetime.now(dt.UTC)).encode("ascii") + CRLF,
                self.shared_headers,
                address_header("To", to_name, to_address),
                f"Message-ID: <{message_id}>".encode("ascii") + CRLF,
                b"List-Unsubscribe: " + unsubscribe.encode("ascii") + CRLF,
            ]
        )
        message = b"".join(
            [
                headers,
                CRLF,
                self.text_head,
                self.text.fill(text_values),
                self.html_head,
                self.html.fill(html_values),
                self.tail,
            ]
        )
        if self.dkim is None:
            return message
        values = [text_values[k] for k in self.text.keys] + [html_values[k] for k in self.html.keys]
        return self.dkim.sign_parts(headers, self.dkim_body.digest(values)) + message


#: What may stand in a Feedback-ID field: no colon (it separates the fields), no space, ASCII.
_NOT_IN_FIELD = re.compile(r"[^A-Za-z0-9._-]+")
#: The longest field: the header cannot be folded, so its length is kept well within 998.
FIELD_MAX = 64


def feedback_id(campaign: str, list_name: str, issue: str, sender_domain: str) -> str:
    """Return the value of the ``Feedback-ID`` header: ``campaign:list:issue:sender``.

    Gmail's feedback loop counts complaints per value of each field, the last one
    naming the sender for good. ``campaign`` is the dispatch's number (``test`` for
    ``mailout test``); ``sender_domain`` is the domain of the From address. Each field
    keeps ASCII letters, digits, ".", "_" and "-"; any other run of characters becomes
    one "-", and a field is cut to 64 characters.
    """
    # An international domain as DNS writes it; one that is no valid name is replaced below.
    with contextlib.suppress(UnicodeError):
        sender_domain = sender_domain.encode("idna").decode("ascii")
    fields = []
    for value in (campaign, list_name, issue, sender_domain):
        field = _NOT_IN_FIELD.sub("-", value).strip("-")[:FIELD_MAX]
        fields.append(field or "-")
    return ":".join(fields)


def message_id(dispatch_key: str, delivery_id: int, domain: str) -> str:
    """Return a Message-ID stable for one delivery of one dispatch, whatever the retry."""
    return f"{dispatch_key}.{delivery_id}@{domain}"
