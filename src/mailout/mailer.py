"""The send loop: claim deliveries, send them over pooled connections, record each answer.

Each of ``sending.concurrency`` threads holds one connection to the transport
and one to the database. It claims a few deliveries at a time, and for each:
marks it ``sending`` (committed) and puts it on the wire; then, while the
server reads it, commits the previous message's answer together with the next
message's ``sending`` mark, and only then reads this one's answer. So no
message goes on the wire before its ``sending`` mark is committed, and a
process killed at any moment leaves at most two ``sending`` deliveries per
connection (the one on the wire, the next one marked); they become ``unknown``.
See ``outbox`` and docs/reliability.md.

A message that went out whole but got no answer (a drop or a timeout after the
final ".") is recorded ``unknown`` and never sent again unasked: the server may
have it. A failure before the message reached the server that no retry can mend
(a refused login, no STARTTLS, a full outbox disk) puts the delivery back in the
queue and pauses the dispatch, saying why: nobody is left out.

Ctrl-C or SIGTERM stops the claiming: messages already on the wire finish and
are recorded, claimed ones go back to the queue, and the process says how far
it got. Running the same command again resumes.
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from types import FrameType

from sqlalchemy import Connection as DbConnection
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from . import outbox, quota
from . import subscribers as people
from .clock import SYSTEM, Clock
from .config import Route, Settings
from .dkim import load_signer
from .envelope import envelope_sender, for_dispatch
from .errors import MailoutError
from .links import Links, MessageLinks
from .message import Addressing, MessageTemplate, feedback_id, message_id
from .models import DeliveryStatus, Dispatch, MailingList, utcnow
from .render import Recipient, Variant, first_name
from .segments import Segment
from .tokens import Signer
from .transports import (
    Connection,
    PermanentFailure,
    TemporaryFailure,
    Transport,
    TransportUnavailable,
    UnclearOutcome,
    make_transport,
)

#: How to record a message that was not accepted: a few statements, in one transaction.
Record = Callable[[DbConnection], None]
#: What happened to the message last sent on a connection, until it is recorded.
Outcome = outbox.Sent | Record

#: Connection failures in a row (refused, timed out, login refused) on a route with a
#: failover before the rest of the dispatch moves to it.
CONNECTION_FAILURES = 3
#: Seconds a thread waits after a connection failure before it tries again (with a failover).
RECONNECT_WAIT = 5.0
#: A quota wait at least this long closes the thread's connection first: servers drop idle ones.
IDLE_CLOSE = 30.0
#: Quota waits shorter than this are not told (a limit per second makes many, each brief).
QUIET_WAIT = 1.0


class AnotherSender(MailoutError):
    """Another process is sending this dispatch, and the database allows only one."""


@dataclass
class Tally:
    """What this process did, for the progress line and the summary."""

    sent: int = 0
    failed: int = 0
    deferred: int = 0
    skipped: int = 0
    unknown: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, what: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + n)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.sent / elapsed if elapsed > 0 else 0.0


class RateLimit:
    """At most ``per_second`` messages a second from this process (0: no limit)."""

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event) -> float:
        """Wait for this message's slot; return it (0 without a limit)."""
        if self.per_second <= 0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            self._next = slot + 1.0 / self.per_second
        if slot > now:
            stop.wait(slot - now)
        return slot

    def went(self, slot: float) -> None:
        """Count a message that just went out, given the slot it waited for.

        One that went out more than an interval after its slot (its connection was being
        opened) must not let the ones after it come closer together than the limit allows:
        the next slot moves to an interval after it. One that went out in time changes
        nothing, so that the work between slot and wire (building, marking) is not counted
        twice and a single connection still reaches the limit.
        """
        if self.per_second <= 0:
            return
        interval = 1.0 / self.per_second
        now = time.monotonic()
        if now - slot > interval:
            with self._lock:
                self._next = max(self._next, now + interval)


def delivery_message_id(dispatch: Dispatch, delivery_id: int) -> str:
    """Return the Message-ID of a delivery's message (the same at every attempt)."""
    return message_id(dispatch.key, delivery_id, Addressing(dispatch.from_name, dispatch.from_address).domain)


def settle_in_flight(transport: Transport, dispatch: Dispatch) -> Callable[[int], bool | None]:
    """Return how ``outbox.recover`` asks the transport about a delivery a dead process left sending.

    The answer is whether its message was delivered, or None when the transport cannot
    know (SMTP). What is left of a message that was not delivered is removed.
    """

    def settle(delivery_id: int) -> bool | None:
        message = delivery_message_id(dispatch, delivery_id)
        delivered = transport.delivered(message)
        if delivered is False:
            transport.discard(message)
        return delivered

    return settle


def recovery_notices(recovered: outbox.Recovery) -> list[str]:
    """Say what is known of each gone process, and what became of what it was sending."""
    lines = []
    for process in recovered.gone:
        if process.running:
            # Not gone: stopped (Ctrl-Z) or hung. What it claimed is taken from it; when it goes
            # on it can send none of that, but its message on the wire may still be answered.
            lines.append(
                f"{process} still runs but sent no heartbeat for {process.silent_for:.0f} s"
                " (sending.worker_timeout; stopped or hung?): taken as stopped; resuming"
            )
        elif process.here:
            lines.append(f"{process} is gone; resuming")
        else:
            lines.append(
                f"{process} sent no heartbeat for {process.silent_for:.0f} s (sending.worker_timeout):"
                " taken as stopped; resuming"
            )
    if recovered.requeued:
        lines.append(f"{recovered.requeued} deliveries claimed but not sent are queued again")
    if recovered.unknown:
        lines.append(
            f"{recovered.unknown} in flight when the process stopped are unknown (the server may have"
            " them; not sent again unless asked): `mailout status` lists them"
        )
    return lines


def _signed(identity: str) -> str:
    return f"signed with {identity}" if identity else "not signed"


def changed_since(before: outbox.RunRecord, signing: str, envelope: str) -> list[str]:
    """Say what this run does differently from the dispatch's run before it (a new key, a new return path)."""
    lines = []
    if before.signing is not None and before.signing[-1] != signing:
        lines.append(
            f"the messages of the run before were {_signed(before.signing[-1])}; this run's are {_signed(signing)}"
        )
    if before.envelope_sender is not None and before.envelope_sender[-1] != envelope:
        lines.append(
            f"the messages of the run before had the envelope sender {before.envelope_sender[-1]};"
            f" this run's have {envelope} (sender.return_path)"
        )
    return lines


class Mailer:
    """Sends one dispatch until it is finished, paused or stopped."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        dispatch: Dispatch,
        lst: MailingList,
        transport: Transport,
        signer: Signer,
        *,
        on_progress: Callable[[Tally], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
        variants: dict[str, Variant] | None = None,
        clock: Clock = SYSTEM,
        max_wait: float | None = None,
    ) -> None:
        """Get ready to send ``dispatch``: its variants (read from the outbox unless given) built once."""
        self.engine = engine
        self.settings = settings
        self.dispatch = dispatch
        self.list = lst
        self.transport = transport
        self.signer = signer
        self.on_progress = on_progress
        self.on_notice = on_notice
        #: Set to stop claiming: by a pause, the end, a signal, or the caller (``stop``).
        self.stop = stop if stop is not None else threading.Event()
        self.tally = Tally()
        #: The time for the quotas' waits (the tests' clock moves only when waited on).
        self.clock = clock
        #: A quota wait longer than this many seconds ends the run instead (None: wait): the
        #: worker then starts and sends other dispatches, and comes back at ``waiting.until``.
        self.max_wait = max_wait
        #: Set when a quota wait ended the run: the wait, with its message.
        self.waiting: quota.Wait | None = None
        self.worker = outbox.worker_name()
        self.policy_streak = 0
        #: The deliveries refused with 5.7.x in the current streak: queued again on a failover.
        self.policy_ids: list[int] = []
        self.connection_streak = 0
        #: The route in use, read by the threads in one go: (generation, route or None for
        #: ``[smtp]``, its transport). A failover replaces it; each thread then reconnects.
        self.using: tuple[int, Route | None, Transport] = (
            0, settings.route(dispatch.route) if dispatch.route else None, transport,
        )  # fmt: skip
        #: Routes this run went through: it never fails over back to one of them.
        self._visited = {dispatch.route}
        self._switch = threading.Lock()
        self._told: dt.datetime | None = None
        self.errors: list[BaseException] = []
        if variants is None:
            with engine.connect() as conn:
                variants = outbox.frozen_variants(conn, dispatch)
        addressing = Addressing(
            dispatch.from_name, dispatch.from_address, dispatch.reply_to, lst.name, lst.description
        )
        dkim = load_signer(settings)
        links = Links(settings, signer)
        #: Per language of the dispatch, built once: the message template and the link maker
        #: of its variant. A delivery's language picks them (a dict look-up per message).
        self.by_language: dict[str, tuple[MessageTemplate, MessageLinks]] = {
            language: (
                MessageTemplate(
                    variant,
                    addressing,
                    dkim=dkim,
                    feedback_id=feedback_id(str(dispatch.id), lst.name, dispatch.issue, addressing.domain),
                ),
                links.for_messages(
                    dispatch.issue,
                    lst.id,
                    member=dispatch.segment == Segment.MEMBER,
                    sender=dispatch.from_address,
                    language=language,
                ),
            )
            for language, variant in variants.items()
        }
        # The default language's (the first): what a delivery written before mailout chose a
        # language gets, as it would have before.
        self._default = next(iter(self.by_language.values()))
        self.template, self.links = self._default
        self.rate = RateLimit(settings.sending.rate_limit)
        self._domain = self.template.addressing.domain
        # What every message needs, read once: attributes of an ORM object cost a lookup each time.
        self._dispatch_id: int = dispatch.id
        self._key: str = dispatch.key
        #: The envelope sender (MAIL FROM) of a delivery's message: ``envelope`` decides (with
        #: VERP, one per delivery, its HMAC keyed once here), kept with its ``sending`` mark.
        self._envelope: Callable[[int], str] = for_dispatch(
            settings, dispatch.id, from_address=dispatch.from_address, signer=signer
        )
        #: What this run signs with and the envelope sender it uses, recorded with the dispatch.
        self.signing = self.template.dkim.identity if self.template.dkim else ""
        self.envelope_sender = envelope_sender(settings, dispatch.id, from_address=dispatch.from_address)
        self._batch: int = settings.sending.batch_size

    # -- set-up and tear-down ---------------------------------------------------

    def start(self) -> outbox.Recovery:
        """Register this process; take over from gone ones, and say so. Returns what was recovered."""
        timeout = self.settings.sending.worker_timeout
        with self.engine.begin() as conn:
            # First, so that the dispatch's row is locked before any delivery's, in the order
            # `send` takes them when it resumes a dispatch (PostgreSQL would see a deadlock).
            before = outbox.record_run(
                conn, self.dispatch.id, signing=self.signing, envelope_sender=self.envelope_sender
            )
            settle = settle_in_flight(self.transport, self.dispatch)
            recovered = outbox.recover(conn, self.dispatch.id, timeout, settle)
            others = outbox.live_workers(conn, self.dispatch.id, timeout)
            if others and self.engine.dialect.name == "sqlite":
                raise AnotherSender(
                    f"another process is sending this dispatch: {others[0]}, heard from"
                    f" {others[0].silent_for:.0f} s ago; wait for it to finish, or run `mailout status`"
                    " to follow it"
                )
            outbox.register_worker(conn, self.dispatch.id, self.worker)
        for line in recovery_notices(recovered):
            self.notice(line)
        for line in changed_since(before, self.signing, self.envelope_sender):
            self.notice(line)
        self._share_rate(len(others) + 1)
        return recovered

    def notice(self, text: str) -> None:
        """Tell the front end something the run found (a gone process it took over from)."""
        if self.on_notice:
            self.on_notice(text)

    def _share_rate(self, workers: int) -> None:
        # The limit holds across every process of the dispatch: each takes its share.
        total = self.settings.sending.rate_limit
        self.rate.per_second = total / workers if total > 0 else 0.0

    def finish(self) -> bool:
        """Give back what was claimed but not sent; return whether the dispatch is finished."""
        with self.engine.begin() as conn:
            outbox.retire_worker(conn, self.worker)
            return outbox.finish_if_done(conn, self.dispatch.id)

    # -- the loop ---------------------------------------------------------------

    def run(self) -> bool:
        """Send until nothing is left, or until stopped; return whether the dispatch is finished."""
        self.start()
        beat = threading.Thread(target=self._heartbeat, name="mailout-heartbeat", daemon=True)
        beat.start()
        threads = [
            threading.Thread(target=self._thread, args=(n,), name=f"mailout-sender-{n}", daemon=True)
            for n in range(self._concurrency(self.using[1]))
        ]
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(timeout=0.2)
                if self.on_progress:
                    self.on_progress(self.tally)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join()
            beat.join(timeout=5)
        done = self.finish()
        if self.errors:
            raise self.errors[0]
        return done

    def _heartbeat(self) -> None:
        interval = max(0.5, self.settings.sending.worker_timeout / 3)
        while not self.stop.wait(interval):
            try:
                with self.engine.begin() as conn:
                    outbox.heartbeat(conn, self.worker)
                    workers = outbox.live_workers(
                        conn, self.dispatch.id, self.settings.sending.worker_timeout
                    )
                    paused = outbox.paused_reason(conn, self.dispatch.id)
                    route = outbox.current_route(conn, self.dispatch.id)
            except OperationalError:
                continue  # a busy database: the next beat will do; a missed one is not fatal
            if route != self.route_name and route in (*self.settings.routes, ""):
                with self._switch:  # another process failed over: follow it
                    if route != self.route_name:
                        self._adopt(route)
            if paused:
                # Another process paused the dispatch (5.7.x refusals, a login refused): every
                # sender stops, not only the one that saw it.
                self.dispatch.paused_reason = paused
                self.stop.set()
                return
            self._share_rate(max(1, len(workers)))

    @property
    def route_name(self) -> str:
        """Return the name of the route in use ("" for ``[smtp]``)."""
        route = self.using[1]
        return route.name if route else ""

    def _concurrency(self, route: Route | None) -> int:
        return max(1, (route.concurrency if route else 0) or self.settings.sending.concurrency)

    def _thread(self, number: int) -> None:
        connection: Connection | None = None
        # The message on the wire whose answer is not read yet, and the outcome read but
        # not yet recorded. The outcome is recorded with the next message's "sending"
        # mark, in one statement committed while the server reads the message on the
        # wire: one commit per message, waited for while the server works.
        inflight: outbox.Claimed | None = None
        pending: Outcome | None = None
        generation, route, transport = self.using
        name = route.name if route else ""
        limited = route is not None and bool(quota.limits(route))

        def settle(db: DbConnection) -> None:
            """Read the answer to the message on the wire, and record it and what was pending."""
            nonlocal inflight, pending
            if inflight is not None:
                assert connection is not None
                self._record(db, pending)
                pending, inflight = self._finish(connection, inflight, name), None
            self._record(db, pending)
            pending = None

        try:
            connection = transport.connect()
            with outbox.loop_connection(self.engine) as db:
                try:
                    while not self.stop.is_set():
                        with db.begin():
                            batch = outbox.claim(db, self._dispatch_id, self.worker, self._batch)
                        if not batch:
                            # Answer and record what is on the wire before waiting.
                            settle(db)
                            if not self._wait_for_more():
                                return
                            continue
                        for index, claimed in enumerate(batch):
                            if self.stop.is_set():
                                return  # the rest of the batch goes back to the queue in finish()
                            slot = self.rate.wait(self.stop)
                            data = self._build(claimed)
                            envelope = self._envelope(claimed.id)
                            # On a route with limits, take a slot of its quotas, committed with
                            # the message's mark (a crash after the commit leaves the slot used,
                            # the message unknown: a quota is under-used, never exceeded); or wait.
                            marked: bool | None = None
                            while True:
                                if generation != self.using[0]:
                                    # A failover: what is on the old route's wire is answered and
                                    # recorded, then this thread goes on through the new route.
                                    settle(db)
                                    connection.close()
                                    generation, route, transport = self.using
                                    name = route.name if route else ""
                                    limited = route is not None and bool(quota.limits(route))
                                    if number >= self._concurrency(route):
                                        with outbox.atomic(db):
                                            ids = [c.id for c in batch[index:]]
                                            outbox.requeue(db, self._dispatch_id, ids, DeliveryStatus.CLAIMED)
                                        return
                                    connection = transport.connect()
                                if not limited:
                                    break
                                # A refusal is recorded when it is read: only an acceptance waits.
                                assert route is not None and (
                                    pending is None or isinstance(pending, outbox.Sent)
                                )
                                with outbox.atomic(db):
                                    wait = quota.take(db, route, self.clock.now())
                                    if wait is None:
                                        marked = outbox.advance(
                                            db, pending, claimed.id, self.worker, envelope, name
                                        )
                                if wait is None:
                                    break
                                settle(db)  # nothing waits on the wire, unrecorded, meanwhile
                                if self.max_wait is not None and wait.seconds > self.max_wait:
                                    with self._switch:
                                        if self.waiting is None or wait.until < self.waiting.until:
                                            self.waiting = wait
                                    self.stop.set()  # the claimed ones go back to the queue
                                    return
                                self._tell(wait)
                                if self.clock.wait(self.stop, wait.seconds):
                                    return  # stopped: finish() gives the claimed ones back
                                if wait.seconds >= IDLE_CLOSE:
                                    connection.close()  # reopened by the next message
                            if marked is None:
                                marked = self._record(
                                    db, pending, sending=claimed.id, envelope=envelope, route=name
                                )
                            pending = None
                            if inflight is not None:
                                pending, inflight = self._finish(connection, inflight, name), None
                            if pending is not None and not isinstance(pending, outbox.Sent):
                                # A refusal (rare): recorded now, before the next message goes
                                # out, so that a pause it causes (5.7.x) stops that one too.
                                self._record(db, pending)
                                pending = None
                            if self.stop.is_set():
                                # Stopped meanwhile (a pause, Ctrl-C): it does not go out. Marked,
                                # it goes back to the queue; claimed, finish() gives it back.
                                if marked:
                                    self._record(db, pending)
                                    pending = partial(self._unmark, claimed=claimed)
                                return
                            if not marked:
                                # Skipped since the claim: they unsubscribed while it waited.
                                self.tally.add("skipped")
                                continue
                            refused = self._start(connection, claimed, envelope, data, route)
                            if refused is None:
                                self.rate.went(slot)
                                inflight = claimed
                            else:  # not on the wire whole (rare): recorded at once
                                self._record(db, pending)
                                pending = None
                                self._record(db, refused)
                                if isinstance(refused, partial) and refused.func == self._unreachable:
                                    self.clock.wait(self.stop, RECONNECT_WAIT)
                finally:
                    if inflight is not None:
                        self._record(db, pending)
                        pending = self._finish(connection, inflight, name)
                    if pending is not None:
                        self._record(db, pending)
        except BaseException as exc:  # a bug or a database failure: stop everything, report it
            self.errors.append(exc)
            self.stop.set()
        finally:
            if connection is not None:
                connection.close()

    def _record(
        self,
        db: DbConnection,
        pending: Outcome | None,
        sending: int | None = None,
        envelope: str | None = None,
        route: str | None = None,
    ) -> bool:
        """Record the previous message's outcome and mark ``sending`` as on the wire; both committed.

        ``envelope`` is the ``MAIL FROM`` that ``sending`` goes out with, and ``route`` the
        route it goes through, kept with it.

        Returns whether ``sending`` was marked: not when it stopped being claimed meanwhile
        (an unsubscribe skipped it), and then it must not be sent.
        """
        if pending is None or isinstance(pending, outbox.Sent):
            # The usual case: one statement, committed when it returns, on the driver's own
            # connection (see outbox.loop_connection and outbox.advance).
            if pending is None and sending is None:
                return False
            return outbox.advance(db, pending, sending, self.worker, envelope, route)
        # A refusal takes several statements (a bounce suppresses the address too): all or nothing.
        with outbox.atomic(db):
            pending(db)
            if sending is None or self.stop.is_set():  # paused by this very outcome: send no more
                return False
            return outbox.mark_sending(db, sending, self.worker, envelope, route)

    def _wait_for_more(self) -> bool:
        """With nothing to claim now: wait for deferred deliveries, or say there is nothing left."""
        with self.engine.connect() as conn:
            state = outbox.counts(conn, self.dispatch.id)
            due = outbox.next_due(conn, self.dispatch.id)
        if state[DeliveryStatus.QUEUED] == 0 and state[DeliveryStatus.DEFERRED] == 0:
            return False
        wait = 0.2 if due is None else min(1.0, max(0.0, (due - utcnow()).total_seconds()))
        self.stop.wait(wait)
        return True

    def _start(
        self, connection: Connection, claimed: outbox.Claimed, envelope: str, data: bytes, route: Route | None
    ) -> Outcome | None:
        """Put one message on the wire; return None, or how to record why it did not go out whole."""
        name = route.name if route else ""
        try:
            connection.start(envelope, claimed.email, data)
        except PermanentFailure as failure:
            return partial(self._failed, claimed=claimed, failure=failure, route=name)
        except TemporaryFailure as failure:
            return partial(self._deferred, claimed=claimed, failure=failure)
        except TransportUnavailable as error:
            if route is not None and route.failover:
                # Maybe the route's server only: counted, and after a few in a row the rest
                # goes through the failover route (see _unreachable).
                return partial(self._unreachable, claimed=claimed, error=error, route=name)
            self.stop.set()
            return partial(self._halted, claimed=claimed, error=error)
        except Exception as error:
            # By the transport's contract the message did not reach the server (a refused
            # login, a full disk, a bug): it goes back to the queue, and since nothing more
            # can go out until the cause is fixed, everything stops now. The loop records
            # this before it returns, before the process exits.
            self.stop.set()
            if not isinstance(error, MailoutError):
                self.errors.append(error)  # a bug: its traceback is wanted too
            return partial(self._halted, claimed=claimed, error=error)
        self.connection_streak = 0
        return None

    def _finish(self, connection: Connection, claimed: outbox.Claimed, route: str) -> Outcome:
        """Read the answer to the message on the wire (sent through ``route``); return how to record it."""
        try:
            reply = connection.finish()
        except PermanentFailure as failure:
            return partial(self._failed, claimed=claimed, failure=failure, route=route)
        except TemporaryFailure as failure:
            return partial(self._deferred, claimed=claimed, failure=failure)
        except UnclearOutcome as outcome:
            return partial(self._unknown, claimed=claimed, outcome=outcome)
        except Exception as error:
            # The whole message went out: whatever this is, the server may have it.
            if not isinstance(error, MailoutError):
                self.errors.append(error)
                self.stop.set()
            return partial(self._unknown, claimed=claimed, outcome=UnclearOutcome(0, str(error)))
        if self.policy_streak:
            with self._switch:
                self.policy_streak, self.policy_ids = 0, []
        self.tally.add("sent")
        return outbox.Sent(claimed.id, str(reply))

    def _build(self, claimed: outbox.Claimed) -> bytes:
        template, links = self.by_language.get(claimed.language, self._default)
        urls = links(claimed.subscriber_id)
        return template.build(
            to_name=claimed.name,
            to_address=claimed.email,
            message_id=message_id(self._key, claimed.id, self._domain),
            recipient=Recipient(first_name(claimed.name), urls.unsubscribe, urls.view, urls.preferences),
            unsubscribe_mailto=urls.unsubscribe_mailto,
        )

    def _failed(
        self, db: DbConnection, *, claimed: outbox.Claimed, failure: PermanentFailure, route: str = ""
    ) -> None:
        outbox.mark(db, claimed.id, DeliveryStatus.FAILED, reply=str(failure))
        if failure.enhanced.startswith("5.1."):
            # No such mailbox: never mail this address again.
            people.mark_bounced(db, claimed.subscriber_id, f"dispatch {self.dispatch.id}: {failure}")
        if not failure.enhanced.startswith("5.7."):
            self.tally.add("failed")
            with self._switch:
                self.policy_streak, self.policy_ids = 0, []
            return
        # Refused for a reason of ours (SPF, DKIM, reputation), not the address's fault.
        with self._switch:
            if route != self.route_name:
                # Sent through the route this run left meanwhile, refused as its streak was:
                # it goes again through the new one.
                outbox.requeue(db, self._dispatch_id, [claimed.id], DeliveryStatus.FAILED)
                return
            self.tally.add("failed")
            self.policy_streak += 1
            self.policy_ids.append(claimed.id)
            streak = self.policy_streak
            if streak < self.settings.sending.policy_failures_pause:
                return
            why = f"{streak} refusals in a row with {failure.enhanced} ({failure.text})"
            if self._fail_over(db, why):
                return
        self._pause(
            db,
            f"{streak} messages in a row refused with {failure.enhanced} ({failure.text});"
            " check the sender domain's SPF and DKIM records and the server's policy, then run send again",
        )

    def _unreachable(
        self, db: DbConnection, *, claimed: outbox.Claimed, error: TransportUnavailable, route: str
    ) -> None:
        """Record a connection failure on a route with a failover: queued again; a few in a row move the rest."""
        outbox.requeue_unsent(db, claimed.id, self.worker)
        with self._switch:
            if route != self.route_name:
                return  # a failure of the route this run left meanwhile: not the new one's
            self.connection_streak += 1
            streak = self.connection_streak
            if streak < CONNECTION_FAILURES or self._fail_over(
                db, f"{streak} connection failures in a row ({error})"
            ):
                return
        self._pause(db, f"{error}; fix it, then run the same command to resume")

    def _fail_over(self, db: DbConnection, why: str) -> bool:
        """Move the rest of the dispatch to the route's failover, if it has one not used yet in this run.

        In the caller's transaction, holding ``_switch``. The deliveries refused with 5.7.x
        in the streak are queued again: the route's fault, not the addresses'.
        """
        route = self.using[1]
        if route is None or not route.failover or route.failover in self._visited:
            return False
        after = route.failover
        if not outbox.switch_route(db, self._dispatch_id, route.name, after, why):
            after = outbox.current_route(db, self._dispatch_id)  # another process moved it first
        requeued = outbox.requeue(db, self._dispatch_id, self.policy_ids, DeliveryStatus.FAILED)
        self.tally.add("failed", -requeued)
        self._adopt(after)
        again = f"; {requeued} refused meanwhile queued again" if requeued else ""
        self.notice(f"route {route.name} -> {after or '[smtp]'} after {why}{again}")
        return True

    def _adopt(self, name: str) -> None:
        """Send through route ``name`` from now on (holding ``_switch``): each thread reconnects."""
        route = self.settings.route(name) if name else None
        transport = make_transport(self.settings, name)
        self.using = (self.using[0] + 1, route, transport)
        self.transport = transport
        self._visited.add(name)
        self.policy_streak, self.policy_ids, self.connection_streak = 0, [], 0

    def _tell(self, wait: quota.Wait) -> None:
        """Tell the front end about a quota wait, once (each thread waiting for the same instant)."""
        if wait.seconds < QUIET_WAIT:
            return
        with self._switch:
            if self._told is not None and wait.until <= self._told:
                return
            self._told = wait.until
        self.notice(wait.message)

    def _deferred(self, db: DbConnection, *, claimed: outbox.Claimed, failure: TemporaryFailure) -> None:
        # From its start: a dispatch written on Friday for Tuesday is not days old on Tuesday.
        began = self.dispatch.started_at or self.dispatch.created_at
        age = (utcnow() - outbox.as_utc(began)).total_seconds()
        retry = self.settings.sending.retry_delay * (2 ** min(claimed.attempts, 16))
        if age + retry > self.settings.sending.retry_max_age:
            reply = f"gave up after {claimed.attempts + 1} attempts: {failure}"
            outbox.mark(db, claimed.id, DeliveryStatus.FAILED, reply=reply)
            self.tally.add("failed")
            return
        next_attempt = utcnow() + dt.timedelta(seconds=retry)
        outbox.mark(db, claimed.id, DeliveryStatus.DEFERRED, reply=str(failure), next_attempt_at=next_attempt)
        self.tally.add("deferred")

    def _unknown(self, db: DbConnection, *, claimed: outbox.Claimed, outcome: UnclearOutcome) -> None:
        # The server may have it: sending it again could deliver it twice, so only on request.
        outbox.mark(db, claimed.id, DeliveryStatus.UNKNOWN, reply=str(outcome))
        self.tally.add("unknown")

    def _unmark(self, db: DbConnection, *, claimed: outbox.Claimed) -> None:
        outbox.requeue_unsent(db, claimed.id, self.worker)

    def _halted(self, db: DbConnection, *, claimed: outbox.Claimed, error: Exception) -> None:
        outbox.requeue_unsent(db, claimed.id, self.worker)
        what = str(error) if isinstance(error, MailoutError) else f"{type(error).__name__}: {error}"
        self._pause(db, f"{what}; fix it, then run the same command to resume")

    def _pause(self, db: DbConnection, reason: str) -> None:
        # In the caller's transaction: a second one would wait for the lock this thread holds.
        outbox.pause(db, self.dispatch.id, reason)
        self.stop.set()

    # -- signals ----------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Make Ctrl-C and SIGTERM finish what is on the wire, then stop."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
