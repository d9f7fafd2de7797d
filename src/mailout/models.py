"""The database schema: subscribers, lists, subscriptions and the consent history.

The consent history (``consent_events``) is append-only: every change of a
subscription's state adds a row saying what happened, on whose word (the
source: an import file and line, the sign-up form, a click on an unsubscribe
link, a person on the team) and when. It answers "why did I get this?".

Changing a table here needs a migration in ``migrations/versions/``; a test
compares these models with the migrated schema.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .segments import Segment

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """Return the current time in UTC, the only time zone the database holds."""
    return dt.datetime.now(dt.UTC)


class SubscriberStatus(StrEnum):
    """A person's standing across every list: only ``subscribed`` people are mailed."""

    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"  # from every list
    BOUNCED = "bounced"  # the address does not exist
    COMPLAINED = "complained"  # reported a message as spam
    #: Erased on the person's request (``privacy.erase``): the row keeps no address and no
    #: name, only its number, so that the deliveries it had still add up.
    ERASED = "erased"


class SubscriptionStatus(StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"


class EventKind(StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    RESUBSCRIBED = "resubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    #: Their details changed (name, language) on their own word: the preference page.
    CHANGED = "changed"


class Source(StrEnum):
    """On whose word a consent event happened."""

    IMPORT = "import"
    SIGNUP = "sign-up"
    MANUAL = "manual"
    LINK = "link"
    ONE_CLICK = "one-click"
    MAIL = "mail"  # a message to the List-Unsubscribe mailto address
    SYNC = "sync"
    BOUNCE = "bounce"
    FEEDBACK_LOOP = "feedback-loop"  # a complaint report from a mailbox provider's feedback loop
    PREFERENCES = "preferences"  # the reader's own preference page (a signed link in every message)


def _enum(cls: type[StrEnum]) -> Enum:
    # Stored as plain strings (no native ENUM type), identical on SQLite and PostgreSQL.
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _email_key(context: Any) -> str:
    return str(context.get_current_parameters()["email"]).lower()


class Subscriber(Base):
    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Normalised: trimmed, domain lower-cased and IDNA-encoded; the local part as written.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    #: The address lower-cased: unique, so that Ana@ and ana@ are one person (mail systems
    #: ignore the case of the local part in practice), and someone who left stays out.
    email_key: Mapped[str] = mapped_column(String(320), unique=True, default=_email_key)
    name: Mapped[str] = mapped_column(String(200), default="")
    organisation: Mapped[str] = mapped_column(String(200), default="")
    language: Mapped[str] = mapped_column(String(16), default="")
    status: Mapped[SubscriberStatus] = mapped_column(
        _enum(SubscriberStatus), default=SubscriberStatus.SUBSCRIBED
    )
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    #: Temporary failures (4.x.x) reported by bounce reports, counted at most once a UTC day;
    #: at ``bounces.soft_threshold`` the address is suppressed (``bounces.soft_bounce``).
    soft_score: Mapped[int] = mapped_column(default=0, server_default="0")
    #: The UTC day ``soft_score`` last rose; NULL: never.
    soft_day: Mapped[dt.date | None] = mapped_column(Date)
    #: When the last temporary failure was handled: after ``bounces.soft_reset_days``
    #: without one, the score starts again from 0. NULL: never.
    soft_bounced_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class MailingList(Base):
    __tablename__ = "lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: ``member`` or ``public``: which variant of an issue the list receives.
    segment: Mapped[Segment] = mapped_column(_enum(Segment))
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "list_id"),
        Index("ix_subscriptions_list_id_status", "list_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"))
    status: Mapped[SubscriptionStatus] = mapped_column(
        _enum(SubscriptionStatus), default=SubscriptionStatus.SUBSCRIBED
    )
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class ConsentEvent(Base):
    """One change of consent, never updated or deleted."""

    __tablename__ = "consent_events"
    __table_args__ = (Index("ix_consent_events_subscriber_id", "subscriber_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    #: None for an event about every list (a global unsubscribe, a bounce).
    list_id: Mapped[int | None] = mapped_column(ForeignKey("lists.id", ondelete="SET NULL"))
    kind: Mapped[EventKind] = mapped_column(_enum(EventKind))
    source: Mapped[Source] = mapped_column(_enum(Source))
    #: Where exactly: ``subscribers/members.csv:12``, a dispatch, a person's reason.
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: A confirmed sign-up (double opt-in): when the form was sent; ``created_at`` is the
    #: confirmation. NULL for every other event.
    requested_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: The page the consent was given on: the sign-up form's path (``/subscribe/public``), or
    #: the page a pasted form was on; the preference page. "" for events that had none.
    page: Mapped[str] = mapped_column(String(500), default="", server_default="")
    #: The SHA-256 (hex) of the exact consent text shown (its text in ``consent_texts``);
    #: NULL where no text was shown.
    consent_sha256: Mapped[str | None] = mapped_column(String(64))
    #: The client's IP address, only with ``signup.store_ip = true``; NULL otherwise.
    ip: Mapped[str | None] = mapped_column(String(64))


class ConsentText(Base):
    """A consent text as shown on a form, once per version: the consent events name its SHA-256."""

    __tablename__ = "consent_texts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The language the text is in (canonical BCP 47).
    language: Mapped[str] = mapped_column(String(16), default="")
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Signup(Base):
    """A sign-up waiting for its confirmation (double opt-in): not a subscriber yet.

    One per address (``email_key``). Deleted when confirmed (its facts go into the
    consent event) or, never confirmed, after ``signup.pending_days``.
    """

    __tablename__ = "signups"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    language: Mapped[str] = mapped_column(String(16), default="")
    #: The lists asked for: their names, comma-separated.
    lists: Mapped[str] = mapped_column(Text)
    #: The form's page (see ``ConsentEvent.page``).
    page: Mapped[str] = mapped_column(String(500), default="")
    consent_sha256: Mapped[str] = mapped_column(String(64))
    #: Only with ``signup.store_ip = true``.
    ip: Mapped[str | None] = mapped_column(String(64))
    #: The random number in the current confirmation link: a new message makes the older
    #: links invalid.
    nonce: Mapped[int] = mapped_column(BigInteger, default=0)
    #: When the sign-up was made (the form's first POST for this request).
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: When its latest confirmation message was handed to the transport; NULL: none yet.
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: How many confirmation messages were sent for it.
    sends: Mapped[int] = mapped_column(default=0)
    #: The transport's answer to the latest, or why it failed.
    reply: Mapped[str] = mapped_column(Text, default="")


class Erasure(Base):
    """A person erased on request: no address, only a keyed hash of it that keeps them out."""

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: HMAC-SHA256 (hex) of the address lower-cased, under the secret key (``tokens.Signer``).
    address_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: The subscriber row kept without address or name (their deliveries point at it); NULL
    #: when the person was only a sign-up.
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"))
    erased_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Who ran the erasure (``--by``, else git's user.name/user.email, else the login name).
    erased_by: Mapped[str] = mapped_column(String(200), default="")


class DeliveryStatus(StrEnum):
    """Where one recipient's message of a dispatch stands."""

    QUEUED = "queued"  # waiting to be claimed
    CLAIMED = "claimed"  # taken by a sending process, not yet on the wire
    SENDING = "sending"  # on the wire now, or next (at most two per connection)
    SENT = "sent"  # the server accepted it; ``reply`` says what it answered
    DEFERRED = "deferred"  # a 4xx: retried from ``next_attempt_at``
    FAILED = "failed"  # a 5xx, or deferred for too long
    SKIPPED = "skipped"  # unsubscribed or bounced before their turn came
    UNKNOWN = "unknown"  # may have arrived (no answer after it, or its process died): resent only on request


#: States after which nothing more will happen to a delivery.
FINAL = (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED, DeliveryStatus.UNKNOWN)


class Dispatch(Base):
    """One issue sent to one list, with the rendered variant frozen at its creation."""

    __tablename__ = "dispatches"
    #: One dispatch per issue, list and generation: two sends started together cannot both
    #: write one (the database refuses the second); ``--again`` writes the next generation.
    __table_args__ = (UniqueConstraint("issue", "list_id", "generation"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: A random name, in every Message-ID of the dispatch.
    key: Mapped[str] = mapped_column(String(40), unique=True)
    issue: Mapped[str] = mapped_column(String(200))
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="RESTRICT"))
    #: 1 for the first dispatch of the issue to the list, 2 for the next (``--again``), ...
    generation: Mapped[int] = mapped_column(default=1)
    segment: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(500))
    preheader: Mapped[str] = mapped_column(String(500), default="")
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    #: The placeholder tokens of ``html`` and ``text``, as JSON: token -> field.
    tokens: Mapped[str] = mapped_column(Text)
    greeting_fallback: Mapped[str] = mapped_column(String(200), default="")
    #: The language of the variant in this row (canonical BCP 47), the issue's default; its
    #: other languages are in ``dispatch_variants``. NULL: written before mailout sent an
    #: issue in several languages, in the newsletter's one language.
    language: Mapped[str | None] = mapped_column(String(16))
    from_name: Mapped[str] = mapped_column(String(200))
    from_address: Mapped[str] = mapped_column(String(320))
    reply_to: Mapped[str] = mapped_column(String(320), default="")
    total: Mapped[int] = mapped_column(default=0)
    #: Set when a pause was forced (e.g. repeated 5.7.x refusals), with the reason.
    paused_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: Who signed the messages, one line per send run that changed it, oldest first:
    #: ``d=DOMAIN s=SELECTOR (ALGORITHM)`` per key, comma-separated; an empty line: not
    #: signed. NULL: sent before mailout recorded it. Written when a run starts.
    signing: Mapped[str | None] = mapped_column(Text)
    #: The envelope sender (MAIL FROM) of its messages, as ``signing``: one line per run
    #: that changed it, oldest first; NULL: sent before mailout recorded it.
    envelope_sender: Mapped[str | None] = mapped_column(Text)
    #: A scheduled dispatch's instant (UTC); NULL: it may start as soon as it is written.
    scheduled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: When sending was allowed to begin: set once, by the statement that starts it (a
    #: scheduled one by the worker, at its instant; any other when written). NULL: not yet.
    #: Deliveries are claimed only from a started, not cancelled dispatch.
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: Set by ``schedule cancel``: it will never start.
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: Set when its instant passed by more than ``sending.max_lateness`` with no worker to
    #: start it: only ``send --now`` starts it then.
    missed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: Who wrote it (``--by``, else git's user.name/user.email, else the login name).
    created_by: Mapped[str] = mapped_column(String(320), default="")
    #: The route (``[smtp.routes.NAME]``) it sends through now; "" is ``[smtp]``. A failover
    #: changes it to the next route.
    route: Mapped[str] = mapped_column(String(64), default="")
    #: One line per failover, oldest first: when, from which route to which, and why. NULL: none.
    route_changes: Mapped[str | None] = mapped_column(Text)


class DispatchVariant(Base):
    """One more language of a dispatch: its variant, frozen with it as the dispatch's own row is.

    The dispatch's row holds the variant in the issue's default language; each other
    language of the issue has a row here, written in the dispatch's transaction.
    """

    __tablename__ = "dispatch_variants"

    dispatch_id: Mapped[int] = mapped_column(
        ForeignKey("dispatches.id", ondelete="CASCADE"), primary_key=True
    )
    language: Mapped[str] = mapped_column(String(16), primary_key=True)
    subject: Mapped[str] = mapped_column(String(500))
    preheader: Mapped[str] = mapped_column(String(500), default="")
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    #: The placeholder tokens of ``html`` and ``text``, as JSON: token -> field.
    tokens: Mapped[str] = mapped_column(Text)
    greeting_fallback: Mapped[str] = mapped_column(String(200), default="")


class Delivery(Base):
    """One recipient of one dispatch: the durable record of what was sent and what the server said."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("dispatch_id", "subscriber_id"),
        # Claims read each state of a dispatch in id order: the index gives that order.
        Index("ix_deliveries_dispatch_id_status_id", "dispatch_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dispatch_id: Mapped[int] = mapped_column(ForeignKey("dispatches.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="RESTRICT"))
    #: Frozen with the dispatch: later edits to the subscriber change nothing.
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus), default=DeliveryStatus.QUEUED)
    worker: Mapped[str] = mapped_column(String(100), default="")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: The server's last reply ("250 2.0.0 Ok: queued as ...", "550 5.1.1 ...").
    reply: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: The envelope sender (MAIL FROM) of its last attempt, written with its ``sending`` mark:
    #: with VERP its own return address. NULL: not sent yet, or sent before mailout kept it.
    envelope_sender: Mapped[str | None] = mapped_column(Text)
    #: The route its message went through, set with its ``sending`` mark; NULL before 0012
    #: and for deliveries never sent.
    route: Mapped[str | None] = mapped_column(String(64))
    #: Which of the dispatch's variants this recipient gets (one of its languages), chosen
    #: from their language when the dispatch was written (``languages.choose``) and frozen:
    #: a later change of their language changes nothing. NULL: written before mailout chose
    #: one (the dispatch's own variant).
    language: Mapped[str | None] = mapped_column(String(16))


class Worker(Base):
    """A process sending a dispatch, and when it was last heard of."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    dispatch_id: Mapped[int] = mapped_column(ForeignKey("dispatches.id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int]
    #: Who the process is, exactly: its machine's boot, its PID namespace and its start time
    #: (``outbox.process_identity``); "" where unknown. Tells a dead process at once.
    process: Mapped[str] = mapped_column(String(100), default="")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MailRequest(Base):
    """A message read from the unsubscribe mailbox, and what was done with it (each one once)."""

    __tablename__ = "mail_requests"

    #: The message's Message-ID, or a digest of its bytes when it has none.
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    sender: Mapped[str] = mapped_column(String(320), default="")
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MatchedBy(StrEnum):
    """How a report was tied to a delivery, a list or a person (docs/bounces.md, matching)."""

    VERP = "verp"  # its envelope recipient is a delivery's signed return address
    MESSAGE_ID = "message-id"  # the returned message's Message-ID is one of ours
    LIST_ID = "list-id"  # the returned message's List-Id names a list, and the recipient is on it
    RECIPIENT = "recipient"  # fixed return path only: the address got a recent dispatch
    NONE = "none"


class ReportAction(StrEnum):
    """What handling a report did to one recipient."""

    BOUNCED = "bounced"  # a permanent failure: suppressed on every list
    SOFT = "soft"  # a temporary failure: counted in the soft score
    SUPPRESSED = "suppressed"  # a temporary failure that took the soft score to the threshold
    UNSUBSCRIBED = "unsubscribed"  # a complaint: unsubscribed from the dispatch's list
    COMPLAINED = "complained"  # a complaint: unsubscribed from every list
    NONE = "none"  # nothing changed; ``note`` says why


class HandledReport(Base):
    """A report (bounce, complaint, automatic reply, unknown mail) handled once, ever.

    Either its Message-ID or the SHA-256 of its bytes seen again means "handled
    before"; the row is written in the transaction of what the report did.
    """

    __tablename__ = "handled_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The report's own Message-ID (a digest of it when longer than 250 bytes); NULL: none.
    message_id: Mapped[str | None] = mapped_column(String(250), unique=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    #: ``reports.ReportKind``: dsn, complaint, autoreply or unknown.
    kind: Mapped[str] = mapped_column(String(16))
    #: How it was matched (the best of its recipients'); ``none`` for what matched nothing.
    matched_by: Mapped[MatchedBy] = mapped_column(_enum(MatchedBy))
    #: True: handled in full and marked done in the mailbox; False: left for a person to read.
    settled: Mapped[bool] = mapped_column(Boolean)
    #: One line: what it was and what was done (at most 500 characters).
    summary: Mapped[str] = mapped_column(Text, default="")
    processed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReportRecipient(Base):
    """One recipient of a handled report: who it was matched to, and what was done."""

    __tablename__ = "report_recipients"
    __table_args__ = (
        Index("ix_report_recipients_report_id", "report_id"),
        Index("ix_report_recipients_subscriber_id", "subscriber_id"),
        Index("ix_report_recipients_dispatch_id_action", "dispatch_id", "action"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("handled_reports.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"))
    dispatch_id: Mapped[int | None] = mapped_column(ForeignKey("dispatches.id", ondelete="SET NULL"))
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id", ondelete="SET NULL"))
    list_id: Mapped[int | None] = mapped_column(ForeignKey("lists.id", ondelete="SET NULL"))
    #: The address the report names (or the matched delivery's, when it names none).
    address: Mapped[str] = mapped_column(String(320), default="")
    #: ``reports.Outcome``; NULL for a report without recipients (an automatic reply).
    outcome: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str | None] = mapped_column(String(16))
    #: The server's diagnostic text, at most 500 characters.
    diagnostic: Mapped[str] = mapped_column(Text, default="")
    matched_by: Mapped[MatchedBy] = mapped_column(_enum(MatchedBy))
    action: Mapped[ReportAction] = mapped_column(_enum(ReportAction))
    #: Why, in a few words: "already bounced", "policy: the sender's fault", "score 2".
    note: Mapped[str] = mapped_column(String(200), default="")


class Approval(Base):
    """A second person's approval of an issue for a list: who, when, and what they saw.

    ``variants`` is JSON, language -> SHA-256 of that frozen variant (``approvals.digest``):
    a dispatch starts only if its frozen variants are exactly those. Written by ``approvals``.
    """

    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_issue_list_id", "issue", "list_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issue: Mapped[str] = mapped_column(String(200))
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="RESTRICT"))
    #: The dispatch approved, when it was written (scheduled) before the approval; NULL for an
    #: approval given before the send (the send compares its variants with it).
    dispatch_id: Mapped[int | None] = mapped_column(ForeignKey("dispatches.id", ondelete="CASCADE"))
    approved_by: Mapped[str] = mapped_column(String(320))
    approved_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    variants: Mapped[str] = mapped_column(Text)


class RouteLock(Base):
    """One row per route, locked while a slot of its quota is taken (``quota``)."""

    __tablename__ = "routes"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RouteUsage(Base):
    """Messages handed to a route in one time bucket of one unit (second, minute, hour, day)."""

    __tablename__ = "route_usage"

    route: Mapped[str] = mapped_column(String(64), primary_key=True)
    unit: Mapped[str] = mapped_column(String(8), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    used: Mapped[int] = mapped_column(Integer, default=0)
