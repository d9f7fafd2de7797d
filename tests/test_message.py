"""Messages built by substitution: quoted-printable parts, and every header, read back with ``email``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import functools
import quopri
import random
import re
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest

from mailout.config import load_settings
from mailout.headers import one_line
from mailout.issues import load_issue
from mailout.message import MAX_LINE, Addressing, MessageTemplate, _qp_general, encode_part, qp_encode
from mailout.models import Subscriber
from mailout.render import Recipient, Slots, Variant, render_variant
from mailout.segments import Segment
from mailout.subscribers import clean_fields, normalise_email
from tests.conftest import EXAMPLE_ISSUE, REPO


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


def test_printable_values_are_encoded_byte_for_byte_as_the_general_way_does() -> None:
    # Links take a shorter way (``_qp_printable``); what it writes must not differ at all,
    # or a DKIM body hash made from one would not match the other.
    rng = random.Random(2045)
    texts = [t for t in _texts() if "\t" not in t and "\n" not in t and t.isascii()]
    texts += ["".join(rng.choice("ab.=?/:-_ ") for _ in range(rng.randint(1, 300))) for _ in range(2000)]
    texts += ["a" * n + "=" + "b" * 10 for n in range(70, 80)] + ["a" * n + ".=" for n in range(70, 80)]
    for text in texts:
        assert qp_encode(text, soft_end=True) == _qp_general(text, soft_end=True), text


def test_an_encoded_part_fills_its_holes_as_the_variant_does() -> None:
    slots = Slots.split("Dear T1, see T2 or T1.", {"T1": "first_name", "T2": "view_url"})
    assert slots.fill({"first_name": "Ana", "view_url": "u"}) == "Dear Ana, see u or Ana."
    part = encode_part(slots)
    assert part.keys == slots.keys == ["first_name", "view_url", "first_name"]
    filled = part.fill({"first_name": b"Ana=\r\n", "view_url": b"u=\r\n"})
    assert quopri.decodestring(filled).decode() == "Dear Ana, see u or Ana."
    with pytest.raises(ValueError, match="2 pieces around 2 placeholders"):
        Slots(["a", "b"], ["k", "k"])


# -- headers ------------------------------------------------------------------------------------------

DATE = dt.datetime(2019, 1, 31, 9, 30, tzinfo=dt.UTC)
RECIPIENT = Recipient(
    "Ana",
    "https://news.example/unsubscribe/tok-ana",
    "https://news.example/issues/2019-01?t=v-ana",
    "https://news.example/preferences/tok-ana",
)
MAILTO = "mailto:unsubscribe@efus.example?subject=unsubscribe%20tok-ana"
ADDRESSING = Addressing(
    "Efus – Zoë's newsletter",
    "newsletter@efus.example",
    reply_to="team@efus.example",
    list_name="members",
    list_description="News for Efus members",
)
ENCODED_WORD = re.compile(r"=\?utf-8\?[qb]\?[^?]*\?=")
#: The longest display name the importer stores, and the longest address it accepts (RFC 5321's 254).
LONGEST_NAME = Subscriber.__table__.c.name.type.length
LONGEST_ADDRESS = "l" * 64 + "@" + "d" * 63 + "." + "e" * 63 + "." + "f" * 53 + ".example"


@functools.cache
def _variant() -> Variant:
    """The members' variant of the example issue, rendered once for this module."""
    settings = load_settings(REPO, env={})
    return render_variant(load_issue(EXAMPLE_ISSUE), settings, Segment.MEMBER)


def _build(
    addressing: Addressing = ADDRESSING,
    *,
    subject: str | None = None,
    to_name: str = "Ana Conceição",
    to_address: str = "ana@example.org",
) -> bytes:
    template = MessageTemplate(_variant(), addressing, subject=subject)
    return template.build(
        to_name=to_name,
        to_address=to_address,
        message_id="mo1a2b.42@efus.example",
        recipient=RECIPIENT,
        unsubscribe_mailto=MAILTO,
        date=DATE,
    )


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def _raw_headers(raw: bytes) -> list[tuple[str, str]]:
    """Return the header fields as written, each unfolded (CRLF removed, as RFC 5322 says)."""
    head = raw.partition(b"\r\n\r\n")[0].decode("utf-8")
    fields = re.split(r"\r\n(?![ \t])", head)
    return [(f.partition(":")[0], f.partition(":")[2].replace("\r\n", "")) for f in fields]


def _mailbox(raw: bytes, name: str) -> tuple[str, str]:
    """Return the display name and address of header ``name``, decoded as RFC 2047 says.

    Python's parser checks the structure and the address. It keeps the space between
    two adjacent encoded words of a display name (CPython gh-128110), which RFC 2047
    (6.2) and mail clients drop, so encoded names are decoded with ``decode_header``.
    """
    header = _parse(raw)[name]
    assert not header.defects
    [address] = header.addresses
    [value] = [v for n, v in _raw_headers(raw) if n == name]
    phrase = value.strip().rpartition(" <")[0]
    if ENCODED_WORD.match(phrase):
        assert "".join(ENCODED_WORD.split(phrase)).strip() == "", "all encoded words, nothing else"
        return str(make_header(decode_header(phrase))), address.addr_spec
    return address.display_name, address.addr_spec


def test_every_header_is_written_and_reads_back() -> None:
    raw = _build()
    message = _parse(raw)
    assert [name for name, _ in _raw_headers(raw)] == [
        "Date", "From", "Reply-To", "Subject", "MIME-Version", "List-Id", "List-Unsubscribe-Post",
        "Content-Type", *(["Content-Language"] if _variant().language else []), "To", "Message-ID",
        "List-Unsubscribe",
    ]  # fmt: skip
    assert message["Date"].datetime == DATE
    assert _mailbox(raw, "From") == ("Efus – Zoë's newsletter", "newsletter@efus.example")
    assert message["Reply-To"].addresses[0].addr_spec == "team@efus.example"
    assert message["Reply-To"].addresses[0].display_name == ""
    assert message["Subject"] == _variant().subject
    assert message["MIME-Version"] == "1.0"
    assert message["List-Id"] == "News for Efus members <members.efus.example>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert _mailbox(raw, "To") == ("Ana Conceição", "ana@example.org")
    assert message["Message-ID"] == "<mo1a2b.42@efus.example>"
    assert message["List-Unsubscribe"] == f"<{RECIPIENT.unsubscribe_url}>, <{MAILTO}>"
    assert raw.count(b"\r\n") == raw.count(b"\n"), "CRLF line ends only"
    head, _, body = raw.partition(b"\r\n\r\n")
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert all(len(line) <= MAX_LINE for line in body.split(b"\r\n"))


@pytest.mark.parametrize("language", ["fr", "fr-BE", "zh-Hant-TW", "ar"])
def test_content_language_says_the_language_of_the_variant(language: str) -> None:
    variant = dataclasses.replace(_variant(), language=language)
    raw = MessageTemplate(variant, ADDRESSING).build(
        to_name="Ana", to_address="ana@example.org", message_id="m.1@efus.example",
        recipient=RECIPIENT, unsubscribe_mailto=MAILTO,
    )  # fmt: skip
    headers = _raw_headers(raw)
    assert [v for n, v in headers if n == "Content-Language"] == [f" {language}"], (
        "once, for the whole message"
    )
    assert _parse(raw)["Content-Language"] == language
    # Not in the parts: one language for both, said once at the top (RFC 3282).
    assert raw.count(b"Content-Language") == 1
    unknown = dataclasses.replace(_variant(), language="")
    raw = MessageTemplate(unknown, ADDRESSING).build(
        to_name="Ana", to_address="ana@example.org", message_id="m.1@efus.example",
        recipient=RECIPIENT, unsubscribe_mailto=MAILTO,
    )  # fmt: skip
    assert b"Content-Language" not in raw, "no language said when it is not known"


SUBJECTS = {
    "de": "Größere Städte, sicherere Straßen: Übersicht für Januar 2019 — ÄÖÜ äöü ß",
    "fr": "Lettre d'information de l'Efus – janvier 2019 : « sécurité », ça évolue à Genève",
    "es": "Boletín de Efus — enero de 2019: ¿ciudades más seguras? ¡Sí! (Núñez, Añón)",
    "ar": "النشرة الإخبارية لمنتدى الأمن الحضري — يناير ٢٠١٩",
    "he": "ניוזלטר Efus לינואר 2019: ערים בטוחות יותר",
    "fa": "خبرنامه Efus — ژانویه 2019 (شهرهای امن‌تر)",
}


@pytest.mark.parametrize("language", sorted(SUBJECTS))
def test_a_subject_in_any_language_and_script_reads_back_exactly(language: str) -> None:
    subject = SUBJECTS[language]
    variant = dataclasses.replace(_variant(), language=language, subject=subject)
    raw = MessageTemplate(variant, ADDRESSING, subject=f"[TEST member {language}] {subject}").build(
        to_name="Jürgen Müller", to_address="ana@example.org", message_id="m.1@efus.example",
        recipient=RECIPIENT, unsubscribe_mailto=MAILTO,
    )  # fmt: skip
    head = raw.partition(b"\r\n\r\n")[0]
    assert head.isascii(), "only encoded words in the headers"
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    message = _parse(raw)
    assert message["Subject"] == f"[TEST member {language}] {subject}"
    assert message["Content-Language"] == language
    [value] = [v for n, v in _raw_headers(raw) if n == "Subject"]
    # Each encoded word holds whole UTF-8 characters: each decodes on its own.
    for word in ENCODED_WORD.findall(value):
        str(make_header(decode_header(word)))
    assert str(make_header(decode_header(value))) == f"[TEST member {language}] {subject}"


def test_the_parts_are_the_variant_filled_in_for_the_recipient() -> None:
    template = MessageTemplate(_variant(), ADDRESSING)
    raw = template.build(
        to_name="Ana", to_address="ana@example.org", message_id="m.1@efus.example",
        recipient=RECIPIENT, unsubscribe_mailto=MAILTO,
    )  # fmt: skip
    message = _parse(raw)
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_boundary() == template.boundary
    assert raw.count(template.boundary.encode()) == 4, "declared, two parts, the end"
    text, html = message.iter_parts()
    for part, kind in ((text, "text/plain"), (html, "text/html")):
        assert part.get_content_type() == kind
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    expected_html, expected_text = _variant().personalize(RECIPIENT)
    assert text.get_content().replace("\r\n", "\n") == expected_text
    assert html.get_content().replace("\r\n", "\n") == expected_html.replace("\r\n", "\n")
    assert abs(message["Date"].datetime - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)


def test_no_reply_to_without_one() -> None:
    raw = _build(Addressing("Efus", "newsletter@efus.example", list_name="members"))
    message = _parse(raw)
    assert "Reply-To" not in message
    assert message["List-Id"] == "members <members.efus.example>", (
        "the list's name when it has no description"
    )


@pytest.mark.parametrize(
    "name",
    [
        'Ana "the boss" Silva',
        "Back\\slash \\ Ana\\",
        "Silva, Ana",
        "Ana; Bob",
        "Ana (Lisbon) Silva",
        "Ana <ana@evil.example>",
        "ana@example.org",
        "Dr. Ana: [team]",
        'Mixed "quote\\", comma, (paren) <angle> @ ; : . [x]',
        '"' * 60,
        "\\" * 40,
        "Silva, Ana" + " very long surname" * 12,
    ],
)
def test_names_with_specials_read_back_as_written(name: str) -> None:
    raw = _build(
        Addressing(name, "newsletter@efus.example", list_name="members", list_description=name),
        to_name=name,
        to_address="ana@example.org",
    )
    assert _mailbox(raw, "To") == (name, "ana@example.org")
    assert _mailbox(raw, "From") == (name, "newsletter@efus.example")
    assert "Cc" not in _parse(raw) and "Bcc" not in _parse(raw)
    head = raw.partition(b"\r\n\r\n")[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))


@pytest.mark.parametrize(
    "name",
    [
        "=?utf-8?q?Bob?=",
        "=?utf-8?b?Qm9i?=",
        "=?UTF-8?Q?=E2=82=AC?=",
        "Ana =?iso-8859-1?q?Silva?= <x@evil.example>",
        "Prize=?utf-8?q?_money?=",
    ],
)
def test_text_that_looks_like_an_encoded_word_reads_back_literally(name: str) -> None:
    raw = _build(Addressing(name, "newsletter@efus.example"), subject=name, to_name=name)
    assert name.encode() not in raw, "written encoded, not as it is"
    assert _mailbox(raw, "To") == (name, "ana@example.org")
    assert _mailbox(raw, "From") == (name, "newsletter@efus.example")
    assert _parse(raw)["Subject"] == name
    [subject] = [v for n, v in _raw_headers(raw) if n == "Subject"]
    assert str(make_header(decode_header(subject.strip()))) == name


def test_control_characters_cannot_inject_a_header() -> None:
    evil = "Eve\r\nBcc: victim@example.net\r\n\r\nbody"
    raw = _build(Addressing(evil, "newsletter@efus.example"), subject=evil, to_name=evil)
    message = _parse(raw)
    assert "Bcc" not in message
    assert _mailbox(raw, "To")[0] == "Eve Bcc: victim@example.net body"
    assert message["Subject"] == "Eve Bcc: victim@example.net body"


SCRIPTS = {
    "latin": "Éléonore Dupré-Lefèvre de Saint-Exupéry ",
    "cjk": "山田太郎",
    "cjk-spaced": "王 小明 ",
    "arabic": "محمد بن عبد الله الهاشمي ",
    "cyrillic": "Анна Аркадьевна Каренина ",
    "astral": "😀👩‍👩‍👧𠀀🇵🇹",
    "ascii-words": "Anne-Marie O'Neill ",
    "ascii-one-word": "x",
    "ascii-quoted": "Silva, Ana (Lisbon) ",
}


def _longest(sample: str, length: int) -> str:
    """Return ``sample`` repeated to ``length`` characters, trimmed as the importer trims."""
    return (sample * length)[:length].strip()


def _check_lines(raw: bytes, *, address: str) -> None:
    """Check every header line against RFC 5322 and RFC 2047's limits."""
    head = raw.partition(b"\r\n\r\n")[0].decode("utf-8")
    for line in head.split("\r\n"):
        assert len(line.encode()) <= 998
        if address not in line:  # an address cannot be folded: only it may pass 78
            assert len(line) <= 78, line
        if "=?" in line:
            assert len(line) <= 76, line
        for word in ENCODED_WORD.findall(line):
            assert len(word) <= 75, word
            [(data, _)] = decode_header(word)
            assert isinstance(data, bytes)
            data.decode("utf-8")  # whole characters: no UTF-8 sequence split between two words


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_longest_name_and_address_fold_within_the_limits(script: str) -> None:
    name = _longest(SCRIPTS[script], LONGEST_NAME)
    # The importer accepts both, as they are.
    assert clean_fields(name, "", "")[0] == name
    assert normalise_email(LONGEST_ADDRESS) == LONGEST_ADDRESS and len(LONGEST_ADDRESS) == 254
    raw = _build(
        Addressing(name, "newsletter@efus.example", list_name="members", list_description=name * 2),
        subject=name,
        to_name=name,
        to_address=LONGEST_ADDRESS,
    )
    _check_lines(raw, address=LONGEST_ADDRESS)
    assert _mailbox(raw, "To") == (name, LONGEST_ADDRESS)
    assert _mailbox(raw, "From") == (name, "newsletter@efus.example")
    message = _parse(raw)
    assert message["Subject"] == name
    [list_id] = [v for n, v in _raw_headers(raw) if n == "List-Id"]
    phrase, _, list_address = list_id.strip().rpartition(" <")
    assert list_address == "members.efus.example>"
    assert str(make_header(decode_header(phrase))).strip('"') == one_line(name * 2)


def test_a_long_subject_folds_in_every_script() -> None:
    for sample in SCRIPTS.values():
        subject = _longest(sample, 1000)
        raw = _build(subject=subject)
        _check_lines(raw, address="ana@example.org")
        assert _parse(raw)["Subject"] == subject


def test_the_feedback_id_is_written_once_per_variant_for_every_recipient() -> None:
    value = "7:members:2019-01:efus.example"
    template = MessageTemplate(_variant(), ADDRESSING, feedback_id=value)
    assert f"Feedback-ID: {value}\r\n".encode() in template.shared_headers
    for name, address in (("Ana", "ana@example.org"), ("Bob", "bob@example.org")):
        raw = template.build(
            to_name=name, to_address=address, message_id=f"m.{name}@efus.example",
            recipient=RECIPIENT, unsubscribe_mailto=MAILTO,
        )  # fmt: skip
        assert _parse(raw).get_all("Feedback-ID") == [value]
    assert "Feedback-ID" not in _parse(_build()), "none unless asked"
