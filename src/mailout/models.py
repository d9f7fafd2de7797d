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

from sqlalchemy import (
    DateTime,
    Enum,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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


class SubscriptionStatus(StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"


class EventKind(StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    RESUBSCRIBED = "resubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class Source(StrEnum):
    """On whose word a consent event happened."""

    IMPORT = "import"
    SIGNUP = "sign-up"
    MANUAL = "manual"
    LINK = "link"
    ONE_CLICK = "one-click"
    SYNC = "sync"
    BOUNCE = "bounce"


def _enum(cls: type[StrEnum]) -> Enum:
    # Stored as plain strings (no native ENUM type), identical on SQLite and PostgreSQL.
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Subscriber(Base):
    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Normalised: trimmed, domain lower-cased and IDNA-encoded.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    organisation: Mapped[str] = mapped_column(String(200), default="")
    language: Mapped[str] = mapped_column(String(16), default="")
    status: Mapped[SubscriberStatus] = mapped_column(
        _enum(SubscriberStatus), default=SubscriberStatus.SUBSCRIBED
    )
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class MailingList(Base):
    __tablename__ = "lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: ``member`` or ``public``: which variant of an issue the list receives.
    segment: Mapped[str] = mapped_column(String(16))
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
