"""Header lines: control characters, encoded words cut on character boundaries, folding."""

from __future__ import annotations

import email.policy
import re
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailout.config import load_settings
from mailout.dkim import DkimKey, DkimSigner
from mailout.headers import LINE, WORD, address_header, encoded_words, one_line, unstructured_header
from mailout.issues import load_issue
from mailout.links import Links
from mailout.message import Addressing, MessageTemplate, feedback_id, message_id
from mailout.render import Recipient, render_variant
from mailout.segments import Segment
from mailout.tokens import Signer
from tests.conftest import EXAMPLE_ISSUE, REPO
from tests.dnsserver import DNSServer
from tests.test_dkim import verifies
from tests.test_message import _mailbox, _raw_headers

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


# --- every header of a whole message, hostile values, signed ---------------------------------

#: Long subjects in every script a reader may write, each several encoded words long.
SUBJECTS = {
    "accents": ("Été 2019 : les villes européennes, la sécurité urbaine et l'égalité — " * 4).strip(),
    "cjk": "欧洲城市安全论坛二〇一九年一月通讯：城市、安全与民主" * 4,
    "emoji": ("🎉 Newsletter 👩‍👩‍👧 de janvier 🇵🇹🇫🇷 " * 6).strip(),
    "ascii-one-word": "x" * 240,
}
#: Names of 200 characters (the longest the importer stores), with specials and encoded-word look-alikes.
NAMES = {
    "latin": ('Éléonore Dupré-Lefèvre, "la Présidente" (Lyon) ' * 5)[:200],
    "cjk": ("山田太郎" * 50)[:200],
    "specials": ('=?utf-8?q?x?= <eve@evil.example>; Bcc: "a\\b" ' * 5)[:200],
}
BASE_URL = "https://news.example/" + "n" * 279
FEEDBACK_FIELDS = ("4711", "members_-x", "2019-01", "efus.example")


def _hostile_message(
    tmp_path: Path, signer: DkimSigner, subject: str, name: str
) -> tuple[bytes, dict[str, str]]:
    assert len(BASE_URL) == 300
    (tmp_path / "mailout.toml").write_text(
        f'[newsletter]\npublic_base_url = "{BASE_URL}"\n[sender]\naddress = "newsletter@efus.example"\n',
        encoding="utf-8",
    )
    settings = load_settings(tmp_path, env={})
    urls = Links(settings, Signer(["k" * 43])).for_messages(
        "2019-01", 12345, member=True, sender="newsletter@efus.example"
    )(987654321)
    variant = render_variant(load_issue(EXAMPLE_ISSUE), load_settings(REPO, env={}), Segment.MEMBER)
    list_description = 'Liste «été» : sécurité; <urbaine> "2019" ' + "ü" * 60
    template = MessageTemplate(
        variant,
        Addressing(name, "newsletter@efus.example", "team@efus.example", "members_-x", list_description),
        subject=subject,
        dkim=signer,
        feedback_id=feedback_id(*FEEDBACK_FIELDS),
    )
    mid = message_id("mo" + "f" * 30, 987654321, "efus.example")
    raw = template.build(
        to_name=name,
        to_address="ana@example.org",
        message_id=mid,
        recipient=Recipient(name, urls.unsubscribe, urls.view, urls.preferences),
        unsubscribe_mailto=urls.unsubscribe_mailto,
    )
    expected = {
        "Subject": subject,
        "List-Id": list_description,
        "List-Unsubscribe": f"<{urls.unsubscribe}>, <{urls.unsubscribe_mailto}>",
        "Feedback-ID": "4711:members_-x:2019-01:efus.example",
        "Message-ID": f"<{mid}>",
    }
    return raw, expected


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("subject", SUBJECTS)
def test_every_header_keeps_the_limits_reads_back_and_stays_signed(
    tmp_path: Path, rsa_pem: bytes, dns_server: DNSServer, subject: str, name: str
) -> None:
    key = serialization.load_pem_private_key(rsa_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    dkim_key = DkimKey("efus.example", "mo2026", key)
    dns_server.add_txt(dkim_key.record_name, dkim_key.record())
    raw, expected = _hostile_message(tmp_path, DkimSigner([dkim_key]), SUBJECTS[subject], NAMES[name])
    head = raw.partition(b"\r\n\r\n")[0].decode("utf-8")
    for line in head.split("\r\n"):
        assert len(line.encode("utf-8")) <= 998, line
        for word in ENCODED_WORD.findall(line):
            assert len(word) <= WORD, word
        if len(line) > LINE:
            # Only where no fold point is left: one token (a URL, a Feedback-ID) after the name.
            token = re.sub(r"^[A-Za-z-]+: ", "", line).strip()
            assert " " not in token and "\t" not in token, line
    message = message_from_bytes(raw, policy=email.policy.default)
    assert not message.defects
    for header, value in expected.items():
        if header == "List-Id":
            phrase = dict(_raw_headers(raw))["List-Id"].strip().rpartition(" <")[0]
            assert str(make_header(decode_header(phrase))).strip('"') == value
            assert message["List-Id"].endswith("<members_-x.efus.example>")
        else:
            assert message[header] == value, header
    assert _mailbox(raw, "From") == (one_line(NAMES[name]), "newsletter@efus.example")
    assert _mailbox(raw, "To") == (one_line(NAMES[name]), "ana@example.org")
    assert message["Reply-To"] == "team@efus.example"
    assert "Bcc" not in message and message.get_all("From") and len(message.get_all("From")) == 1
    assert "feedback-id:feedback-id" in re.sub(r"\s", "", dict(_raw_headers(raw))["DKIM-Signature"])
    assert verifies(raw, dns_server)
