"""mailsource: the same promises from a Maildir, an mbox file and a real IMAP server (Dovecot).

Each message is read as it is stored; ``done`` marks, moves or deletes only the
message it names; nothing else changes, and reading never marks a message seen.
"""

from __future__ import annotations

import base64
import mailbox
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailout import mailsource, reports
from mailout.config import load_settings
from mailout.errors import ConfigError, WorkspaceError
from mailout.mailsource import ImapAddress, imap_utf7, open_source
from tests.dovecot import DovecotServer

#: (folder, flags) of one message; the folder "" is the mailbox itself (INBOX).
Where = tuple[str, frozenset[str]]
UNREAD: Where = ("", frozenset())


def samples(eol: bytes) -> list[bytes]:
    """Three messages as a mailbox stores them: with ``eol`` ending each line."""
    messages = [
        [b"From: a@example.org", b"Subject: one", b"Message-ID: <1@example.org>", b"", b"first"],
        [
            b"From: b@example.org",
            b"Subject: =?utf-8?q?deux?=",
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Transfer-Encoding: 8bit",
            b"",
            "Réponse à 8 bits".encode(),
            b"\xff a byte that is no UTF-8",
            b"x" * 900,
        ],
        [b"Subject: three", b"", b"   trailing spaces   ", b"", b"last"],
    ]
    return [eol.join(lines) + eol for lines in messages]


@dataclass
class Box:
    """A mailbox of one kind, the SOURCE that names it and ways to look inside without mailout."""

    kind: str
    spec: str
    eol: bytes
    deliver: Callable[[bytes], None]
    #: Every message of every folder: its bytes and where it is, with which flags.
    state: Callable[[], dict[bytes, Where]]
    options: dict[str, Any] = field(default_factory=dict)
    #: The flags ``done`` sets when the message stays where it is.
    handled: frozenset[str] = frozenset({"\\Seen"})

    def open(self, **options: Any) -> mailsource.MailSource:
        return open_source(self.spec, **self.options, **options)


def _maildir_box(root: Path) -> Box:
    path = root / "Maildir"
    box = mailbox.Maildir(path, create=True)
    counter = iter(range(1_000_000))

    def deliver(raw: bytes) -> None:
        # As a delivery agent does: written in tmp/, then renamed into new/.
        name = f"{time.time_ns()}.{next(counter)}.test"
        (path / "tmp" / name).write_bytes(raw)
        (path / "tmp" / name).rename(path / "new" / name)

    def state() -> dict[bytes, Where]:
        found: dict[bytes, Where] = {}
        for folder, each in [("", box), *((name, box.get_folder(name)) for name in box.list_folders())]:
            for key in each.iterkeys():
                message = each.get_message(key)
                flags = frozenset(
                    {"S": "\\Seen", "F": "\\Flagged", "T": "\\Deleted"}[f] for f in message.get_flags()
                )
                assert message.get_subdir() == ("cur" if flags else "new"), (key, flags)
                raw = each.get_bytes(key)
                assert raw not in found, f"two copies: {found[raw]} and {(folder, flags)}"
                found[raw] = (folder, flags)
        return found

    return Box("maildir", str(path), b"\n", deliver, state)


def _mbox_box(root: Path) -> Box:
    path = root / "bounces.mbox"
    path.write_bytes(b"")

    def deliver(raw: bytes) -> None:
        with path.open("ab") as file:
            file.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\n" + raw + b"\n")

    def state() -> dict[bytes, Where]:
        box = mailbox.mbox(path, create=False)
        try:
            return {box.get_bytes(key): UNREAD for key in box.iterkeys()}
        finally:
            box.close()

    return Box("mbox", str(path), b"\n", deliver, state)


def imap_box(server: DovecotServer, scheme: str = "imaps") -> Box:
    """The INBOX of ``server``'s user, as ``scheme``://...; options trust the server's CA."""
    port = server.imaps_port if scheme == "imaps" else server.imap_port

    def deliver(raw: bytes) -> None:
        server.append("INBOX", raw)

    def state() -> dict[bytes, Where]:
        found: dict[bytes, Where] = {}
        for folder in server.folders():
            flags = server.flags(folder)
            for uid, raw in server.messages(folder).items():
                where = ("" if folder == "INBOX" else folder, frozenset(flags[uid]))
                assert raw not in found, f"two copies: {found[raw]} and {where}"
                found[raw] = where
        return found

    return Box(
        "imap",
        f"{scheme}://{server.url_user}@127.0.0.1:{port}/INBOX",
        b"\r\n",
        deliver,
        state,
        options={
            "environ": {"MAILOUT_IMAP_PASSWORD": server.password},
            "ca_file": server.ca_file,
            "timeout": 10,
        },
        handled=frozenset({"\\Seen", "\\Flagged"}),
    )


@pytest.fixture(params=["maildir", "mbox", "imap"])
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Box:
    """A mailbox of each kind, empty."""
    if request.param == "maildir":
        return _maildir_box(tmp_path)
    if request.param == "mbox":
        return _mbox_box(tmp_path)
    return imap_box(request.getfixturevalue("dovecot"))


@pytest.fixture(params=["maildir", "imap"])
def writable_box(request: pytest.FixtureRequest, tmp_path: Path) -> Box:
    """A mailbox whose messages ``done`` can mark, move or delete, empty."""
    if request.param == "maildir":
        return _maildir_box(tmp_path)
    return imap_box(request.getfixturevalue("dovecot"))


def _fill(box: Box) -> list[bytes]:
    messages = samples(box.eol)
    for raw in messages:
        box.deliver(raw)
    return messages


# -- the same promises from every kind of mailbox -----------------------------------------------


def test_every_message_is_read_as_it_is_stored(box: Box) -> None:
    messages = _fill(box)
    with box.open() as source:
        items = list(source)
    assert sorted(item.raw for item in items) == sorted(messages)
    assert len({item.key for item in items}) == len(messages)


def test_reading_changes_nothing(box: Box) -> None:
    messages = _fill(box)
    before = box.state()
    assert before == dict.fromkeys(messages, UNREAD)
    for _ in range(2):
        with box.open() as source:
            assert len(list(source)) == len(messages)
    assert box.state() == before


def test_done_marks_only_that_message(box: Box) -> None:
    messages = _fill(box)
    with box.open() as source:
        items = list(source)
        handled = next(item for item in items if item.raw == messages[1])
        source.done(handled.key)
    expected = dict.fromkeys(messages, UNREAD)
    if box.kind != "mbox":  # an mbox file is only read: nothing in it changes
        expected[messages[1]] = ("", box.handled)
    assert box.state() == expected
    # And the next reading still reads every message, the handled one too.
    with box.open() as source:
        assert sorted(item.raw for item in source) == sorted(messages)


def test_an_empty_mailbox_yields_nothing(box: Box) -> None:
    with box.open() as source:
        assert list(source) == []


def test_move_to_moves_only_the_handled_messages(writable_box: Box) -> None:
    messages = _fill(writable_box)
    with writable_box.open(move_to="Processed") as source:
        for item in source:
            if item.raw != messages[2]:
                source.done(item.key)
    assert writable_box.state() == {
        messages[0]: ("Processed", frozenset({"\\Seen"})),
        messages[1]: ("Processed", frozenset({"\\Seen"})),
        messages[2]: UNREAD,
    }
    # The folder exists now: a second run moves into it as well.
    extra = writable_box.eol.join([b"Subject: four", b"", b"x"]) + writable_box.eol
    writable_box.deliver(extra)
    with writable_box.open(move_to="Processed") as source:
        for item in source:
            if item.raw == extra:
                source.done(item.key)
    assert writable_box.state()[extra] == ("Processed", frozenset({"\\Seen"}))
    assert writable_box.state()[messages[2]] == UNREAD


def test_delete_deletes_only_the_handled_messages(writable_box: Box) -> None:
    messages = _fill(writable_box)
    with writable_box.open(delete=True) as source:
        for item in source:
            if item.raw == messages[0]:
                source.done(item.key)
    assert writable_box.state() == {messages[1]: UNREAD, messages[2]: UNREAD}


def test_a_message_delivered_during_the_reading(box: Box) -> None:
    messages = _fill(box)
    late = box.eol.join([b"Subject: late", b"", b"arrived meanwhile"]) + box.eol
    seen = []
    with box.open() as source:
        for index, item in enumerate(source):
            seen.append(item.raw)
            if index == 0:
                box.deliver(late)
            if box.kind != "mbox":
                source.done(item.key)
    assert set(messages) <= set(seen) <= {*messages, late}
    if box.kind != "mbox":
        # Whether it was read this time or not, it is unread unless it was handled.
        assert box.state()[late] == (("", box.handled) if late in seen else UNREAD)


def test_move_and_delete_together_are_refused(box: Box) -> None:
    with pytest.raises(WorkspaceError, match="either moved or deleted"):
        box.open(move_to="Processed", delete=True)


def test_an_mbox_file_refuses_move_and_delete(tmp_path: Path) -> None:
    box = _mbox_box(tmp_path)
    for options in ({"move_to": "Processed"}, {"delete": True}):
        with pytest.raises(WorkspaceError, match="an mbox file is only read"):
            box.open(**options)


def test_what_is_no_mailbox(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(WorkspaceError, match="not a Maildir"):
        open_source(str(tmp_path / "folder"))
    with pytest.raises(WorkspaceError, match="no such Maildir or mbox file"):
        open_source(str(tmp_path / "missing"))
    with pytest.raises(WorkspaceError, match=r"pop3://\.\.\.: not a mailbox mailout reads"):
        open_source("pop3://ana@mail.example.org/")


# -- IMAP: addresses ------------------------------------------------------------------------------


def test_imap_address_defaults_and_percent_encoding() -> None:
    address = ImapAddress.parse("imap://ana%40example.org@Mail.Example.org")
    assert (address.implicit_tls, address.user, address.host, address.port, address.folder) == (
        False,
        "ana@example.org",
        "mail.example.org",
        143,
        "INBOX",
    )
    assert address.name == "imap://ana%40example.org@mail.example.org:143/INBOX"
    address = ImapAddress.parse("IMAPS://bounces@[::1]:1993/Archive/R%C3%A9ponses%20%22DSN%22")
    assert (address.implicit_tls, address.host, address.port) == (True, "::1", 1993)
    assert address.folder == 'Archive/Réponses "DSN"'
    assert address.name == "imaps://bounces@[::1]:1993/Archive/R%C3%A9ponses%20%22DSN%22"
    # An @ left unencoded in the user is read the same way.
    assert ImapAddress.parse("imaps://ana@example.org@mail.example.org/").user == "ana@example.org"
    assert ImapAddress.parse("imaps://ana@mail.example.org/").port == 993


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("imaps://mail.example.org/INBOX", "no user"),
        ("imaps://ana@/INBOX", "no server"),
        ("imaps://ana@mail.example.org:99999/INBOX", "the port must be a number"),
        ("imaps://ana@mail.example.org:imap/INBOX", "the port must be a number"),
        ("imaps://ana@mail.example.org/IN%0D%0ABOX", "no control characters"),
        ("imaps://ana%0A@mail.example.org/INBOX", "control character"),
        ("imaps://ana@mail.example.org/INBOX?uid=3", "unexpected"),
        ("imaps://ana@mail.example.org/INBOX#x", "unexpected"),
        ("imaps://ana@[::1/INBOX", "not an IMAP address"),
    ],
)
def test_imap_address_mistakes(spec: str, message: str) -> None:
    with pytest.raises(WorkspaceError, match=message):
        open_source(spec, environ={"MAILOUT_IMAP_PASSWORD": "x"})


def test_a_password_in_the_address_is_refused_and_never_shown() -> None:
    with pytest.raises(WorkspaceError) as caught:
        open_source("imaps://ana:Sesame-4711@mail.example.org/INBOX", environ={})
    assert "MAILOUT_IMAP_PASSWORD" in str(caught.value)
    assert "Sesame-4711" not in str(caught.value)


@pytest.mark.parametrize(
    "spec",
    [
        "imaps://ana:S3CRET]@mail.example.org/INBOX",
        "imaps://ana:[S3CRET]@mail.example.org/INBOX",
        "imaps://ana:S3[CRET@mail.example.org/INBOX",
        "imap://ana:S3CRET@[mail.example.org/INBOX",
    ],
)
def test_an_address_that_cannot_be_read_never_shows_its_password(spec: str) -> None:
    with pytest.raises(WorkspaceError, match="not an IMAP address") as caught:
        open_source(spec, environ={"MAILOUT_IMAP_PASSWORD": "x"})
    assert "S3" not in str(caught.value) and "CRET" not in str(caught.value)
    assert "mail.example.org" in str(caught.value)  # the rest still says which address


def test_move_to_the_folder_itself_is_refused() -> None:
    with pytest.raises(WorkspaceError, match="cannot move to the folder they are in"):
        open_source("imaps://ana@mail.example.org/Bounces", move_to="Bounces", environ={})
    with pytest.raises(WorkspaceError, match="--move-to"):
        open_source("imaps://ana@mail.example.org/", move_to="Done\r\nA1 DELETE INBOX", environ={})


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("INBOX", "INBOX"),
        ("Réponses", "R&AOk-ponses"),
        ("Tom & Jerry", "Tom &- Jerry"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501's example
        ("😀", "&2D3eAA-"),
    ],
)
def test_folder_names_in_modified_utf7(name: str, encoded: str) -> None:
    assert imap_utf7(name) == encoded


def test_the_password_variable(dovecot: DovecotServer) -> None:
    box = imap_box(dovecot)
    for environ, state in (({}, "not set"), ({"MAILOUT_IMAP_PASSWORD": ""}, "empty")):
        with pytest.raises(WorkspaceError, match=f"MAILOUT_IMAP_PASSWORD, .* is {state}"):
            open_source(box.spec, environ=environ, ca_file=dovecot.ca_file)
    # Another variable when asked; the default one is then not read.
    environ = {"BOUNCES_PASSWORD": dovecot.password, "MAILOUT_IMAP_PASSWORD": "wrong"}
    with open_source(
        box.spec, environ=environ, password_env="BOUNCES_PASSWORD", ca_file=dovecot.ca_file
    ) as source:
        assert list(source) == []
    with pytest.raises(WorkspaceError, match=r"BOUNCES_PASSWORD, .* is not set"):
        open_source(box.spec, environ={}, password_env="BOUNCES_PASSWORD", ca_file=dovecot.ca_file)


def test_the_password_variables_are_known_to_the_settings(tmp_path: Path) -> None:
    (tmp_path / "mailout.toml").write_text("")
    env = {"MAILOUT_IMAP_PASSWORD": "x", "MAILOUT_IMAP_CA_FILE": "/etc/ssl/ca.pem"}
    load_settings(tmp_path, env=env)  # not refused as unknown MAILOUT_* variables
    (tmp_path / "mailout.toml").write_text('[bounces]\nimap_password = "Sesame-4711"\n')
    with pytest.raises(ConfigError, match="set the environment variable MAILOUT_IMAP_PASSWORD") as caught:
        load_settings(tmp_path, env={})
    assert "Sesame-4711" not in str(caught.value)


# -- IMAP: a real server ----------------------------------------------------------------------------


def test_starttls_on_the_imap_port(dovecot: DovecotServer) -> None:
    box = imap_box(dovecot, "imap")
    messages = _fill(box)
    with box.open() as source:
        assert source.name == f"imap://ana%40example.org@127.0.0.1:{dovecot.imap_port}/INBOX"
        assert sorted(item.raw for item in source) == sorted(messages)
        validity = source.uidvalidity  # type: ignore[attr-defined]
    # The folder's UIDVALIDITY, the same for the next reader: its UIDs name the same messages.
    with imap_box(dovecot).open() as again:
        assert validity > 0 and again.uidvalidity == validity  # type: ignore[attr-defined]
    # STARTTLS verifies the certificate too.
    with pytest.raises(WorkspaceError, match="certificate is not trusted"):
        open_source(box.spec, environ=box.options["environ"], ca_file=dovecot.other_ca_file, timeout=10)


def test_a_wrong_password(dovecot: DovecotServer) -> None:
    box = imap_box(dovecot)
    with pytest.raises(WorkspaceError) as caught:
        open_source(box.spec, environ={"MAILOUT_IMAP_PASSWORD": "Sesame-4711"}, ca_file=dovecot.ca_file)
    text = str(caught.value)
    assert text.startswith(f"{box.spec}: login refused for ana@example.org: [AUTHENTICATIONFAILED]")
    assert "MAILOUT_IMAP_PASSWORD" in text
    assert "Sesame-4711" not in text and dovecot.password not in text
    assert "\n" not in text


def test_a_password_that_is_not_ascii(dovecot_factory: Callable[..., DovecotServer]) -> None:
    # AUTHENTICATE PLAIN carries UTF-8 (and quotes, spaces) as they are; LOGIN could not.
    server = dovecot_factory(password='Zoë "pässwörd" 日本')
    box = imap_box(server)
    messages = _fill(box)
    with box.open() as source:
        assert sorted(item.raw for item in source) == sorted(messages)


def test_a_run_killed_midway_leaves_the_rest_as_it_was(dovecot: DovecotServer) -> None:
    box = imap_box(dovecot)
    messages = _fill(box)
    script = f"""
import os, signal
from mailout.mailsource import open_source
source = open_source({box.spec!r}, environ={{"MAILOUT_IMAP_PASSWORD": {dovecot.password!r}}},
                     ca_file={str(dovecot.ca_file)!r}, move_to="Processed")
items = iter(source)
first = next(items)
source.done(first.key)
second = next(items)  # read, and then the process dies before it is handled
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert box.state() == {
        messages[0]: ("Processed", frozenset({"\\Seen"})),
        messages[1]: UNREAD,
        messages[2]: UNREAD,
    }
    # The next run reads what is left, every byte.
    with box.open() as source:
        assert sorted(item.raw for item in source) == sorted(messages[1:])


def test_an_unknown_folder(dovecot: DovecotServer) -> None:
    box = imap_box(dovecot)
    with pytest.raises(WorkspaceError, match="cannot open the folder 'Bounces'") as caught:
        open_source(box.spec.replace("/INBOX", "/Bounces"), **box.options)
    assert dovecot.password not in str(caught.value)


def test_an_untrusted_certificate(dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch) -> None:
    box = imap_box(dovecot)
    environ = box.options["environ"]
    for ca_file in (dovecot.other_ca_file, None):  # another authority's; the system's
        with pytest.raises(WorkspaceError, match=r"certificate is not trusted.*MAILOUT_IMAP_CA_FILE"):
            open_source(box.spec, environ=environ, ca_file=ca_file, timeout=10)
    # The variable names the authority to trust; ca_file, when given, comes first.
    with open_source(box.spec, environ={**environ, "MAILOUT_IMAP_CA_FILE": str(dovecot.ca_file)}) as source:
        assert list(source) == []
    with pytest.raises(WorkspaceError, match="not trusted"):
        open_source(
            box.spec,
            environ={**environ, "MAILOUT_IMAP_CA_FILE": str(dovecot.ca_file)},
            ca_file=dovecot.other_ca_file,
        )
    # The certificate names localhost and 127.0.0.1: under another name it is refused.
    with pytest.raises(WorkspaceError, match="not trusted"):
        open_source(box.spec.replace("127.0.0.1", "127.0.0.2"), **box.options)


def test_a_ca_file_that_is_missing_or_no_pem(tmp_path: Path) -> None:
    environ = {"MAILOUT_IMAP_PASSWORD": "x", "MAILOUT_IMAP_CA_FILE": str(tmp_path / "missing.pem")}
    with pytest.raises(WorkspaceError, match=r"MAILOUT_IMAP_CA_FILE .*missing.pem: no such file"):
        open_source("imaps://ana@127.0.0.1/", environ=environ)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(WorkspaceError, match=r"junk.pem: not a file of certificates"):
        open_source(
            "imaps://ana@127.0.0.1/", environ={"MAILOUT_IMAP_PASSWORD": "x"}, ca_file=tmp_path / "junk.pem"
        )


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port where the kernel accepts connections and nothing ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("scheme", ["imaps", "imap"])
def test_a_server_that_never_answers(silent_port: int, scheme: str) -> None:
    started = time.monotonic()
    with pytest.raises(WorkspaceError, match=r"no answer from the server within 0\.5 s while connecting"):
        open_source(
            f"{scheme}://ana@127.0.0.1:{silent_port}/INBOX",
            environ={"MAILOUT_IMAP_PASSWORD": "Sesame-4711"},
            timeout=0.5,
        )
    assert time.monotonic() - started < 5


def test_a_port_where_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(WorkspaceError, match="refused the connection"):
        open_source(f"imaps://ana@127.0.0.1:{port}/", environ={"MAILOUT_IMAP_PASSWORD": "x"}, timeout=5)


class PlainServer(threading.Thread):
    """An IMAP server with no STARTTLS: it records every line it gets and refuses every login,
    unless it is given ``after_login``, what it then says it supports."""

    def __init__(
        self, capabilities: bytes = b"IMAP4rev1 AUTH=PLAIN", after_login: bytes | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.capabilities = capabilities
        self.after_login = after_login
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.received: list[bytes] = []

    def run(self) -> None:
        self.listener.settimeout(10)
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"* OK [CAPABILITY " + self.capabilities + b"] no TLS here\r\n")
            for line in lines:
                self.received.append(line)
                tag, _, command = line.partition(b" ")
                if command.upper().startswith(b"CAPABILITY"):
                    connection.sendall(b"* CAPABILITY " + self.capabilities + b"\r\n" + tag + b" OK done\r\n")
                elif command.upper().startswith(b"AUTHENTICATE"):
                    connection.sendall(b"+ \r\n")
                    self.received.append(lines.readline())
                    if self.after_login is not None:
                        self.capabilities = self.after_login
                        connection.sendall(tag + b" OK logged in\r\n")
                    else:
                        connection.sendall(tag + b" NO [AUTHENTICATIONFAILED] refused\r\n")
                elif command.upper().startswith(b"LOGIN"):
                    connection.sendall(tag + b" NO [AUTHENTICATIONFAILED] refused\r\n")
                elif command.upper().startswith(b"LOGOUT"):
                    connection.sendall(b"* BYE\r\n" + tag + b" OK bye\r\n")
                    return
                else:
                    connection.sendall(tag + b" BAD no\r\n")

    def close(self) -> None:
        self.listener.close()
        self.join(10)


def test_no_password_unencrypted_over_a_network(monkeypatch: pytest.MonkeyPatch) -> None:
    server = PlainServer()
    server.start()
    # As if the server were another machine: the check looks at the connected peer's address.
    monkeypatch.setattr(mailsource, "_is_loopback", lambda sock: False)
    try:
        with pytest.raises(WorkspaceError, match="does not offer STARTTLS, and the password is never sent"):
            open_source(
                f"imap://ana@127.0.0.1:{server.port}/", environ={"MAILOUT_IMAP_PASSWORD": "Sesame-4711"}
            )
    finally:
        server.close()
    sent = b"".join(server.received)
    assert b"AUTHENTICATE" not in sent.upper() and b"LOGIN" not in sent.upper()
    assert base64.b64encode(b"\0ana\0Sesame-4711") not in sent


def test_loopback_without_starttls_may_log_in() -> None:
    # A local bridge (DavMail, a mail provider's bridge) speaks plain IMAP on loopback.
    server = PlainServer()
    server.start()
    try:
        with pytest.raises(WorkspaceError, match=r"login refused for ana: .*refused") as caught:
            open_source(
                f"imap://ana@127.0.0.1:{server.port}/", environ={"MAILOUT_IMAP_PASSWORD": "Sesame-4711"}
            )
    finally:
        server.close()
    assert b"AUTHENTICATE PLAIN" in b"".join(server.received)
    assert "Sesame-4711" not in str(caught.value)


def test_a_server_without_auth_plain_gets_login() -> None:
    server = PlainServer(b"IMAP4rev1")
    server.start()
    try:
        with pytest.raises(WorkspaceError, match="login refused for a b"):
            open_source(
                f"imap://a%20b@127.0.0.1:{server.port}/", environ={"MAILOUT_IMAP_PASSWORD": 'Se"sa\\me'}
            )
    finally:
        server.close()
    # The user and the password as IMAP quoted strings.
    assert any(line.endswith(b' LOGIN "a b" "Se\\"sa\\\\me"\r\n') for line in server.received), (
        server.received
    )
    server = PlainServer(b"IMAP4rev1")
    server.start()
    try:
        with pytest.raises(WorkspaceError, match="only takes plain LOGIN, which cannot carry") as caught:
            open_source(f"imap://ana@127.0.0.1:{server.port}/", environ={"MAILOUT_IMAP_PASSWORD": "pässwörd"})
    finally:
        server.close()
    assert "pässwörd" not in str(caught.value)


@pytest.mark.parametrize(
    ("capabilities", "after_login", "doing"),
    [
        (b"IMAP4rev1 AUTH=PLAIN X-CAF\xc3\x89", None, "connecting"),
        (b"IMAP4rev1 AUTH=PLAIN", b"IMAP4rev1 MOVE X-\xff\xfe", "asking what the server supports"),
    ],
    ids=["before-login", "after-login"],
)
def test_an_answer_that_is_not_ascii(capabilities: bytes, after_login: bytes | None, doing: str) -> None:
    server = PlainServer(capabilities, after_login)
    server.start()
    try:
        with pytest.raises(WorkspaceError) as caught:
            open_source(
                f"imap://ana@127.0.0.1:{server.port}/",
                environ={"MAILOUT_IMAP_PASSWORD": "Sesame-4711"},
                timeout=5,
            )
    finally:
        server.close()
    assert str(caught.value) == (
        f"imap://ana@127.0.0.1:{server.port}/INBOX: {doing}: the server answered with bytes that are not"
        " ASCII (is it an IMAP server?)"
    )


def test_what_counts_as_loopback() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as sock,
    ):
        assert mailsource._is_loopback(sock)
    # This machine's address on its network, if it has one, is not loopback.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: it only picks a source address
            own = probe.getsockname()[0]
        except OSError:
            own = "127.0.0.1"
    if not own.startswith("127."):
        with (
            socket.create_server((own, 0)) as listener,
            socket.create_connection(listener.getsockname()) as sock,
        ):
            assert not mailsource._is_loopback(sock)


def test_messages_are_fetched_in_batches_as_the_reading_goes(
    dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = imap_box(dovecot)
    uids = [dovecot.append("INBOX", f"Subject: {n}\r\n\r\n{'x' * 50}\r\n".encode()) for n in range(7)]
    big = dovecot.append("INBOX", b"Subject: big\r\n\r\n" + b"y" * 5000 + b"\r\n")
    monkeypatch.setattr(mailsource, "BATCH_MESSAGES", 3)
    monkeypatch.setattr(mailsource, "BATCH_BYTES", 1000)  # the big message is fetched alone
    with box.open() as source:
        items = iter(source)
        first = next(items)
        # Another mail program takes away a message of a later batch: it is skipped, no error.
        dovecot.expunge("INBOX", uids[5])
        rest = list(items)
    keys = [first.key, *(item.key for item in rest)]
    assert keys == [str(uid) for uid in [*uids[:5], uids[6], big]]
    assert rest[-1].raw.endswith(b"y" * 5000 + b"\r\n")


def test_a_message_larger_than_any_report_is_not_fetched(
    dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = imap_box(dovecot)
    small = [b"Subject: %d\r\n\r\nsmall\r\n" % n for n in range(2)]
    big = b"Subject: big\r\n\r\n" + b"y" * 5000 + b"\r\n"
    first = dovecot.append("INBOX", small[0])
    big_uid = dovecot.append("INBOX", big)
    dovecot.append("INBOX", small[1])
    monkeypatch.setattr(reports, "MAX_REPORT_BYTES", 1000)
    fetched: list[int] = []
    fetch = mailsource._Imap._fetch

    def spy(self: Any, uids: list[int]) -> list[mailsource.Item]:
        fetched.extend(uids)
        return fetch(self, uids)

    monkeypatch.setattr(mailsource._Imap, "_fetch", spy)
    with box.open() as source:
        items = list(source)
        assert source.skipped == [(str(big_uid), len(big))]
    assert [item.raw for item in items] == small and big_uid not in fetched and first in fetched
    assert box.state()[big] == UNREAD  # left as it was, for a person
    # A server whose listing understates a size sends no more than one byte over the limit.
    monkeypatch.setattr(mailsource._Imap, "_listing", lambda self: [(big_uid, 10)])
    with box.open() as source:
        [item] = list(source)
    assert item.raw == big[:1001]


def test_a_maildir_file_larger_than_any_report_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = mailbox.Maildir(tmp_path / "box", create=True)
    small = b"Subject: small\r\n\r\nsmall\r\n"
    big = b"Subject: big\r\n\r\n" + b"y" * 5000 + b"\r\n"
    box.add(small)
    big_key = box.add(big)
    box.close()
    monkeypatch.setattr(reports, "MAX_REPORT_BYTES", 1000)
    with mailsource.open_source(str(tmp_path / "box")) as source:
        items = list(source)
        assert source.skipped == [(big_key, len(big))]
    assert [item.raw for item in items] == [small]
    assert (tmp_path / "box" / "new" / big_key).read_bytes() == big, "left as it was, for a person"


def test_a_message_another_program_expunged_is_skipped(dovecot: DovecotServer) -> None:
    box = imap_box(dovecot)
    messages = _fill(box)
    with box.open() as source:
        items = iter(source)
        first = next(items)
        source.done(first.key)
        # Taken away between the reading and `done`: done has nothing left to do.
        rest = list(items)
        dovecot.expunge("INBOX", int(rest[0].key))
        source.done(rest[0].key)
    assert box.state() == {messages[0]: ("", box.handled), messages[2]: UNREAD}


@pytest.mark.parametrize("mode", ["flag", "move", "delete"])
def test_two_readers_mark_the_same_message_at_the_same_instant(
    writable_box: Box, mode: str, request: pytest.FixtureRequest
) -> None:
    box = writable_box
    messages = _fill(box)
    options = {"flag": {}, "move": {"move_to": "Processed"}, "delete": {"delete": True}}[mode]
    with box.open(**options) as one, box.open(**options) as two:
        keys = {item.raw: item.key for item in one}
        assert {item.raw: item.key for item in two} == keys
        errors: list[BaseException] = []
        for raw in messages[:2]:
            barrier = threading.Barrier(2)

            def mark(
                source: mailsource.MailSource, key: str = keys[raw], barrier: threading.Barrier = barrier
            ) -> None:
                barrier.wait()
                try:
                    source.done(key)
                except BaseException as error:
                    errors.append(error)

            threads = [threading.Thread(target=mark, args=(source,)) for source in (one, two)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(20)
        assert errors == []
    if box.kind == "imap" and mode == "move":
        # Dovecot carries out MOVE as a copy and an expunge: two sessions moving one message at
        # the same instant may each copy it (docs/bounces.md says so). It left the INBOX once.
        server: DovecotServer = request.getfixturevalue("dovecot")
        assert list(server.messages("INBOX").values()) == [messages[2]]
        moved = list(server.messages("Processed").values())
        assert set(moved) == set(messages[:2]) and len(moved) <= 4
        assert all(flags == {"\\Seen"} for flags in server.flags("Processed").values())
        return
    handled = {"flag": ("", box.handled), "move": ("Processed", frozenset({"\\Seen"}))}.get(mode)
    expected = {raw: handled for raw in messages[:2] if handled is not None}
    # Each handled message once (state() refuses a copy: moved once, not twice), the third untouched.
    assert box.state() == {**expected, messages[2]: UNREAD}


def test_delete_and_logout_leave_others_deleted_messages_alone(dovecot: DovecotServer) -> None:
    box = imap_box(dovecot)
    ours = box.eol.join([b"Subject: a bounce", b"", b"x"]) + box.eol
    theirs = box.eol.join([b"Subject: a person deleted this", b"", b"y"]) + box.eol
    dovecot.append("INBOX", ours)
    dovecot.append("INBOX", theirs, flags="\\Deleted")
    with box.open(delete=True) as source:
        for item in source:
            if item.raw == ours:
                source.done(item.key)
    # UID EXPUNGE of that one message, and LOGOUT (never CLOSE, which expunges them all).
    assert box.state() == {theirs: ("", frozenset({"\\Deleted"}))}


@pytest.mark.parametrize(
    ("capabilities", "leftover"),
    [
        # No MOVE: COPY, then \Deleted and UID EXPUNGE of that one message.
        ("IMAP4rev1 LITERAL+ UIDPLUS", False),
        # Neither MOVE nor UIDPLUS: the original stays, marked \Deleted, for the server to expunge.
        ("IMAP4rev1 LITERAL+", True),
    ],
)
def test_move_on_an_older_server(
    dovecot_factory: Callable[..., DovecotServer], capabilities: str, leftover: bool
) -> None:
    server = dovecot_factory(capabilities=capabilities)
    box = imap_box(server)
    messages = _fill(box)
    with box.open(move_to="Processed") as source:
        for item in source:
            if item.raw == messages[0]:
                source.done(item.key)
    assert list(server.messages("Processed").values()) == [messages[0]]
    assert list(server.flags("Processed").values()) == [{"\\Seen"}]
    remaining = server.messages("INBOX")
    flags = server.flags("INBOX")
    if leftover:
        assert sorted(remaining.values()) == sorted(messages)
        [(uid, raw)] = [(uid, raw) for uid, raw in remaining.items() if flags[uid]]
        assert (raw, flags[uid]) == (messages[0], {"\\Seen", "\\Deleted"})
    else:
        assert sorted(remaining.values()) == sorted(messages[1:])
        assert all(not each for each in flags.values())


def test_folders_with_any_name(dovecot: DovecotServer) -> None:
    box = imap_box(dovecot)
    messages = _fill(box)
    target = 'Réponses/Traitées "DSN"'
    with box.open(move_to=target) as source:
        for item in source:
            if item.raw == messages[1]:
                source.done(item.key)
    assert 'R&AOk-ponses/Trait&AOk-es "DSN"' in dovecot.folders()
    # Read from there, the folder given percent-encoded in the address.
    spec = box.spec.replace("/INBOX", "/R%C3%A9ponses/Trait%C3%A9es%20%22DSN%22")
    with open_source(spec, **box.options) as source:
        assert [item.raw for item in source] == [messages[1]]
