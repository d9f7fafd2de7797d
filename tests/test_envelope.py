"""The envelope sender on every path that sends, the Feedback-ID, and what a dispatch records of both."""

from __future__ import annotations

import collections
import re
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailout import dispatching, outbox
from mailout.config import Settings, load_settings
from mailout.db import make_engine, upgrade
from mailout.envelope import envelope_sender, for_dispatch, parse_verp
from mailout.errors import ConfigError
from mailout.issues import load_issue
from mailout.message import feedback_id
from mailout.models import Delivery, DeliveryStatus
from mailout.tokens import Signer
from tests.conftest import SECRET_KEY, edit_config
from tests.dnsserver import DNSServer
from tests.smtpserver import Received, SMTPServer
from tests.test_dkim import _sign_with, verifies
from tests.test_migrations import fill, rows
from tests.test_sending import add_subscribers, people, run, statuses

pytestmark = pytest.mark.slow

FROM = "newsletter@efus.example"
RETURN_PATH = "bounces@mail.efus.example"
_FEEDBACK = re.compile(r"[A-Za-z0-9._-]+(?::[A-Za-z0-9._-]+){3}")


def _set_return_path(workspace: Path, address: str) -> None:
    edit_config(workspace, (f'address = "{FROM}"', f'address = "{FROM}"\nreturn_path = "{address}"'))


def _verp_off(workspace: Path) -> None:
    with (workspace / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write("\n[bounces]\nverp = false\n")


def _kept(workspace: Path) -> dict[tuple[int, str], tuple[int, str | None]]:
    """Return each delivery's id and kept envelope, by (dispatch, address)."""
    engine = make_engine(load_settings(workspace).database_url())
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.select(Delivery.dispatch_id, Delivery.email, Delivery.id, Delivery.envelope_sender)
            )
            return {(row[0], row[1]): (row[2], row[3]) for row in found}
    finally:
        engine.dispose()


def _check_verp(workspace: Path, received: list[Received], dispatch: int) -> None:
    """Each message's MAIL FROM is its delivery's own, kept with it, and names it."""
    settings = load_settings(workspace)
    kept = _kept(workspace)
    signer = Signer([SECRET_KEY])
    for message in received:
        [to] = message.rcpt_tos
        delivery, envelope = kept[(dispatch, to)]
        assert message.mail_from == envelope, (to, message.mail_from, envelope)
        assert message.mail_from.startswith(f"bounces+{dispatch}.{delivery}.")
        assert message.mail_from.endswith("@mail.efus.example")
        assert parse_verp(settings, signer, message.mail_from) == (dispatch, delivery)
    assert len({m.mail_from for m in received}) == len(received), "one address per delivery"


def _start_only(workspace: Path, database_url: str) -> int:
    """Write a dispatch of 2019-01 to members without sending it (``mailout worker`` sends it)."""
    settings = load_settings(workspace)
    engine = make_engine(database_url)
    try:
        issue = load_issue(workspace / "issues" / "2019-01" / "issue.yaml")
        plan = dispatching.plan(engine, settings, issue, "members", again=True)
        return dispatching.start(engine, settings, plan).dispatch_id
    finally:
        engine.dispose()


def _check_envelope(received: list[Received], envelope: str) -> None:
    for message in received:
        assert message.mail_from == envelope, message.rcpt_tos
        parsed = message.message()
        [author] = parsed["From"].addresses
        assert author.addr_spec == FROM, "the From header is the sender's, whatever the envelope"
        assert "Return-Path" not in parsed, "a receiving server adds Return-Path, not the sender"
        assert _FEEDBACK.fullmatch(parsed["Feedback-ID"]), parsed["Feedback-ID"]


@pytest.mark.parametrize(
    ("return_path", "verp"),
    [(RETURN_PATH, True), (RETURN_PATH, False), ("", True)],
    ids=["verp", "plain", "unset"],
)
def test_every_path_that_sends_gives_the_return_path_as_mail_from(
    sending_workspace: Path, smtp_server: SMTPServer, database_url: str, return_path: str, verp: bool
) -> None:
    if return_path:
        _set_return_path(sending_workspace, return_path)
    if not verp:
        _verp_off(sending_workspace)
    envelope = return_path or FROM
    verp = verp and bool(return_path)
    # With VERP a dispatch's messages each have their own; a test message has the return path.
    shared = "bounces+{}.<delivery>.<mac>@mail.efus.example" if verp else envelope
    add_subscribers(sending_workspace, people(3))
    code, out = run("test", "2019-01", "--to", "team@efus.example")
    assert code == 0, out
    tests = smtp_server.wait_for(2)
    _check_envelope(tests, envelope)
    assert {m.message()["Feedback-ID"] for m in tests} == {
        "test:test-member:2019-01:efus.example",
        "test:test-public:2019-01:efus.example",
    }
    smtp_server.clear()

    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    if verp:
        _check_verp(sending_workspace, smtp_server.wait_for(3), 1)
    else:
        _check_envelope(smtp_server.wait_for(3), envelope)
        assert {kept for _, kept in _kept(sending_workspace).values()} == {envelope}
    assert {m.message()["Feedback-ID"] for m in smtp_server.messages} == {"1:members:2019-01:efus.example"}
    smtp_server.clear()

    second = _start_only(sending_workspace, database_url)
    code, out = run("worker", "--dispatch", str(second))
    assert code == 0, out
    if verp:
        _check_verp(sending_workspace, smtp_server.wait_for(3), second)
    else:
        _check_envelope(smtp_server.wait_for(3), envelope)
    assert {m.message()["Feedback-ID"] for m in smtp_server.messages} == {
        f"{second}:members:2019-01:efus.example"
    }

    for dispatch in (1, second):
        code, out = run("status", str(dispatch))
        assert code == 0, out
        assert "not signed" in out.splitlines()
        assert f"envelope sender: {shared.format(dispatch)}" in out.splitlines(), out


@pytest.mark.parametrize("verp", [True, False], ids=["verp", "plain"])
def test_a_dispatch_resumed_after_the_return_path_changed_uses_the_new_one_and_says_so(
    sending_workspace: Path, smtp_server: SMTPServer, verp: bool
) -> None:
    _set_return_path(sending_workspace, RETURN_PATH)
    if not verp:
        _verp_off(sending_workspace)
    old, new = (
        ("bounces+1.<delivery>.<mac>@mail.efus.example", "bounces+1.<delivery>.<mac>@efus.example")
        if verp
        else (RETURN_PATH, "bounces@efus.example")
    )
    add_subscribers(sending_workspace, people(10))
    for address, _ in people(10):
        smtp_server.answer(address, 550, "5.7.1 SPF check failed", times=1)
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 3 and "paused" in out, out
    first = len(smtp_server.messages)
    smtp_server.rules.clear()
    edit_config(sending_workspace, (RETURN_PATH, "bounces@efus.example"))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0 and "resuming dispatch 1" in out, out
    assert f"the messages of the run before had the envelope sender {old}; this run's have {new}" in out, out
    later = smtp_server.messages[first:]
    assert later
    if verp:
        settings, signer = load_settings(sending_workspace), Signer([SECRET_KEY])
        kept = _kept(sending_workspace)
        for message in later:
            delivery, envelope = kept[(1, message.rcpt_tos[0])]
            assert message.mail_from == envelope and message.mail_from.endswith("@efus.example")
            assert parse_verp(settings, signer, message.mail_from) == (1, delivery)
    else:
        assert {m.mail_from for m in later} == {"bounces@efus.example"}
    code, out = run("status", "1")
    assert f"envelope sender: {new} (earlier runs: envelope sender: {old})" in out.splitlines(), out
    assert collections.Counter(statuses(sending_workspace).values())["queued"] == 0


def test_a_resumed_dispatch_without_return_path_keeps_its_own_from_as_envelope(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    """The From is frozen with the dispatch: MAIL FROM follows it, not today's sender.address."""
    add_subscribers(sending_workspace, people(6))
    for address, _ in people(6):
        smtp_server.answer(address, 550, "5.7.1 SPF check failed", times=1)
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 3 and "paused" in out, out
    first = len(smtp_server.messages)
    smtp_server.rules.clear()
    edit_config(sending_workspace, (f'address = "{FROM}"', 'address = "news@other.example"'))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0 and "resuming dispatch 1" in out, out
    assert "envelope sender" not in out, out
    later = smtp_server.messages[first:]
    assert later
    for message in later:
        assert message.message()["From"].addresses[0].addr_spec == FROM
        assert message.mail_from == FROM


def test_status_says_which_key_signed_a_dispatch(
    sending_workspace: Path, smtp_server: SMTPServer, rsa_pem: bytes, ed25519_pem: bytes
) -> None:
    add_subscribers(sending_workspace, people(2))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    (sending_workspace / "dkim.pem").write_bytes(rsa_pem)
    (sending_workspace / "dkim.pem").chmod(0o600)
    with (sending_workspace / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write('\n[dkim]\ndomain = "efus.example"\nselector = "mo2026"\nkey_file = "dkim.pem"\n')
    code, out = run("send", "2019-01", "--list", "members", "--yes", "--again")
    assert code == 0, out
    (sending_workspace / "dkim-ed.pem").write_bytes(ed25519_pem)
    (sending_workspace / "dkim-ed.pem").chmod(0o600)
    edit_config(
        sending_workspace,
        (
            'selector = "mo2026"',
            'selector = "mo2026"\ned25519_selector = "mo2026e"\ned25519_key_file = "dkim-ed.pem"',
        ),
    )
    code, out = run("send", "2019-01", "--list", "members", "--yes", "--again")
    assert code == 0, out
    expected = {
        1: "not signed",
        2: "signed: d=efus.example s=mo2026 (rsa-sha256)",
        3: "signed: d=efus.example s=mo2026 (rsa-sha256), d=efus.example s=mo2026e (ed25519-sha256)",
    }
    for dispatch, line in expected.items():
        code, out = run("status", str(dispatch))
        assert code == 0 and line in out.splitlines(), out
    code, out = run("status", "2", "--json")
    assert '"signing": [\n    "d=efus.example s=mo2026 (rsa-sha256)"\n  ]' in out, out


def test_the_outbox_shows_the_envelope_as_a_delivered_message_does(sending_workspace: Path) -> None:
    config = sending_workspace / "mailout.toml"
    config.write_text(re.sub(r"\[smtp\][^\[]*", "", config.read_text(encoding="utf-8")), encoding="utf-8")
    _set_return_path(sending_workspace, RETURN_PATH)
    add_subscribers(sending_workspace, people(2))
    # One language: a test message per segment (the example issue is in English and French).
    assert run("test", "2019-01", "--to", "team@efus.example", "--language", "en")[0] == 0
    assert run("send", "2019-01", "--list", "members", "--yes")[0] == 0
    written = sorted((sending_workspace / "outbox").glob("*.eml"))
    assert len(written) == 4
    feedback = set()
    # A test message shows the return path; a dispatch's, the address its delivery kept (VERP).
    kept = {f"Return-Path: <{envelope}>" for _, envelope in _kept(sending_workspace).values()}
    assert len(kept) == 2 and all("bounces+1." in line for line in kept), kept
    expected = kept | {f"Return-Path: <{RETURN_PATH}>"}
    shown = set()
    for path in written:
        data = path.read_bytes()
        shown.add(data.split(b"\r\n", 1)[0].decode())
        assert data.count(b"Return-Path:") == 1
        feedback.add(re.search(rb"^Feedback-ID: (.*)\r$", data, re.M).group(1))  # type: ignore[union-attr]
    assert shown == expected
    # A test and a dispatch tell themselves apart by their Feedback-ID.
    assert feedback == {
        b"test:test-member:2019-01:efus.example",
        b"test:test-public:2019-01:efus.example",
        b"1:members:2019-01:efus.example",
    }


def test_a_return_path_outside_ascii_is_refused_at_once(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    add_subscribers(sending_workspace, people(1))
    _set_return_path(sending_workspace, "rebonds@été.example")
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 1 and "sender.return_path" in out and "outside ASCII" in out and "xn--" in out, out
    assert smtp_server.messages == []


# --- the record on the dispatch --------------------------------------------------


def test_an_upgraded_database_says_it_does_not_know_for_old_dispatches(
    empty_database_url: str, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = empty_database_url
    upgrade(url, "0006")
    engine = make_engine(url)
    data = rows()
    try:
        with engine.begin() as connection:
            fill(connection, data)
        upgrade(url)
        monkeypatch.setenv("MAILOUT_DATABASE_URL", url)
        code, out = run("status", "1")
        assert code == 0, out
        assert "signed: unknown (sent before mailout recorded it)" in out.splitlines()
        assert "envelope sender: unknown (sent before mailout recorded it)" in out.splitlines()
        # A run of an old dispatch records from then on; a like run adds nothing, another does.
        for signing, envelope in [("", FROM), ("", FROM), ("d=efus.example s=k1 (rsa-sha256)", FROM)]:
            with engine.begin() as connection:
                outbox.record_run(connection, 2, signing=signing, envelope_sender=envelope)
        with engine.connect() as connection:
            ran = outbox.run_record(connection, 2)
        assert ran == outbox.RunRecord(("", "d=efus.example s=k1 (rsa-sha256)"), (FROM,))
        code, out = run("status", "2")
        assert "signed: d=efus.example s=k1 (rsa-sha256) (earlier runs: not signed)" in out.splitlines(), out
        assert f"envelope sender: {FROM}" in out.splitlines()
    finally:
        engine.dispose()


def test_runs_starting_together_record_their_envelope_once(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    data = rows()
    try:
        with engine.begin() as connection:
            fill(connection, data)
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def start() -> None:
            try:
                barrier.wait()
                with engine.begin() as connection:
                    outbox.record_run(connection, 1, signing="", envelope_sender=RETURN_PATH)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        with engine.connect() as connection:
            assert outbox.run_record(connection, 1) == outbox.RunRecord(("",), (RETURN_PATH,))
            raw = connection.execute(sa.text("SELECT envelope_sender FROM dispatches WHERE id = 1")).scalar()
        assert raw == RETURN_PATH
    finally:
        engine.dispose()


# --- units -------------------------------------------------------------------------


def test_the_envelope_is_the_return_path_else_the_from_address(tmp_path: Path) -> None:
    (tmp_path / "mailout.toml").write_text(f'[sender]\naddress = "{FROM}"\n', encoding="utf-8")
    assert envelope_sender(load_settings(tmp_path, env={}), 3, 17) == FROM
    assert envelope_sender(load_settings(tmp_path, env={}), 3, from_address="old@efus.example") == (
        "old@efus.example"
    )
    (tmp_path / "mailout.toml").write_text(
        f'[sender]\naddress = "{FROM}"\nreturn_path = "{RETURN_PATH}"\n', encoding="utf-8"
    )
    settings = load_settings(tmp_path, env={})
    assert envelope_sender(settings) == RETURN_PATH, "a test message: the return path as it is"
    assert (
        envelope_sender(settings, 3, from_address="old@efus.example")
        == "bounces+3.<delivery>.<mac>@mail.efus.example"
    )
    with pytest.raises(ConfigError, match="MAILOUT_SECRET_KEY"):
        envelope_sender(settings, 3, 17)
    signer = Signer([SECRET_KEY])
    assert envelope_sender(settings, 3, 17, signer=signer) == for_dispatch(settings, 3, signer=signer)(17)
    assert re.fullmatch(
        r"bounces\+3\.17\.[a-z2-7]{10}@mail\.efus\.example", envelope_sender(settings, 3, 17, signer=signer)
    )
    (tmp_path / "mailout.toml").write_text(
        f'[sender]\naddress = "{FROM}"\nreturn_path = "{RETURN_PATH}"\n[bounces]\nverp = false\n',
        encoding="utf-8",
    )
    settings = load_settings(tmp_path, env={})
    assert (
        envelope_sender(settings)
        == envelope_sender(settings, 3)
        == envelope_sender(settings, 3, 17)
        == RETURN_PATH
    )
    assert parse_verp(settings, signer, RETURN_PATH) is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (("12", "members", "2019-01", "efus.example"), "12:members:2019-01:efus.example"),
        (
            ("12", "a list: with spaces", "2019-01", "efus.example"),
            "12:a-list-with-spaces:2019-01:efus.example",
        ),
        (("12", "Ünïcode:名前", "x", "ville-été.example"), "12:n-code:x:xn--ville-t-gyab.example"),
        (("12", "::", "", "efus.example"), "12:-:-:efus.example"),
        (("12", "l" * 200, "i" * 200, "efus.example"), f"12:{'l' * 64}:{'i' * 64}:efus.example"),
    ],
)
def test_feedback_id_fields_hold_no_colon_no_space_and_only_ascii(
    fields: tuple[str, str, str, str], expected: str
) -> None:
    value = feedback_id(*fields)
    assert value == expected
    assert _FEEDBACK.fullmatch(value) and value.isascii() and len(value) < 998 - len("Feedback-ID: ")


# --- return addresses that name their delivery (VERP) ----------------------------------


def _verp_settings(tmp_path: Path, return_path: str = RETURN_PATH, extra: str = "") -> Settings:
    (tmp_path / "mailout.toml").write_text(
        f'[sender]\naddress = "{FROM}"\nreturn_path = "{return_path}"\n{extra}', encoding="utf-8"
    )
    return load_settings(tmp_path, env={})


OLD_KEY = "an-older-key-still-configured-0123456789"
NEW_KEY = "the-newer-key-that-signs-now-0123456789"


def test_a_return_address_names_its_delivery_and_nothing_else_matches(tmp_path: Path) -> None:
    settings = _verp_settings(tmp_path)
    signer = Signer([NEW_KEY])
    address = for_dispatch(settings, 12, signer=signer)(3456)
    local, _, domain = address.partition("@")
    mac = local.rsplit(".", 1)[1]
    assert parse_verp(settings, signer, address) == (12, 3456)
    # Some servers change the case of the local part (and of the domain): still this delivery.
    assert parse_verp(settings, signer, address.upper()) == (12, 3456)
    assert parse_verp(settings, signer, local.upper() + "@" + domain) == (12, 3456)
    # Another message of the same dispatch has another code.
    other = for_dispatch(settings, 12, signer=signer)(3457)
    assert other.startswith("bounces+12.3457.") and other.split("@")[0][-10:] != mac
    forged_letter = mac[:-1] + ("a" if mac[-1] != "a" else "b")
    refused = [
        address.replace(mac, forged_letter),  # one letter of the code changed
        address.replace(".3456.", ".3457."),  # another delivery, this one's code
        address.replace("+12.", "+13."),  # another dispatch
        address.replace("+12.3456.", "+3456.12."),  # the ids swapped
        address.replace(mac, mac[:-1]),  # truncated
        address.replace(mac, mac + "a"),  # too long
        address.replace("+12.", "+012."),  # the same number, written otherwise
        address.replace("bounces+", "bounces-"),  # another separator
        address.replace("bounces+", "rebonds+"),  # another mailbox
        address.replace("@mail.efus.example", "@efus.example"),  # another domain
        address.split("@")[0],  # no domain
        f"<{address}>",  # not a bare address
        address + " ",
        RETURN_PATH,  # the fixed return path names no delivery
        for_dispatch(settings, 12, signer=Signer([OLD_KEY]))(3456),  # a key not configured
        "",
        "@",
    ]
    for wrong in refused:
        assert parse_verp(settings, signer, wrong) is None, wrong


def test_after_a_key_rotation_both_keys_verify_and_the_new_one_signs(tmp_path: Path) -> None:
    settings = _verp_settings(tmp_path)
    before = for_dispatch(settings, 4, signer=Signer([OLD_KEY]))(99)
    rotated = Signer([NEW_KEY, OLD_KEY])
    after = for_dispatch(settings, 4, signer=rotated)(99)
    assert after != before and after == for_dispatch(settings, 4, signer=Signer([NEW_KEY]))(99)
    assert parse_verp(settings, rotated, before) == (4, 99), "a message in flight at the rotation"
    assert parse_verp(settings, rotated, after) == (4, 99)
    assert parse_verp(settings, Signer([NEW_KEY]), before) is None, "the old key dropped: no longer"


def test_the_separator_and_the_local_part_come_from_the_settings(tmp_path: Path) -> None:
    settings = _verp_settings(tmp_path, "News.Bounces@Mail.Efus.Example", '[bounces]\nverp_separator = "-"\n')
    signer = Signer([SECRET_KEY])
    address = for_dispatch(settings, 1, signer=signer)(2)
    assert re.fullmatch(r"News\.Bounces-1\.2\.[a-z2-7]{10}@Mail\.Efus\.Example", address), address
    assert parse_verp(settings, signer, address.lower()) == (1, 2)
    assert parse_verp(settings, signer, address.replace("-1.", "+1.")) is None


def test_a_return_path_whose_local_part_leaves_no_room_is_refused(tmp_path: Path) -> None:
    fits = "b" * 27 + "@mail.efus.example"
    settings = _verp_settings(tmp_path, fits)
    # The longest ids config time makes room for still give a local part of 64 at most.
    longest = for_dispatch(settings, 10**12 - 1, signer=Signer([SECRET_KEY]))(10**12 - 1)
    assert len(longest.split("@")[0]) == 64
    assert parse_verp(settings, Signer([SECRET_KEY]), longest) == (10**12 - 1, 10**12 - 1)
    with pytest.raises(ConfigError, match="delivery 1000000000000: the id is too long"):
        for_dispatch(settings, 1, signer=Signer([SECRET_KEY]))(10**12)
    with pytest.raises(
        ConfigError, match=r"sender\.return_path: its local part 'b{28}' leaves no room.* at most 27"
    ):
        _verp_settings(tmp_path, "b" * 28 + "@mail.efus.example")
    # Without VERP the same address is fine: it goes as it is.
    assert _verp_settings(tmp_path, "b" * 28 + "@mail.efus.example", "[bounces]\nverp = false\n")
    with pytest.raises(ConfigError, match=re.escape("bounces.verp_separator: must be '+' or '-', got '='")):
        _verp_settings(tmp_path, extra='[bounces]\nverp_separator = "="\n')
    # From the environment too.
    (tmp_path / "mailout.toml").write_text(f'[sender]\naddress = "{FROM}"\n', encoding="utf-8")
    env = {"MAILOUT_SENDER_RETURN_PATH": "c" * 40 + "@efus.example"}
    with pytest.raises(ConfigError, match="leaves no room"):
        load_settings(tmp_path, env=env)
    assert not load_settings(tmp_path, env={**env, "MAILOUT_BOUNCES_VERP": "false"}).bounces.verp


def test_each_delivery_goes_out_with_its_own_return_address_signed_as_before(
    sending_workspace: Path, smtp_server: SMTPServer, dns_server: DNSServer, rsa_pem: bytes
) -> None:
    """Over SMTP: each MAIL FROM names its delivery; From and the DKIM signature do not change."""
    _set_return_path(sending_workspace, RETURN_PATH)
    _sign_with(sending_workspace, rsa_pem, dns_server)
    add_subscribers(sending_workspace, people(6))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    received = smtp_server.wait_for(6)
    _check_verp(sending_workspace, received, 1)
    for message in received:
        assert message.message()["From"].addresses[0].addr_spec == FROM
        assert b"bounces" not in message.raw.split(b"\r\n\r\n", 1)[0], "the envelope is in no header"
        assert verifies(message.raw, dns_server), "the envelope is not signed: the signature holds"
    assert collections.Counter(statuses(sending_workspace).values()) == {"sent": 6}


def test_the_envelope_is_kept_with_the_sending_mark_before_the_message_goes_out(database_url: str) -> None:
    """A process killed right after the mark leaves the delivery with its envelope: its bounce matches."""
    upgrade(database_url)
    engine = make_engine(database_url)
    data = rows()
    try:
        with engine.begin() as connection:
            fill(connection, data)
            # Two deliveries of an upgraded database, claimed by this process.
            first, second = (row["id"] for row in data["deliveries"][:2])
            connection.execute(
                sa.update(Delivery)
                .where(Delivery.id.in_([first, second]))
                .values(status=DeliveryStatus.CLAIMED, worker="w1")
            )
        with outbox.loop_connection(engine) as db:
            assert outbox.advance(db, None, first, "w1", f"bounces+2.{first}.aaaaaaaaaa@x.example")
            assert outbox.advance(
                db, outbox.Sent(first, "250 ok"), second, "w1", f"bounces+2.{second}.bbbbbbbbbb@x.example"
            )
        # Read on another connection: committed, before any answer came.
        with engine.connect() as connection:
            kept = dict(
                connection.execute(
                    sa.text("SELECT id, envelope_sender FROM deliveries WHERE id IN (:a, :b)"),
                    {"a": first, "b": second},
                ).all()
            )
            untouched = connection.execute(
                sa.text("SELECT count(*) FROM deliveries WHERE envelope_sender IS NOT NULL")
            ).scalar()
        assert kept == {
            first: f"bounces+2.{first}.aaaaaaaaaa@x.example",
            second: f"bounces+2.{second}.bbbbbbbbbb@x.example",
        }
        assert untouched == 2, "old deliveries keep NULL: not known"
    finally:
        engine.dispose()
