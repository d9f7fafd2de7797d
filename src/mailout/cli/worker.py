"""``mailout worker``: start the due dispatches, send the unfinished ones and read the bounce mailbox, once or until stopped."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

import click

from .. import bounces, clock, dispatching, instants
from ..db import DatabaseUnavailable
from ..dispatching import SENDING, Ending, Summary
from ..errors import MailoutError
from ..mailsource import open_source
from .bounces import print_results, print_skipped
from .sending import DONE, NOT_FINISHED, run_dispatch
from .state import State, pass_state
from .subscribers import purge_pending
from .terminal import safe

#: Seconds before the SMTP server is tried again when `--watch` found it unusable.
RETRY_TRANSPORT = 60.0
#: Seconds between two purges of unconfirmed sign-ups with `--watch`.
PURGE_EVERY = 3600.0
#: A quota wait longer than this many seconds ends a dispatch's run within a round, so that a
#: dispatch waiting hours for its route's quota holds up neither the other dispatches nor the
#: start of a scheduled one (--watch looks at it again when a slot frees; --once's next round).
ROUND_WAIT = 10.0


class Stopper:
    """Ctrl-C and SIGTERM, caught for the whole command: the step under way ends cleanly, then all stops.

    A dispatch gets its own event (`for_dispatch`), which a signal sets as well: the
    send loop finishes what is on the wire. A bounce pass asks `requested` after each
    report it is given, which comes once its group is committed. A sleep waits on
    `requested`, so a signal ends it at once.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._current: threading.Event | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]  # what signal.signal returned

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested.set()
        if self._current is not None:
            self._current.set()

    def for_dispatch(self) -> threading.Event:
        """Return the event that stops the next dispatch run; set already if a signal came."""
        event = threading.Event()
        self._current = event
        if self.requested.is_set():  # a signal between the last look and now
            event.set()
        return event


@dataclass
class _Watch:
    """What `--watch` remembers from one round to the next."""

    #: Dispatch id -> monotonic time before which it is not taken up again (left to others).
    later: dict[int, float] = field(default_factory=dict)
    #: Pauses and refused approvals already reported: (dispatch id, reason).
    warned: set[tuple[int, str]] = field(default_factory=set)
    #: Monotonic time before which the SMTP server is not tried again.
    #: Per route ("" is ``[smtp]``): when its server may be tried again after a failed check.
    route_after: dict[str, float] = field(default_factory=dict)
    #: The routes whose server answered a check (once per route and run).
    routes_checked: set[str] = field(default_factory=set)


def _warn_paused(dispatch: Summary) -> None:
    # A pause waits for someone to fix its cause; `send` lifts it, a worker does not.
    click.secho(
        f"dispatch {dispatch.id}: {dispatch.issue} to '{dispatch.list}' is paused:"
        f" {safe(dispatch.paused_reason or '')}; once fixed, `mailout send {dispatch.issue}"
        f" --list {dispatch.list}` resumes it",
        fg="yellow",
        err=True,
    )


def _start_due(state: State, dispatch_id: int | None, warned: set[tuple[int, str]] | None = None) -> None:
    """Mark the missed dispatches and start the due ones (the worker's clock), saying what it did.

    ``warned`` (with --watch) keeps a refused approval from being said again every round.
    """
    settings = state.settings
    zone = settings.sending.timezone
    due = dispatching.start_due(state.engine(), settings, clock.SYSTEM.now(), dispatch_id)
    for missed in due.missed:
        assert missed.scheduled is not None
        click.secho(
            f"dispatch {missed.id}: {missed.issue} to '{missed.list}' missed its instant,"
            f" {instants.show(missed.scheduled, zone)}, by more than sending.max_lateness"
            f" ({settings.sending.max_lateness:g} s): not sent; `mailout send {missed.issue} --list"
            f" {missed.list} --now` sends it, `mailout schedule cancel {missed.id}` cancels it",
            fg="yellow",
            err=True,
        )
    for started in due.started:
        when = f" (scheduled for {instants.show(started.scheduled, zone)})" if started.scheduled else ""
        click.echo(f"dispatch {started.id}: {started.issue} to '{started.list}' started{when}")
    for waiting, why in due.unapproved:
        if warned is not None:
            if (waiting.id, why) in warned:
                continue
            warned.add((waiting.id, why))
        click.secho(
            f"dispatch {waiting.id}: {waiting.issue} to '{waiting.list}' is due but not started: {safe(why)}",
            fg="yellow",
            err=True,
        )


def _sending(state: State, dispatch_id: int | None) -> list[Summary]:
    """Return the started, unfinished dispatches (or only ``dispatch_id``), oldest first."""
    return [d for d in dispatching.unfinished(state.engine(), dispatch_id) if d.state in SENDING]


def _error_line(error: BaseException) -> str:
    if isinstance(error, OSError) and not isinstance(error, MailoutError):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror or error}"
    return str(error)


def _read_mailbox(state: State, stopper: Stopper) -> bool:
    """Read ``bounces.mailbox`` once; False on a mailbox or database error (said in one line).

    A stop request ends the reading between two groups of reports (`bounces.run`).
    """
    settings = state.settings
    config = settings.bounces
    engine, signer = state.engine(), state.signer()
    try:
        with open_source(config.mailbox, move_to=config.move_to or None, delete=config.delete) as mailbox:
            click.echo(f"bounce mailbox {safe(mailbox.name)}:")
            print_results(bounces.run(engine, settings, signer, mailbox, stop=stopper.requested.is_set))
            print_skipped(mailbox)
            if stopper.requested.is_set():
                click.echo("stopped; the next reading takes the rest")
    except (MailoutError, OSError, DatabaseUnavailable) as error:
        # The server down, a wrong password, a folder gone, the database locked or away:
        # nothing of the group under way was kept, and the next reading takes it again.
        click.secho(f"error: bounce mailbox: {safe(_error_line(error))}", fg="red", err=True)
        return False
    return True


def _purge(state: State) -> None:
    """Delete the sign-ups never confirmed within signup.pending_days; say so when there were any."""
    purged = purge_pending(state)
    if purged:
        click.echo(
            f"{purged:,} pending sign-ups deleted (older than {state.settings.signup.pending_days:g} days)"
        )


def _once(state: State, stopper: Stopper, dispatch_id: int | None) -> None:
    """Purge old pending sign-ups, start the due dispatches, send every unfinished one, then read the bounce mailbox once."""
    _purge(state)
    _start_due(state, dispatch_id)
    dispatches = _sending(state, dispatch_id)
    unfinished = False
    if not dispatches:
        click.echo("nothing to send")
    # Each route's server once, before anything is claimed: a route that cannot send (down, a
    # wrong password, renamed in the settings) holds up its own dispatches only.
    broken: set[str] = set()
    for route in sorted({dispatch.route for dispatch in dispatches}):
        try:
            dispatching.check_route(state.settings, route)
        except MailoutError as error:
            click.secho(f"error: {safe(error)}", fg="red", err=True)
            broken.add(route)
    for dispatch in dispatches:
        if dispatch.route in broken:
            click.secho(
                f"dispatch {dispatch.id}: {dispatch.issue} to '{dispatch.list}' not sent: its route"
                f" ({dispatch.route or '[smtp]'}) cannot send now; the next round tries again",
                fg="yellow",
                err=True,
            )
            continue
        if dispatch.paused_reason:
            _warn_paused(dispatch)
            unfinished = True
            continue
        click.echo(f"dispatch {dispatch.id}: {dispatch.issue} to '{dispatch.list}'")
        ending = run_dispatch(
            state, dispatch.id, dispatch.total, stopper.for_dispatch(), max_wait=ROUND_WAIT
        ).ending
        if ending is Ending.STOPPED or stopper.requested.is_set():
            raise click.exceptions.Exit(NOT_FINISHED)  # Ctrl-C or SIGTERM: stop here, not the next one
        unfinished |= ending not in DONE
    if state.settings.bounces.mailbox:
        read = _read_mailbox(state, stopper)
        if stopper.requested.is_set():
            raise click.exceptions.Exit(NOT_FINISHED)
        if not read:
            raise click.exceptions.Exit(1)
    if broken:
        raise click.exceptions.Exit(1)
    if unfinished:
        raise click.exceptions.Exit(NOT_FINISHED)


def _send_round(state: State, stopper: Stopper, dispatch_id: int | None, watch: _Watch) -> None:
    """Send the unfinished dispatches there are now; say nothing when there are none."""
    settings = state.settings
    try:
        _start_due(state, dispatch_id, watch.warned)
    except DatabaseUnavailable as error:  # locked for long, or gone: the next round tries again
        click.secho(f"error: starting due dispatches: {safe(error)}", fg="red", err=True)
        return
    for dispatch in _sending(state, dispatch_id):
        now = time.monotonic()
        if stopper.requested.is_set():
            return
        if dispatch.paused_reason:
            if (dispatch.id, dispatch.paused_reason) not in watch.warned:
                watch.warned.add((dispatch.id, dispatch.paused_reason))
                _warn_paused(dispatch)
            continue
        if watch.later.get(dispatch.id, 0.0) > now or watch.route_after.get(dispatch.route, 0.0) > now:
            continue
        if dispatch.route not in watch.routes_checked:
            try:
                dispatching.check_route(settings, dispatch.route)
            except MailoutError as error:  # the server down for a while: try again later
                click.secho(
                    f"error: {safe(error)}; trying again in {RETRY_TRANSPORT:g} s", fg="red", err=True
                )
                watch.route_after[dispatch.route] = now + RETRY_TRANSPORT
                continue  # the dispatches of other routes go on
            watch.routes_checked.add(dispatch.route)
        click.echo(f"dispatch {dispatch.id}: {dispatch.issue} to '{dispatch.list}'")
        result = run_dispatch(state, dispatch.id, dispatch.total, stopper.for_dispatch(), max_wait=ROUND_WAIT)
        if result.ending is Ending.OTHERS:
            # Its last messages are on other processes' wires: look again once one of them
            # could be taken for dead, not at every round.
            watch.later[dispatch.id] = time.monotonic() + settings.sending.worker_timeout
        elif result.ending is Ending.WAITING and result.resumes_at is not None:
            # Its route's quota is used up: the other dispatches go on meanwhile, and the due
            # ones start; this one is looked at again when a slot frees.
            left = (result.resumes_at - clock.SYSTEM.now()).total_seconds()
            watch.later[dispatch.id] = time.monotonic() + max(0.0, left)


def _watch(state: State, stopper: Stopper, dispatch_id: int | None, interval: float) -> None:
    """Send dispatches as they appear and read the bounce mailbox on schedule, until a signal."""
    settings = state.settings
    mailbox = settings.bounces.mailbox
    poll = settings.bounces.poll_minutes * 60
    reading = f"the bounce mailbox every {settings.bounces.poll_minutes:g} min" if mailbox else "no mailbox"
    click.echo(f"watching: dispatches every {interval:g} s, {reading}; Ctrl-C or SIGTERM stops")
    watch = _Watch()
    next_poll = time.monotonic()  # a pass at once, then on schedule
    next_purge = time.monotonic()
    while not stopper.requested.is_set():
        if time.monotonic() >= next_purge:
            next_purge = time.monotonic() + PURGE_EVERY
            try:
                _purge(state)
            except DatabaseUnavailable as error:  # locked for long, or gone: the next purge tries again
                click.secho(f"error: purging pending sign-ups: {safe(error)}", fg="red", err=True)
        _send_round(state, stopper, dispatch_id, watch)
        if mailbox and not stopper.requested.is_set() and time.monotonic() >= next_poll:
            # Counted from the start of the pass; a long dispatch delays a pass, never skips it:
            # the pass comes as soon as the round that held it up ends.
            next_poll = time.monotonic() + poll
            _read_mailbox(state, stopper)  # an error is one line; the next pass tries again
        wait = min(interval, next_poll - time.monotonic()) if mailbox else interval
        stopper.requested.wait(max(0.0, wait))
    click.echo("stopped")
    raise click.exceptions.Exit(NOT_FINISHED)


@click.command("worker")
@click.option(
    "--dispatch", "dispatch_id", type=int, help="Only this dispatch (default: every unfinished one)."
)
@click.option(
    "--watch",
    is_flag=True,
    help="Keep running until Ctrl-C or SIGTERM: send dispatches as they appear, read bounces.mailbox"
    " every bounces.poll_minutes.",
)
@click.option(
    "--once",
    is_flag=True,
    help="One round, then exit (what it does without --watch too): for cron or a systemd timer.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1, max=3600),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="With --watch: seconds between two looks for unfinished dispatches.",
)
@pass_state
def worker_command(state: State, dispatch_id: int | None, watch: bool, once: bool, interval: float) -> None:
    """Start due scheduled dispatches, send unfinished ones (PostgreSQL: a process more, on any machine); read the bounce mailbox.

    Each round first starts the scheduled dispatches whose instant has come
    (`mailout send --at`), and those waiting for an approval that now have one;
    one more than sending.max_lateness past its instant is marked missed and
    not sent (`mailout send ISSUE --list LIST --now` sends it).

    Each run first deletes the sign-ups never confirmed within
    signup.pending_days (with --watch: at start, then every hour).

    With bounces.mailbox set, each run also reads the bounce mailbox once, after
    the dispatches, as `mailout bounces process` does: a cron line
    `*/10 * * * * mailout worker` does both. Exits 0 when the dispatches are
    finished, by this process or by others; 3 when one was left paused, or on
    Ctrl-C or SIGTERM (run it again to resume); 1 when the mailbox could not
    be read, or a route's server could not be used (the other dispatches were
    sent first). A dispatch waiting for its route's quota counts as done for
    the round: the next round goes on with it.

    With --watch it keeps running: it sends each unfinished dispatch as it
    appears and reads the mailbox at start, then every bounces.poll_minutes.
    A mailbox error is one line, and the next reading tries again. Ctrl-C or
    SIGTERM stops it at once when idle; what is on the wire, or the group of
    reports being written, is finished first. It exits 3, as above.

    \b
    Example:
        mailout worker --once
        mailout worker --dispatch 3
        mailout worker --watch
    """
    if once and watch:
        raise click.UsageError("--once runs one round and exits; --watch keeps running: choose one")
    source = click.get_current_context().get_parameter_source("interval")
    if not watch and source is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--interval goes with --watch")
    stopper = Stopper()
    stopper.install()
    try:
        if watch:
            _watch(state, stopper, dispatch_id, interval)
        else:
            _once(state, stopper, dispatch_id)
    finally:
        stopper.restore()
