"""Commands for the reports that come back: bounces, complaints, automatic replies."""

from __future__ import annotations

import collections
from collections.abc import Iterable

import click

from .. import bounces
from ..bounces import Result, Verdict
from ..mailsource import MailSource, open_source
from ..models import ReportAction
from .state import State, pass_state
from .terminal import safe


@click.group("bounces")
def bounces_group() -> None:
    """Read the bounce mailbox and show what the reports did."""


def _line(result: Result) -> str:
    """One line per report: kind, how it was matched, what was done, to whom, and why."""
    first = next((line for line in result.lines if line.action is not ReportAction.NONE), None)
    first = first or (result.lines[0] if result.lines else None)
    address = first.address if first else "-"
    detail = (first.note or result.summary) if first else result.summary
    more = len(result.lines) - 1
    if more > 0:
        detail += f" (+{more} more recipient{'s' if more != 1 else ''})"
    if not result.settled:
        detail += "; left for a person"
    return (
        f"{result.kind:<9} {result.matched_by.value:<10} {result.action.value:<12} "
        f"{safe(address or '-')}  {safe(detail)}"
    )


def print_skipped(source: MailSource) -> None:
    """Say which messages were too large to be a report, and so were left unread."""
    for key, size in source.skipped:
        click.echo(
            f"not read: message {safe(key)}, {size:,} bytes, larger than any report; left for a person"
        )


def print_results(results: Iterable[Result], *, dry_run: bool = False) -> None:
    """Print a line per new report as it is handled, then what the pass did in all."""
    counts: collections.Counter[str] = collections.Counter()
    new = before = left = 0
    for result in results:
        if result.verdict is Verdict.BEFORE:
            before += 1
        elif result.verdict is Verdict.RACE:
            click.echo(f"{result.kind:<9} {'-':<10} {'-':<12} -  handled by another process")
        else:
            click.echo(_line(result))
            new += 1
            counts.update(line.action.value for line in result.lines)
            left += not result.settled
    done = ", ".join(f"{n} {action}" for action, n in sorted(counts.items()) if action != ReportAction.NONE)
    dry = " (dry run: nothing stored, no mail touched)" if dry_run else ""
    click.echo(
        f"{new} new report{'s' if new != 1 else ''}{dry}: {done or 'nothing done'};"
        f" {left} left for a person; {before} handled before"
    )


@bounces_group.command("process")
@click.argument("source", metavar="SOURCE")
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing, touch no mail.")
@click.option(
    "--move-to",
    metavar="FOLDER",
    help="Move handled reports to this folder (a Maildir sub-folder or an IMAP folder).",
)
@click.option("--delete", is_flag=True, help="Delete handled reports instead of marking them seen.")
@pass_state
def process_command(state: State, source: str, dry_run: bool, move_to: str | None, delete: bool) -> None:
    """Handle the bounce and complaint reports in a mailbox, each once, ever.

    SOURCE is a Maildir folder, an mbox file or an IMAP folder
    (imaps://USER@HOST/FOLDER, the password in MAILOUT_IMAP_PASSWORD). A
    permanent failure suppresses the
    address; temporary ones count towards [bounces] soft_threshold (at most one a
    day); a complaint unsubscribes. Reports handled in full are marked seen (or
    moved, or deleted); automatic replies, unknown mail and reports that match
    nothing are recorded but stay unread, for a person.

    \b
    Example:
        mailout bounces process ~/Maildir/.bounces --move-to Processed
    """
    signer = state.signer()  # a missing key is said before the mailbox is opened
    engine = state.engine()
    with open_source(source, move_to=move_to, delete=delete) as mailbox:
        print_results(bounces.run(engine, state.settings, signer, mailbox, dry_run=dry_run), dry_run=dry_run)
        print_skipped(mailbox)


@bounces_group.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many reports.")
@pass_state
def list_command(state: State, limit: int) -> None:
    """Show the reports handled last and what was done for each recipient.

    \b
    Example:
        mailout bounces list --limit 50
    """
    for handled in bounces.recent(state.engine(), limit):
        settled = "" if handled.settled else "  (left for a person)"
        click.echo(
            f"{handled.processed_at:%Y-%m-%d %H:%M}  {handled.kind:<9} {handled.matched_by.value:<10}"
            f" {safe(handled.summary)}{settled}"
        )
        for line in handled.lines:
            code = f" {line.status}" if line.status else ""
            note = f": {line.note}" if line.note else ""
            click.echo(
                f"    {safe(line.address or '-')}  {line.outcome or '-'}{safe(code)}"
                f" -> {line.action.value}{safe(note)}"
            )
