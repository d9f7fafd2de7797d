"""Commands for subscribers: import and sync the CSV lists, and the everyday changes."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from .. import bounces, csvfile, privacy, signup, unsubmail
from .. import subscribers as people
from ..config import ListSettings
from ..db import transaction
from ..errors import MailoutError
from ..importer import ImportReport, import_file, sync_paths
from ..models import Source, SubscriberStatus
from ..operators import current_operator
from ..paths import display_path
from ..tokens import Signer
from .state import State, pass_state
from .terminal import safe

SHOWN_PROBLEMS = 50
STATUSES = [status.value for status in SubscriberStatus]


@click.group()
def subscribers() -> None:
    """Import, sync, list, change and export subscribers."""


def _progress(rows: int) -> None:
    # A line per chunk on stderr: long imports show they are alive, and scripts can follow.
    click.echo(f"... {rows:,} rows read", err=True)


def _print_report(report: ImportReport) -> None:
    fmt = report.format
    how = f" ({fmt.encoding}, '{fmt.delimiter}'-delimited)" if fmt else ""
    verb = "would import" if report.dry_run else "imported"
    click.echo(f"{safe(report.file)}{how} {verb} into list '{report.list_name}': {report.rows:,} rows")
    for label, value in (
        ("added", report.added),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
        ("kept out", report.kept_out),
        ("duplicates", report.duplicates),
        ("invalid", report.invalid),
    ):
        click.echo(f"  {label:<11}{value:>8,}")
    if fmt and fmt.ignored:
        click.echo(f"  ignored columns: {safe(', '.join(fmt.ignored))}")
    for line, reason in report.problems[:SHOWN_PROBLEMS]:
        click.secho(f"{safe(report.file)}:{line}: {safe(reason)}", fg="yellow", err=True)
    if report.invalid > SHOWN_PROBLEMS:
        click.secho(f"... and {report.invalid - SHOWN_PROBLEMS:,} more invalid rows", fg="yellow", err=True)
    for line, email, reason in report.kept_out_rows[:SHOWN_PROBLEMS]:
        click.echo(f"{safe(report.file)}:{line}: kept out {safe(email)}: {safe(reason)}", err=True)
    if report.missing:
        if report.removed:
            action = "unsubscribed (source: sync)"
        elif report.removal_refused:
            action = f"still subscribed: the file has {report.invalid:,} invalid rows; fix them before --remove-missing"
        else:
            action = "still subscribed; --remove-missing unsubscribes them"
        click.echo(f"  on the list but not in the file: {report.missing:,}, {action}")
        for email in report.missing_sample:
            click.echo(f"    {safe(email)}")
        if report.missing > len(report.missing_sample):
            click.echo(f"    ... and {report.missing - len(report.missing_sample):,} more")
    if report.dry_run:
        click.echo("  dry run: nothing was written")


@subscribers.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--list", "list_name", required=True, help="The list to import into (a [lists.NAME] of mailout.toml)."
)
@click.option(
    "--delimiter", type=click.Choice([",", ";", "tab"]), help="Field delimiter (default: detected)."
)
@click.option("--encoding", help="File encoding, e.g. utf-8 or cp1252 (default: detected).")
@click.option("--dry-run", is_flag=True, help="Print the report and write nothing.")
@pass_state
def import_command(
    state: State, file: Path, list_name: str, delimiter: str | None, encoding: str | None, dry_run: bool
) -> None:
    """Import a CSV file into a list.

    Rows that are invalid are reported with their line; the good rows are
    imported in one transaction. People who unsubscribed or bounced are never
    subscribed again.

    \b
    Example:
        mailout subscribers import export.csv --list members --dry-run
    """
    lst = state.settings.mailing_list(list_name)
    report = import_file(
        state.engine(),
        file,
        lst,
        encoding=encoding,
        delimiter="\t" if delimiter == "tab" else delimiter,
        dry_run=dry_run,
        progress=_progress,
        signer=_signer_if_any(state),
    )
    _print_report(report)


@subscribers.command("sync")
@click.option(
    "--remove-missing", is_flag=True, help="Unsubscribe people on a list but missing from its file."
)
@click.option("--dry-run", is_flag=True, help="Print the reports and write nothing.")
@pass_state
def sync_command(state: State, remove_missing: bool, dry_run: bool) -> None:
    """Import every subscribers/LIST.csv into its list.

    The list's segment and description come from mailout.toml. Sync never
    deletes anyone: people on the list but missing from the file are reported,
    and only --remove-missing unsubscribes them (recorded with source "sync").

    \b
    Example:
        mailout subscribers sync --dry-run
    """
    folder = state.settings.path("subscribers")
    pairs = sync_paths(folder, state.settings.lists)
    if not pairs:
        expected = ", ".join(f"{lst.name}.csv" for lst in state.settings.lists)
        raise MailoutError(f"no list files in {display_path(folder)}/ (expected {expected})")
    configured = {path.name for _, path in pairs}
    for stray in sorted(folder.glob("*.csv")):
        if stray.name not in configured:
            click.secho(
                f"{safe(display_path(stray))}: no [lists.{safe(stray.stem)}] in mailout.toml; not imported",
                fg="yellow",
                err=True,
            )
    for lst, path in pairs:
        report = import_file(
            state.engine(),
            path,
            lst,
            dry_run=dry_run,
            remove_missing=remove_missing,
            report_missing=True,
            progress=_progress,
            signer=_signer_if_any(state),
        )
        _print_report(report)


def _signer_if_any(state: State) -> Signer | None:
    """Return the signer when MAILOUT_SECRET_KEY is set: erased addresses are told by their keyed hash."""
    return state.signer() if state.settings.secret_key else None


def _list_for(state: State, name: str) -> ListSettings:
    return state.settings.mailing_list(name)


@subscribers.command("add")
@click.argument("email")
@click.option("--list", "list_name", required=True, help="The list to add to.")
@click.option("--name", default="", help="The person's name.")
@click.option("--organisation", default="")
@click.option(
    "--language", default="", help="A language tag such as en, fr or fr-BE (stored canonical: FR -> fr)."
)
@pass_state
def add_command(
    state: State, email: str, list_name: str, name: str, organisation: str, language: str
) -> None:
    """Subscribe one person to a list (recorded as a manual subscription).

    \b
    Example:
        mailout subscribers add ana@example.org --list public --name "Ana Silva"
    """
    with transaction(state.engine()) as session:
        privacy.keep_out(session, _signer_if_any(state), email)
        lst = people.ensure_list(session, _list_for(state, list_name))
        person, changed = people.add(
            session,
            lst,
            email,
            name=name,
            organisation=organisation,
            language=language,
            detail="mailout subscribers add",
        )
        click.echo(f"{safe(person.email)}: {'subscribed to' if changed else 'already on'} '{lst.name}'")


@subscribers.command("unsubscribe")
@click.argument("email")
@click.option("--list", "list_name", help="Unsubscribe from this list only.")
@click.option("--all", "every_list", is_flag=True, help="Unsubscribe from every list.")
@click.option("--reason", default="", help="Why (kept in the consent history).")
@pass_state
def unsubscribe_command(
    state: State, email: str, list_name: str | None, every_list: bool, reason: str
) -> None:
    """Unsubscribe one person from a list, or from every list.

    \b
    Example:
        mailout subscribers unsubscribe ana@example.org --all --reason "asked by email"
    """
    if bool(list_name) == every_list:
        raise click.UsageError("give either --list NAME or --all")
    with transaction(state.engine()) as session:
        person = people.find(session, email)
        lst = people.ensure_list(session, _list_for(state, list_name)) if list_name else None
        changed = people.unsubscribe(session, person, Source.MANUAL, lst=lst, detail=reason)
        where = f"'{lst.name}'" if lst else "every list"
        click.echo(
            f"{safe(person.email)}: {'unsubscribed from' if changed else 'was not subscribed to'} {where}"
        )


@subscribers.command("unsubscribe-mail")
@click.argument("mailbox_path", metavar="MAILBOX", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@pass_state
def unsubscribe_mail_command(state: State, mailbox_path: Path, dry_run: bool) -> None:
    """Process the requests sent to the List-Unsubscribe mailto address.

    MAILBOX is a Maildir folder or an mbox file. A message with a valid token in its
    subject unsubscribes from that list; one that says "unsubscribe" without a token
    unsubscribes its sender from every list; anything else is listed for a person to
    read. Each message is handled once, however often the mailbox is read.

    \b
    Example:
        mailout subscribers unsubscribe-mail ~/Maildir/.unsubscribe
    """
    signer = state.signer()
    engine = state.engine()
    box = unsubmail.open_mailbox(mailbox_path)
    outcomes: list[unsubmail.Outcome] = []
    before = 0
    try:
        for read in unsubmail.messages(box):
            # One transaction per message: a message that fails loses nothing done for the
            # others, and the database is never held for the whole mailbox.
            with transaction(engine) as session:
                if unsubmail.handled(session, read.identity):
                    before += 1
                    continue
                outcome = unsubmail.process(session, signer, read)
                if dry_run:
                    session.rollback()
            outcomes.append(outcome)
            click.echo(
                f"{outcome.action:<15} {safe(outcome.sender or '(no sender)')}  {safe(outcome.detail)}"
            )
            if not dry_run and outcome.action in ("unsubscribed", "already"):
                unsubmail.mark_seen(box, read.box_key)  # done: what stays unread is for a person
    finally:
        box.close()
    done = sum(o.action == "unsubscribed" for o in outcomes)
    read_count = f"{len(outcomes)} new message{'s' if len(outcomes) != 1 else ''}"
    earlier = f" ({before} handled before)" if before else ""
    click.echo(
        f"{read_count}{earlier}; {done} {'would be unsubscribed (dry run)' if dry_run else 'unsubscribed'}"
    )


@subscribers.command("resubscribe")
@click.argument("email")
@click.option("--list", "list_name", required=True)
@click.option("--reason", required=True, help="Why this person may be mailed again (kept in the history).")
@click.option("--confirm-consent", is_flag=True, help="Confirm that the person asked to be subscribed again.")
@pass_state
def resubscribe_command(state: State, email: str, list_name: str, reason: str, confirm_consent: bool) -> None:
    """Subscribe again someone who unsubscribed or bounced.

    Needs --confirm-consent and a --reason, both recorded: an import or a sync
    never does this.

    \b
    Example:
        mailout subscribers resubscribe ana@example.org --list public --reason "asked at the GA" --confirm-consent
    """
    if not confirm_consent:
        raise click.UsageError(
            "resubscribing someone who left needs --confirm-consent (they asked to come back)"
        )
    with transaction(state.engine()) as session:
        privacy.keep_out(session, _signer_if_any(state), email)
        person = people.find(session, email)
        lst = people.ensure_list(session, _list_for(state, list_name))
        people.resubscribe(session, person, lst, reason=reason)
        click.echo(f"{safe(person.email)}: subscribed again to '{lst.name}' ({safe(reason.strip())})")


@subscribers.command("show")
@click.argument("email")
@pass_state
def show_command(state: State, email: str) -> None:
    """Show one subscriber, their lists, their whole consent history and the reports about them.

    \b
    Example:
        mailout subscribers show ana@example.org
    """
    with transaction(state.engine()) as session:
        person = people.find(session, email)
        click.echo(
            "  ".join(
                safe(value or "-")
                for value in (person.email, person.name, person.organisation, person.language)
            )
        )
        click.echo(f"status: {person.status}   since {person.created_at:%Y-%m-%d %H:%M}")
        if person.soft_score or person.soft_bounced_at:
            last = f"{person.soft_bounced_at:%Y-%m-%d %H:%M}" if person.soft_bounced_at else "-"
            click.echo(
                f"soft bounces: score {person.soft_score} (last {last}, counted on {person.soft_day or '-'})"
            )
        for membership in people.memberships(session, person):
            click.echo(
                f"list {safe(membership.list_name)}: {membership.status}"
                f" (since {membership.since:%Y-%m-%d %H:%M})"
            )
        click.echo("history:")
        for event, list_name in people.history(session, person):
            scope = safe(list_name or "every list")
            detail = f": {safe(event.detail)}" if event.detail else ""
            click.echo(
                f"  {event.created_at:%Y-%m-%d %H:%M}  {event.kind:<12} {scope:<10} by {event.source}{detail}"
            )
        reports = bounces.about(session, person.id)
        if reports:
            click.echo("reports (mailout bounces process):")
        for handled, line in reports:
            code = f" {line.status}" if line.status else ""
            note = f": {line.note}" if line.note else ""
            click.echo(
                f"  {handled.processed_at:%Y-%m-%d %H:%M}  {handled.kind:<9} {line.outcome or '-'}{safe(code)}"
                f" -> {line.action.value} (by {line.matched_by.value}){safe(note)}"
            )


@subscribers.command("list")
@click.option("--list", "list_name", help="Only this list.")
@click.option("--status", type=click.Choice(STATUSES), help="Only this status.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="Stop after this many (default: all).")
@pass_state
def list_command(state: State, list_name: str | None, status: str | None, limit: int) -> None:
    """List subscribers, one per line, ordered by address.

    \b
    Example:
        mailout subscribers list --list members --status subscribed
    """
    if list_name:
        state.settings.mailing_list(list_name)  # an unknown list is an error, not an empty answer
    with transaction(state.engine()) as session:
        for shown, (person, state_name) in enumerate(
            people.members(session, list_name=list_name, status=status), start=1
        ):
            click.echo(
                "\t".join(
                    safe(value)
                    for value in (person.email, state_name, person.name, person.organisation, person.language)
                )
            )
            if limit and shown >= limit:
                break


@subscribers.command("count")
@pass_state
def count_command(state: State) -> None:
    """Count subscribers per list and status.

    \b
    Example:
        mailout subscribers count
    """
    with transaction(state.engine()) as session:
        rows = people.list_counts(session)
    click.echo(f"{'list':<16} {'status':<14} {'people':>8}")
    for list_name, status, number in rows:
        click.echo(f"{'(everyone)' if list_name == '*' else list_name:<16} {status:<14} {number:>8,}")


@subscribers.command("export")
@click.option("--list", "list_name", help="Only this list.")
@click.option("--status", type=click.Choice(STATUSES), help="Only this status.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here (default: standard output).",
)
@pass_state
def export_command(state: State, list_name: str | None, status: str | None, output: Path | None) -> None:
    """Export subscribers as CSV, safe to open in a spreadsheet.

    Cells that a spreadsheet would run as a formula are written as text. The
    file imports back unchanged.

    \b
    Example:
        mailout subscribers export --list members -o members-export.csv
    """
    with transaction(state.engine()) as session:
        rows = (
            (person.email, person.name, person.organisation, person.language, status_name)
            for person, status_name in people.members(session, list_name=list_name, status=status)
        )
        header = ("email", "name", "organisation", "language", "status")
        if output is None:
            written = csvfile.write_rows(sys.stdout, header, rows)
        else:
            with output.open("w", encoding="utf-8", newline="") as handle:
                written = csvfile.write_rows(handle, header, rows)
            click.echo(f"wrote {written:,} subscribers to {display_path(output)}", err=True)


@subscribers.command("export-person")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Write JSON (UTF-8, stable keys, times in UTC).")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here (default: standard output).",
)
@pass_state
def export_person_command(state: State, email: str, as_json: bool, output: Path | None) -> None:
    """Export everything mailout holds about one person (a subject access request).

    The subscriber row, subscriptions, consent history with the consent texts
    shown, deliveries, bounce and complaint reports, mail requests from the
    address, pending sign-ups, and whether the address was erased. Exits 1 when
    nothing is held.

    \b
    Example:
        mailout subscribers export-person ana@example.org --json -o ana.json
    """
    data = privacy.export_person(state.engine(), state.signer(), email)
    text = privacy.to_json(data) if as_json else _person_summary(data)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {display_path(output)}", err=True)
    if not data["found"]:
        erased = data["erased"]
        why = f" (erased on request on {erased['erased_at'][:10]})" if erased else ""
        click.echo(f"mailout holds nothing about {safe(data['address'])}{why}", err=True)
        sys.exit(1)


def _person_summary(data: dict[str, object]) -> str:
    """Return an export as a few readable lines: what is held, counted per kind."""
    person = data["subscriber"]
    lines = [f"address: {safe(data['address'])}"]
    if isinstance(person, dict):
        lines.append(
            f"subscriber {person['id']}: {safe(person['name'] or '-')}, {person['status']}, since {person['created_at']}"
        )
    erased = data["erased"]
    if isinstance(erased, dict):
        lines.append(f"erased on request on {erased['erased_at']} by {safe(erased['erased_by'])}")
    for part in ("subscriptions", "consent_events", "deliveries", "reports", "mail_requests", "signups"):
        held = data[part]
        lines.append(f"  {part.replace('_', ' '):<15}{len(held) if isinstance(held, list) else 0:>6}")
    lines.append("(--json writes every row in full)")
    return "\n".join(lines) + "\n"


@subscribers.command("erase")
@click.argument("email")
@click.option("--by", default="", help="Who erases (default: git's user.name <user.email>, else the login).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--vacuum",
    is_flag=True,
    help="SQLite: rewrite the database file too (VACUUM), for rows deleted by an older mailout;"
    " it makes a dispatch sending at that moment wait.",
)
@pass_state
def erase_command(state: State, email: str, by: str, yes: bool, vacuum: bool) -> None:
    """Erase a person on request: their address and name go from every table, for good.

    What happened stays, without them (their row becomes "erased-NUMBER"; the
    deliveries still count in each dispatch). A keyed hash of the address is kept
    so that imports, `subscribers add` and the sign-up form keep them out. An
    address mailout holds nothing about is recorded too: it stays out from now.
    Needs MAILOUT_SECRET_KEY (the hash is made with it).

    \b
    Example:
        mailout subscribers erase ana@example.org --by "Zoë (request of 3 May)"
    """
    signer = state.signer()
    address = people.normalise_email(email)
    if not yes:
        click.confirm(f"Erase {safe(address)} from every table? This cannot be undone", abort=True, err=True)
    result = privacy.erase(state.engine(), signer, address, by=current_operator(by), vacuum=vacuum)
    if not result.done_now:
        click.echo(
            f"this address was erased already, on {result.erased_at:%Y-%m-%d %H:%M} UTC"
            f" by {safe(result.erased_by)}: nothing changed"
        )
        return
    if not result.held_anything:
        click.echo(
            "mailout held nothing about this address; its keyed hash is recorded,"
            " so imports and the sign-up form keep it out from now"
        )
        return
    tombstone = f" (subscriber {result.subscriber_id} kept as erased-{result.subscriber_id})"
    click.echo(f"erased{tombstone if result.subscriber_id else ''}; rows changed:")
    for table, number in result.counts.items():
        click.echo(f"  {table:<18}{number:>8,}")
    click.echo("its keyed hash is recorded: imports and the sign-up form keep it out")
    if result.compacted is False:
        click.secho(
            "warning: another process was using the database, so its WAL file (mailout.db-wal)"
            " may still hold older copies of this person's rows until SQLite's next full"
            " checkpoint; when nothing uses the database, run"
            " `sqlite3 mailout.db 'PRAGMA wal_checkpoint(TRUNCATE)'`",
            fg="yellow",
            err=True,
        )


@subscribers.command("purge-pending")
@pass_state
def purge_pending_command(state: State) -> None:
    """Delete the sign-ups never confirmed within signup.pending_days; print how many.

    A sign-up waits for the link in its confirmation message to be followed. Those
    left unconfirmed for signup.pending_days (30 by default, counted from the
    latest request) are deleted, their address and name with them. `mailout
    worker` does the same at each pass.

    \b
    Example:
        mailout subscribers purge-pending
    """
    click.echo(f"{purge_pending(state):,} pending sign-ups deleted")


def purge_pending(state: State) -> int:
    """Delete the sign-ups past ``signup.pending_days`` (the command, and `mailout worker`)."""
    with transaction(state.engine()) as session:
        return signup.purge_pending(session.connection(), state.settings, now=dt.datetime.now(dt.UTC))
