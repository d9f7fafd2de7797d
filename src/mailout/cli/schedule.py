"""``mailout schedule``: the dispatches waiting to start, and cancelling one."""

from __future__ import annotations

import click

from .. import clock, dispatching, instants
from .state import State, pass_state
from .terminal import safe


@click.group("schedule")
def schedule_group() -> None:
    """The dispatches not started yet: scheduled, missed, awaiting approval.

    \b
    Example:
        mailout schedule list
        mailout schedule cancel 4
    """


@schedule_group.command("list")
@pass_state
def list_command(state: State) -> None:
    """List the dispatches waiting to start, with their instant in sending.timezone and UTC.

    A dispatch whose instant passed by more than sending.max_lateness with no
    worker to start it is missed: `mailout send ISSUE --list LIST --now` sends it.

    \b
    Example:
        mailout schedule list
    """
    engine, settings = state.engine(), state.settings
    dispatching.mark_missed(engine, settings, clock.SYSTEM.now())
    waiting = dispatching.waiting(engine)
    if not waiting:
        click.echo("nothing scheduled")
        return
    zone = settings.sending.timezone
    click.echo(f"{'id':>4} {'issue':<16} {'list':<10} {'recipients':>10}  {'state':<17} instant")
    for s in waiting:
        when = instants.show(s.scheduled, zone) if s.scheduled else "as soon as approved"
        click.echo(f"{s.id:>4} {s.issue:<16} {s.list:<10} {s.total:>10,}  {s.state:<17} {when}")
        if s.created_by:
            click.echo(f"{'':>4} written by {safe(s.created_by)}")


@schedule_group.command("cancel")
@click.argument("dispatch_id", type=int, metavar="DISPATCH")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def cancel_command(state: State, dispatch_id: int, yes: bool) -> None:
    """Cancel a dispatch that has not started: it never sends; its deliveries are skipped.

    A dispatch that started (a worker may have started it a moment ago) cannot
    be cancelled. Sending the issue to the list afterwards writes a new dispatch.

    \b
    Example:
        mailout schedule cancel 4
    """
    if not yes:
        click.confirm(f"Cancel dispatch {dispatch_id}? It will never send.", abort=True)
    cancelled = dispatching.cancel(state.engine(), state.settings, dispatch_id, clock.SYSTEM.now())
    s = cancelled.summary
    click.echo(
        f"dispatch {s.id}: {s.issue} to '{s.list}' cancelled; {cancelled.skipped:,} deliveries skipped"
        f" (`mailout send {s.issue} --list {s.list}` writes a new one)"
    )
