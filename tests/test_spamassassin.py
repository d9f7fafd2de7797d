"""SpamAssassin's score of every kind of message mailout writes: tests, members', public, signed or not."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
from pathlib import Path

import pytest

from tests import spamassassin
from tests.conftest import EXAMPLE_ISSUE, SECRET_KEY
from tests.test_sending import add_subscribers, run

pytestmark = pytest.mark.slow

#: The most a message may score from its content and headers (SpamAssassin's default
#: threshold is 5; a clean newsletter should not need any of that margin).
LIMIT = 0.1

CONFIG = """
[newsletter]
name = "Efus Newsletter"
public_base_url = "https://news.efus.example"
postal_address = "10 rue de l'Exemple, 75020 Paris, France"
members_teaser = "{count} more item{s} in this issue for members of the network: join Efus"
members_teaser_url = "https://efus.example/join/"

[sender]
name = "Efus Newsletter"
address = "newsletter@efus.example"
reply_to = "communication@efus.example"

[lists.members]
segment = "member"
description = "Members"

[lists.public]
segment = "public"
description = "Public"
"""

DKIM = '\n[dkim]\ndomain = "efus.example"\nselector = "mo2026"\nkey_file = "dkim.pem"\n'


def kind(data: bytes) -> str:
    """Name a written message: test (with its language) or dispatch, member or public, signed or not."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    subject, to = str(message["Subject"]), str(message["To"])
    test = re.match(r"\[TEST (member|public) ([a-z-]+)\] ", subject)
    if test:
        name = f"test {test[1]} {test[2]}"
    else:
        name = ("member" if "@members.example" in to else "public") + " dispatch"
    return name + (" signed" if message["DKIM-Signature"] else "")


def test_every_kind_of_message_scores_at_most_a_tenth(
    spamassassin_command: str,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
    rsa_pem: bytes,
    tmp_path: Path,
) -> None:
    (workspace / "mailout.toml").write_text(CONFIG, encoding="utf-8")
    shutil.copytree(EXAMPLE_ISSUE.parent, workspace / "issues" / "2019-01")
    monkeypatch.setenv("MAILOUT_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("MAILOUT_DATABASE_URL", f"sqlite:///{tmp_path / 'sa.db'}")
    assert run("db", "upgrade")[0] == 0
    add_subscribers(
        workspace, [("ana@members.example", "Ana Lopes"), ("jo@members.example", "Jo")], "members"
    )
    add_subscribers(workspace, [("sam@public.example", "Sam Reyes")], "public")
    (workspace / "dkim.pem").write_bytes(rsa_pem)
    (workspace / "dkim.pem").chmod(0o600)
    for signed in (False, True):
        if signed:
            with (workspace / "mailout.toml").open("a", encoding="utf-8") as config:
                config.write(DKIM)
        for command in (
            ("test", "2019-01", "--to", "comms@efus.example"),
            ("send", "2019-01", "--list", "members", "--yes", "--again"),
            ("send", "2019-01", "--list", "public", "--yes", "--again"),
        ):
            code, out = run(*command)
            assert code == 0, out
    written = {kind(p.read_bytes()): p.read_bytes() for p in sorted((workspace / "outbox").glob("*.eml"))}
    kinds = [
        f"{k}{s}"
        # The example issue is in English and French: a test message per segment and language.
        for k in (
            "test member en",
            "test member fr",
            "test public en",
            "test public fr",
            "member dispatch",
            "public dispatch",
        )
        for s in ("", " signed")
    ]
    assert sorted(written) == sorted(kinds)
    # A control: the preheader as it was hidden before (white on a white page, 1 px)
    # must score, or a clean result would prove nothing.
    control = written["public dispatch"].replace(  # the HTML part is quoted-printable
        b'class=3D"mo-preheader" style=3D"display:none;',
        b'class=3D"mo-preheader" style=3D"color:#ffffff;font-size:1px;display:none;',
    )
    control = control.replace(b"Message-ID: <", b"Message-ID: <control.", 1)
    assert control != written["public dispatch"]
    reports = spamassassin.score([*written.values(), control], tmp_path / "sa")
    ids = {name: message_id(data) for name, data in [*written.items(), ("control", control)]}
    by_kind = {name: reports[ids[name]] for name in ids}
    assert by_kind["control"].rules.get("HTML_FONT_LOW_CONTRAST", 0) > 0.5, by_kind["control"].describe()
    too_high = {name: r.describe() for name, r in by_kind.items() if name != "control" and r.score > LIMIT}
    assert not too_high, f"SpamAssassin scores over {LIMIT}: {too_high}"
    assert all(r.rules for r in by_kind.values()), "every report lists its rules (HTML_MESSAGE at least)"


def message_id(data: bytes) -> str:
    message = email.message_from_bytes(data, policy=email.policy.default)
    return str(message["Message-ID"])


def test_report_parsing() -> None:
    output = (
        "From a\nMessage-ID: <a@x>\nSubject: x\n\nbody\n\nContent analysis details:   (0.8 points, 5.0 required)\n\n"
        " pts rule name              description\n"
        "---- ---------------------- --------------------------------------------------\n"
        "-0.0 NO_RECEIVED            Informational: message has no Received headers\n"
        " 0.7 HTML_FONT_LOW_CONTRAST BODY: HTML font color similar or identical to\n"
        "                            background\n"
        " 0.1 DKIM_SIGNED            Message has a DKIM or DK signature\n\n"
        "From b\r\nMessage-id: <b@x>\r\nSubject: y\r\n\r\nContent analysis details:   (-1.5 points, 5.0 required)\r\n\r\n"
        " pts rule name              description\r\n---- ----\r\n-1.5 SOME_RULE   d\r\n"
    )
    reports = spamassassin.parse(output)
    assert list(reports) == ["<a@x>", "<b@x>"]
    first, second = reports.values()
    assert first.score == 0.8
    assert first.rules == {"NO_RECEIVED": -0.0, "HTML_FONT_LOW_CONTRAST": 0.7, "DKIM_SIGNED": 0.1}
    assert second == spamassassin.Report(-1.5, {"SOME_RULE": -1.5})
