"""Quoted-printable encoding of the parts: what the send path relies on to skip dot-stuffing."""

from __future__ import annotations

import quopri
import random

import pytest

from mailout.message import MAX_LINE, qp_encode


def _texts() -> list[str]:
    rng = random.Random(5321)
    alphabet = "ab. \t=é€\n"
    found = [
        "a" * 75 + ".bc" + "x" * 100,  # a dot that a wrap puts at the start of a line
        "." + "a" * 200,
        "a" * (MAX_LINE - 2) + "." + "b" * 300,
        "é" * 40 + "." * 40,
    ]
    for width in range(70, 80):
        found.append("a" * width + "." * 5 + "z" * 90)
    found += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 400))) for _ in range(300)]
    return found


@pytest.mark.parametrize("soft_end", [False, True])
def test_no_encoded_line_starts_with_a_dot_or_passes_the_limit_and_it_decodes_back(soft_end: bool) -> None:
    for text in _texts():
        encoded = qp_encode(text, soft_end=soft_end)
        lines = encoded.split(b"\r\n")
        assert not any(line.startswith(b".") for line in lines), text
        assert all(len(line) <= MAX_LINE for line in lines), text
        decoded = quopri.decodestring(encoded).decode("utf-8").replace("\r\n", "\n")
        assert decoded == text.replace("\r\n", "\n"), text
