"""``mailout approve``: a second person's yes to an issue for a list."""

from __future__ import annotations

import click

from ..approvals import ListApproval, approve, for_lists, when
from ..errors import DatabaseError
from ..headers import one_line
from ..operators import current_operator
from ..render import Variant
from ..segments import Segment
from .state import State, pass_state
from .terminal import safe

#: How many hex digits of each SHA-256 the command prints: enough to compare by eye.
SHOWN_HEX = 12


@click.command("approve")
@click.argument("name", metavar="ISSUE")
@click.option("--list", "list_name", required=True, help="The list the approval is for.")
@click.option(
    "--by", default=None, help="Who approves (default: git's user.name <user.email>, else the login)."
)
@click.option(
    "--frozen",
    is_flag=True,
    help="Approve a waiting dispatch's frozen variants even though the issue file renders differently now.",
)
@pass_state
def approve_command(state: State, name: str, list_name: str, by: str | None, frozen: bool) -> None:
    """Approve an issue for a list: the SHA-256 of every variant is recorded.

    With sending.require_approval, a dispatch starts only once someone other
    than its writer has approved exactly what it sends. When a dispatch of the
    issue to the list waits (scheduled, or awaiting approval), its frozen
    variants are approved; if the issue file renders differently now, the
    approval is refused and says which variants differ (cancel and send again,
    or approve the frozen ones with --frozen). With no dispatch waiting, the
    issue as it renders now is approved, and `send` must freeze exactly that.

    \b
    Example:
        mailout approve 2019-01 --list members
        mailout approve 2019-01 --list members --by "Zoë Dupont <zoe@efus.example>"
    """
    state.settings.mailing_list(list_name)  # an unknown list is the first thing to say
    issue = state.issue(name)
    approved = approve(state.engine(), state.settings, issue, list_name, current_operator(by), frozen=frozen)
    what = (
        f"dispatch {approved.dispatch_id} of {approved.issue}"
        if approved.dispatch_id is not None
        else f"{approved.issue} as it renders now"
    )
    click.echo(
        safe(
            f"approved {what} for '{approved.list_name}' by {approved.approved_by}"
            f" at {when(approved.approved_at)}"
        )
    )
    for language, sha in approved.digests.items():
        click.echo(f"  {language or 'default':<8} sha256 {sha[:SHOWN_HEX]}")
    if approved.differs:
        click.secho(
            f"warning: the issue file renders differently now in {', '.join(approved.differs)};"
            " the frozen variants were approved (--frozen), and they are what goes out",
            fg="yellow",
            err=True,
        )
    if approved.dispatch_id is None:
        click.echo(
            f"`mailout send {approved.issue} --list {approved.list_name}` sends it if it is unchanged then"
        )


def approvals_for_test(
    state: State, issue: str, variants: dict[tuple[Segment, str], Variant]
) -> list[ListApproval] | None:
    """Return whether the test's variants are approved for each list; None: approval is not used.

    Only with sending.require_approval: a test needs no database otherwise.
    """
    if not state.settings.sending.require_approval:
        return None
    try:
        return for_lists(state.engine(), state.settings, issue, variants)
    except DatabaseError as exc:
        click.secho(f"warning: approval unknown: {safe(exc)}", fg="yellow", err=True)
        return []


def approval_label(approved: list[ListApproval] | None, segment: Segment) -> str:
    """Return " · approved by Zoë" for the subject's [TEST ...] mark, naming the list when several."""
    if approved is None:
        return ""
    mine = [a for a in approved if a.segment is segment]
    if not mine:
        return " · approval unknown" if not approved else ""
    if len(mine) == 1:
        return f" · {one_line(mine[0].short())}"
    return " · " + "; ".join(f"{a.list_name}: {one_line(a.short())}" for a in mine)
