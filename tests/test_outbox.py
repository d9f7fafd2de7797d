"""The delivery state machine's statements, on SQLite and PostgreSQL.

What the send loop relies on: a claim takes each due delivery once, in order,
and skips whoever left the list; the per-message statement moves the previous
delivery to ``sent`` and the next to ``sending`` with the right fields; and on
the loop's connection what a step wrote is committed, visible to everyone else,
when it returns.
"""

from __future__ import annotations

import datetime as dt
import os

import pytest
from sqlalchemy import Connection, Engine, select, update

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
            from_name="News", from_address="news@example.org", started_at=utcnow(),
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


def test_advance_moves_the_previous_delivery_to_sent_and_the_next_to_sending(engine: Engine) -> None:
    dispatch_id = make_dispatch(engine, 3)
    before = utcnow()
    with outbox.loop_connection(engine) as db:
        with db.begin():
            first, second, third = outbox.claim(db, dispatch_id, "w1", 3)
        with db.begin():
            outbox.advance(db, None, first.id, "w1")
        with db.begin():
            outbox.advance(db, outbox.Sent(first.id, "250 2.0.0 Ok: queued as A1"), second.id, "w1")
        state = deliveries(engine)
        assert (state[first.email].status, state[first.email].attempts) == (DeliveryStatus.SENT, 1)
        assert state[first.email].reply == "250 2.0.0 Ok: queued as A1"
        assert (state[second.email].status, state[second.email].attempts) == (DeliveryStatus.SENDING, 1)
        assert state[second.email].reply == "", "the reply is the sent one's only"
        assert state[third.email].status is DeliveryStatus.CLAIMED, "no other row changes"
        assert all(outbox.as_utc(d.updated_at) >= before for d in (state[first.email], state[second.email]))
        with db.begin():
            outbox.advance(db, outbox.Sent(second.id, "250 " + "x" * 3000), None, "w1")
    state = deliveries(engine)
    assert state[second.email].status is DeliveryStatus.SENT and len(state[second.email].reply) == 2000
    assert state[third.email].attempts == 0


def test_the_loop_connection_commits_each_statement_when_it_returns(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's loop connection is an ordinary one: each step is its own transaction")
    dispatch_id = make_dispatch(engine, 2)
    with outbox.loop_connection(engine) as db:
        first, _ = outbox.claim(db, dispatch_id, "w1", 2)
        outbox.advance(db, None, first.id, "w1")
        # Not committed by SQLAlchemy yet: the server committed the statement by itself.
        assert db.in_transaction()
        assert deliveries(engine)[first.email].status is DeliveryStatus.SENDING
        db.commit()


def test_a_transaction_on_the_loop_connection_is_all_or_nothing(engine: Engine) -> None:
    dispatch_id = make_dispatch(engine, 2)

    def record(db: Connection, email: str) -> None:
        db.execute(update(Delivery).where(Delivery.email == email).values(status=DeliveryStatus.FAILED))

    with outbox.loop_connection(engine) as db:
        with db.begin():
            outbox.claim(db, dispatch_id, "w1", 2)
        with pytest.raises(RuntimeError), outbox.atomic(db):
            record(db, "p0@example.org")
            raise RuntimeError("the second statement failed")
        assert deliveries(engine)["p0@example.org"].status is DeliveryStatus.CLAIMED
        with outbox.atomic(db):
            record(db, "p0@example.org")
            record(db, "p1@example.org")
        assert {str(d.status) for d in deliveries(engine).values()} == {"failed"}
        # Back to one commit per statement afterwards.
        autocommit = db.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        assert autocommit is (engine.dialect.name == "postgresql")


def test_concurrent_claims_never_take_the_same_delivery(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: claims cannot overlap")
    dispatch_id = make_dispatch(engine, 6)
    with engine.connect() as holder, holder.begin(), outbox.loop_connection(engine) as other:
        # The first claim's transaction is still open: its rows stay locked, and skipped.
        first = outbox.claim(holder, dispatch_id, "w1", 3)
        second = outbox.claim(other, dispatch_id, "w2", 10)
        other.commit()
    assert [c.email for c in first] == ["p0@example.org", "p1@example.org", "p2@example.org"]
    assert [c.email for c in second] == ["p3@example.org", "p4@example.org", "p5@example.org"]
    assert {d.worker for d in deliveries(engine).values()} == {"w1", "w2"}


def test_a_claimed_delivery_skipped_by_an_unsubscribe_is_never_marked_sending(engine: Engine) -> None:
    from mailout.models import Source
    from mailout.subscribers import unsubscribe

    dispatch_id = make_dispatch(engine, 3)
    with outbox.loop_connection(engine) as db:
        with db.begin():
            first, second, third = outbox.claim(db, dispatch_id, "w1", 3)
        # Both still claimed, waiting in the process's batch, when they unsubscribe.
        with transaction(engine) as session:
            for email in (second.email, third.email):
                person = session.scalars(select(Subscriber).where(Subscriber.email == email)).one()
                unsubscribe(session, person, Source.ONE_CLICK)
        with db.begin():
            assert outbox.advance(db, None, first.id, "w1") is True
        with db.begin():  # the combined statement: the sent one recorded, the skipped one left alone
            assert outbox.advance(db, outbox.Sent(first.id, "250 ok"), second.id, "w1") is False
        with db.begin():  # the single statement, after a refusal's transaction
            assert outbox.mark_sending(db, third.id, "w1") is False
    state = deliveries(engine)
    assert state[first.email].status is DeliveryStatus.SENT
    assert [(state[e].status, state[e].attempts) for e in (second.email, third.email)] == [
        (DeliveryStatus.SKIPPED, 0),
        (DeliveryStatus.SKIPPED, 0),
    ]


def test_a_silent_process_that_still_runs_here_is_not_called_gone(engine: Engine) -> None:
    """Ctrl-Z or a hang: taken over for its silence, and said to run still, not to be gone."""
    from mailout.mailer import recovery_notices
    from mailout.models import Worker

    dispatch_id = make_dispatch(engine, 2)
    with engine.begin() as conn:
        outbox.register_worker(conn, dispatch_id, "stopped")  # this very process: it runs
        outbox.claim(conn, dispatch_id, "stopped", 2)
        conn.execute(
            update(Worker)
            .values(heartbeat_at=utcnow() - dt.timedelta(seconds=100))
            .where(Worker.id == "stopped")
        )
    with engine.begin() as conn:
        recovered = outbox.recover(conn, dispatch_id, 30)
    assert recovered.requeued == 2
    [process] = recovered.gone
    assert process.running
    assert recovery_notices(recovered)[0] == (
        f"process {os.getpid()} on this machine still runs but sent no heartbeat for 100 s"
        " (sending.worker_timeout; stopped or hung?): taken as stopped; resuming"
    )


def test_only_the_claiming_process_puts_a_delivery_on_the_wire_or_back_in_the_queue(engine: Engine) -> None:
    # A process taken over while stopped (SIGSTOP past worker_timeout) wakes up with a
    # delivery in hand that another process may have sent since: it must not touch it.
    dispatch_id = make_dispatch(engine, 2)
    with outbox.loop_connection(engine) as db:
        with db.begin():
            first, second = outbox.claim(db, dispatch_id, "w1", 2)
        with db.begin():
            assert outbox.mark_sending(db, first.id, "w2") is False, "w2 never claimed it"
            assert outbox.advance(db, None, first.id, "w2") is False
            assert outbox.mark_sending(db, first.id, "w1") is True
        with db.begin():
            outbox.requeue_unsent(db, first.id, "w2")
        assert deliveries(engine)[first.email].status is DeliveryStatus.SENDING, "not w2's to requeue"
        with db.begin():
            outbox.requeue_unsent(db, first.id, "w1")
        state = deliveries(engine)
        assert (state[first.email].status, state[first.email].attempts) == (DeliveryStatus.QUEUED, 0)
        assert state[second.email].status is DeliveryStatus.CLAIMED


def test_a_dispatch_is_not_finished_while_another_process_queues_deliveries_again(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: the two cannot interleave")
    import threading

    dispatch_id = make_dispatch(engine, 2)
    with engine.begin() as conn:
        conn.execute(update(Delivery).values(status=DeliveryStatus.UNKNOWN))
        assert outbox.finish_if_done(conn, dispatch_id) is True
    finished: list[bool] = []
    with engine.connect() as requeuer:
        with requeuer.begin():
            assert outbox.resend_unknown(requeuer, dispatch_id) == 2
            # The requeue holds the dispatch; a sender finishing now must wait for it, then
            # see the queued deliveries, instead of marking the dispatch finished under them.
            closer = threading.Thread(
                target=lambda: finished.append(_finish(engine, dispatch_id)), name="finisher"
            )
            closer.start()
            closer.join(timeout=1.0)
            assert closer.is_alive(), "finish_if_done waits for the requeue's transaction"
        closer.join(timeout=10)
    assert finished == [False]
    with engine.connect() as conn:
        assert conn.scalar(select(Dispatch.finished_at).where(Dispatch.id == dispatch_id)) is None


def _finish(engine: Engine, dispatch_id: int) -> bool:
    with engine.begin() as conn:
        return outbox.finish_if_done(conn, dispatch_id)
