"""The mailboxes mailout reads: a Maildir folder, an mbox file, or an IMAP folder.

One interface for all of them, so that what reads reports (``mailout bounces
process``) is the same code whatever the mailbox:

- `open_source` opens the mailbox a SOURCE names and says clearly what is wrong
  with a SOURCE it cannot open;
- iterating a `MailSource` yields each message as an `Item`: its key in the
  mailbox and its bytes, as they are stored;
- `MailSource.done` marks one message handled: seen (and flagged in IMAP), or
  moved to the folder named by ``move_to``, or deleted when ``delete`` asks for
  it. A message that is not passed to ``done`` stays exactly as it was: unread,
  in its place, for a person to read.

An mbox file is only read: nothing in it changes (a file another program may be
appending to is not rewritten); each message is handled once anyway, by the
database's record of what was handled.

An IMAP folder is ``imaps://USER@HOST[:PORT]/FOLDER`` (TLS from the first byte,
port 993) or ``imap://USER@HOST[:PORT]/FOLDER`` (port 143, then STARTTLS; a
server that does not offer it is refused, unless it is on this machine's
loopback, where nothing travels over a network). The password comes from the
environment (``MAILOUT_IMAP_PASSWORD``), never from SOURCE; the server's
certificate is always verified, against the system's authorities or those of
``MAILOUT_IMAP_CA_FILE``. Messages are read by UID with ``BODY.PEEK[]``, which
never sets ``\\Seen``, in batches of a few MiB.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import ipaddress
import mailbox
import os
import re
import socket
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, cast
from urllib.parse import quote, unquote, urlsplit

from .config import IMAP_CA_FILE_ENV, SECRETS
from .errors import WorkspaceError

#: The variable that holds the IMAP password, unless ``password_env`` names another.
PASSWORD_ENV = SECRETS["bounces.imap_password"]
#: The variable that may name a file of certificate authorities to trust for IMAP (PEM).
CA_FILE_ENV = IMAP_CA_FILE_ENV
#: Seconds to wait for each answer of an IMAP server before giving up.
IMAP_TIMEOUT = 30.0
#: A batch of messages fetched in one command: at most this many bytes (one larger
#: message is fetched alone) and this many messages.
BATCH_BYTES = 8 * 1024 * 1024
BATCH_MESSAGES = 100


@dataclass(frozen=True)
class Item:
    """One message of a mailbox: its key there (for `MailSource.done`) and its bytes."""

    key: str
    raw: bytes


class MailSource(Protocol):
    """A mailbox opened for reading; close it (or use it as a context manager) when done."""

    #: How the mailbox is named in messages to the user (never with a password).
    name: str

    def __iter__(self) -> Iterator[Item]: ...

    def done(self, key: str) -> None:
        """Mark the message ``key`` handled (seen, moved or deleted, as the source was opened)."""

    def close(self) -> None: ...

    def __enter__(self) -> MailSource: ...

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class _Local:
    """A Maildir folder or an mbox file, through the standard library's `mailbox`.

    In a Maildir, `done` renames (or removes) the message's file: its bytes stay as
    they are, and of two readers handling one message at once, one rename wins and
    the other finds nothing left to do.
    """

    def __init__(
        self,
        box: mailbox.Mailbox[mailbox.Message],
        name: str,
        *,
        root: Path,
        move_to: str | None,
        delete: bool,
    ) -> None:
        self._box = box
        self.name = name
        self._root = root
        self._delete = delete
        #: The file of each Maildir message read, by key (``new/KEY`` or ``cur/KEY:2,FLAGS``).
        self._files: dict[str, str] = {}
        #: Where handled messages go: the Maildir itself, or its Maildir++ sub-folder
        #: (".Processed" on disk), made when missing.
        self._destination = root
        if move_to is not None and isinstance(box, mailbox.Maildir):
            with contextlib.suppress(FileExistsError):  # made by another reader at the same instant
                box.add_folder(move_to)
            self._destination = root / f".{move_to}"

    def __iter__(self) -> Iterator[Item]:
        if isinstance(self._box, mailbox.Maildir):
            yield from self._maildir()
            return
        for key in list(self._box.iterkeys()):  # a list: `done` may move messages meanwhile
            try:
                raw = self._box.get_bytes(key)
            except (KeyError, FileNotFoundError):  # taken away by another reader since the listing
                continue
            yield Item(str(key), raw)

    def _maildir(self) -> Iterator[Item]:
        # The folder's file names, read once; each message's file is then read and remembered by
        # its key, so that `done` renames it without reading the folder or the message again.
        colon = cast(mailbox.Maildir, self._box).colon
        listing = [
            (sub, entry.name)
            for sub in ("new", "cur")
            for entry in os.scandir(self._root / sub)
            if not entry.name.startswith(".") and entry.is_file()
        ]
        for sub, name in listing:
            try:
                raw = (self._root / sub / name).read_bytes()
            except FileNotFoundError:  # handled by another reader, or marked by a person, since
                continue
            key = name.partition(colon)[0]
            self._files[key] = f"{sub}/{name}"
            yield Item(key, raw)

    def done(self, key: str) -> None:
        box = self._box
        if not isinstance(box, mailbox.Maildir):
            return  # an mbox is only read
        file = self._files.pop(key, None)
        if file is None:  # not read through this source: ask the folder where it is
            try:
                message = box.get_message(key)
            except (KeyError, FileNotFoundError):
                return  # handled by another reader meanwhile
            info = message.get_info()
            file = (
                f"{message.get_subdir()}/{key}{box.colon}{info}" if info else f"{message.get_subdir()}/{key}"
            )
        info = file.partition("/")[2].partition(box.colon)[2]
        flags = "".join(sorted({*(info[2:] if info.startswith("2,") else ""), "S"}))
        try:
            if self._delete:
                (self._root / file).unlink()
            else:
                (self._root / file).rename(self._destination / "cur" / f"{key}{box.colon}2,{flags}")
        except FileNotFoundError:
            return  # another reader renamed or removed it first

    def close(self) -> None:
        self._box.close()

    def __enter__(self) -> _Local:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_source(
    spec: str,
    *,
    move_to: str | None = None,
    delete: bool = False,
    environ: Mapping[str, str] = os.environ,
    password_env: str = PASSWORD_ENV,
    ca_file: str | os.PathLike[str] | None = None,
    timeout: float = IMAP_TIMEOUT,
) -> MailSource:
    """Open the mailbox ``spec`` names: a Maildir folder, an mbox file or an IMAP folder.

    ``move_to`` names the folder handled messages go to (a Maildir sub-folder, an
    IMAP folder; made when missing); ``delete`` deletes them instead. For IMAP the
    password is read from ``environ[password_env]``; the server's certificate is
    checked against ``ca_file`` (else the file ``environ["MAILOUT_IMAP_CA_FILE"]``
    names, else the system's authorities); each answer is awaited at most
    ``timeout`` seconds. Raises `WorkspaceError` with the reason when ``spec``
    names no mailbox that can be opened.
    """
    if move_to is not None and delete:
        raise WorkspaceError("handled messages are either moved or deleted, not both")
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", spec)
    if scheme:
        if scheme.group(1).lower() not in ("imap", "imaps"):
            raise WorkspaceError(
                f"{scheme.group(1)}://...: not a mailbox mailout reads; give a Maildir folder, an mbox"
                " file, or an IMAP folder (imaps://USER@HOST/FOLDER)"
            )
        address = ImapAddress.parse(spec)
        if move_to is not None:
            _check_folder_name(move_to, f"{address.name}: --move-to")
            if move_to == address.folder:
                raise WorkspaceError(
                    f"{address.name}: handled messages cannot move to the folder they are in"
                )
        return _Imap(
            address,
            (password_env, _password(address, environ, password_env)),
            _tls_context(ca_file, environ),
            move_to=move_to,
            delete=delete,
            timeout=timeout,
        )
    path = Path(spec).expanduser()
    if path.is_dir():
        if not all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            raise WorkspaceError(f"{spec}: a folder but not a Maildir (no cur/, new/ and tmp/)")
        box = mailbox.Maildir(path, create=False)
        return _Local(box, spec, root=path, move_to=move_to, delete=delete)
    if path.is_file():
        if move_to is not None or delete:
            raise WorkspaceError(f"{spec}: an mbox file is only read; --move-to and --delete need a Maildir")
        return _Local(mailbox.mbox(path, create=False), spec, root=path, move_to=None, delete=False)
    raise WorkspaceError(f"{spec}: no such Maildir or mbox file")


# -- IMAP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImapAddress:
    """Where an IMAP folder is: ``imaps://USER@HOST[:PORT]/FOLDER`` or ``imap://...`` (STARTTLS)."""

    implicit_tls: bool
    user: str
    host: str
    port: int
    folder: str

    @property
    def name(self) -> str:
        """The address as the user reads it in messages: never with a password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "imaps" if self.implicit_tls else "imap"
        return f"{scheme}://{quote(self.user, safe='')}@{host}:{self.port}/{quote(self.folder, safe='/')}"

    @classmethod
    def parse(cls, spec: str) -> ImapAddress:
        """Read an IMAP address; refuse one with a password, no user or no host, saying why."""
        try:
            parts = urlsplit(spec)
        except ValueError as error:  # e.g. "[::1" with no closing bracket
            raise WorkspaceError(f"{spec}: not an IMAP address ({error})") from None
        implicit_tls = parts.scheme.lower() == "imaps"
        scheme = "imaps" if implicit_tls else "imap"
        example = f"{scheme}://USER@HOST/FOLDER"
        if parts.password is not None:
            # Not even the rest of the spec is echoed: it holds the password.
            raise WorkspaceError(
                f"{scheme}://...: the IMAP password is not written in SOURCE (it would show in the"
                f" shell's history and the process list); set {PASSWORD_ENV} instead"
            )
        if not parts.hostname:
            raise WorkspaceError(f"{spec}: no server; write {example}")
        if not parts.username:
            raise WorkspaceError(f"{spec}: no user; write {example} (an @ in the user as %40)")
        if parts.query or parts.fragment or spec.rstrip().endswith(("?", "#")):
            raise WorkspaceError(f"{spec}: unexpected ?... or #... after the folder; write {example}")
        try:
            port = parts.port or (993 if implicit_tls else 143)
        except ValueError:
            raise WorkspaceError(f"{spec}: the port must be a number from 1 to 65535") from None
        user = unquote(parts.username)
        folder = unquote(parts.path.removeprefix("/")) or "INBOX"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
            raise WorkspaceError(f"{spec}: the user has a control character")
        _check_folder_name(folder, spec)
        return cls(implicit_tls, user, parts.hostname, port, folder)


def _check_folder_name(folder: str, where: str) -> None:
    if not folder or any(ord(c) < 0x20 or ord(c) == 0x7F for c in folder):
        raise WorkspaceError(f"{where}: an IMAP folder name with no control characters is needed")


def _password(address: ImapAddress, environ: Mapping[str, str], variable: str) -> str:
    password = environ.get(variable, "")
    if not password:
        state = "empty" if variable in environ else "not set"
        raise WorkspaceError(
            f"{address.name}: the environment variable {variable}, which holds the IMAP password of"
            f" {address.user}, is {state}"
        )
    return password


def _tls_context(ca_file: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> ssl.SSLContext:
    """A client context that verifies the certificate and the host name, always."""
    where = "ca_file"
    if ca_file is None and environ.get(CA_FILE_ENV):
        ca_file, where = environ[CA_FILE_ENV], CA_FILE_ENV
    if ca_file is None:
        return ssl.create_default_context()
    path = Path(ca_file).expanduser()
    try:
        return ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise WorkspaceError(f"{where} {path}: no such file") from None
    except (OSError, ssl.SSLError) as error:
        raise WorkspaceError(
            f"{where} {path}: not a file of certificates in PEM ({error.strerror or error})"
        ) from None


def imap_utf7(name: str) -> str:
    """A folder name in IMAP's modified UTF-7 (RFC 3501, 5.1.3): ``Réponses`` is ``R&AOk-ponses``."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            encoded = base64.b64encode("".join(pending).encode("utf-16-be")).decode("ascii")
            out.append("&" + encoded.rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def _quoted(name: str) -> str:
    """A folder name as an IMAP quoted string, in modified UTF-7."""
    return _string(imap_utf7(name))


def _string(text: str) -> str:
    """An IMAP quoted string (no control characters: checked before)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_loopback(sock: socket.socket) -> bool:
    """Whether the connected peer is this machine's loopback, where nothing crosses a network."""
    try:
        peer = ipaddress.ip_address(str(sock.getpeername()[0]).partition("%")[0])
    except (OSError, ValueError):
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return peer.is_loopback


_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")


class _Imap:
    """An IMAP folder, through the standard library's `imaplib`, one connection."""

    def __init__(
        self,
        address: ImapAddress,
        password: tuple[str, str],
        context: ssl.SSLContext,
        *,
        move_to: str | None,
        delete: bool,
        timeout: float,
    ) -> None:
        self.name = address.name
        self._address = address
        #: The variable the password came from, and the password.
        self._variable, self._password = password
        self._move_to = move_to
        self._delete = delete
        self._timeout = timeout
        self._client: imaplib.IMAP4 | None = None
        #: The folder's UIDVALIDITY: a UID names the same message only while it is the same.
        self.uidvalidity = 0
        self._exists = 0  # messages in the folder when it was opened
        self._capabilities: set[str] = set()  # what the server supports, once logged in
        try:
            self._client = self._connect(context)
            self._capabilities = self._log_in(self._client)
            if move_to is not None:
                self._make_folder(move_to)
            self._open_folder()
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------------

    def _connect(self, context: ssl.SSLContext) -> imaplib.IMAP4:
        host, port, timeout = self._address.host, self._address.port, self._timeout
        with self._errors("connecting"):
            if self._address.implicit_tls:
                return imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=timeout)
            client = imaplib.IMAP4(host, port, timeout=timeout)
            try:
                if "STARTTLS" in client.capabilities:
                    client.starttls(context)
                elif not _is_loopback(client.sock):
                    raise WorkspaceError(
                        f"{self.name}: the server does not offer STARTTLS, and the password is never"
                        " sent unencrypted over a network; use imaps:// if the server has it (port 993)"
                    )
            except BaseException:
                with contextlib.suppress(OSError):
                    client.shutdown()
                raise
            return client

    def _log_in(self, client: imaplib.IMAP4) -> set[str]:
        user, password = self._address.user, self._password
        with self._errors(f"logging in as {user}"):
            if "LOGINDISABLED" in client.capabilities:
                raise WorkspaceError(f"{self.name}: the server refuses logins on this connection")
            try:
                if "AUTH=PLAIN" in client.capabilities:
                    # SASL PLAIN carries any user and password (UTF-8), with no quoting to get wrong.
                    secret = f"\0{user}\0{password}".encode()
                    client.authenticate("PLAIN", lambda _challenge: secret)
                else:
                    client.login(_string(user), password)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as error:
                raise WorkspaceError(
                    f"{self.name}: login refused for {user}: {_text(error)} (check the user, and the"
                    f" password in {self._variable})"
                ) from None
            except UnicodeEncodeError:
                raise WorkspaceError(
                    f"{self.name}: the server only takes plain LOGIN, which cannot carry a user or"
                    " password that is not ASCII"
                ) from None
            typ, data = client.capability()
            self._check(typ, data, "asking what the server supports")
        return {word.upper() for word in b" ".join(d for d in data if isinstance(d, bytes)).decode().split()}

    def _make_folder(self, folder: str) -> None:
        client = self._connected()
        with self._errors(f"making the folder {folder!r}"):
            typ, data = client.list('""', _quoted(folder))
            if typ == "OK" and any(isinstance(line, bytes) for line in data):
                return
            typ, data = client.create(_quoted(folder))
            if typ != "OK" and b"ALREADYEXISTS" not in b" ".join(d for d in data if isinstance(d, bytes)):
                raise WorkspaceError(f"{self.name}: cannot make the folder {folder!r}: {_said(data)}")
            client.subscribe(_quoted(folder))  # so that mail programs show it; a refusal is harmless

    def _open_folder(self) -> None:
        client = self._connected()
        folder = self._address.folder
        with self._errors(f"opening the folder {folder!r}"):
            try:
                typ, data = client.select(_quoted(folder))
            except imaplib.IMAP4.readonly:
                raise WorkspaceError(
                    f"{self.name}: the folder is read-only for {self._address.user}, and handled"
                    " messages must be marked"
                ) from None
            if typ != "OK":
                raise WorkspaceError(f"{self.name}: cannot open the folder {folder!r}: {_said(data)}")
            self._exists = int(data[0] or 0) if isinstance(data[0], bytes) else 0
            _, validity = client.response("UIDVALIDITY")
            if validity and isinstance(validity[0], bytes) and validity[0].isdigit():
                self.uidvalidity = int(validity[0])

    # -- reading ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Item]:
        if self._exists == 0:
            return  # (messages that arrive after opening are read next time)
        with self._errors("listing the messages"):
            listing = self._listing()
        batch: list[int] = []
        size = 0
        for uid, length in listing:
            if batch and (size + length > BATCH_BYTES or len(batch) >= BATCH_MESSAGES):
                yield from self._fetch(batch)
                batch, size = [], 0
            batch.append(uid)
            size += length
        if batch:
            yield from self._fetch(batch)

    def _listing(self) -> list[tuple[int, int]]:
        """Every message's UID and size, in UID order (each line short: no limit of imaplib's)."""
        client = self._connected()
        client.untagged_responses.pop("FETCH", None)  # news of other sessions' changes, stale
        typ, data = client.uid("FETCH", "1:*", "(UID RFC822.SIZE)")
        self._check(typ, data, "listing the messages")
        found: dict[int, int] = {}
        for line in data:
            head = line[0] if isinstance(line, tuple) else line
            if not isinstance(head, bytes):
                continue
            uid, length = _UID.search(head), _SIZE.search(head)
            if uid and length:  # not a FLAGS update another session caused
                found[int(uid.group(1))] = int(length.group(1))
        return sorted(found.items())

    def _fetch(self, uids: list[int]) -> list[Item]:
        """The messages ``uids`` (those that still exist), with PEEK: \\Seen stays as it was."""
        client = self._connected()
        with self._errors("reading messages"):
            client.untagged_responses.pop("FETCH", None)
            typ, data = client.uid("FETCH", ",".join(map(str, uids)), "(UID BODY.PEEK[])")
            if typ == "NO":
                # Some were expunged by another session meanwhile: take the others.
                data = client.untagged_responses.pop("FETCH", [])
            elif typ != "OK":
                self._check(typ, data, "reading messages")
        bodies: dict[int, bytes] = {}
        for index, part in enumerate(data):
            if not isinstance(part, tuple) or b"BODY[]" not in part[0].upper():
                continue
            uid = _UID.search(part[0])
            if uid is None and index + 1 < len(data) and isinstance(data[index + 1], bytes):
                uid = _UID.search(data[index + 1])  # a server that names the UID after the body
            if uid is not None:
                bodies[int(uid.group(1))] = part[1]
        return [Item(str(uid), bodies[uid]) for uid in uids if uid in bodies]

    # -- marking ---------------------------------------------------------------------------

    def done(self, key: str) -> None:
        if not (key.isascii() and key.isdigit()):
            raise ValueError(f"not a UID of {self.name}: {key!r}")
        client = self._connected()
        with self._errors(f"marking message {key} handled"):
            if self._delete:
                self._store(key, r"(\Seen \Deleted)")
                self._expunge(key)
            elif self._move_to is not None:
                self._store(key, r"(\Seen)")
                target = _quoted(self._move_to)
                if "MOVE" in self._capabilities:
                    typ, data = client.uid("MOVE", key, target)
                    self._check(typ, data, f"moving message {key}")
                else:
                    typ, data = client.uid("COPY", key, target)
                    self._check(typ, data, f"copying message {key}")
                    self._store(key, r"(\Deleted)")
                    self._expunge(key)
            else:
                self._store(key, r"(\Seen \Flagged)")
        # The server's news of expunged messages is not read: keep it from piling up over a
        # run of thousands.
        for news in ("EXPUNGE", "FETCH", "EXISTS", "RECENT"):
            client.untagged_responses.pop(news, None)

    def _store(self, key: str, flags: str) -> None:
        typ, data = self._connected().uid("STORE", key, "+FLAGS.SILENT", flags)
        self._check(typ, data, f"marking message {key}")

    def _expunge(self, key: str) -> None:
        """Expunge the message ``key`` only. Without UIDPLUS it stays marked \\Deleted: a plain
        EXPUNGE would also take away every message a person marked \\Deleted."""
        if "UIDPLUS" in self._capabilities:
            typ, data = self._connected().uid("EXPUNGE", key)
            self._check(typ, data, f"expunging message {key}")

    # -- the connection --------------------------------------------------------------------

    def _connected(self) -> imaplib.IMAP4:
        if self._client is None:
            raise WorkspaceError(f"{self.name}: the connection is closed")
        return self._client

    def _check(self, typ: str, data: Sequence[object], doing: str) -> None:
        if typ == "NO" and b"EXPUNGEISSUED" in b" ".join(d for d in data if isinstance(d, bytes)):
            return  # another session took the message away meanwhile: nothing left to do
        if typ != "OK":
            raise WorkspaceError(f"{self.name}: {doing}: the server said {typ} {_said(data)}")

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn what the network, TLS or the server raise into one clear line."""
        try:
            yield
        except WorkspaceError as error:
            raise WorkspaceError(self._scrub(str(error))) from None
        except ssl.SSLCertVerificationError as error:
            raise WorkspaceError(
                self._scrub(
                    f"{self.name}: the server's certificate is not trusted ({error.verify_message});"
                    f" if it is signed by an authority of your own, set {CA_FILE_ENV} to its certificate"
                )
            ) from None
        except ssl.SSLError as error:
            raise WorkspaceError(
                self._scrub(f"{self.name}: TLS failed while {doing}: {error.reason or error}")
            ) from None
        except TimeoutError:
            raise WorkspaceError(
                f"{self.name}: no answer from the server within {self._timeout:g} s while {doing}"
            ) from None
        except socket.gaierror as error:
            raise WorkspaceError(
                f"{self.name}: cannot find the server {self._address.host}: {error.strerror}"
            ) from None
        except ConnectionRefusedError:
            raise WorkspaceError(
                f"{self.name}: the server refused the connection (is the port right?)"
            ) from None
        except OSError as error:
            raise WorkspaceError(self._scrub(f"{self.name}: {doing}: {error.strerror or error}")) from None
        except imaplib.IMAP4.abort as error:
            raise WorkspaceError(
                self._scrub(f"{self.name}: the connection was lost while {doing}: {_text(error)}")
            ) from None
        except imaplib.IMAP4.error as error:
            raise WorkspaceError(self._scrub(f"{self.name}: {doing}: {_text(error)}")) from None

    def _scrub(self, text: str) -> str:
        """Never show the password, should a server repeat it."""
        return text.replace(self._password, "***") if self._password else text

    def close(self) -> None:
        """Log out (LOGOUT, never CLOSE, which would expunge every message marked \\Deleted)."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except (OSError, imaplib.IMAP4.error):
            with contextlib.suppress(OSError):
                client.shutdown()

    def __enter__(self) -> _Imap:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _text(error: BaseException) -> str:
    """An imaplib error's text, on one line (its argument may be bytes from the server)."""
    arg = error.args[0] if error.args else ""
    return _line(arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg))


def _said(data: Sequence[object]) -> str:
    """What the server said in a tagged answer, on one line."""
    return _line(" ".join(d.decode("utf-8", "replace") for d in data if isinstance(d, bytes)))


def _line(text: str) -> str:
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= 200 else text[:199] + "…"
