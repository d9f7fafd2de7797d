"""Dispatching an issue to a list: what every front end calls to send, and to follow a send.

The command line, the web side and a scheduler all go through these steps::

    plan(issue, list)   what a send would do: resume a dispatch, or write a new one
                        (variant, recipients, sender, transport, warnings); writes nothing
    start(plan)         do it: write the dispatch and its deliveries, or take up the
                        planned one (lifting its pause; when asked, queueing again its
                        unknown deliveries or its policy refusals, finished or not)
    run(dispatch)       send until finished, paused or stopped; return its report

A dispatch sends only once started. One written by ``send`` is started as it is written,
unless it is scheduled (``plan(at=...)``) or waits for an approval
(``sending.require_approval``): then ``begin`` starts it, in one conditional UPDATE with
the approval checked in the same transaction, when ``start_due`` (the worker) finds it
due, or at once when asked (``send --now``). ``mark_missed`` marks the ones whose
instant passed by more than ``sending.max_lateness``; ``cancel`` cancels one not started.

and ``overview()``, ``report(dispatch)`` and ``unfinished()`` say where dispatches
stand. What they return are plain dataclasses; a user's mistake is a ``MailoutError``.
The tables belong to ``outbox`` (dispatches, deliveries) and ``subscribers`` (lists):
this module decides, they write.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import approvals, bounces, instants, languages, outbox
from . import subscribers as people
from .approvals import NotApproved
from .clock import SYSTEM, Clock
from .config import Settings
from .db import reader, transaction
from .dkim import check as check_dkim
from .dkim import load_signer
from .errors import MailoutError
from .issues import Issue
from .links import Links
from .mailer import Mailer, Tally, delivery_message_id, settle_in_flight
from .models import FINAL, DeliveryStatus, Dispatch, MailingList
from .render import Variant, render_language, template_environment
from .segments import Segment
from .tokens import Signer, check_real_key
from .transports import Transport, TransportUnavailable, enhanced_status, make_transport

#: How many dispatches ``overview`` shows.
RECENT = 20


class DispatchExists(MailoutError):
    """The issue was sent to this list already; sending it once more takes ``again``."""


class DispatchNotFound(MailoutError):
    """No dispatch has this number."""


class NothingToResend(MailoutError):
    """A send was asked to send again to unknown or refused deliveries, and there are none."""


class NoRecipients(MailoutError):
    """Nobody is subscribed to the list: a dispatch to nobody is refused, and none is written."""


class DispatchWaiting(MailoutError):
    """A dispatch of the issue to the list waits (scheduled or missed): a send says how to start or cancel it."""


class NotStarted(MailoutError):
    """A dispatch not started (scheduled, missed, awaiting approval) or cancelled cannot send."""


class CannotCancel(MailoutError):
    """Only a dispatch not started yet can be cancelled, and only once."""


class DispatchState(StrEnum):
    """Where a dispatch stands."""

    SCHEDULED = "scheduled"  # waits for its instant (``scheduled_at``)
    AWAITING_APPROVAL = "awaiting approval"  # written to send now, waits for `mailout approve`
    MISSED = "missed"  # its instant passed by more than sending.max_lateness: `send --now` sends it
    CANCELLED = "cancelled"  # by `schedule cancel` before it started: it never sends
    UNFINISHED = "unfinished"
    PAUSED = "paused"  # by mailout itself, with a reason; the next send lifts it
    FINISHED = "finished"


#: The states of a dispatch that may send: started, not cancelled, not finished.
SENDING = (DispatchState.UNFINISHED, DispatchState.PAUSED)


class Ending(StrEnum):
    """Why ``run`` returned."""

    FINISHED = "finished"  # nothing is left to send
    PAUSED = "paused"  # paused with a reason (repeated policy refusals): see ``paused_reason``
    STOPPED = "stopped"  # stopped (Ctrl-C, SIGTERM): running it again resumes
    OTHERS = "others"  # nothing left for this process: other processes send the last messages
    WAITING = "waiting"  # its route's quota is used up for longer than the caller waits: see ``waiting``


#: The RFC 3463 class of a refusal for a reason of the sender's (SPF, DKIM, reputation).
POLICY = "5.7."


@dataclass(frozen=True)
class Resume:
    """The dispatch that a send takes up instead of writing a new one."""

    dispatch_id: int
    paused_reason: str
    #: Deliveries whose message may or may not have arrived: ``unknown`` ones, and those
    #: that dead processes left on the wire (unless the transport knows what became of them).
    unknown: int
    resend_unknown: bool
    #: Deliveries that failed with a policy refusal (5.7.x); ``retry_policy`` queues them again.
    refused: int = 0
    retry_policy: bool = False
    #: When it finished; a finished dispatch is taken up only to send again what was asked.
    finished: dt.datetime | None = None
    #: Set when it is not started yet (scheduled, missed, awaiting approval): its state.
    waiting: DispatchState | None = None
    #: Start it now, whatever its instant, missed or not (``send --now``).
    start_now: bool = False
    #: Move its instant here instead (``send --at`` again), UTC.
    reschedule: dt.datetime | None = None
    #: Its instant (UTC) before any reschedule; None when it was not scheduled.
    scheduled_at: dt.datetime | None = None


@dataclass(frozen=True)
class Plan:
    """What sending an issue to a list would do: resume a dispatch, or write a new one."""

    issue: str
    list_name: str
    list_description: str
    sender: str
    transport: str
    warnings: tuple[str, ...]
    #: The newest dispatch of the issue to the list when planned (``start`` checks it still is).
    previous: int | None
    #: Set when the send takes up an unfinished dispatch.
    resume: Resume | None = None
    #: Set when the send writes a new dispatch: the variant frozen with it in the issue's
    #: default language, and how many get the dispatch.
    variant: Variant | None = None
    recipients: int = 0
    #: Every variant frozen with a new dispatch by language, the default first (``variant``
    #: is the first), and how many recipients get each (``languages.choose``).
    variants: dict[str, Variant] = field(default_factory=dict)
    by_language: dict[str, int] = field(default_factory=dict)
    #: A new dispatch's instant (UTC), when it is scheduled; None: it starts when written.
    scheduled_at: dt.datetime | None = None
    #: Who writes it (``--by``, else git's user, else the login name).
    created_by: str = ""
    #: The route a new dispatch goes through ("" is ``[smtp]``): ``--route``, else the list's.
    route: str = ""


@dataclass(frozen=True)
class Started:
    """The dispatch a send goes on with, and what ``start`` did to it."""

    dispatch_id: int
    total: int
    created: bool
    #: Set when another send wrote the dispatch since this one was planned, and this one joins it.
    joined: bool = False
    #: The pause that was lifted ("" when it was not paused).
    unpaused: str = ""
    #: Unknown deliveries queued again.
    requeued: int = 0
    #: Policy refusals queued again.
    retried: int = 0
    #: Whether it may send now (started). False: scheduled for ``scheduled_at``, or waiting
    #: for an approval (``waiting`` says why it could not start).
    started: bool = True
    scheduled_at: dt.datetime | None = None
    waiting: str = ""


@dataclass(frozen=True)
class Failure:
    """A server reply that failed or deferred deliveries, and how many."""

    reply: str
    count: int


@dataclass(frozen=True)
class Summary:
    """One dispatch at a glance: counts per delivery state, time taken, rate."""

    id: int
    issue: str
    list: str
    segment: str
    subject: str
    created: dt.datetime
    finished: dt.datetime | None
    state: DispatchState
    total: int
    counts: dict[str, int]
    #: Deliveries by the language of the variant they get, the dispatch's default first;
    #: "" for deliveries written before mailout chose one (the dispatch's one variant).
    languages: dict[str, int]
    #: Deliveries with nothing more to come: sent + failed + skipped + unknown (= total once finished).
    done: int
    seconds: float
    rate: float
    paused_reason: str
    #: Its instant, when scheduled; when it started (None: not yet), was found missed, or
    #: was cancelled (UTC); who wrote it ("" before mailout recorded it).
    scheduled: dt.datetime | None = None
    started: dt.datetime | None = None
    missed: dt.datetime | None = None
    cancelled: dt.datetime | None = None
    created_by: str = ""
    #: The route it sends through now ("" is ``[smtp]``).
    route: str = ""


@dataclass(frozen=True)
class Report(Summary):
    """One dispatch in full: its summary, failures by server reply, and the unknown addresses."""

    failures: list[Failure] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    #: Failed deliveries refused for a policy reason (5.7.x): ``send --retry-policy`` retries them.
    refused: int = 0
    #: Who signed its messages, per send run that changed it, oldest first ("": not signed);
    #: None when it was sent before mailout recorded it (see ``outbox.RunRecord``).
    signing: tuple[str, ...] | None = None
    #: The envelope sender (MAIL FROM) of its messages, the same way.
    envelope_sender: tuple[str, ...] | None = None
    #: Recipients that bounce reports suppressed (a permanent failure, or soft ones to the
    #: threshold), and that complained, as ``mailout bounces process`` recorded them.
    bounced: int = 0
    complained: int = 0
    #: Deliveries by the route their message went through ("" is ``[smtp]``), and each
    #: failover, one line each ("2019-02-12 09:14 UTC: route m365 -> ses after ...").
    routes: dict[str, int] = field(default_factory=dict)
    route_changes: tuple[str, ...] = ()
    #: What ``sending.require_approval`` would decide of it: "approved by ..." only for an
    #: approval that lets it start, else why not; "" when nobody approved the issue for the list.
    approval: str = ""


@dataclass(frozen=True)
class Result:
    """How a run of a dispatch ended, and where the dispatch stands now."""

    ending: Ending
    report: Report
    #: With ``Ending.WAITING``: what the quota said ("waiting for quota: ... resumes ...")
    #: and when a slot frees.
    waiting: str = ""
    resumes_at: dt.datetime | None = None


# --- sending ---------------------------------------------------------------------


def plan(
    engine: Engine,
    settings: Settings,
    issue: Issue,
    list_name: str,
    *,
    again: bool = False,
    resend_unknown: bool = False,
    retry_policy: bool = False,
    at: dt.datetime | None = None,
    by: str = "",
    route: str | None = None,
    now: bool = False,
) -> Plan:
    """Say what sending ``issue`` to ``list_name`` would do, writing nothing but the list's settings.

    An unfinished dispatch of the issue to the list is resumed; so is a finished one when
    ``resend_unknown`` or ``retry_policy`` asks for deliveries it has. Otherwise a finished
    dispatch raises ``DispatchExists`` unless ``again``; asking to send again what a
    dispatch does not have raises ``NothingToResend``.

    A new dispatch is scheduled for ``at`` (aware; None: now), written by ``by``, and goes
    through ``route`` (None: the list's ``route``, else ``sending.route``).

    A dispatch of the issue to the list that is not started yet is taken up, never written
    twice: ``at`` moves its instant, ``now`` starts it at once (scheduled or missed); one
    awaiting approval is started if approved. A scheduled or missed one without ``at`` or
    ``now`` raises ``DispatchWaiting``, which says what to do. A cancelled one counts as
    never sent: the next send writes a new dispatch.
    """
    list_settings = settings.mailing_list(list_name)
    chosen = route if route is not None else (list_settings.route or settings.sending.route)
    warnings = []
    if settings.sends_mail:  # mail to real people: the links must be safe to sign
        warnings += check_real_key(settings.secret_key)
    warnings += check_dkim(settings, load_signer(settings))  # a key that cannot be read stops here
    base = Links(settings).base
    if settings.sends_mail and not base.startswith("https://"):
        warnings.append(
            f"newsletter.public_base_url is {base}: the unsubscribe"
            " and view-in-browser links should be https for real readers"
        )
    wanted = issue_languages(issue, settings)
    with transaction(engine) as session:
        lst = people.ensure_list(session, list_settings)
        newest = outbox.find_dispatch(session, issue.slug, lst)
        # A dispatch taken up goes on through its own route (a failover may have moved it).
        takes_up = newest is not None and (newest.finished_at is None or resend_unknown or retry_policy)
        if takes_up:
            assert newest is not None
            if route is not None and route != newest.route:
                raise MailoutError(
                    f"dispatch {newest.id} of {issue.slug} to '{lst.name}' goes through route"
                    f" '{newest.route or '[smtp]'}'; --route chooses the route of a new dispatch only"
                )
            chosen = newest.route
        transport = make_transport(settings, chosen)
        unknown = _unknown(session, settings, transport, newest) if newest else 0
        refused = len(_policy_refusals(session, newest.id)) if newest else 0
        recipients = outbox.count_recipients(session, lst)
        # For a new dispatch only: a resumed one sends what was chosen when it was written.
        writes = newest is None or newest.finished_at is not None
        by_language = outbox.count_by_language(session, lst, wanted, wanted[0]) if writes else {}
    found = Plan(
        issue=issue.slug,
        list_name=lst.name,
        list_description=lst.description,
        sender=f"{settings.sender.name} <{settings.sender.address}>",
        transport=transport.description,
        warnings=tuple(warnings),
        previous=newest.id if newest else None,
        scheduled_at=at.astimezone(dt.UTC) if at is not None else None,
        created_by=by,
        route=chosen,
    )
    if newest is not None and newest.finished_at is None and newest.started_at is None:
        return replace(found, resume=_take_up_waiting(settings, newest, lst, found, now=now))
    if newest is not None and newest.finished_at is None and at is not None:
        raise MailoutError(
            f"dispatch {newest.id} of {issue.slug} to '{lst.name}' has started and is not finished:"
            f" --at schedules a new dispatch only; `mailout send {issue.slug} --list {lst.name}` resumes it"
        )
    asked = bool((resend_unknown and unknown) or (retry_policy and refused))
    if newest is not None and (newest.finished_at is None or asked):
        finished = outbox.as_utc(newest.finished_at) if newest.finished_at else None
        resume = Resume(
            newest.id, newest.paused_reason, unknown, resend_unknown, refused, retry_policy, finished
        )
        return replace(found, resume=resume)
    if resend_unknown or retry_policy:
        raise _nothing_to_resend(
            issue.slug, lst, newest, resend_unknown=resend_unknown, retry_policy=retry_policy
        )
    if newest is not None and newest.cancelled_at is None and not again:
        raise _exists(newest, lst)
    if recipients == 0:
        raise _nobody(lst)
    # Rendered once the plan is sure to need it, outside the transaction: it takes a while.
    # Each language once, for every reader of it: the default first.
    segment = Segment(list_settings.segment)
    env = template_environment(settings)
    variants = {lang: render_language(issue, settings, segment, lang, env=env) for lang in wanted}
    return replace(
        found,
        variant=variants[wanted[0]],
        recipients=recipients,
        variants=variants,
        by_language=by_language,
    )


def issue_languages(issue: Issue, settings: Settings) -> tuple[str, ...]:
    """Return the languages ``issue`` is sent in, its default first (``newsletter.language`` if it says none)."""
    default = languages.canonical(settings.newsletter.language) or settings.newsletter.language
    return issue.variant_languages(default)


def _unknown(session: Session, settings: Settings, transport: Transport, dispatch: Dispatch) -> int:
    """Count the deliveries whose message may have arrived or not, as ``recover`` will leave them."""
    stranded = outbox.in_flight_of_dead(session.connection(), dispatch.id, settings.sending.worker_timeout)
    unsettled = [d for d in stranded if transport.delivered(delivery_message_id(dispatch, d)) is None]
    return len(outbox.unknown_deliveries(session, dispatch.id)) + len(unsettled)


def _policy_refusals(session: Session, dispatch_id: int) -> list[int]:
    """Return the ids of the deliveries that failed with a policy refusal (5.7.x), never others."""
    return [
        delivery_id
        for delivery_id, reply in outbox.failed_deliveries(session, dispatch_id)
        if enhanced_status(reply).startswith(POLICY)
    ]


def _take_up_waiting(
    settings: Settings, dispatch: Dispatch, lst: MailingList, found: Plan, *, now: bool
) -> Resume:
    """Return how a send takes up a dispatch not started yet, or say why it does not."""
    state = _state(dispatch)
    scheduled = outbox.as_utc(dispatch.scheduled_at) if dispatch.scheduled_at else None
    resume = Resume(dispatch.id, dispatch.paused_reason, 0, False, waiting=state, scheduled_at=scheduled)
    if found.scheduled_at is not None:
        return replace(resume, reschedule=found.scheduled_at)
    if now or state is DispatchState.AWAITING_APPROVAL:
        return replace(resume, start_now=now)
    raise DispatchWaiting(waiting_line(settings, dispatch, lst))


def waiting_line(settings: Settings, dispatch: Dispatch, lst: MailingList) -> str:
    """Say where a dispatch not started stands, and what starts or cancels it."""
    zone = settings.sending.timezone
    state = _state(dispatch)
    head = f"dispatch {dispatch.id} of {dispatch.issue} to '{lst.name}'"
    send = f"mailout send {dispatch.issue} --list {lst.name}"
    if state is DispatchState.CANCELLED:
        assert dispatch.cancelled_at is not None
        return f"{head} was cancelled on {instants.show(outbox.as_utc(dispatch.cancelled_at), zone)}"
    if state is DispatchState.AWAITING_APPROVAL:
        return (
            f"{head} awaits approval: once someone other than its writer ran `mailout approve"
            f" {dispatch.issue} --list {lst.name}`, `mailout worker` or `{send}` starts it"
        )
    assert dispatch.scheduled_at is not None
    when = instants.show(outbox.as_utc(dispatch.scheduled_at), zone)
    if state is DispatchState.MISSED:
        return (
            f"{head} missed its instant, {when}: no worker started it within sending.max_lateness;"
            f" `{send} --now` sends it now, `mailout schedule cancel {dispatch.id}` cancels it"
        )
    return (
        f"{head} is scheduled for {when}; `{send} --now` sends it now, `{send} --at TIME` moves it,"
        f" `mailout schedule cancel {dispatch.id}` cancels it"
    )


def _nothing_to_resend(
    issue: str, lst: MailingList, dispatch: Dispatch | None, *, resend_unknown: bool, retry_policy: bool
) -> NothingToResend:
    if dispatch is None:
        return NothingToResend(f"{issue} was never sent to '{lst.name}': there is nothing to send again")
    asked = [
        *(["no unknown delivery"] if resend_unknown else []),
        *(["no delivery refused by policy (5.7.x)"] if retry_policy else []),
    ]
    return NothingToResend(
        f"dispatch {dispatch.id} of {issue} to '{lst.name}' has {' and '.join(asked)}: nothing to send again"
        " (--again sends the issue to everyone once more)"
    )


def _exists(dispatch: Dispatch, lst: MailingList, *, meanwhile: bool = False) -> DispatchExists:
    assert dispatch.finished_at is not None, "an unfinished dispatch is taken up, not refused"
    when = outbox.as_utc(dispatch.finished_at).strftime("%Y-%m-%d %H:%M UTC")
    by = "by another send since this one was planned" if meanwhile else "already"
    return DispatchExists(
        f"{dispatch.issue} was sent to '{lst.name}' {by} (dispatch {dispatch.id}, finished {when});"
        " use --again to send it once more"
    )


def _nobody(lst: MailingList) -> NoRecipients:
    return NoRecipients(
        f"nobody is subscribed to '{lst.name}': no dispatch was written"
        " (did you run `mailout subscribers sync`, or `mailout subscribers import FILE --list"
        f" {lst.name}`?)"
    )


def start(engine: Engine, settings: Settings, plan: Plan, *, now: dt.datetime | None = None) -> Started:
    """Do what ``plan`` says: write the new dispatch with its deliveries, or take up the planned one.

    Taking one up lifts its pause and, when asked, queues its unknown deliveries (after
    taking over from dead processes) or its policy refusals again. When another send
    wrote a dispatch of the issue to the list since the plan (two sends started
    together), this one joins it rather than writing a second; when that one is finished
    already, raises ``DispatchExists``. Raises ``TransportUnavailable`` when the
    transport cannot send.

    A dispatch written or taken up not started is started (``begin``, at ``now``) unless
    it is scheduled: when it is not approved, ``Started.waiting`` says why and it stays
    written, waiting (``mailout worker`` starts it once approved).
    """
    # Connect and log in (or write a test file) first: a wrong password or a missing
    # STARTTLS is one line, before any dispatch is written or any delivery claimed.
    check_route(settings, plan.route)
    try:
        started = _start(engine, settings, plan)
    except IntegrityError as exc:
        if not outbox.is_duplicate_dispatch(exc):
            raise
        # The database refused a second dispatch of the same generation: another send wrote it
        # between this one's check and its write (the lock makes that rare). Now it is there.
        started = _start(engine, settings, plan)
    if started.scheduled_at is not None or (started.created and plan.scheduled_at is not None):
        return replace(started, started=False, scheduled_at=started.scheduled_at or plan.scheduled_at)
    if started.created and not settings.sending.require_approval:
        return started  # written started
    force = plan.resume is not None and plan.resume.start_now
    try:
        begun = begin(engine, settings, started.dispatch_id, now=now or SYSTEM.now(), force=force)
    except NotApproved as refused:
        return replace(started, started=False, waiting=str(refused))
    return replace(started, started=begun is not Begun.WAITING)


def check_route(settings: Settings, name: str) -> None:
    """Connect and log in to the route's server; to its failover's when it cannot, as the send loop would."""
    try:
        make_transport(settings, name).check()
    except TransportUnavailable:
        failover = settings.route(name).failover if name else ""
        if not failover:
            raise
        # The send loop moves the rest to the failover route after a few connection
        # failures: the send can go ahead if that one answers.
        make_transport(settings, failover).check()


def _start(engine: Engine, settings: Settings, plan: Plan) -> Started:
    with transaction(engine) as session:
        lst = people.ensure_list(session, settings.mailing_list(plan.list_name))
        # Checked and written in one transaction, the list's row locked: sends started
        # together decide one after the other, and the unique (issue, list, generation)
        # makes the database refuse a second dispatch whatever happens.
        newest = outbox.find_dispatch(session, plan.issue, lst, lock=True)
        if plan.resume is not None:
            return _resume(session, settings, plan.resume)
        if newest is not None and newest.id != plan.previous and newest.cancelled_at is None:
            if newest.finished_at is not None:
                raise _exists(newest, lst, meanwhile=True)
            # Another send wrote it a moment ago: sending it is what this one was about to do.
            return Started(newest.id, newest.total, created=False, joined=True)
        assert plan.variant is not None, "a plan that resumes nothing carries the variant to send"
        others = [v for lang, v in plan.variants.items() if lang != plan.variant.language]
        dispatch = outbox.create_dispatch(
            session, plan.issue, lst, plan.variant,
            from_name=settings.sender.name, from_address=settings.sender.address, reply_to=settings.sender.reply_to,
            generation=newest.generation + 1 if newest is not None else 1, others=others,
            scheduled_at=plan.scheduled_at, created_by=plan.created_by, route=plan.route,
            # Started as it is written unless scheduled, or unless an approval must be checked
            # first (``begin``, in a transaction of its own: refused, it leaves it written).
            start=plan.scheduled_at is None and not settings.sending.require_approval,
        )  # fmt: skip
        if dispatch.total == 0:
            raise _nobody(lst)  # everybody left since the plan: the transaction writes nothing
        return Started(dispatch.id, dispatch.total, created=True)


def _resume(session: Session, settings: Settings, resume: Resume) -> Started:
    found = outbox.dispatch_with_list(session, resume.dispatch_id)
    if found is None:
        raise DispatchNotFound(f"dispatch {resume.dispatch_id} is gone since it was planned")
    dispatch, _ = found
    if resume.reschedule is not None:
        if not outbox.reschedule(session, dispatch.id, resume.reschedule):
            raise NotStarted(f"dispatch {dispatch.id} started or was cancelled since it was planned")
        return Started(
            dispatch.id, dispatch.total, created=False, started=False, scheduled_at=resume.reschedule
        )
    unpaused = dispatch.paused_reason
    if unpaused:
        outbox.unpause(session, dispatch.id)
    requeued = retried = 0
    if resume.resend_unknown:
        # Take over from dead processes first: what they left on the wire becomes unknown
        # now (or, with the local outbox, sent or queued), and is queued with the rest.
        # Left to the sending process, that would happen only after this requeue.
        settle = settle_in_flight(make_transport(settings, dispatch.route), dispatch)
        outbox.recover(session.connection(), dispatch.id, settings.sending.worker_timeout, settle)
        requeued = outbox.resend_unknown(session, dispatch.id)
    if resume.retry_policy:
        refused = _policy_refusals(session, dispatch.id)
        retried = outbox.requeue(session, dispatch.id, refused, DeliveryStatus.FAILED)
    return Started(
        dispatch.id, dispatch.total, created=False, unpaused=unpaused, requeued=requeued, retried=retried
    )


def run(
    engine: Engine,
    settings: Settings,
    dispatch_id: int,
    signer: Signer,
    *,
    on_progress: Callable[[Tally], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
    handle_signals: bool = False,
    stop: threading.Event | None = None,
    clock: Clock = SYSTEM,
    max_wait: float | None = None,
) -> Result:
    """Send the dispatch from this process until it is finished, paused or stopped.

    ``handle_signals`` (the main thread only) makes Ctrl-C and SIGTERM stop it cleanly;
    a caller that handles them itself passes ``stop`` instead, an event it sets to stop
    the run the same way (`mailout worker`, whose signals outlive one dispatch).
    ``on_notice`` hears what the run finds on its way, such as a gone process it takes
    over from. Other processes may send the same dispatch at the same time (``mailout
    worker``). A quota wait longer than ``max_wait`` seconds ends the run with
    ``Ending.WAITING`` (None: the run waits, as `send` does).
    """
    if settings.sends_mail:
        check_real_key(settings.secret_key)  # also for `mailout worker`; `plan` has warned already
    with transaction(reader(engine)) as session:
        found = outbox.dispatch_with_list(session, dispatch_id)
    if found is None:
        raise DispatchNotFound(f"no dispatch {dispatch_id}; `mailout status` lists them")
    dispatch, lst = found
    if dispatch.started_at is None or dispatch.cancelled_at is not None:
        # The claim refuses it too; said here rather than found by a loop that claims nothing.
        raise NotStarted(f"{waiting_line(settings, dispatch, lst)}: it does not send")
    mailer = Mailer(
        engine, settings, dispatch, lst, make_transport(settings, dispatch.route), signer,
        on_progress=on_progress, on_notice=on_notice, stop=stop, clock=clock, max_wait=max_wait,
    )  # fmt: skip
    if handle_signals:
        mailer.install_signal_handlers()
    finished = mailer.run()
    now = report(engine, dispatch_id)
    if finished or now.state is DispatchState.FINISHED:  # by this process or, meanwhile, by others
        ending = Ending.FINISHED
    elif now.paused_reason:
        ending = Ending.PAUSED
    elif mailer.waiting is not None:
        return Result(Ending.WAITING, now, mailer.waiting.message, mailer.waiting.until)
    elif not now.counts[DeliveryStatus.QUEUED] and not now.counts[DeliveryStatus.DEFERRED]:
        # This process sends until nothing is queued or deferred, unless it is stopped (and
        # then what it claimed is queued again): what is left is on other processes' wires.
        ending = Ending.OTHERS
    else:
        ending = Ending.STOPPED
    return Result(ending, now)


# --- starting, missing, cancelling ---------------------------------------------------


class Begun(StrEnum):
    """What ``begin`` found."""

    STARTED = "started"  # by this call
    RUNNING = "running"  # started before (by another process, or when written)
    WAITING = "waiting"  # not due, missed, or cancelled: not started


def begin(
    engine: Engine, settings: Settings, dispatch_id: int, *, now: dt.datetime, force: bool = False
) -> Begun:
    """Start the dispatch if it may start at ``now``; say whether this call started it.

    A worker's start (``force`` False) needs it due and not more than
    ``sending.max_lateness`` late; ``force`` (``send --now``) starts a scheduled or missed
    one at once. Either way the approval is checked (``approvals.require``) in the
    transaction of the one UPDATE that starts it: not approved, it raises ``NotApproved``
    and nothing changes. Two processes at the same instant start it once.
    """
    lateness = None if force else settings.sending.max_lateness
    with transaction(engine) as session:
        # The UPDATE first: it locks the row (PostgreSQL) or the database (SQLite), so the
        # approval is read by the one process that starts it, after every other's decision.
        started = outbox.start_dispatch(session, dispatch_id, now.astimezone(dt.UTC), lateness)
        found = outbox.dispatch_with_list(session, dispatch_id)
        if found is None:
            raise DispatchNotFound(f"no dispatch {dispatch_id}; `mailout status` lists them")
        dispatch, _ = found
        if started:
            approvals.require(session, settings, dispatch)
            return Begun.STARTED
        if dispatch.started_at is not None and dispatch.cancelled_at is None:
            return Begun.RUNNING
        return Begun.WAITING


@dataclass(frozen=True)
class Due:
    """What a worker's look at the waiting dispatches did: started, left waiting, found missed."""

    started: list[Summary] = field(default_factory=list)
    #: Due, but not approved: each with what ``approvals.require`` said.
    unapproved: list[tuple[Summary, str]] = field(default_factory=list)
    missed: list[Summary] = field(default_factory=list)


def mark_missed(engine: Engine, settings: Settings, now: dt.datetime) -> list[int]:
    """Mark missed the dispatches not started within ``sending.max_lateness`` of their instant; return them."""
    with transaction(engine) as session:
        return outbox.mark_missed(session, now.astimezone(dt.UTC), settings.sending.max_lateness)


def start_due(engine: Engine, settings: Settings, now: dt.datetime, dispatch_id: int | None = None) -> Due:
    """Mark the missed dispatches, then start those due at ``now`` (or only ``dispatch_id``).

    What a worker does before sending, each round. A dispatch not approved is left
    waiting; another process may start one first (then it is not in ``started``).
    """
    now = now.astimezone(dt.UTC)
    missed = [i for i in mark_missed(engine, settings, now) if dispatch_id in (None, i)]
    with transaction(reader(engine)) as session:
        due = outbox.due_dispatches(session, now, settings.sending.max_lateness)
    started: list[int] = []
    unapproved: list[tuple[int, str]] = []
    for candidate in due:
        if dispatch_id not in (None, candidate):
            continue
        try:
            if begin(engine, settings, candidate, now=now) is Begun.STARTED:
                started.append(candidate)
        except NotApproved as refused:
            unapproved.append((candidate, str(refused)))
    return Due(
        started=[report(engine, i) for i in started],
        unapproved=[(report(engine, i), why) for i, why in unapproved],
        missed=[report(engine, i) for i in missed],
    )


@dataclass(frozen=True)
class Cancelled:
    """A dispatch cancelled before it started, and how many deliveries it skipped."""

    summary: Summary
    skipped: int


def cancel(engine: Engine, settings: Settings, dispatch_id: int, now: dt.datetime) -> Cancelled:
    """Cancel a dispatch not started: its deliveries skipped ("cancelled"), it finished, never sent.

    Raises ``CannotCancel`` for one started (a worker may have started it a moment ago:
    the one UPDATE decides) or cancelled already, ``DispatchNotFound`` for none.
    """
    with transaction(engine) as session:
        skipped = outbox.cancel_dispatch(session, dispatch_id, now.astimezone(dt.UTC))
        found = outbox.dispatch_with_list(session, dispatch_id)
        if found is None:
            raise DispatchNotFound(f"no dispatch {dispatch_id}; `mailout schedule list` lists those waiting")
        dispatch, lst = found
        if skipped is None:
            raise CannotCancel(_not_cancelled(settings, dispatch, lst))
        return Cancelled(_summary(session, dispatch, lst), skipped)


def _not_cancelled(settings: Settings, dispatch: Dispatch, lst: MailingList) -> str:
    zone = settings.sending.timezone
    head = f"dispatch {dispatch.id} of {dispatch.issue} to '{lst.name}'"
    if dispatch.cancelled_at is not None:
        return f"{head} was cancelled already, on {instants.show(outbox.as_utc(dispatch.cancelled_at), zone)}"
    assert dispatch.started_at is not None, "a dispatch neither started nor cancelled is cancelled"
    return (
        f"{head} started on {instants.show(outbox.as_utc(dispatch.started_at), zone)}: only a dispatch"
        f" not started can be cancelled (`mailout status {dispatch.id}` shows where it stands)"
    )


def waiting(engine: Engine) -> list[Summary]:
    """Return the dispatches not started (scheduled, missed, awaiting approval), by instant."""
    with transaction(reader(engine)) as session:
        return [_summary(session, d, lst) for d, lst in outbox.waiting_dispatches(session)]


# --- reports -----------------------------------------------------------------------


def _state(dispatch: Dispatch) -> DispatchState:
    """Return where the dispatch stands, from its row alone."""
    if dispatch.cancelled_at is not None:
        return DispatchState.CANCELLED
    if dispatch.started_at is None:
        if dispatch.missed_at is not None:
            return DispatchState.MISSED
        return (
            DispatchState.SCHEDULED if dispatch.scheduled_at is not None else DispatchState.AWAITING_APPROVAL
        )
    if dispatch.finished_at is not None:
        return DispatchState.FINISHED
    return DispatchState.PAUSED if dispatch.paused_reason else DispatchState.UNFINISHED


def _summary(session: Session, dispatch: Dispatch, lst: MailingList) -> Summary:
    counts = {str(status): n for status, n in outbox.counts(session, dispatch.id).items()}
    done = sum(counts[status] for status in FINAL)
    created = outbox.as_utc(dispatch.created_at)
    finished = outbox.as_utc(dispatch.finished_at) if dispatch.finished_at else None
    started = outbox.as_utc(dispatch.started_at) if dispatch.started_at else None

    def stamp(value: dt.datetime | None) -> dt.datetime | None:
        return outbox.as_utc(value) if value is not None else None

    # Timed from its start: a dispatch scheduled on Friday for Tuesday did not take four days.
    if started is None or dispatch.cancelled_at is not None:
        seconds = 0.0
    else:
        seconds = max(0.0, ((finished or dt.datetime.now(dt.UTC)) - started).total_seconds())
    state = _state(dispatch)
    return Summary(
        id=dispatch.id,
        issue=dispatch.issue,
        list=lst.name,
        segment=dispatch.segment,
        subject=dispatch.subject,
        created=created,
        finished=finished,
        state=state,
        total=dispatch.total,
        counts=counts,
        languages=_languages_first(dispatch, outbox.language_counts(session, dispatch.id)),
        done=done,
        seconds=round(seconds, 1),
        rate=round(counts[DeliveryStatus.SENT] / seconds, 2) if seconds > 0 else 0.0,
        paused_reason=dispatch.paused_reason,
        scheduled=stamp(dispatch.scheduled_at),
        started=started,
        missed=stamp(dispatch.missed_at),
        cancelled=stamp(dispatch.cancelled_at),
        created_by=dispatch.created_by or "",
        route=dispatch.route or "",
    )


def _languages_first(dispatch: Dispatch, counts: dict[str, int]) -> dict[str, int]:
    """Return ``counts`` with the dispatch's default language first, then the others in order."""
    default = dispatch.language or ""
    return {lang: counts[lang] for lang in sorted(counts, key=lambda lang: (lang != default, lang))}


def overview(engine: Engine, limit: int = RECENT) -> list[Summary]:
    """Return a summary of each of the ``limit`` newest dispatches, newest first."""
    with transaction(reader(engine)) as session:
        return [_summary(session, d, lst) for d, lst in outbox.recent_dispatches(session, limit)]


def report(engine: Engine, dispatch_id: int) -> Report:
    """Return one dispatch in full; raise ``DispatchNotFound`` when there is none."""
    with transaction(reader(engine)) as session:
        found = outbox.dispatch_with_list(session, dispatch_id)
        if found is None:
            raise DispatchNotFound(f"no dispatch {dispatch_id}; `mailout status` lists them")
        summary = _summary(session, *found)
        failures = [Failure(r, n) for r, n in outbox.failure_replies(session, dispatch_id)]
        unknown = [email for _, email in outbox.unknown_deliveries(session, dispatch_id)]
        refused = len(_policy_refusals(session, dispatch_id))
        ran = outbox.run_record(session, dispatch_id)
        bounced, complained = bounces.dispatch_counts(session, dispatch_id)
        dispatch, _ = found
        routes = outbox.route_counts(session, dispatch_id)
        approval = approvals.verdict(session, dispatch)
    return Report(
        **vars(summary), failures=failures, unknown=unknown, refused=refused,
        signing=ran.signing, envelope_sender=ran.envelope_sender, bounced=bounced, complained=complained,
        routes=routes, route_changes=tuple((dispatch.route_changes or "").splitlines()), approval=approval,
    )  # fmt: skip


def unfinished(engine: Engine, dispatch_id: int | None = None) -> list[Summary]:
    """Return the unfinished dispatches (or only ``dispatch_id``, if unfinished), oldest first."""
    with transaction(reader(engine)) as session:
        return [_summary(session, d, lst) for d, lst in outbox.unfinished_dispatches(session, dispatch_id)]


# --- what a new dispatch would freeze ------------------------------------------------


def variants_for_list(settings: Settings, issue: Issue, list_name: str) -> dict[str, Variant]:
    """Render the variants a new dispatch of ``issue`` to ``list_name`` would freeze, writing nothing.

    The same rendering as ``plan``'s, by language, the default first: what ``mailout
    approve`` records the digests of, and compares a scheduled dispatch's frozen variants with.
    """
    segment = Segment(settings.mailing_list(list_name).segment)
    env = template_environment(settings)
    return {
        lang: render_language(issue, settings, segment, lang, env=env)
        for lang in issue_languages(issue, settings)
    }
