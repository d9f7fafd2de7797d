"""The delivery state machine's statements, on SQLite and PostgreSQL.

What the send loop relies on: a claim takes each due delivery once, in order,
and skips whoever left the list.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, select, update

from mailout import outbox
from mailout.db import transaction
from mailout.models import (
    Delivery,
    DeliveryStatus,
    Dispatch,
    MailingList,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    utcnow,
)


def make_dispatch(engine: Engine, people: int) -> int:
    """Write a list of ``people`` subscribers and a dispatch to it with one queued delivery each."""
    with transaction(engine) as session:
        members = MailingList(name="members", segment="member")
        session.add(members)
        session.flush()
        dispatch = Dispatch(
            key="mo0123456789abcdef", issue="2019-01", list_id=members.id, segment="member",
            subject="Subject", html="<p>Hi</p>", text="Hi", tokens="{}",
            from_name="News", from_address="news@example.org",
        )  # fmt: skip
        session.add(dispatch)
        for n in range(people):
            person = Subscriber(email=f"p{n}@example.org", name=f"Person {n}")
            session.add(person)
            session.flush()
            session.add(Subscription(subscriber_id=person.id, list_id=members.id))
        session.flush()
        for person_id, email in session.execute(
            select(Subscriber.id, Subscriber.email).order_by(Subscriber.id)
        ):
            session.add(Delivery(dispatch_id=dispatch.id, subscriber_id=person_id, email=email))
        return dispatch.id


def deliveries(engine: Engine) -> dict[str, Delivery]:
    """Read every delivery afresh, on a connection of its own: only what was committed."""
    with transaction(engine) as session:
        return {d.email: d for d in session.scalars(select(Delivery))}


def test_claim_takes_due_deliveries_in_order_and_skips_who_left(engine: Engine) -> None:
    dispatch_id = make_dispatch(engine, 6)
    with transaction(engine) as session:
        # p1 left the list, p3 was suppressed everywhere, p5 is deferred until later.
        p1 = session.scalars(select(Subscriber.id).where(Subscriber.email == "p1@example.org")).one()
        session.execute(
            update(Subscription)
            .where(Subscription.subscriber_id == p1)
            .values(status=SubscriptionStatus.UNSUBSCRIBED)
        )
        session.execute(
            update(Subscriber)
            .where(Subscriber.email == "p3@example.org")
            .values(status=SubscriberStatus.BOUNCED)
        )
        session.execute(
            update(Delivery)
            .where(Delivery.email == "p5@example.org")
            .values(status=DeliveryStatus.DEFERRED, next_attempt_at=utcnow() + dt.timedelta(hours=1))
        )
    with engine.connect() as conn, conn.begin():
        first = outbox.claim(conn, dispatch_id, "w1", 3)
        rest = outbox.claim(conn, dispatch_id, "w1", 10)
    assert [c.email for c in first] == ["p0@example.org", "p2@example.org"], "p1 skipped within the limit"
    assert [c.email for c in rest] == ["p4@example.org"], "each delivery claimed once; p5 not due"
    state = deliveries(engine)
    assert {e: str(d.status) for e, d in state.items()} == {
        "p0@example.org": "claimed",
        "p1@example.org": "skipped",
        "p2@example.org": "claimed",
        "p3@example.org": "skipped",
        "p4@example.org": "claimed",
        "p5@example.org": "deferred",
    }
    assert state["p1@example.org"].reply == "unsubscribed before sending"
    assert state["p0@example.org"].reply == "" and state["p0@example.org"].worker == "w1"
    with transaction(engine) as session:
        session.execute(
            update(Delivery)
            .where(Delivery.email == "p5@example.org")
            .values(next_attempt_at=utcnow() - dt.timedelta(seconds=1), attempts=1)
        )
    with engine.connect() as conn, conn.begin():
        [due] = outbox.claim(conn, dispatch_id, "w2", 10)
    assert (due.email, due.attempts) == ("p5@example.org", 1), "a deferred delivery comes back when due"
