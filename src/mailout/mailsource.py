"""The mailboxes mailout reads: a Maildir folder, an mbox file, or (later) an IMAP folder.

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
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from .errors import WorkspaceError


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
    """A Maildir folder or an mbox file, through the standard library's `mailbox`."""

    def __init__(
        self, box: mailbox.Mailbox[mailbox.Message], name: str, *, move_to: str | None, delete: bool
    ) -> None:
        self._box = box
        self.name = name
        self._delete = delete
        self._target: mailbox.Maildir | None = None
        if move_to is not None and isinstance(box, mailbox.Maildir):
            # A Maildir++ sub-folder (".Processed" on disk), made when missing.
            self._target = (
                box.add_folder(move_to) if move_to not in box.list_folders() else box.get_folder(move_to)
            )

    def __iter__(self) -> Iterator[Item]:
        for key in list(self._box.iterkeys()):  # a list: `done` may move messages meanwhile
            try:
                raw = self._box.get_bytes(key)
            except KeyError:  # taken away by another reader since the listing
                continue
            yield Item(str(key), raw)

    def done(self, key: str) -> None:
        box = self._box
        if not isinstance(box, mailbox.Maildir):
            return  # an mbox is only read
        try:
            message = box.get_message(key)
        except KeyError:
            return
        if self._delete:
            box.discard(key)
            return
        message.set_subdir("cur")
        message.add_flag("S")
        if self._target is not None:
            self._target.add(message)
            box.discard(key)
        else:
            box[key] = message

    def close(self) -> None:
        self._box.close()

    def __enter__(self) -> _Local:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_source(spec: str, *, move_to: str | None = None, delete: bool = False) -> MailSource:
    """Open the mailbox ``spec`` names: a Maildir folder or an mbox file.

    ``move_to`` names the folder handled messages go to (a Maildir sub-folder);
    ``delete`` deletes them instead. Raises `WorkspaceError` with the reason when
    ``spec`` names no mailbox.
    """
    if move_to is not None and delete:
        raise WorkspaceError("handled messages are either moved or deleted, not both")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            raise WorkspaceError(f"{spec}: a folder but not a Maildir (no cur/, new/ and tmp/)")
        return _Local(mailbox.Maildir(path, create=False), spec, move_to=move_to, delete=delete)
    if path.is_file():
        if move_to is not None or delete:
            raise WorkspaceError(f"{spec}: an mbox file is only read; --move-to and --delete need a Maildir")
        return _Local(mailbox.mbox(path, create=False), spec, move_to=None, delete=False)
    raise WorkspaceError(f"{spec}: no such Maildir or mbox file")
