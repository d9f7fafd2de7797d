"""DKIM signatures, checked by dkimpy against public keys served by a real DNS server on loopback."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import functools
import hashlib
import math
import random
import re
import secrets
import smtplib
from pathlib import Path

import dkim as dkimpy
import dns.message
import dns.query
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed

from mailout.config import load_settings
from mailout.dkim import (
    BodyHash,
    BodyTemplate,
    DkimKey,
    DkimSigner,
    aligned,
    body_hash,
    check,
    load_signer,
    relaxed_header,
)
from mailout.errors import ConfigError
from mailout.issues import load_issue
from mailout.message import Addressing, MessageTemplate
from mailout.render import Recipient, Variant, render_variant
from mailout.segments import Segment
from tests.conftest import EXAMPLE_ISSUE, REPO
from tests.dnsserver import DNSServer
from tests.postfix import PostfixRelay
from tests.smtpserver import SMTPServer
from tests.test_sending import add_subscribers, people, run, statuses

NOW = 1_700_000_000


def _clock() -> float:
    return NOW


@functools.cache
def _variant(segment: Segment = Segment.MEMBER) -> Variant:
    return render_variant(load_issue(EXAMPLE_ISSUE), load_settings(REPO, env={}), segment)


def _rsa(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _ed25519(pem: bytes) -> ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


@pytest.fixture
def signer(rsa_pem: bytes, dns_server: DNSServer) -> DkimSigner:
    """An RSA signer for efus.example whose public key the DNS server publishes."""
    key = DkimKey("efus.example", "mo2026", _rsa(rsa_pem))
    dns_server.add_txt(key.record_name, key.record())
    return DkimSigner([key], clock=_clock)


@pytest.fixture
def double_signer(rsa_pem: bytes, ed25519_pem: bytes, dns_server: DNSServer) -> DkimSigner:
    keys = [
        DkimKey("efus.example", "mo2026", _rsa(rsa_pem)),
        DkimKey("efus.example", "mo2026e", _ed25519(ed25519_pem)),
    ]
    for key in keys:
        dns_server.add_txt(key.record_name, key.record())
    return DkimSigner(keys, clock=_clock)


def verifies(message: bytes, server: DNSServer, index: int = 0) -> bool:
    """Verify signature ``index`` with dkimpy, its key looked up in the test DNS server."""
    checker = dkimpy.DKIM(message, minkey=1024, timeout=5)
    try:
        return bool(checker.verify(idx=index, dnsfunc=server.txt))
    except dkimpy.DKIMException:  # a body hash mismatch, a malformed signature: not verified
        return False


ANA = "Ana Conceição"
PEOPLE = [
    (ANA, "ana@example.org"),
    ("Zoë d'Arc – “équipe”", "zoe@example.org"),
    ("李小龍", "li@example.org"),
    ("", "anon@example.org"),
    ("A" * 150 + " Long", "long@example.org"),
]
LONG_SUBJECT = "Été 2019 : " + "les villes européennes et la sécurité urbaine, " * 4


def _messages(template: MessageTemplate) -> list[bytes]:
    return [
        template.build(
            to_name=name,
            to_address=address,
            message_id=f"mo1a2b.{n}@efus.example",
            recipient=Recipient(
                name.split(" ")[0] if name else "",
                f"https://news.example/u/tok{n}",
                f"https://news.example/v{n}",
                f"https://news.example/p/tok{n}",
            ),
            unsubscribe_mailto=f"mailto:unsubscribe@efus.example?subject=unsubscribe%20tok{n}",
            date=dt.datetime(2019, 1, 31, 9, 30, tzinfo=dt.UTC),
        )
        for n, (name, address) in enumerate(PEOPLE)
    ]


ADDRESSING = Addressing("Efus – Zoë's newsletter", "newsletter@efus.example", "team@efus.example", "members")


# --- canonicalization ------------------------------------------------------------------------------


def _bodies() -> list[bytes]:
    rng = random.Random(6376)
    alphabet = [b"a", b"b", b" ", b"\t", b"\r\n", b"\r\n", b"=", b"\r", b"\n"]
    found = [
        b"",
        b"\r\n",
        b"\r\n\r\n",
        b"a\r\n",
        b"a\r\n\r\n\r\n",
        b" \r\n\t\r\n",
        b"a  b\t\tc \r\n",
        b"abc\r\r\n\r\n",
    ]
    found += [b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) + b"\r\n" for _ in range(400)]
    return found


def test_the_relaxed_body_hash_is_dkimpy_s_fed_whole_or_in_any_pieces() -> None:
    rng = random.Random(1)
    for body in _bodies():
        expected = hashlib.sha256(Relaxed.canonicalize_body(body)).digest()
        assert body_hash(body) == expected, body
        hasher = BodyHash()
        start = 0
        while start < len(body):
            end = start + rng.randint(0, 7)
            hasher.update(body[start:end])
            start = end
        assert hasher.digest() == expected, body


def test_the_relaxed_body_follows_rfc_6376_at_its_edges() -> None:
    empty = hashlib.sha256(b"").digest()
    assert body_hash(b"") == body_hash(b"\r\n") == body_hash(b"\r\n \r\n\t\r\n") == empty
    # A last line without CRLF gets one, its white space at the end dropped like any line's.
    assert body_hash(b"a \t b  ") == hashlib.sha256(b"a b\r\n").digest()
    assert body_hash(b"a\r\n\r\nb\r\n\r\n") == hashlib.sha256(b"a\r\n\r\nb\r\n").digest()


def test_the_relaxed_header_is_unfolded_lowercased_and_trimmed() -> None:
    assert relaxed_header(b"SubJect ", b" \t Hello\r\n  wide \t world  ") == b"subject:Hello wide world"


def test_a_body_template_hashes_as_the_whole_body_does_whatever_its_pieces() -> None:
    cases = [
        ([b"head\r\n", b"mid  \r\n\r\n", b"tail"], [b"v1 \r\n", b"\r\n\r\n"]),
        ([b"", b"", b""], [b"a\r\n", b"\r\n"]),
        ([b"x\r\n", b"\r\n\r\n"], [b"\r\n"]),  # ends in empty lines only: all dropped
        ([b"not a line end", b"tail\r\n"], [b" v \r\n"]),  # not aligned: hashed whole
        ([b"a\r\n", b"b\r\n"], [b"value without line end"]),
        ([b"only one piece  \r\n\r\n"], []),
    ]
    for pieces, values in cases:
        whole = b"".join(p + v for p, v in zip(pieces, values, strict=False)) + pieces[-1]
        assert BodyTemplate(pieces).digest(values) == body_hash(whole), (pieces, values)
    with pytest.raises(ValueError, match="1 values for 3 pieces"):
        BodyTemplate([b"a", b"b", b"c"]).digest([b"x"])


# --- signatures ------------------------------------------------------------------------------------


def test_every_message_of_a_template_verifies_and_the_fast_path_signs_as_the_generic_one(
    signer: DkimSigner, dns_server: DNSServer
) -> None:
    signed = MessageTemplate(_variant(), ADDRESSING, subject=LONG_SUBJECT, dkim=signer)
    for message in _messages(signed):
        assert verifies(message, dns_server)
        end = message.index(b"\r\n", message.index(b" b="))
        while message[end + 2 : end + 3] in (b" ", b"\t"):
            end = message.index(b"\r\n", end + 2)
        header, rest = message[: end + 2], message[end + 2 :]
        assert header.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=efus.example;")
        assert signer.sign(rest) == header  # the generic path: parse, canonicalize the whole body
        assert all(len(line) <= 78 for line in header.split(b"\r\n"))
    assert dns_server.queries and set(dns_server.queries) == {"mo2026._domainkey.efus.example."}


def test_threads_sharing_one_template_sign_every_message_right(
    signer: DkimSigner, dns_server: DNSServer
) -> None:
    # The send loop's threads share one MessageTemplate, so one copied prefix hash.
    template = MessageTemplate(_variant(), ADDRESSING, dkim=signer)
    expected = _messages(template)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _messages(template), range(8)))
    for messages in results:
        assert messages == expected  # same clock, same Date: the same bytes, whatever the thread
    assert all(verifies(m, dns_server) for m in expected)


def test_the_signature_covers_the_headers_a_reader_sees_over_signed(signer: DkimSigner) -> None:
    message = _messages(MessageTemplate(_variant(), ADDRESSING, dkim=signer))[0]
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", message.split(b"\r\n\r\n")[0])
    tags = dict(
        t.strip().split(b"=", 1)
        for t in unfolded.split(b"\r\n")[0].split(b":", 1)[1].split(b";")
        if t.strip()
    )
    names = [n.strip() for n in tags[b"h"].split(b":")]
    for name in (b"from", b"reply-to", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe"):
        assert names.count(name) == 2, name  # once for the header, once more so none can be added
    for name in (b"mime-version", b"content-type", b"list-id", b"list-unsubscribe-post"):
        assert names.count(name) == 2, name
    assert tags[b"t"] == str(NOW).encode() and b"x" not in tags and b"l" not in tags


def test_a_changed_body_byte_or_signed_header_or_an_added_header_fails(
    signer: DkimSigner, dns_server: DNSServer
) -> None:
    message = _messages(MessageTemplate(_variant(), ADDRESSING, dkim=signer))[1]
    assert verifies(message, dns_server)
    body = message.index(b"\r\n\r\n") + 4
    middle = body + (len(message) - body) // 2
    changed = message[:middle] + bytes([message[middle] ^ 1]) + message[middle + 1 :]
    assert not verifies(changed, dns_server)
    assert not verifies(message.replace(b"Subject: ", b"Subject: Re: ", 1), dns_server)
    assert not verifies(message.replace(b"\r\nTo: ", b"\r\nTo: mallory@example.net, ", 1), dns_server)
    for added in (
        b"From: Mallory <mallory@example.net>\r\n",
        b"Reply-To: mallory@example.net\r\n",
        b"List-Unsubscribe: <https://mallory.example/u>\r\n",
        b"Subject: Urgent\r\n",
    ):
        assert not verifies(added + message, dns_server), added  # on top, where readers look first
        at_end = message.replace(b"\r\n\r\n", b"\r\n" + added + b"\r\n", 1)
        assert not verifies(at_end, dns_server), added
    # A header outside h= may be added on the way (a relay's Received), and white space in
    # the body may change (relaxed canonicalization): the signature still holds.
    assert verifies(b"Received: from relay.example by mx.example; Thu, 31 Jan 2019\r\n" + message, dns_server)
    assert verifies(message[:body] + message[body:].replace(b" ", b"  "), dns_server)


def test_an_ed25519_signature_is_added_beside_the_rsa_one_and_both_verify(
    double_signer: DkimSigner, dns_server: DNSServer
) -> None:
    for message in _messages(MessageTemplate(_variant(Segment.PUBLIC), ADDRESSING, dkim=double_signer)):
        assert message.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
        assert message.count(b"DKIM-Signature:") == 2
        unfolded = message.replace(b"\r\n ", b" ")
        assert b"a=ed25519-sha256; c=relaxed/relaxed; d=efus.example; s=mo2026e;" in unfolded
        assert verifies(message, dns_server, 0)
        assert verifies(message, dns_server, 1)
        assert not verifies(message.replace(b"Subject: ", b"Subject: Re: ", 1), dns_server, 1)


def test_an_expiry_is_written_when_asked(rsa_pem: bytes, dns_server: DNSServer) -> None:
    key = DkimKey("efus.example", "mo2026", _rsa(rsa_pem))
    dns_server.add_txt(key.record_name, key.record())
    message = b"From: a@efus.example\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nHello\r\n"
    header = DkimSigner([key], expire_after=3600).sign(message)
    assert re.search(rb"t=(\d+); x=(\d+);", header)
    found = re.search(rb"t=(\d+); x=(\d+);", header)
    assert found and int(found.group(2)) - int(found.group(1)) == 3600
    assert verifies(header + message, dns_server)
    old = DkimSigner([key], expire_after=3600, clock=lambda: NOW).sign(message)
    assert not verifies(old + message, dns_server)  # signed in 2023, expired an hour later


def test_any_message_signs_and_verifies_by_the_generic_path(
    signer: DkimSigner, dns_server: DNSServer
) -> None:
    messages = [
        b"From: a@efus.example\r\n\r\n",  # no body
        b"From: a@efus.example\r\nSubject: a\r\n  folded\twide\r\nFrom: second@efus.example\r\n\r\nx  \r\n\r\n",
        b"From: a@efus.example\r\nTo: b@example.org\r\n\r\nno line end",
    ]
    for message in messages:
        assert verifies(signer.sign(message) + message, dns_server), message


def test_the_dns_stub_answers_over_tcp_too(signer: DkimSigner, dns_server: DNSServer) -> None:
    query = dns.message.make_query("mo2026._domainkey.efus.example", "TXT")
    response = dns.query.tcp(query, "127.0.0.1", port=dns_server.port, timeout=5)
    record = b"".join(response.answer[0][0].strings)  # type: ignore[attr-defined]
    assert record.startswith(b"v=DKIM1; k=rsa; p=MIIBIjAN")


# --- settings --------------------------------------------------------------------------------------


def _workspace(tmp_path: Path, dkim: str, sender: str = "newsletter@efus.example") -> Path:
    (tmp_path / "mailout.toml").write_text(
        f'[sender]\naddress = "{sender}"\n\n[dkim]\n{dkim}', encoding="utf-8"
    )
    return tmp_path


def _settings_error(tmp_path: Path, dkim: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        settings = load_settings(_workspace(tmp_path, dkim), env=env or {})
        load_signer(settings, env=env or {})
    return str(caught.value)


def _small_rsa_pem(bits: int) -> bytes:
    """An RSA key too small for cryptography to make (it refuses under 1024 bits), made by hand."""
    rng = random.Random(bits)

    def prime() -> int:
        while True:
            n = rng.getrandbits(bits // 2) | (1 << (bits // 2 - 1)) | 1
            if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
                return n

    while True:
        p, q = prime(), prime()
        if p != q and math.gcd(65537, (p - 1) * (q - 1)) == 1:
            break
    d = pow(65537, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(65537, p * q)
    )
    return numbers.private_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_dkim_is_off_unless_configured(tmp_path: Path) -> None:
    (tmp_path / "mailout.toml").write_text("", encoding="utf-8")
    assert load_signer(load_settings(tmp_path, env={}), env={}) is None


def test_a_key_from_a_file_or_a_variable_signs(tmp_path: Path, rsa_pem: bytes, ed25519_pem: bytes) -> None:
    (tmp_path / "dkim.pem").write_bytes(rsa_pem)
    (tmp_path / "dkim.pem").chmod(0o600)
    env = {"MAILOUT_DKIM_ED25519": ed25519_pem.decode()}
    settings = load_settings(
        _workspace(
            tmp_path,
            'domain = "efus.example"\nselector = "mo2026"\nkey_file = "dkim.pem"\n'
            'ed25519_selector = "mo2026e"\ned25519_key_env = "MAILOUT_DKIM_ED25519"\n',
        ),
        env=env,
    )
    signer = load_signer(settings, env=env)
    assert signer is not None
    assert [(k.selector, k.algorithm) for k in signer.keys] == [
        ("mo2026", "rsa-sha256"),
        ("mo2026e", "ed25519-sha256"),
    ]
    assert check(settings, signer) == []


@pytest.mark.parametrize(
    ("dkim", "expected"),
    [
        (
            'domain = "efus.example"\nselector = "s"\nkey = "-----BEGIN"\n',
            "mailout.toml:7: the DKIM private key may not be written",
        ),
        (
            'domain = "efus.example"\nselector = "s"\nprivate_key = "x"\n',
            "may not be written in mailout.toml",
        ),
        ('selector = "s"\n', "mailout.toml:5: dkim.selector: set dkim.domain too"),
        (
            'domain = "efus.example"\nkey_file = "k.pem"\n',
            "mailout.toml:5: dkim.domain: set dkim.selector too",
        ),
        ('domain = "efus example"\nselector = "s"\nkey_file = "k"\n', "dkim.domain: expected a domain name"),
        ('domain = "efus.example"\nselector = "s_1"\nkey_file = "k"\n', "dkim.selector: expected DNS labels"),
        (
            'domain = "efus.example"\nselector = "s"\n',
            "exactly one of dkim.key_file (a path) and dkim.key_env",
        ),
        (
            'domain = "efus.example"\nselector = "s"\nkey_file = "k"\nkey_env = "K"\n',
            "exactly one of dkim.key_file",
        ),
        (
            'domain = "efus.example"\nselector = "s"\nkey_env = "-----BEGIN PRIVATE KEY-----"\n',
            "dkim.key_env: expected the name of an environment variable",
        ),
        (
            'domain = "efus.example"\nselector = "s"\nkey_file = "k"\ned25519_key_file = "e"\n',
            "dkim.ed25519_key_file: set dkim.ed25519_selector too",
        ),
        (
            'domain = "efus.example"\nselector = "s"\nkey_file = "k"\ned25519_selector = "s"\ned25519_key_file = "e"\n',
            "dkim.ed25519_selector: must differ from dkim.selector",
        ),
        (
            'domain = "efus.example"\nselector = "s"\nkey_file = "k"\nexpire_after = -1\n',
            "dkim.expire_after: must be",
        ),
        (
            'domain = "efus.example"\nselector = "s"\nkey_file = "missing.pem"\n',
            "mailout.toml:7: dkim.key_file: cannot read the key file missing.pem: No such file",
        ),
        (
            'domain = "efus.example"\nselector = "s"\nkey_env = "DKIM_PEM"\n',
            "dkim.key_env: the environment variable DKIM_PEM is not set",
        ),
    ],
)
def test_a_wrong_dkim_setting_says_where_and_what(tmp_path: Path, dkim: str, expected: str) -> None:
    assert expected in _settings_error(tmp_path, dkim)


def test_a_bad_key_is_refused_with_what_is_wrong(tmp_path: Path, ed25519_pem: bytes) -> None:
    setting = 'domain = "efus.example"\nselector = "s"\nkey_file = "k.pem"\n'
    cases = {
        b"not a key\n": "mailout.toml:7: dkim.key_file: the key file k.pem is not a PEM private key",
        ed25519_pem: "the key file k.pem is not an RSA private key",
        _small_rsa_pem(512): "is an RSA key of 51",
        _rsa_encrypted(): "holds an encrypted key",
    }
    for data, expected in cases.items():
        (tmp_path / "k.pem").write_bytes(data)
        (tmp_path / "k.pem").chmod(0o600)
        message = _settings_error(tmp_path, setting)
        assert expected in message
        # Not a line of the key itself, whatever is wrong with it.
        assert not any(line in message for line in data.decode("ascii").splitlines() if len(line) > 12)
    (tmp_path / "k.pem").chmod(0)
    if not (tmp_path / "k.pem").exists() or _readable(tmp_path / "k.pem"):
        return  # root reads any file: nothing more to check here
    assert "cannot read the key file k.pem: Permission denied" in _settings_error(tmp_path, setting)


def test_a_key_pasted_where_its_path_belongs_is_refused_and_not_printed_back(
    tmp_path: Path, rsa_pem: bytes
) -> None:
    setting = 'domain = "efus.example"\nselector = "s"\n'
    for env in ({"MAILOUT_DKIM_KEY_FILE": rsa_pem.decode()}, {"MAILOUT_DKIM_KEY_FILE": "-----BEGIN x"}):
        message = _settings_error(tmp_path, setting, env)
        assert "(dkim.key_file): holds a key, not a path" in message
        assert "-----BEGIN" not in message
        assert not any(line in message for line in rsa_pem.decode().splitlines() if len(line) > 12)
    (tmp_path / "mailout.toml").write_text(  # a key pasted into the file itself, as a TOML multi-line string
        f'[sender]\naddress = "newsletter@efus.example"\n[dkim]\n{setting}key_file = """{rsa_pem.decode()}"""\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, env={})
    assert "holds a key, not a path" in str(caught.value) and "MII" not in str(caught.value)


def test_a_key_with_its_line_ends_written_as_backslash_n_is_the_same_key(
    tmp_path: Path, rsa_pem: bytes
) -> None:
    """A PEM on one line with literal \\n, as .env files and CI secret stores hold it."""
    env = {"DKIM_PEM": rsa_pem.decode().strip().replace("\n", "\\n")}
    assert "\n" not in env["DKIM_PEM"]
    settings = load_settings(
        _workspace(tmp_path, 'domain = "efus.example"\nselector = "s"\nkey_env = "DKIM_PEM"\n'), env=env
    )
    signer = load_signer(settings, env=env)
    assert signer is not None
    public = (
        signer.keys[0]
        .key.public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert public == _rsa(rsa_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_a_key_file_others_can_read_or_a_short_expiry_is_warned_of(tmp_path: Path, rsa_pem: bytes) -> None:
    (tmp_path / "k.pem").write_bytes(rsa_pem)
    (tmp_path / "k.pem").chmod(0o640)
    setting = 'domain = "efus.example"\nselector = "s"\nkey_file = "k.pem"\n'
    settings = load_settings(_workspace(tmp_path, setting + "expire_after = 600\n"), env={})
    warnings = check(settings, load_signer(settings, env={}))
    assert any(
        "dkim.key_file k.pem can be read by other users" in w and "chmod 600 k.pem" in w for w in warnings
    )
    assert any("dkim.expire_after is 600 s" in w for w in warnings)
    (tmp_path / "k.pem").chmod(0o600)
    settings = load_settings(_workspace(tmp_path, setting + "expire_after = 604800\n"), env={})
    assert check(settings, load_signer(settings, env={})) == []


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return False
    return True


@functools.cache
def _rsa_encrypted() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (a short key on purpose)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(secrets.token_bytes(8)),
    )


def test_a_short_key_or_an_unaligned_domain_is_warned_of(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (a short key on purpose)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "k.pem").write_bytes(pem)
    (tmp_path / "k.pem").chmod(0o600)
    settings = load_settings(
        _workspace(tmp_path, 'domain = "mailer.example"\nselector = "s"\nkey_file = "k.pem"\n'), env={}
    )
    warnings = check(settings, load_signer(settings, env={}))
    assert any("has 1024 bits" in w for w in warnings)
    assert any(
        "dkim.domain mailer.example is not sender.address's domain efus.example" in w for w in warnings
    )


def test_dmarc_relaxed_alignment_allows_a_parent_or_a_subdomain() -> None:
    assert aligned("efus.example", "efus.example")
    assert aligned("efus.example", "news.efus.example")
    assert aligned("mail.efus.example", "efus.example")
    assert not aligned("fus.example", "efus.example")
    assert not aligned("mailer.example", "efus.example")


# --- what mailout sends and writes -----------------------------------------------------------------


def _sign_with(workspace: Path, rsa_pem: bytes, dns_server: DNSServer, *, ed25519_pem: bytes = b"") -> None:
    """Add a [dkim] section to the workspace, its key in a file, the public key in the DNS server."""
    (workspace / "dkim.pem").write_bytes(rsa_pem)
    (workspace / "dkim.pem").chmod(0o600)
    section = '\n[dkim]\ndomain = "efus.example"\nselector = "mo2026"\nkey_file = "dkim.pem"\n'
    keys = [DkimKey("efus.example", "mo2026", _rsa(rsa_pem))]
    if ed25519_pem:
        (workspace / "dkim-ed25519.pem").write_bytes(ed25519_pem)
        (workspace / "dkim-ed25519.pem").chmod(0o600)
        section += 'ed25519_selector = "mo2026e"\ned25519_key_file = "dkim-ed25519.pem"\n'
        keys.append(DkimKey("efus.example", "mo2026e", _ed25519(ed25519_pem)))
    with (workspace / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write(section)
    for key in keys:
        dns_server.add_txt(key.record_name, key.record())


@pytest.mark.slow
def test_a_message_relayed_by_a_real_postfix_still_verifies(
    postfix_relay: PostfixRelay, smtp_server: SMTPServer, double_signer: DkimSigner, dns_server: DNSServer
) -> None:
    messages = _messages(MessageTemplate(_variant(), ADDRESSING, subject=LONG_SUBJECT, dkim=double_signer))
    with smtplib.SMTP("127.0.0.1", postfix_relay.port, timeout=30) as client:
        for message, (_, address) in zip(messages, PEOPLE, strict=True):
            client.sendmail("newsletter@efus.example", [address], message)
    relayed = smtp_server.wait_for(len(messages), timeout=60)
    for received in relayed:
        # Postfix added its Received line on top, and handed on the rest as it got it.
        assert received.raw.startswith(b"Received: from ") and b"relay.test.example" in received.raw[:500]
        assert verifies(received.raw, dns_server, 0) and verifies(received.raw, dns_server, 1)
    assert sorted(r.raw.split(b"Message-ID: <")[1][:12] for r in relayed) == sorted(
        m.split(b"Message-ID: <")[1][:12] for m in messages
    )


@pytest.mark.slow
def test_every_message_sent_by_smtp_verifies_tests_and_dispatches(
    sending_workspace: Path, smtp_server: SMTPServer, dns_server: DNSServer, rsa_pem: bytes
) -> None:
    _sign_with(sending_workspace, rsa_pem, dns_server)
    add_subscribers(sending_workspace, [(address, name) for name, address in PEOPLE])
    code, out = run("test", "2019-01", "--to", "team@efus.example")
    assert code == 0 and "warning" not in out, out
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    # 4 test messages (member and public, English and French: accents in the signed Subject)
    assert len(smtp_server.messages) == 4 + len(PEOPLE)
    for received in smtp_server.messages:
        assert received.raw.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
        assert verifies(received.raw, dns_server), received.raw[:2000]


@pytest.mark.slow
def test_the_local_outbox_holds_the_messages_signed_as_they_would_be_sent(
    sending_workspace: Path, dns_server: DNSServer, rsa_pem: bytes, ed25519_pem: bytes
) -> None:
    workspace = sending_workspace
    config = workspace / "mailout.toml"
    config.write_text(re.sub(r"\[smtp\][^\[]*", "", config.read_text(encoding="utf-8")), encoding="utf-8")
    _sign_with(workspace, rsa_pem, dns_server, ed25519_pem=ed25519_pem)
    add_subscribers(workspace, [(address, name) for name, address in PEOPLE])
    code, out = run("test", "2019-01", "--to", "team@efus.example")
    assert code == 0, out
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    written = sorted((workspace / "outbox").glob("*.eml"))
    assert len(written) == 4 + len(PEOPLE)
    for path in written:
        data = path.read_bytes()
        assert data.count(b"DKIM-Signature:") == 2
        assert verifies(data, dns_server, 0) and verifies(data, dns_server, 1), path.name


def test_a_dispatch_with_an_unreadable_key_stops_before_anything_is_sent(
    sending_workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = sending_workspace
    with (workspace / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write('\n[dkim]\ndomain = "efus.example"\nselector = "s"\nkey_env = "DKIM_KEY"\n')
    add_subscribers(workspace, people(2))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code != 0 and "the environment variable DKIM_KEY is not set" in out, out
    assert not smtp_server.messages and statuses(workspace) == {}  # no dispatch, no delivery queued
    monkeypatch.setenv("DKIM_KEY", "not a key")
    code, out = run("test", "2019-01", "--to", "team@efus.example")
    assert code != 0 and "the environment variable DKIM_KEY is not a PEM private key" in out, out
    assert not smtp_server.messages


def test_the_record_mailout_prints_is_the_one_receivers_verify_with(
    workspace: Path, dns_server: DNSServer, rsa_pem: bytes, ed25519_pem: bytes
) -> None:
    (workspace / "dkim.pem").write_bytes(rsa_pem)
    (workspace / "dkim.pem").chmod(0o600)
    (workspace / "ed.pem").write_bytes(ed25519_pem)
    (workspace / "ed.pem").chmod(0o600)
    with (workspace / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write(
            '\n[dkim]\ndomain = "example.org"\nselector = "mo2026"\nkey_file = "dkim.pem"\n'
            'ed25519_selector = "mo2026e"\ned25519_key_file = "ed.pem"\n'
        )
    code, out = run("dkim", "record")
    assert code == 0, out
    lines = out.splitlines()
    assert [line.split(" ")[0] for line in lines] == [
        "mo2026._domainkey.example.org.",
        "mo2026e._domainkey.example.org.",
    ]
    for line in lines:
        name, _, strings = line.partition(". IN TXT ")
        parts = re.findall(r'"([^"]*)"', strings)
        assert all(len(p) <= 255 for p in parts) and len(parts) == (2 if "k=rsa" in line else 1)
        dns_server.add_txt(name, "".join(parts))
    signer = load_signer(load_settings(workspace, env={}), env={})
    assert signer is not None
    message = b"From: newsletter@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nHello\r\n"
    signed = signer.sign(message) + message
    assert verifies(signed, dns_server, 0) and verifies(signed, dns_server, 1)


def test_dkim_record_without_dkim_says_what_to_set(workspace: Path) -> None:
    code, out = run("dkim", "record")
    assert code == 1 and "no DKIM key: set dkim.domain, dkim.selector and dkim.key_file" in out


@pytest.mark.slow
def test_the_key_is_read_once_per_command_whatever_the_number_of_messages(
    sending_workspace: Path,
    smtp_server: SMTPServer,
    dns_server: DNSServer,
    rsa_pem: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _sign_with(sending_workspace, rsa_pem, dns_server)
    add_subscribers(sending_workspace, people(30))
    reads = []
    load = serialization.load_pem_private_key
    monkeypatch.setattr(
        "mailout.dkim.serialization.load_pem_private_key",
        lambda data, password: reads.append(1) or load(data, password=password),
    )
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    assert len(smtp_server.messages) == 30 and all(verifies(m.raw, dns_server) for m in smtp_server.messages)
    # Once by plan(), which stops a send with a bad key before anything is queued, once by the
    # send loop; never per message or per connection.
    assert len(reads) <= 2, len(reads)


@pytest.mark.slow
def test_a_message_sent_again_after_an_unclear_end_is_signed_anew_with_the_same_message_id(
    sending_workspace: Path, smtp_server: SMTPServer, dns_server: DNSServer, rsa_pem: bytes
) -> None:
    _sign_with(sending_workspace, rsa_pem, dns_server)
    add_subscribers(sending_workspace, people(3))
    smtp_server.drop_after(1, record=True)  # the server keeps a message but its answer is lost
    run("send", "2019-01", "--list", "members", "--yes")
    assert "unknown" in statuses(sending_workspace).values()
    smtp_server.repair()
    code, out = run("send", "2019-01", "--list", "members", "--yes", "--resend-unknown")
    assert code == 0, out
    by_recipient: dict[str, list[bytes]] = {}
    for received in smtp_server.messages:
        by_recipient.setdefault(received.rcpt_tos[0], []).append(received.raw)
    twice = [copies for copies in by_recipient.values() if len(copies) == 2]
    assert len(twice) == 1, {k: len(v) for k, v in by_recipient.items()}
    first, again = twice[0]
    assert verifies(first, dns_server) and verifies(again, dns_server)
    # A receiver that has the first copy recognises the second by its Message-ID.
    ids = [re.search(rb"^Message-ID: (.*)$", m, re.MULTILINE | re.IGNORECASE) for m in (first, again)]
    assert ids[0] and ids[1] and ids[0].group(1) == ids[1].group(1)
