"""`mailout doctor`: the real resolver against a DNS server on loopback, the real SMTP server, the CLI.

Every test starts from a domain set up right (``good``: every check passes)
and breaks one thing: a record taken away or changed on the DNS server, or a
setting. The DNS server is tests/dnsserver.py, asked through dnspython's own
resolver (``doctor.nameservers``); the SMTP server is tests/smtpserver.py with
STARTTLS, a certificate the tests trust (``SSL_CERT_FILE``) and a login.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailout import resolver as resolver_module
from mailout import spf as spf_module
from mailout.cli import cli
from mailout.config import CHECK_IDS, Settings, load_settings
from mailout.dkim import DkimKey, load_signer
from mailout.doctor import Finding, Status, diagnose
from mailout.errors import ConfigError
from mailout.net import parse_nameserver
from mailout.resolver import Lookup
from mailout.tokens import PUBLIC_KEYS
from tests.conftest import SECRET_KEY, edit_config
from tests.dnsserver import DNSServer, running
from tests.smtpserver import SMTPServer
from tests.test_sending import add_subscribers, people, run

RELAY_SPF = "v=spf1 ip4:127.0.0.0/8 ip6:::1 ip6:2001:db8::/32 -all"


@dataclass
class Setup:
    """A workspace whose domain, efus.example, is published right on ``dns`` and sends through ``smtp``."""

    root: Path
    dns: DNSServer
    smtp: SMTPServer
    key: DkimKey

    def settings(self) -> Settings:
        return load_settings(self.root)

    def findings(self) -> dict[str, Finding]:
        found = diagnose(self.settings())
        assert [f.id for f in found] == [c for c in CHECK_IDS if c in {f.id for f in found}], (
            "in CHECK_IDS order"
        )
        return {f.id: f for f in found}

    def edit(self, *changes: tuple[str, str]) -> None:
        edit_config(self.root, *changes)


def publish_good_zone(dns: DNSServer, key: DkimKey) -> None:
    """The records of a domain set up right: SPF, DKIM, DMARC and MX for From and the return path."""
    dns.add("bounces.efus.example", "TXT", "v=spf1 include:_spf.relay.example -all")
    dns.add("_spf.relay.example", "TXT", RELAY_SPF)
    dns.add("bounces.efus.example", "MX", "10 mx.efus.example.")
    dns.add("efus.example", "MX", "10 mx.efus.example.")
    dns.add("efus.example", "TXT", "v=spf1 include:_spf.relay.example -all", "google-site-verification=abc")
    dns.add("mx.efus.example", "A", "127.0.0.1")
    dns.add(key.record_name, "TXT", key.record())
    dns.add("_dmarc.efus.example", "TXT", "v=DMARC1; p=none; rua=mailto:dmarc@efus.example")


@pytest.fixture
def good(
    tmp_path: Path, dns_server: DNSServer, rsa_pem: bytes, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    """A workspace, its zone on the DNS server, and an SMTP server with STARTTLS and a login."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / "dkim.pem").write_bytes(rsa_pem)
    (root / "dkim.pem").chmod(0o600)  # as the docs say: a key readable by others is warned about
    with SMTPServer(tls=True, username="news", password="s3cret-pass") as smtp:
        assert smtp.cert_file is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(smtp.cert_file))
        monkeypatch.setenv("MAILOUT_SMTP_PASSWORD", "s3cret-pass")
        monkeypatch.setenv("MAILOUT_SECRET_KEY", SECRET_KEY)
        (root / "mailout.toml").write_text(
            f"""
[newsletter]
public_base_url = "https://news.efus.example"

[sender]
address = "newsletter@efus.example"
return_path = "bounce@bounces.efus.example"

[smtp]
host = "localhost"
port = {smtp.port}
security = "starttls"
username = "news"

[dkim]
domain = "efus.example"
selector = "mo2026"
key_file = "dkim.pem"

[doctor]
nameservers = ["{dns_server.nameserver}"]
timeout = 2
""",
            encoding="utf-8",
        )
        settings = load_settings(root)
        signer = load_signer(settings)
        assert signer is not None
        key = signer.keys[0]
        publish_good_zone(dns_server, key)
        monkeypatch.chdir(root)
        yield Setup(root, dns_server, smtp, key)


def test_a_domain_set_up_right_passes_every_check(good: Setup) -> None:
    found = good.findings()
    assert set(found) == set(CHECK_IDS) - {"dkim-record-ed25519"}  # no Ed25519 selector: no line
    assert {f.id: f.status for f in found.values() if f.status is not Status.OK} == {}, found
    assert found["spf-record"].message == "bounces.efus.example: v=spf1 include:_spf.relay.example -all"
    assert found["spf-lookups"].message == "1 of 10 DNS look-ups, 0 of 2 void"
    assert "authorizes smtp.host localhost: 127.0.0.1 by ip4:127.0.0.0/8 in _spf.relay.example" in (
        found["spf-authorizes-relay"].message
    )
    assert found["smtp-login"].message.endswith("accepts the login of news")
    assert "the certificate is valid for localhost" in found["smtp-tls"].message
    assert good.smtp.logins == 1 and good.smtp.messages == []  # logged in, sent nothing


def test_the_command_prints_one_line_per_check_and_exits_0(good: Setup) -> None:
    code, out = run("doctor")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[-1] == "0 errors, 0 warnings, 13 fine"
    assert [line.split(":")[0] for line in lines[:-1]] == [
        f"✓ {c}" for c in CHECK_IDS if c != "dkim-record-ed25519"
    ]


def test_json_lists_id_status_message_and_fix_and_the_exit_code_follows_errors(good: Setup) -> None:
    good.dns.remove("_dmarc.efus.example", "TXT")
    result = CliRunner().invoke(cli, ["doctor", "--json"], catch_exceptions=False)
    assert result.exit_code == 1
    found = json.loads(result.stdout)
    assert all(set(entry) == {"id", "status", "message", "fix"} for entry in found)
    by_id = {entry["id"]: entry for entry in found}
    assert by_id["dmarc-record"]["status"] == "error"
    assert by_id["dmarc-record"]["fix"] == (
        'publish _dmarc.efus.example. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@efus.example"'
    )
    assert by_id["spf-record"] == {
        "id": "spf-record",
        "status": "ok",
        "message": "bounces.efus.example: v=spf1 include:_spf.relay.example -all",
        "fix": "",
    }


# --- SPF ---------------------------------------------------------------------------------


def test_no_spf_record_is_an_error_with_the_record_to_publish(good: Setup) -> None:
    good.dns.remove("bounces.efus.example", "TXT")
    found = good.findings()
    spf = found["spf-record"]
    assert spf.status is Status.ERROR
    assert spf.message.startswith(
        "no SPF record at bounces.efus.example (the envelope domain, sender.return_path)"
    )
    assert spf.fix.startswith('publish bounces.efus.example. IN TXT "v=spf1 ')
    assert found["spf-lookups"].status is found["spf-authorizes-relay"].status is Status.SKIPPED


def test_the_spf_record_is_read_at_the_from_domain_without_a_return_path(good: Setup) -> None:
    good.edit(('return_path = "bounce@bounces.efus.example"\n', ""))
    good.dns.remove("efus.example", "TXT")
    spf = good.findings()["spf-record"]
    assert spf.status is Status.ERROR and "no SPF record at efus.example" in spf.message
    assert "sender.address: no sender.return_path" in spf.message


def test_two_spf_records_are_an_error(good: Setup) -> None:
    good.dns.add("bounces.efus.example", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    spf = good.findings()["spf-record"]
    assert spf.status is Status.ERROR and spf.message.startswith("2 SPF records at bounces.efus.example")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("v=spf1 inclde:_spf.relay.example -all", "unknown mechanism 'inclde'"),
        ("v=spf1 ip4:300.1.2.3 -all", "'ip4:300.1.2.3': not an IPv4 address or network"),
        ("v=spf1 ip4:2001:db8::1 -all", "not an IPv4 address"),
        ("v=spf1 redirect=a.example redirect=b.example", "'redirect=' appears twice"),
        ("v=spf1 a:not_a..domain -all", "is not a domain name"),
        ("v=spf1 -all:x", "all takes no argument"),
    ],
)
def test_an_spf_syntax_error_is_an_error_naming_the_term(good: Setup, record: str, expected: str) -> None:
    good.dns.remove("bounces.efus.example", "TXT")
    good.dns.add("bounces.efus.example", "TXT", record)
    spf = good.findings()["spf-record"]
    assert spf.status is Status.ERROR and expected in spf.message, spf


def test_more_than_10_lookups_through_nested_includes_is_an_error(good: Setup) -> None:
    dns = good.dns
    dns.remove("_spf.relay.example", "TXT")
    # 1 include here, 5 a + 1 include in n1, 3 a + 1 mx + 1 include in n2: 13 look-ups.
    dns.add("_spf.relay.example", "TXT", "v=spf1 include:n1.relay.example -all")
    hosts = [f"h{i}.relay.example" for i in range(8)]
    for host in hosts:
        dns.add(host, "A", "198.51.100.7")
    dns.add(
        "n1.relay.example",
        "TXT",
        "v=spf1 " + " ".join(f"a:{h}" for h in hosts[:5]) + " include:n2.relay.example ~all",
    )
    dns.add(
        "n2.relay.example",
        "TXT",
        "v=spf1 " + " ".join(f"a:{h}" for h in hosts[5:]) + " mx:efus.example include:n3.relay.example ~all",
    )
    dns.add("n3.relay.example", "TXT", RELAY_SPF)
    found = good.findings()
    lookups = found["spf-lookups"]
    assert lookups.status is Status.ERROR
    assert "takes more than 10 DNS look-ups, the most RFC 7208 allows" in lookups.message
    assert "a:h7.relay.example in n2.relay.example" in lookups.message  # the 11th, where receivers stop
    assert "mx:efus.example" not in lookups.message
    # A receiver stops at the 11th look-up with a permanent error, before the relay's range.
    relay = found["spf-authorizes-relay"]
    assert relay.status is Status.ERROR and "permerror, more than 10 DNS look-ups" in relay.message
    assert "see the spf-lookups line" in relay.fix and "ip4:" not in relay.fix


def test_includes_that_branch_at_every_level_stop_at_the_11th_look_up(
    good: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each level includes the next twice: 20 levels, 21 names, but a walk of the whole tree
    # would read a record 2**21 times. A receiver stops at the 11th look-up; so does doctor.
    dns = good.dns
    dns.remove("_spf.relay.example", "TXT")
    dns.add("_spf.relay.example", "TXT", "v=spf1 include:l0.relay.example -all")
    for level in range(20):
        nxt = f"l{level + 1}.relay.example"
        dns.add(f"l{level}.relay.example", "TXT", f"v=spf1 include:{nxt} include:{nxt} -all")
    dns.add("l20.relay.example", "TXT", RELAY_SPF)
    reads: list[str] = []
    records = spf_module.records

    def counted(domain: str, lookup: Lookup) -> tuple[list[str], bool]:
        reads.append(domain)
        return records(domain, lookup)

    monkeypatch.setattr(spf_module, "records", counted)
    found = good.findings()
    lookups = found["spf-lookups"]
    assert lookups.status is Status.ERROR and "takes more than 10 DNS look-ups" in lookups.message
    # 2 includes above l0, then one per level: the 11th look-up is in l8, and the walk stops there.
    assert lookups.message.endswith("include:l9.relay.example in l8.relay.example")
    assert len(reads) < 40, len(reads)  # each check reads a handful of records, not 2**21
    assert len([q for q in dns.questions if q[0].startswith("l")]) <= 12
    relay = found["spf-authorizes-relay"]
    assert relay.status is Status.ERROR and "more than 10 DNS look-ups" in relay.message


def test_an_include_loop_is_an_error(good: Setup) -> None:
    good.dns.remove("_spf.relay.example", "TXT")
    good.dns.add("_spf.relay.example", "TXT", "v=spf1 include:loop.relay.example -all")
    good.dns.add("loop.relay.example", "TXT", "v=spf1 include:_spf.relay.example -all")
    found = good.findings()
    lookups = found["spf-lookups"]
    assert lookups.status is Status.ERROR
    assert "loops back to _spf.relay.example" in lookups.message
    assert (
        "bounces.efus.example → _spf.relay.example → loop.relay.example → _spf.relay.example"
        in lookups.message
    )
    assert found["spf-authorizes-relay"].status is Status.ERROR


def test_more_than_two_void_lookups_is_an_error(good: Setup) -> None:
    good.dns.remove("bounces.efus.example", "TXT")
    good.dns.add(
        "bounces.efus.example",
        "TXT",
        "v=spf1 a:gone1.efus.example a:gone2.efus.example mx:gone3.efus.example include:_spf.relay.example -all",
    )
    lookups = good.findings()["spf-lookups"]
    assert lookups.status is Status.ERROR and "3 look-ups of the SPF record" in lookups.message
    assert "gone3.efus.example MX" in lookups.message


def test_an_include_of_a_domain_without_spf_is_an_error(good: Setup) -> None:
    good.dns.remove("_spf.relay.example", "TXT")
    lookups = good.findings()["spf-lookups"]
    assert lookups.status is Status.ERROR and "_spf.relay.example has no SPF record" in lookups.message


def test_an_spf_record_that_does_not_authorize_the_relay_is_an_error_with_the_record_that_does(
    good: Setup,
) -> None:
    # A relay with a public address (a documentation range: nothing connects to it here).
    good.edit(('host = "localhost"', 'host = "relay.efus.example"'))
    good.edit(("timeout = 2\n", 'timeout = 2\nskip = ["smtp-connect"]\n'))
    good.dns.add("relay.efus.example", "A", "192.0.2.25")
    # The record includes the relay's SPF, which may list the address the relay sends from: a warning.
    found = good.findings()
    relay = found["spf-authorizes-relay"]
    assert relay.status is Status.WARNING, relay
    # The relay's include does not match (its -all fails there); then this record's -all does.
    assert "192.0.2.25: fail, -all in bounces.efus.example" in relay.message
    assert "it includes include:_spf.relay.example, which may list the addresses" in relay.message
    # Nothing passes and no third party's include: an error, with the term to add.
    good.dns.remove("bounces.efus.example", "TXT")
    good.dns.add("bounces.efus.example", "TXT", "v=spf1 include:_spf.efus.example -all")
    good.dns.add("_spf.efus.example", "TXT", "v=spf1 ip4:198.51.100.0/24 -all")
    found = good.findings()
    relay = found["spf-authorizes-relay"]
    assert relay.status is Status.ERROR, relay
    assert relay.fix.startswith(
        'publish bounces.efus.example. IN TXT "v=spf1 include:_spf.efus.example ip4:192.0.2.25 -all"'
    )
    # One address of smtp.host passes, another does not: the relay may send from the first only.
    good.dns.add("relay.efus.example", "AAAA", "2001:db8::25")
    good.dns.remove("_spf.efus.example", "TXT")
    good.dns.add("_spf.efus.example", "TXT", "v=spf1 ip4:192.0.2.16/28 -all")
    relay = good.findings()["spf-authorizes-relay"]
    assert relay.status is Status.WARNING, relay
    assert "does not authorize 2001:db8::25: fail" in relay.message
    assert "it does authorize 192.0.2.25 by ip4:192.0.2.16/28 in _spf.efus.example" in relay.message
    good.dns.remove("relay.efus.example", "AAAA")
    assert found["smtp-tls"].status is Status.SKIPPED  # and no connection was tried
    assert good.smtp.connections == 0
    # The same relay authorized through a, mx, and a redirect: passes.
    for record in (
        "v=spf1 a:relay.efus.example -all",
        "v=spf1 mx:relays.efus.example -all",
        "v=spf1 redirect=_spf.efus.example",
    ):
        good.dns.remove("bounces.efus.example", "TXT")
        good.dns.add("bounces.efus.example", "TXT", record)
        good.dns.add("relays.efus.example", "MX", "5 relay.efus.example.")
        good.dns.add("_spf.efus.example", "TXT", "v=spf1 ip4:192.0.2.16/28 -all")
        assert good.findings()["spf-authorizes-relay"].status is Status.OK, record


def test_a_relay_on_a_private_network_not_in_spf_is_a_warning(good: Setup) -> None:
    good.dns.remove("bounces.efus.example", "TXT")
    good.dns.add("bounces.efus.example", "TXT", "v=spf1 ip4:198.51.100.0/24 ~all")
    relay = good.findings()["spf-authorizes-relay"]
    assert relay.status is Status.WARNING and "127.0.0.1: softfail" in relay.message
    assert "receivers see the relay's public address" in relay.message


def test_an_spf_term_with_a_macro_cannot_be_evaluated_and_is_a_warning(good: Setup) -> None:
    good.dns.remove("_spf.relay.example", "TXT")
    good.dns.add("_spf.relay.example", "TXT", "v=spf1 exists:%{i}._spf.relay.example ptr:relay.example -all")
    found = good.findings()
    assert found["spf-authorizes-relay"].status is Status.WARNING
    assert "cannot evaluate" in found["spf-authorizes-relay"].message
    assert "exists:%{i}._spf.relay.example" in found["spf-authorizes-relay"].message
    assert found["spf-lookups"].status is Status.WARNING and "3 of 10" in found["spf-lookups"].message


# --- DKIM ----------------------------------------------------------------------------------


def test_no_dkim_record_is_an_error_whose_fix_is_the_record_dkim_record_prints(good: Setup) -> None:
    good.dns.remove(good.key.record_name, "TXT")
    dkim = good.findings()["dkim-record"]
    assert dkim.status is Status.ERROR
    assert dkim.message == (
        "no DKIM record at mo2026._domainkey.efus.example; the name does not exist in DNS (NXDOMAIN)"
    )
    code, printed = run("dkim", "record")
    assert code == 0 and dkim.fix.startswith(f"publish {printed.strip()}")


def test_a_dkim_record_of_another_key_or_revoked_is_an_error_and_testing_a_warning(
    good: Setup, ed25519_pem: bytes
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = DkimKey("efus.example", "mo2026", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    name = good.key.record_name
    cases = {
        other.record(): (Status.ERROR, "its p= is another key than the one mailout signs with"),
        "v=DKIM1; k=rsa; p=": (Status.ERROR, "its p= is empty: the key is revoked"),
        good.key.record().replace("k=rsa", "k=ed25519"): (Status.ERROR, "k=ed25519, but the key"),
        "v=DKIM1; k=rsa; p=bm90IGEga2V5": (Status.ERROR, "another key"),
        good.key.record() + "; t=y": (Status.WARNING, "has t=y (testing)"),
        # RFC 6376 3.6.1: a key restricted to other hashes or other services verifies nothing of ours.
        good.key.record().replace("k=rsa", "k=rsa; h=sha1"): (Status.ERROR, "h=sha1 does not list sha256"),
        good.key.record().replace("k=rsa", "h=sha1 : SHA256; k=rsa"): (Status.OK, "publishes the rsa key"),
        good.key.record().replace("k=rsa", "k=rsa; s=tlsrpt"): (Status.ERROR, "s=tlsrpt lists neither"),
        good.key.record().replace("k=rsa", "k=rsa; s=tlsrpt:email"): (Status.OK, "publishes"),
        good.key.record().replace("k=rsa", "k=rsa; s=*"): (Status.OK, "publishes"),
        good.key.record().replace("p=", "t = y:s; p = ").replace("==", "= ="): (Status.WARNING, "t=y"),
    }
    for record, (status, text) in cases.items():
        good.dns.remove(name, "TXT")
        good.dns.add(name, "TXT", record)
        dkim = good.findings()["dkim-record"]
        assert dkim.status is status and text in dkim.message, (record, dkim)


def test_an_ed25519_selector_is_checked_on_its_own_line(good: Setup, ed25519_pem: bytes) -> None:
    (good.root / "ed.pem").write_bytes(ed25519_pem)
    good.edit(
        (
            'key_file = "dkim.pem"\n',
            'key_file = "dkim.pem"\ned25519_selector = "ed2026"\ned25519_key_file = "ed.pem"\n',
        )
    )
    found = good.findings()
    assert found["dkim-record"].status is Status.OK
    ed = found["dkim-record-ed25519"]
    assert ed.status is Status.ERROR and "no DKIM record at ed2026._domainkey.efus.example" in ed.message
    signer = load_signer(good.settings())
    assert signer is not None
    good.dns.add(signer.keys[1].record_name, "TXT", signer.keys[1].record())
    assert good.findings()["dkim-record-ed25519"].status is Status.OK


def test_no_dkim_is_an_error_for_smtp_and_a_warning_for_the_outbox(good: Setup) -> None:
    good.edit(('domain = "efus.example"\nselector = "mo2026"\nkey_file = "dkim.pem"\n', ""))
    dkim = good.findings()["dkim-record"]
    assert dkim.status is Status.ERROR and "Gmail and Yahoo require DKIM" in dkim.message
    assert dkim.fix == "set [dkim] (domain, selector, key_file); see docs/deliverability.md"
    good.edit(('host = "localhost"', 'host = ""'))
    assert good.findings()["dkim-record"].status is Status.WARNING


# --- DMARC -------------------------------------------------------------------------------------


def test_no_dmarc_record_is_an_error_with_a_starter_record(good: Setup) -> None:
    good.dns.remove("_dmarc.efus.example", "TXT")
    dmarc = good.findings()["dmarc-record"]
    assert dmarc.status is Status.ERROR and dmarc.message == "no DMARC record at _dmarc.efus.example"
    assert "v=DMARC1; p=none; rua=mailto:" in dmarc.fix


def test_dmarc_is_found_at_the_organizational_domain_of_a_subdomain(good: Setup) -> None:
    good.edit(('address = "newsletter@efus.example"', 'address = "newsletter@news.efus.example"'))
    good.dns.add("news.efus.example", "MX", "10 mx.efus.example.")
    good.dns.remove("_dmarc.efus.example", "TXT")
    good.dns.add("_dmarc.efus.example", "TXT", "v=DMARC1; p=reject; sp=quarantine")
    found = good.findings()
    assert found["dmarc-record"].status is Status.OK
    assert found["dmarc-record"].message == "_dmarc.efus.example: p=quarantine for news.efus.example"
    assert "_dmarc.news.efus.example." in good.dns.queries  # asked first
    # d=efus.example and news.efus.example share their organizational domain: relaxed alignment holds.
    assert found["dmarc-alignment"].status is Status.OK


def test_strict_dmarc_alignment_with_a_subdomain_d_is_an_error(good: Setup, rsa_pem: bytes) -> None:
    good.edit(('domain = "efus.example"', 'domain = "mail.efus.example"'))
    key = DkimKey("mail.efus.example", "mo2026", good.key.key)
    good.dns.add(key.record_name, "TXT", key.record())
    good.dns.remove("_dmarc.efus.example", "TXT")
    good.dns.add("_dmarc.efus.example", "TXT", "v=DMARC1; p=quarantine; adkim=s; aspf=s")
    found = good.findings()
    assert found["dkim-record"].status is Status.OK
    alignment = found["dmarc-alignment"]
    assert alignment.status is Status.ERROR
    assert "DKIM d=mail.efus.example (strict adkim), envelope domain bounces.efus.example (strict aspf)" in (
        alignment.message
    )
    assert (
        alignment.fix
        == 'set dkim.domain = "efus.example" and publish its key; or relax the DMARC record: adkim=r'
    )
    # With the record's own check switched off, its strict modes still count.
    good.edit(("timeout = 2\n", 'timeout = 2\nskip = ["dmarc-record"]\n'))
    assert good.findings()["dmarc-alignment"].status is Status.ERROR
    # Relaxed (the default), the same domains align.
    good.dns.remove("_dmarc.efus.example", "TXT")
    good.dns.add("_dmarc.efus.example", "TXT", "v=DMARC1; p=quarantine")
    assert good.findings()["dmarc-alignment"].status is Status.OK


def test_a_broken_or_doubled_dmarc_record_is_an_error(good: Setup) -> None:
    for records, text in (
        (["v=DMARC1; p=maybe"], "p= must be none, quarantine or reject"),
        (["v=DMARC1; p=none", "v=DMARC1; p=reject"], "2 DMARC records"),
    ):
        good.dns.remove("_dmarc.efus.example", "TXT")
        good.dns.add("_dmarc.efus.example", "TXT", *records)
        dmarc = good.findings()["dmarc-record"]
        assert dmarc.status is Status.ERROR and text in dmarc.message, dmarc
    # A record is DMARC only when its first tag is exactly v=DMARC1 (RFC 7489 6.4).
    for records, status, text in (
        (["v=DMARC10; p=reject", "v=DMARC1; p=none"], Status.OK, "p=none"),
        (["v = DMARC1 ; p=quarantine"], Status.OK, "p=quarantine"),
        (["vx=1; v=DMARC1; p=none"], Status.ERROR, "no DMARC record at _dmarc.efus.example"),
    ):
        good.dns.remove("_dmarc.efus.example", "TXT")
        good.dns.add("_dmarc.efus.example", "TXT", *records)
        dmarc = good.findings()["dmarc-record"]
        assert dmarc.status is status and text in dmarc.message, (records, dmarc)


# --- MX, the base URL --------------------------------------------------------------------------


def test_mx_of_the_return_path_and_unsubscribe_domains(good: Setup) -> None:
    good.dns.remove("bounces.efus.example", "MX")
    found = good.findings()
    mx = found["mx-return-path"]
    assert mx.status is Status.ERROR
    assert (
        "bounces.efus.example has no MX nor address record: bounces to bounce@bounces.efus.example"
        in mx.message
    )
    assert mx.fix.startswith("publish bounces.efus.example. IN MX 10 ")
    assert found["mx-unsubscribe"].status is Status.OK
    good.dns.add("bounces.efus.example", "A", "198.51.100.9")  # RFC 5321: the address takes the mail
    assert good.findings()["mx-return-path"].status is Status.OK
    good.dns.add("efus.example", "MX", "0 .")
    good.dns.remove("efus.example", "MX")
    good.dns.add("efus.example", "MX", "0 .")
    unsubscribe = good.findings()["mx-unsubscribe"]
    assert unsubscribe.status is Status.ERROR and "null MX" in unsubscribe.message
    assert "unsubscribe requests to unsubscribe@efus.example" in unsubscribe.message


def test_an_http_or_local_base_url_is_an_error_for_smtp_and_a_warning_for_the_outbox(good: Setup) -> None:
    good.edit(('"https://news.efus.example"', '"http://news.efus.example"'))
    https = good.findings()["https-base-url"]
    assert https.status is Status.ERROR and "RFC 8058" in https.message
    good.edit(('"http://news.efus.example"', '"https://127.0.0.1:8025"'))
    assert good.findings()["https-base-url"].status is Status.ERROR
    good.edit(('host = "localhost"', 'host = ""'))
    found = good.findings()
    assert found["https-base-url"].status is Status.WARNING
    assert {found[c].status for c in ("smtp-connect", "smtp-tls", "smtp-login", "spf-authorizes-relay")} == {
        Status.SKIPPED
    }
    assert "local outbox" in found["smtp-connect"].message


# --- DNS failures ---------------------------------------------------------------------------------


def test_a_dns_server_that_never_answers_gives_clear_lines_quickly(good: Setup) -> None:
    good.edit(("timeout = 2", "timeout = 0.5"))
    good.dns.silent = True
    started = time.monotonic()
    found = good.findings()
    elapsed = time.monotonic() - started
    # Two time-outs, then the server is taken for unreachable: no wait per check.
    assert elapsed < 3, elapsed
    assert found["spf-record"].status is Status.ERROR
    assert (
        "no answer from 127.0.0.1:" in found["spf-record"].message
        and "within 0.5 s" in found["spf-record"].message
    )
    assert "no answer from 127.0.0.1:" in found["dkim-record"].message  # the second time-out
    for check in ("dmarc-record", "mx-return-path", "mx-unsubscribe"):
        assert (
            found[check].status is Status.ERROR and "did not answer earlier questions" in found[check].message
        )
    assert found["smtp-login"].status is Status.OK  # SMTP does not depend on this DNS server


def test_servfail_and_nxdomain_each_say_what_happened(good: Setup) -> None:
    good.dns.servfail.add("_dmarc.efus.example.")
    found = good.findings()
    assert "failed to answer (SERVFAIL)" in found["dmarc-record"].message
    good.edit(('return_path = "bounce@bounces.efus.example"', 'return_path = "bounce@nowhere.example"'))
    found = good.findings()
    assert found["spf-record"].message.startswith("no SPF record at nowhere.example")
    assert found["spf-record"].message.endswith("the name does not exist in DNS (NXDOMAIN)")
    good.dns.remove("bounces.efus.example", "TXT")  # the name keeps its MX
    good.edit(('return_path = "bounce@nowhere.example"', 'return_path = "bounce@bounces.efus.example"'))
    spf = good.findings()["spf-record"]
    assert spf.message.endswith("the name exists but has no TXT record")
    good.dns.add("bounces.efus.example", "TXT", "site-verification=abc")
    assert good.findings()["spf-record"].message.endswith("its TXT records hold other things")
    assert "nowhere.example has no MX nor address record" in found["mx-return-path"].message


def test_an_spf_record_dns_cannot_read_says_so_on_every_spf_line(good: Setup) -> None:
    good.dns.servfail.add("bounces.efus.example.")
    found = good.findings()
    assert "failed to answer (SERVFAIL)" in found["spf-record"].message
    for check in ("spf-lookups", "spf-authorizes-relay"):
        assert found[check].status is Status.SKIPPED
        assert found[check].message.startswith("cannot read the SPF record: bounces.efus.example TXT:")
        assert "needs one SPF record" not in found[check].message
    # The record read, an include not: a temperror, whose fix is DNS, not another ip4: term.
    good.dns.servfail.clear()
    good.dns.servfail.add("_spf.relay.example.")
    relay = good.findings()["spf-authorizes-relay"]
    assert relay.status is Status.ERROR and "temperror" in relay.message, relay
    assert relay.fix.startswith("check that DNS answers") and "ip4:" not in relay.fix


def test_an_mx_term_with_more_than_10_mail_servers_is_a_permanent_error(good: Setup) -> None:
    good.dns.remove("bounces.efus.example", "TXT")
    good.dns.add("bounces.efus.example", "TXT", "v=spf1 mx:many.efus.example -all")
    # The relay (127.0.0.1) is the first of 11: a receiver still gives a permanent error.
    good.dns.add("many.efus.example", "MX", *(f"{i} mx{i}.efus.example." for i in range(11)))
    for i in range(11):
        good.dns.add(f"mx{i}.efus.example", "A", f"127.0.0.{i + 1}")
    found = good.findings()
    relay = found["spf-authorizes-relay"]
    assert relay.status is Status.ERROR and "permerror" in relay.message, relay
    assert "11 mail servers, more than 10" in relay.message
    assert "11 mail servers, more than 10" in found["spf-lookups"].message


@pytest.mark.parametrize("outside", ["refuse", "refer"])
def test_names_outside_the_zone_of_doctor_nameservers_are_asked_of_the_system_resolver(
    good: Setup, monkeypatch: pytest.MonkeyPatch, outside: str
) -> None:
    # doctor.nameservers is efus.example's own server: it refuses (or refers) the relay's names.
    good.dns.zone, good.dns.outside = "efus.example", outside
    good.dns.remove("_spf.relay.example", "TXT")
    with running() as system:
        system.add("_spf.relay.example", "TXT", RELAY_SPF)
        monkeypatch.setattr(resolver_module, "system_resolver", system.resolver, raising=False)
        found = good.findings()
        assert {f.id: f.message for f in found.values() if f.status is not Status.OK} == {}
        assert "127.0.0.1 by ip4:127.0.0.0/8 in _spf.relay.example" in found["spf-authorizes-relay"].message
        assert ("_spf.relay.example.", "TXT") in good.dns.questions  # asked first
        assert ("_spf.relay.example.", "TXT") in system.questions  # then the system's servers
        assert not any(q[0].endswith("efus.example.") for q in system.questions)  # own names: own server
        # A name the system's servers do not know either: an answer, not a false DNS failure.
        good.dns.remove("bounces.efus.example", "TXT")
        good.dns.add("bounces.efus.example", "TXT", "v=spf1 include:gone.relay.example -all")
        lookups = good.findings()["spf-lookups"]
        assert lookups.status is Status.ERROR and "gone.relay.example has no SPF record" in lookups.message


def test_the_system_resolver_is_used_without_nameservers() -> None:
    lookup = Lookup((), 1)
    assert lookup.where == "the system's DNS servers"
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:53") == ("::1", 53)
    assert parse_nameserver("2001:db8::1") == ("2001:db8::1", 53)
    for wrong in ("dns.example", "127.0.0.1:0", "1.2.3:53"):
        with pytest.raises(ValueError):
            parse_nameserver(wrong)


# --- SMTP -------------------------------------------------------------------------------------------


def _point_at(good: Setup, server: SMTPServer, security: str = "starttls") -> None:
    text = (good.root / "mailout.toml").read_text(encoding="utf-8")
    text = text.replace(f"port = {good.smtp.port}", f"port = {server.port}")
    text = text.replace('security = "starttls"', f'security = "{security}"')
    (good.root / "mailout.toml").write_text(text, encoding="utf-8")


def test_a_certificate_for_another_name_fails_the_name_check(
    good: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SMTPServer(tls=True, cert_names=("mail.other.example",)) as other:
        assert other.cert_file is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(other.cert_file))  # trusted, but not for localhost
        _point_at(good, other)
        found = good.findings()
    assert found["smtp-connect"].status is Status.OK
    tls = found["smtp-tls"]
    assert tls.status is Status.ERROR and "certificate is not valid for 'localhost'" in tls.message, tls
    assert found["smtp-login"].status is Status.SKIPPED
    assert other.logins == other.failed_logins == 0


def test_an_untrusted_certificate_fails(good: Setup, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "no-ca.pem"
    empty.write_text("", encoding="utf-8")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))
    tls = good.findings()["smtp-tls"]
    assert tls.status is Status.ERROR and "self-signed certificate" in tls.message, tls


def test_a_server_without_starttls_is_an_error(good: Setup) -> None:
    with SMTPServer() as plain:
        _point_at(good, plain)
        found = good.findings()
    tls = found["smtp-tls"]
    assert tls.status is Status.ERROR and "does not offer STARTTLS" in tls.message
    assert (
        found["smtp-login"].status is Status.SKIPPED
        and "never sent without TLS" in found["smtp-login"].message
    )


def test_a_wrong_password_fails_the_login(good: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILOUT_SMTP_PASSWORD", "wrong")
    login = good.findings()["smtp-login"]
    assert login.status is Status.ERROR and "refuses the login of news: 535" in login.message
    assert good.smtp.failed_logins >= 1 and good.smtp.logins == 0 and good.smtp.messages == []


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on loopback that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for sock in held:
        sock.close()
    listener.close()


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_a_server_that_never_answers_times_out(good: Setup, silent_server: int, security: str) -> None:
    good.edit((f"port = {good.smtp.port}", f"port = {silent_server}"), ('"starttls"', f'"{security}"'))
    good.edit(("timeout = 2", "timeout = 0.5"))
    started = time.monotonic()
    found = good.findings()
    assert time.monotonic() - started < 5
    failed = found["smtp-connect"] if security == "starttls" else found["smtp-tls"]
    assert failed.status is Status.ERROR and "within 0.5 s" in failed.message, failed


def test_a_closed_port_cannot_connect(good: Setup) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    good.edit((f"port = {good.smtp.port}", f"port = {port}"))
    connect = good.findings()["smtp-connect"]
    assert connect.status is Status.ERROR and "cannot connect to localhost:" in connect.message
    good.edit(('host = "localhost"', 'host = "::1"'))
    connect = good.findings()["smtp-connect"]
    assert connect.status is Status.ERROR and f"cannot connect to [::1]:{port}:" in connect.message


# --- the secret key -------------------------------------------------------------------------------


def test_the_secret_key_must_be_set_long_and_not_published(
    good: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = sorted(PUBLIC_KEYS)[0]
    for key, status, text in (
        ("", Status.ERROR, "MAILOUT_SECRET_KEY is not set"),
        (demo, Status.ERROR, "a key published in mailout's own files"),
        ("k" * 20, Status.WARNING, "has 20 characters"),  # as send, test and worker warn: send goes on
        (f"{SECRET_KEY},{demo}", Status.ERROR, "(key 2) is a key published"),
        (SECRET_KEY, Status.OK, "32 characters or more"),
    ):
        monkeypatch.setenv("MAILOUT_SECRET_KEY", key)
        found = good.findings()["secret-key"]
        assert found.status is status and text in found.message, (key, found)
    good.edit(('host = "localhost"', 'host = ""'))
    monkeypatch.setenv("MAILOUT_SECRET_KEY", demo)
    assert good.findings()["secret-key"].status is Status.WARNING  # the local outbox: the demo's key is fine


# --- settings -------------------------------------------------------------------------------------


def test_a_check_switched_off_is_skipped_and_does_no_work(good: Setup) -> None:
    good.dns.remove("bounces.efus.example", "TXT")
    good.edit(
        (
            "timeout = 2\n",
            'timeout = 2\nskip = ["spf-record", "spf-lookups", "spf-authorizes-relay", "smtp-connect"]\n',
        )
    )
    found = good.findings()
    assert {found[c].status for c in ("spf-record", "spf-lookups", "smtp-connect", "smtp-login")} == {
        Status.SKIPPED
    }
    assert found["spf-record"].message == "switched off in doctor.skip"
    assert ("bounces.efus.example.", "TXT") not in good.dns.questions
    assert good.smtp.connections == 0
    code, out = run("doctor")
    assert code == 0, out


def test_lines_keep_the_order_of_the_checks_whichever_is_switched_off(good: Setup) -> None:
    good.edit(("timeout = 2\n", 'timeout = 2\nskip = ["spf-authorizes-relay", "dkim-record"]\n'))
    found = good.findings()  # asserts the order
    assert found["spf-authorizes-relay"].status is found["dkim-record"].status is Status.SKIPPED
    assert found["spf-record"].status is Status.OK


def test_an_unknown_check_or_nameserver_is_a_config_error_with_a_suggestion(good: Setup) -> None:
    good.edit(("timeout = 2\n", 'timeout = 2\nskip = ["spf-authorises-relay"]\n'))
    with pytest.raises(
        ConfigError,
        match=r"doctor.skip: unknown check 'spf-authorises-relay' \(did you mean 'spf-authorizes-relay'\?\)",
    ):
        good.settings()
    good.edit(('skip = ["spf-authorises-relay"]\n', ""), (f'"{good.dns.nameserver}"', '"ns.efus.example"'))
    with pytest.raises(ConfigError, match=r"mailout.toml:\d+: doctor.nameservers: expected an IP address"):
        good.settings()
    good.edit(('"ns.efus.example"', f'"{good.dns.nameserver}"'), ("timeout = 2", "timeout = 0"))
    with pytest.raises(ConfigError, match=r"doctor\.timeout: must be more than 0"):
        good.settings()


# --- the checks before sending ----------------------------------------------------------------------


@pytest.fixture
def gated(sending_workspace: Path, dns_server: DNSServer, rsa_pem: bytes) -> Setup:
    """The loopback sending workspace with the checks before sending on, and its domain on ``dns_server``."""
    (sending_workspace / "dkim.pem").write_bytes(rsa_pem)
    edit_config(
        sending_workspace,
        (
            "before_send = false",
            f'before_send = true\nnameservers = ["{dns_server.nameserver}"]\ntimeout = 1',
        ),
        (
            "[sending]",
            '[dkim]\ndomain = "efus.example"\nselector = "mo2026"\nkey_file = "dkim.pem"\n\n[sending]',
        ),
        (
            'reply_to = "team@efus.example"',
            'reply_to = "team@efus.example"\nreturn_path = "bounce@bounces.efus.example"',
        ),
    )
    signer = load_signer(load_settings(sending_workspace))
    assert signer is not None
    publish_good_zone(dns_server, signer.keys[0])
    add_subscribers(sending_workspace, people(3))
    return Setup(sending_workspace, dns_server, SMTPServer(), signer.keys[0])


def test_send_refuses_while_an_error_remains_and_writes_nothing(
    gated: Setup, smtp_server: SMTPServer
) -> None:
    gated.dns.remove("_dmarc.efus.example", "TXT")
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 1
    assert "mailout doctor found errors; nothing was queued or sent:" in out
    assert "✗ dmarc-record: no DMARC record at _dmarc.efus.example; fix: publish _dmarc.efus.example." in out
    assert "error: 1 error before sending to 127.0.0.1" in out and "--skip-checks" in out
    assert "✓" not in out  # only the failing lines
    assert smtp_server.messages == [] and smtp_server.connections == 1  # the check's own, then QUIT
    code, status = run("status", "--json")
    assert code == 0 and json.loads(status) == []  # no dispatch written
    # Published: the same command sends.
    gated.dns.add("_dmarc.efus.example", "TXT", "v=DMARC1; p=none")
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    assert len(smtp_server.wait_for(3)) == 3


def test_send_with_skip_checks_sends_despite_an_error(gated: Setup, smtp_server: SMTPServer) -> None:
    gated.dns.silent = True
    started = time.monotonic()
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 1 and "no answer from" in out
    assert (
        time.monotonic() - started < 10
    )  # DNS that does not answer delays a refusal by seconds, not minutes
    code, out = run("send", "2019-01", "--list", "members", "--yes", "--skip-checks")
    assert code == 0, out
    assert len(smtp_server.wait_for(3)) == 3


def test_a_test_send_warns_of_errors_and_sends(gated: Setup, smtp_server: SMTPServer) -> None:
    gated.dns.remove(gated.key.record_name, "TXT")
    # One language (the example issue has two) keeps this to a test message per segment.
    code, out = run("test", "2019-01", "--to", "me@example.org", "--language", "en")
    assert code == 0, out
    assert "warning: ✗ dkim-record: no DKIM record at mo2026._domainkey.efus.example" in out
    assert len(smtp_server.wait_for(2)) == 2


def test_a_test_send_with_skip_checks_asks_dns_nothing(gated: Setup, smtp_server: SMTPServer) -> None:
    gated.dns.remove(gated.key.record_name, "TXT")
    code, out = run("test", "2019-01", "--to", "me@example.org", "--skip-checks", "--language", "en")
    assert code == 0 and "warning: ✗" not in out, out
    assert gated.dns.questions == [] and len(smtp_server.wait_for(2)) == 2


def test_the_local_outbox_is_never_checked_before_sending_and_doctor_skips_smtp(gated: Setup) -> None:
    edit_config(gated.root, ('host = "127.0.0.1"', 'host = ""'))
    gated.dns.silent = True  # would make any check fail
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    assert gated.dns.questions == []
    code, out = run("doctor")
    assert code == 1  # the DNS checks still run, and fail
    assert "- smtp-connect: no smtp.host: messages go to the local outbox" in out.splitlines()


def test_a_short_secret_key_is_warned_about_and_send_goes_on(
    gated: Setup, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILOUT_SECRET_KEY", "k" * 20)
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    assert "has 20 characters" in out  # send's own warning
    assert len(smtp_server.wait_for(3)) == 3


def test_a_dry_run_prints_the_errors_as_warnings_then_the_plan(gated: Setup, smtp_server: SMTPServer) -> None:
    gated.dns.remove("_dmarc.efus.example", "TXT")
    code, out = run("send", "2019-01", "--list", "members", "--dry-run")
    assert code == 0, out
    assert "warning: ✗ dmarc-record: no DMARC record at _dmarc.efus.example" in out
    assert "dry run: nothing was written or sent" in out
    assert smtp_server.messages == []
    code, status = run("status", "--json")
    assert code == 0 and json.loads(status) == []


def test_an_unknown_issue_or_list_is_said_before_any_dns_question(gated: Setup) -> None:
    gated.dns.silent = True  # every check would fail, slowly
    code, out = run("send", "no-such-issue", "--list", "members", "--yes")
    assert code == 1 and "no-such-issue" in out, out
    assert "doctor found errors" not in out and "no answer from" not in out
    code, out = run("send", "2019-01", "--list", "no-such-list", "--yes")
    assert code == 1 and "no-such-list" in out and "doctor found errors" not in out, out
    code, out = run("test", "no-such-issue", "--to", "me@example.org")
    assert code == 1 and "no-such-issue" in out and "warning: ✗" not in out, out
    assert gated.dns.questions == []
