"""Errors mailout raises for things a user can fix.

Every error a user can cause is a ``MailoutError``; the command line turns it
into a one-line message and a non-zero exit code, never a traceback. Each class
lives in this module unless a ``[module]`` follows its name: errors that only
one module raises stay beside it. ``tests/test_errors.py`` checks that this tree
names every subclass, where it lives and what it derives from::

    MailoutError
    ├── ConfigError                      a missing, malformed or wrong setting (names file and key)
    ├── CsvError                         a file that cannot be read as a subscriber CSV at all
    │                                    (unreadable, empty, no email column; names file and line)
    ├── IssueError                       an issue folder that does not load or validate
    │                                    (carries every Problem found, each with file:line and field)
    ├── DatabaseError                    a database that cannot be opened, upgraded or backed up,
    │                                    or that needs `mailout db upgrade`
    ├── TemplateError                    an email template that does not parse or render
    ├── WorkspaceError                   a missing workspace, issue folder or file
    ├── InvalidSubscriber [subscribers]  an address or a field that cannot be stored (says why)
    ├── SubscriberNotFound [subscribers] no subscriber has this address
    ├── ErasedAddress [privacy]          the address was erased on request: kept out
    ├── DispatchExists [dispatching]     the issue was already sent to this list (use --again)
    ├── DispatchNotFound [dispatching]   no dispatch has this number
    ├── NothingToResend [dispatching]    --resend-unknown or --retry-policy, and no such delivery
    ├── NoRecipients [dispatching]       nobody is subscribed to the list: no dispatch is written
    ├── DispatchWaiting [dispatching]    a dispatch of the issue waits (scheduled, missed): --now, --at or cancel
    ├── NotStarted [dispatching]         a dispatch not started (or cancelled) cannot send
    ├── CannotCancel [dispatching]       only a dispatch not started can be cancelled, once
    ├── BadInstant [instants]            a time to send at that is unreadable, past, skipped or repeated
    ├── AnotherSender [mailer]           another process is sending this dispatch, and only one may
    ├── NotApproved [approvals]          the dispatch needs an approval (sending.require_approval) that
    │                                    matches its frozen variants, by someone other than its writer
    ├── ApprovalRefused [approvals]      `mailout approve` by the dispatch's writer, or of variants
    │                                    that differ from the frozen ones
    ├── TransportUnavailable [transports]  nothing can be sent: no connection, TLS or login refused,
    │                                    or the outbox cannot be written
    └── DeliveryFailure [transports]     the server refused a message, or the connection failed
        ├── TemporaryFailure [transports]  a 4xx reply or a lost connection: may succeed later
        ├── PermanentFailure [transports]  a 5xx reply or an address it cannot carry: would fail again
        └── UnclearOutcome [transports]    no answer after the whole message: it may have arrived
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class MailoutError(Exception):
    """Base class for every error a user can cause and fix."""


class ConfigError(MailoutError):
    """A setting is missing, malformed or of the wrong type."""


class CsvError(MailoutError):
    """A file cannot be read as a subscriber CSV: unreadable, empty or without an email column."""


class WorkspaceError(MailoutError):
    """A workspace, an issue folder or a file is missing."""


class DatabaseError(MailoutError):
    """The database cannot be opened, upgraded or backed up, or its schema is not up to date."""


class TemplateError(MailoutError):
    """An email template does not parse, or fails while rendering."""


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One finding about an issue: where it is, what is wrong, how bad."""

    file: str
    line: int | None
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        prefix = "warning: " if self.severity is Severity.WARNING else ""
        return f"{where}: {prefix}{self.message}"


class IssueError(MailoutError):
    """An issue could not be loaded; ``problems`` lists every error found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
