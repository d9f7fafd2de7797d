"""Text bound for the terminal: what came from a file, a person or a server is shown, never obeyed.

A name imported from a CSV file may hold an escape sequence that clears the
screen, retitles the window or rewrites what was printed before it; a
right-to-left override makes ``moc.elpmaxe@`` read as an address it is not.
Every value of user data goes through ``safe()`` before the command line prints it.
"""

from __future__ import annotations

import re

#: C0 and C1 controls (tab and line breaks too: they would break a one-line, tab-separated
#: output), the line and paragraph separators, the bidirectional overrides, embeddings,
#: isolates and marks, and lone surrogates (which cannot even be encoded for the terminal).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: object) -> str:
    """Return ``value`` as text with every control character written as a visible escape (``\\x1b``)."""
    text = str(value)
    # The usual value has nothing to escape: one search, no new string.
    return text if _UNSAFE.search(text) is None else _UNSAFE.sub(_escape, text)
