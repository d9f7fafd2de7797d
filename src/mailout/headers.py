"""Write header lines: one-line values, RFC 2047 encoded words, folding within RFC 5322's limits.

Every header ``message.py`` writes from a name, a subject or a description
comes from here. The rules it keeps:

- A value loses its control characters first (``one_line``), so no header
  can be injected through a name or a subject.
- Plain ASCII stays readable: atoms as they are, other names as a quoted
  string, folded at spaces (CRLF and a space) so that lines keep within 78
  characters.
- Anything else (non-ASCII text, a word too long for a line, text that looks
  like an encoded word such as ``=?utf-8?q?...?=``) becomes RFC 2047 encoded
  words: UTF-8, quoted-printable ("Q") or base64 ("B"), whichever is shorter,
  each at most 75 characters on a line of at most 76, each holding whole
  characters (a UTF-8 sequence is never split between two words).
- Only what cannot be folded passes 78 characters: an address is never cut,
  and one of up to 254 characters (RFC 5321's limit) keeps its line far
  below RFC 5322's 998.
"""

from __future__ import annotations

import base64
import re

#: The longest header line RFC 5322 recommends (it forbids more than 998).
LINE = 78
#: The longest encoded word (RFC 2047, section 2), and the longest line holding one.
WORD = 75
WORD_LINE = 76

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
# RFC 5322 atext: a display name made only of these (and single spaces) needs no quotes.
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# How each byte appears in a "Q" encoded word. In a display name RFC 2047 (section 5)
# allows only letters, digits and !*+-/ as themselves; everything else is =XX and a space
# is "_". The same set is valid in a subject, so both use it.
_Q = [
    chr(b) if (chr(b).isascii() and chr(b).isalnum()) or chr(b) in "!*+-/" else f"={b:02X}"
    for b in range(256)
]
_Q[ord(" ")] = "_"
_Q_ITSELF = bytes(b for b in range(256) if len(_Q[b]) == 1)
_Q_START, _B_START, _END = "=?utf-8?q?", "=?utf-8?b?", "?="
_OVERHEAD = len(_Q_START) + len(_END)


def one_line(value: str) -> str:
    """Return ``value`` with every control character (CR, LF, NUL, ESC...) a space, and runs of spaces one."""
    return " ".join(_CONTROL.sub(" ", value).split())


def unstructured_header(name: str, value: str) -> bytes:
    """Return the header line ``name: value`` for free text such as a subject, encoded and folded."""
    text = one_line(value)
    if text.isascii() and "=?" not in text:
        words = text.split(" ")
        if _fits(name, words):
            return _fold(name, words, LINE)
    return _fold(name, encoded_words(text, WORD_LINE - len(name) - 2), WORD_LINE)


def address_header(name: str, display_name: str, addr_spec: str) -> bytes:
    """Return the header line ``name: display name <addr_spec>``, encoded and folded."""
    display = one_line(display_name)
    if not display:
        return f"{name}: {addr_spec}\r\n".encode()
    if display.isascii() and "=?" not in display:
        # The common case on the send path: a short ASCII name, as atoms or a quoted string.
        if _ATOMS.fullmatch(display):
            phrase = display
        else:
            phrase = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(name) + len(phrase) + len(addr_spec) + 5 <= LINE:
            return f"{name}: {phrase} <{addr_spec}>\r\n".encode()
        words = phrase.split(" ")
        if _fits(name, words):
            return _fold(name, [*words, f"<{addr_spec}>"], LINE)
    return _fold(name, [*encoded_words(display, WORD_LINE - len(name) - 2), f"<{addr_spec}>"], WORD_LINE)


def encoded_words(text: str, first: int = WORD) -> list[str]:
    """Return ``text`` as UTF-8 encoded words, the first at most ``first`` characters long, the others 75.

    Decoded and joined, the words give ``text`` back: RFC 2047 decoders drop
    the white space between adjacent encoded words.
    """
    data = text.encode("utf-8")
    escaped = len(data.translate(None, _Q_ITSELF))  # bytes that Q writes as =XX
    if len(data) + 2 * escaped <= 4 * -(-len(data) // 3):  # the shorter of Q and B, as RFC 2047 advises
        return _q_words(data, first)
    return _b_words(data, first)


def _q_words(data: bytes, first: int) -> list[str]:
    tokens = [_Q[b] for b in data]
    words: list[str] = []
    current: list[str] = []
    width, room = 0, max(first, 24) - _OVERHEAD
    start = 0
    while start < len(data):
        end = start + 1
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a UTF-8 continuation byte
            end += 1
        character = "".join(tokens[start:end])
        if current and width + len(character) > room:
            words.append(_Q_START + "".join(current) + _END)
            current, width, room = [], 0, WORD - _OVERHEAD
        current.append(character)
        width += len(character)
        start = end
    words.append(_Q_START + "".join(current) + _END)
    return words


def _b_words(data: bytes, first: int) -> list[str]:
    words: list[str] = []
    size = (max(first, 24) - _OVERHEAD) // 4 * 3  # bytes that fit: 4 base64 characters per 3
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # never end inside a character
            end -= 1
        words.append(_B_START + base64.b64encode(data[start:end]).decode("ascii") + _END)
        start, size = end, (WORD - _OVERHEAD) // 4 * 3
    return words


def _fits(name: str, words: list[str]) -> bool:
    """Say whether folding ``words`` at their spaces keeps every line within 78 characters."""
    return len(name) + 2 + len(words[0]) <= LINE and all(len(w) < LINE for w in words[1:])


def _fold(name: str, words: list[str], limit: int) -> bytes:
    """Return the header line, ``words`` joined by a space or, where a line would pass ``limit``, a fold."""
    lines = [f"{name}: {words[0]}"]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) <= limit:
            lines[-1] += " " + word
        else:
            lines.append(" " + word)
    return ("\r\n".join(lines) + "\r\n").encode()
