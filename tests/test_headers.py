"""Header lines: control characters, encoded words cut on character boundaries, folding."""

from __future__ import annotations

import email.policy
import re
from email import message_from_bytes
from email.header import decode_header, make_header

import pytest

from mailout.headers import LINE, WORD, address_header, encoded_words, one_line, unstructured_header

ENCODED_WORD = re.compile(r"=\?utf-8\?[qb]\?[^?]*\?=")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ana Conceição", "Ana Conceição"),
        ("  Ana \t Conceição  ", "Ana Conceição"),
        ("Eve\r\nBcc: x@evil.example", "Eve Bcc: x@evil.example"),
        ("Eve\rBcc: x", "Eve Bcc: x"),
        ("Eve\nBcc: x", "Eve Bcc: x"),
        ("a\x00b\x07c\x1bd\x7fe", "a b c d e"),
        ("C1: \x85next \x9bcsi", "C1: next csi"),
        ("line\u2028separator\u2029paragraph", "line separator paragraph"),
        ("\r\n\x00", ""),
        ("山田\x0b太郎", "山田 太郎"),
    ],
)
def test_one_line_turns_control_characters_into_single_spaces(raw: str, expected: str) -> None:
    assert one_line(raw) == expected


def test_one_line_leaves_no_control_character_whatever_the_input() -> None:
    everything = "".join(chr(c) for c in range(0x2100)) + "\U0001f600"
    cleaned = one_line(everything)
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", cleaned)
    assert "  " not in cleaned and cleaned == cleaned.strip()
    assert "\U0001f600" in cleaned and "é" in cleaned


def _decoded(word: str) -> bytes:
    [(data, charset)] = decode_header(word)
    assert charset == "utf-8"
    assert isinstance(data, bytes)
    return data


@pytest.mark.parametrize(
    "text",
    [
        "Élodie Müller-Šťastná " * 12,
        "山田太郎" * 50,
        "محمد بن عبد الله " * 12,
        "😀👩‍👩‍👧𠀀" * 40,
        "Анна Каренина " * 15,
        "a" * 300,
        "=?utf-8?q?x?=" * 20,
    ],
)
@pytest.mark.parametrize("first", [WORD, 60, 30])
def test_encoded_words_hold_whole_characters_and_keep_within_75(text: str, first: int) -> None:
    words = encoded_words(text, first)
    assert len(words[0]) <= first
    assert all(len(w) <= WORD for w in words)
    assert all(ENCODED_WORD.fullmatch(w) for w in words)
    # Each word decodes on its own: no UTF-8 sequence is split between two words.
    assert "".join(_decoded(w).decode("utf-8") for w in words) == text
    # And as a whole, as a mail client reads them (white space between them is dropped).
    assert str(make_header(decode_header(" ".join(words)))) == text


def test_encoded_words_take_the_shorter_encoding() -> None:
    assert encoded_words("Zoë")[0] == "=?utf-8?q?Zo=C3=AB?="
    assert encoded_words("山田")[0] == "=?utf-8?b?5bGx55Sw?="


def test_short_plain_names_are_written_as_they_are() -> None:
    assert address_header("To", "Ana Silva", "ana@example.org") == b"To: Ana Silva <ana@example.org>\r\n"
    assert address_header("To", "", "ana@example.org") == b"To: ana@example.org\r\n"
    assert address_header("To", " \r\n", "ana@example.org") == b"To: ana@example.org\r\n"
    assert address_header("To", 'Silva, Ana "A\\"', "a@example.org") == (
        b'To: "Silva, Ana \\"A\\\\\\"" <a@example.org>\r\n'
    )
    assert unstructured_header("Subject", "News") == b"Subject: News\r\n"


def test_plain_text_folds_at_its_spaces() -> None:
    subject = " ".join(f"word{n}" for n in range(40))
    line = unstructured_header("Subject", subject)
    lines = line.split(b"\r\n")
    assert len(lines) > 3 and lines[-1] == b""
    assert all(len(x) <= LINE for x in lines)
    assert all(x.startswith(b" ") for x in lines[1:-1])
    assert b"=?" not in line, "plain ASCII stays readable"
    parsed = message_from_bytes(line + b"\r\n", policy=email.policy.default)
    assert parsed["Subject"] == subject


def test_a_word_too_long_for_a_line_is_encoded_rather_than_left_long() -> None:
    subject = "see https://news.example/" + "x" * 120
    line = unstructured_header("Subject", subject)
    assert all(len(x) <= LINE for x in line.split(b"\r\n"))
    assert message_from_bytes(line + b"\r\n", policy=email.policy.default)["Subject"] == subject
