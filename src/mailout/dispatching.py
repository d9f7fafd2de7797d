"""Dispatching an issue to a list: what every front end calls to send, and to follow a send.

The command line, the web side and a scheduler all go through these steps::

    plan(issue, list)   what a send would do: resume a dispatch, or write a new one
                        (variant, recipients, sender, transport, warnings); writes nothing
    start(plan)         do it: write the dispatch and its deliveries, or take up the
                        unfinished one (lifting its pause, queueing its unknowns again)
    run(dispatch)       send until finished, paused or stopped; return its report

and ``overview()``, ``report(dispatch)`` and ``unfinished()`` say where dispatches
stand. What they return are plain dataclasses; a user's mistake is a ``MailoutError``.
The tables belong to ``outbox`` (dispatches, deliveries) and ``subscribers`` (lists):
this module decides, they write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import outbox
from . import subscribers as people
from .config import Settings
from .db import reader, transaction
from .errors import MailoutError
from .issues import Issue, Segment
from .links import Links
from .mailer import Mailer, Tally
from .models import DeliveryStatus, Dispatch, MailingList
from .render import Variant, render_variant
from .tokens import Signer, check_real_key
from .transports import make_transport

#: How many dispatches ``overview`` shows.
RECENT = 20


class DispatchExists(MailoutError):
    """The issue was sent to this list already; sending it once more takes ``again``."""


class DispatchNotFound(MailoutError):
    """No dispatch has this number."""


class NoRecipients(MailoutError):
    """Nobody is subscribed to the list: a dispatch to nobody is refused, and none is written."""


class DispatchState(StrEnum):
    """Where a dispatch stands."""

    UNFINISHED = "unfinished"
    PAUSED = "paused"  # by mailout itself, with a reason; the next send lifts it
    FINISHED = "finished"


class Ending(StrEnum):
    """Why ``run`` returned."""

    FINISHED = "finished"  # nothing is left to send
    PAUSED = "paused"  # paused with a reason (repeated policy refusals): see ``paused_reason``
    STOPPED = "stopped"  # stopped (Ctrl-C, SIGTERM): running it again resumes
    OTHERS = "others"  # nothing left for this process: other processes send the last messages


@dataclass(frozen=True)
class Resume:
    """The unfinished dispatch that a send takes up instead of writing a new one."""

    dispatch_id: int
    paused_reason: str
    #: Deliveries in flight when a process died; ``resend_unknown`` queues them again.
    unknown: int
    resend_unknown: bool


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
    #: Set when the send writes a new dispatch: the variant frozen with it, and how many get it.
    variant: Variant | None = None
    recipients: int = 0


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
    seconds: float
    rate: float
    paused_reason: str


@dataclass(frozen=True)
class Report(Summary):
    """One dispatch in full: its summary, failures by server reply, and the unknown addresses."""

    failures: list[Failure] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Result:
    """How a run of a dispatch ended, and where the dispatch stands now."""

    ending: Ending
    report: Report


# --- sending ---------------------------------------------------------------------


def plan(
    engine: Engine,
    settings: Settings,
    issue: Issue,
    list_name: str,
    *,
    again: bool = False,
    resend_unknown: bool = False,
) -> Plan:
    """Say what sending ``issue`` to ``list_name`` would do, writing nothing but the list's settings.

    An unfinished dispatch of the issue to the list is resumed; so is a finished one with
    unknown deliveries when ``resend_unknown`` asks for them. Otherwise a finished dispatch
    raises ``DispatchExists`` unless ``again``.
    """
    list_settings = settings.mailing_list(list_name)
    transport = make_transport(settings).description
    warnings = []
    if settings.smtp.host:  # mail to real people: the links must be safe to sign
        warnings += check_real_key(settings.secret_key)
    base = Links(settings).base
    if settings.smtp.host and not base.startswith("https://"):
        warnings.append(
            f"newsletter.public_base_url is {base}: the unsubscribe"
            " and view-in-browser links should be https for real readers"
        )
    with transaction(engine) as session:
        lst = people.ensure_list(session, list_settings)
        newest = outbox.find_dispatch(session, issue.slug, lst)
        unknown = len(outbox.unknown_deliveries(session, newest.id)) if newest else 0
        recipients = outbox.count_recipients(session, lst)
    found = Plan(
        issue=issue.slug,
        list_name=lst.name,
        list_description=lst.description,
        sender=f"{settings.sender.name} <{settings.sender.address}>",
        transport=transport,
        warnings=tuple(warnings),
        previous=newest.id if newest else None,
    )
    if newest is not None and (newest.finished_at is None or (resend_unknown and unknown)):
        return replace(found, resume=Resume(newest.id, newest.paused_reason, unknown, resend_unknown))
    if newest is not None and not again:
        raise _exists(newest, lst)
    if recipients == 0:
        raise _nobody(lst)
    # Rendered once the plan is sure to need it, outside the transaction: it takes a while.
    variant = render_variant(issue, settings, Segment(list_settings.segment))
    return replace(found, variant=variant, recipients=recipients)


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


def start(engine: Engine, settings: Settings, plan: Plan) -> Started:
    """Do what ``plan`` says: write the new dispatch with its deliveries, or take up the planned one.

    Taking one up lifts its pause and, when asked, queues its unknown deliveries again.
    When another send wrote a dispatch of the issue to the list since the plan (two sends
    started together), this one joins it rather than writing a second; when that one is
    finished already, raises ``DispatchExists``. Raises ``NoRecipients`` rather than write
    a dispatch to nobody.
    """
    try:
        return _start(engine, settings, plan)
    except IntegrityError as exc:
        if not outbox.is_duplicate_dispatch(exc):
            raise
    # The database refused a second dispatch of the same generation: another send wrote it
    # between this one's check and its write (the lock makes that rare). Now it is there.
    return _start(engine, settings, plan)


def _start(engine: Engine, settings: Settings, plan: Plan) -> Started:
    with transaction(engine) as session:
        lst = people.ensure_list(session, settings.mailing_list(plan.list_name))
        # Checked and written in one transaction, the list's row locked: sends started
        # together decide one after the other, and the unique (issue, list, generation)
        # makes the database refuse a second dispatch whatever happens.
        newest = outbox.find_dispatch(session, plan.issue, lst, lock=True)
        if plan.resume is not None:
            return _resume(session, plan.resume)
        if newest is not None and newest.id != plan.previous:
            if newest.finished_at is not None:
                raise _exists(newest, lst, meanwhile=True)
            # Another send wrote it a moment ago: sending it is what this one was about to do.
            return Started(newest.id, newest.total, created=False, joined=True)
        assert plan.variant is not None, "a plan that resumes nothing carries the variant to send"
        dispatch = outbox.create_dispatch(
            session, plan.issue, lst, plan.variant,
            from_name=settings.sender.name, from_address=settings.sender.address, reply_to=settings.sender.reply_to,
            generation=newest.generation + 1 if newest is not None else 1,
        )  # fmt: skip
        if dispatch.total == 0:
            raise _nobody(lst)  # everybody left since the plan: the transaction writes nothing
        return Started(dispatch.id, dispatch.total, created=True)


def _resume(session: Session, resume: Resume) -> Started:
    found = outbox.dispatch_with_list(session, resume.dispatch_id)
    if found is None:
        raise DispatchNotFound(f"dispatch {resume.dispatch_id} is gone since it was planned")
    dispatch, _ = found
    unpaused = dispatch.paused_reason
    if unpaused:
        outbox.unpause(session, dispatch.id)
    requeued = outbox.resend_unknown(session, dispatch.id) if resume.resend_unknown else 0
    return Started(dispatch.id, dispatch.total, created=False, unpaused=unpaused, requeued=requeued)


def run(
    engine: Engine,
    settings: Settings,
    dispatch_id: int,
    signer: Signer,
    *,
    on_progress: Callable[[Tally], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
    handle_signals: bool = False,
) -> Result:
    """Send the dispatch from this process until it is finished, paused or stopped.

    ``handle_signals`` (the main thread only) makes Ctrl-C and SIGTERM stop it cleanly.
    ``on_notice`` hears what the run finds on its way, such as a gone process it takes
    over from. Other processes may send the same dispatch at the same time (``mailout
    worker``).
    """
    if settings.smtp.host:
        check_real_key(settings.secret_key)  # also for `mailout worker`; `plan` has warned already
    with transaction(reader(engine)) as session:
        found = outbox.dispatch_with_list(session, dispatch_id)
    if found is None:
        raise DispatchNotFound(f"no dispatch {dispatch_id}; `mailout status` lists them")
    dispatch, lst = found
    mailer = Mailer(
        engine, settings, dispatch, lst, make_transport(settings), signer,
        on_progress=on_progress, on_notice=on_notice,
    )  # fmt: skip
    if handle_signals:
        mailer.install_signal_handlers()
    finished = mailer.run()
    now = report(engine, dispatch_id)
    if finished or now.state is DispatchState.FINISHED:  # by this process or, meanwhile, by others
        ending = Ending.FINISHED
    elif now.paused_reason:
        ending = Ending.PAUSED
    elif not now.counts[DeliveryStatus.QUEUED] and not now.counts[DeliveryStatus.DEFERRED]:
        # This process sends until nothing is queued or deferred, unless it is stopped (and
        # then what it claimed is queued again): what is left is on other processes' wires.
        ending = Ending.OTHERS
    else:
        ending = Ending.STOPPED
    return Result(ending, now)


# --- reports -----------------------------------------------------------------------


def _summary(session: Session, dispatch: Dispatch, lst: MailingList) -> Summary:
    counts = {str(status): n for status, n in outbox.counts(session, dispatch.id).items()}
    created = outbox.as_utc(dispatch.created_at)
    finished = outbox.as_utc(dispatch.finished_at) if dispatch.finished_at else None
    seconds = ((finished or dt.datetime.now(dt.UTC)) - created).total_seconds()
    if finished:
        state = DispatchState.FINISHED
    else:
        state = DispatchState.PAUSED if dispatch.paused_reason else DispatchState.UNFINISHED
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
        seconds=round(seconds, 1),
        rate=round(counts[DeliveryStatus.SENT] / seconds, 2) if seconds > 0 else 0.0,
        paused_reason=dispatch.paused_reason,
    )


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
    return Report(**vars(summary), failures=failures, unknown=unknown)


def unfinished(engine: Engine, dispatch_id: int | None = None) -> list[Summary]:
    """Return the unfinished dispatches (or only ``dispatch_id``, if unfinished), oldest first."""
    with transaction(reader(engine)) as session:
        return [_summary(session, d, lst) for d, lst in outbox.unfinished_dispatches(session, dispatch_id)]
