"""Commands that send: a test to yourself, a dispatch to a list, its status, extra workers."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
import uuid
from typing import Any

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import outbox
from .. import subscribers as people
from ..db import transaction
from ..errors import MailoutError
from ..issues import Segment
from ..links import Links
from ..mailer import Mailer, Tally
from ..message import Addressing, MessageTemplate
from ..models import Delivery, DeliveryStatus, Dispatch, MailingList
from ..render import Recipient, render_issue, render_variant
from ..tokens import Signer
from ..transports import DeliveryFailure, make_transport
from .state import State, pass_state
from .terminal import safe

NOT_FINISHED = 3


@click.command("test")
@click.argument("name", metavar="ISSUE")
@click.option(
    "--to",
    "addresses",
    multiple=True,
    help="Send to this address (repeatable; default: preview.test_recipients).",
)
@pass_state
def test_command(state: State, name: str, addresses: tuple[str, ...]) -> None:
    """Send each variant to yourself, the subject marked [TEST member] or [TEST public].

    Nothing is recorded as a delivery: a later dispatch to the same address is
    not affected.

    \b
    Example:
        mailout test 2019-01 --to me@example.org
    """
    settings = state.settings
    targets = [people.normalise_email(a) for a in (addresses or settings.preview.test_recipients)]
    if not targets:
        raise MailoutError(
            "no test recipients: give --to ADDRESS or set preview.test_recipients in mailout.toml"
        )
    issue = state.issue(name)
    transport = make_transport(settings)
    urls = Links(settings).test_message(issue.slug)
    connection = transport.connect()
    try:
        for segment, variant in render_issue(issue, settings).items():
            template = MessageTemplate(
                variant,
                Addressing(
                    settings.sender.name, settings.sender.address, settings.sender.reply_to, f"test-{segment}"
                ),
                subject=f"[TEST {segment}] {variant.subject}",
            )
            for address in targets:
                data = template.build(
                    to_name="",
                    to_address=address,
                    message_id=f"test.{uuid.uuid4().hex}@{template.addressing.domain}",
                    # "View in browser" of a test opens the team's preview: nothing is published yet.
                    recipient=Recipient("", urls.unsubscribe, urls.view),
                    unsubscribe_mailto=urls.unsubscribe_mailto,
                )
                try:
                    reply = connection.send(settings.sender.address, address, data)
                except DeliveryFailure as failure:
                    raise MailoutError(f"test {segment} to {address}: {failure}") from None
                click.echo(f"[TEST {segment}] to {address}: {safe(reply)}")
    finally:
        connection.close()
    click.echo(f"sent through {transport.description}; nothing recorded as a delivery")


def _signer(state: State) -> Signer:
    return Signer.from_secret(state.settings.secret_key)


def _progress_printer(total: int) -> callable:  # type: ignore[valid-type]
    last = [0.0]
    interactive = sys.stderr.isatty()

    def show(tally: Tally) -> None:
        now = time.monotonic()
        if not interactive and now - last[0] < 2:
            return
        last[0] = now
        done = tally.sent + tally.failed
        rate = tally.rate()
        eta = f"{(total - done) / rate:,.0f}s" if rate > 0 and total > done else "-"
        line = f"sent {tally.sent:,}/{total:,}  failed {tally.failed:,}  deferred {tally.deferred:,}  {rate:,.1f}/s  ETA {eta}"
        click.echo(f"\r{line}" if interactive else line, err=True, nl=not interactive)

    return show


def _summary(engine: object, dispatch: Dispatch) -> dict[str, int]:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return {str(k): v for k, v in outbox.counts(conn, dispatch.id).items()}


def _run(state: State, dispatch: Dispatch, lst: MailingList) -> None:
    engine = state.engine()
    mailer = Mailer(
        engine, state.settings, dispatch, lst, make_transport(state.settings), _signer(state),
        on_progress=_progress_printer(dispatch.total),
    )  # fmt: skip
    mailer.install_signal_handlers()
    finished = mailer.run()
    if sys.stderr.isatty():
        click.echo("", err=True)
    counts = _summary(engine, dispatch)
    line = ", ".join(f"{n:,} {status}" for status, n in counts.items() if n)
    click.echo(f"dispatch {dispatch.id}: {line or 'no recipients'} (of {dispatch.total:,})")
    with engine.connect() as conn:
        unknown = outbox.unknown_deliveries(conn, dispatch.id)
    if unknown:
        click.echo(
            f"{len(unknown)} in flight when a sending process died (unknown; resend with --resend-unknown):"
        )
        for _, email in unknown[:20]:
            click.echo(f"  {email}")
    if finished:
        click.echo("finished")
        return
    if mailer.dispatch.paused_reason:
        click.secho(f"paused: {mailer.dispatch.paused_reason}", fg="red", err=True)
    elif not mailer.stop.is_set() and (counts["claimed"] or counts["sending"]):
        click.echo("other processes are sending the last messages; `mailout status` follows them")
    else:
        done = counts["sent"] + counts["failed"] + counts["skipped"] + counts["unknown"]
        click.echo(f"paused at {done:,} of {dispatch.total:,}; run the same command to resume")
    raise click.exceptions.Exit(NOT_FINISHED)


@click.command("send")
@click.argument("name", metavar="ISSUE")
@click.option("--list", "list_name", required=True, help="The list to send to.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Show what would happen, and stop there.")
@click.option("--again", is_flag=True, help="Send an issue that was already sent to this list once more.")
@click.option(
    "--resend-unknown",
    is_flag=True,
    help="Send again to those whose message was in flight when a process died.",
)
@pass_state
def send_command(
    state: State, name: str, list_name: str, yes: bool, dry_run: bool, again: bool, resend_unknown: bool
) -> None:
    """Dispatch an issue to a list; run it again to resume after a stop or a crash.

    The dispatch and one delivery per recipient are written first, in one
    transaction (the rendered issue and the recipients are frozen: later edits
    change nothing); then the messages go out with a progress line. Nobody gets
    two copies: a message that was in flight when a process died is reported
    as unknown and sent again only with --resend-unknown.

    \b
    Example:
        mailout send 2019-01 --list members
    """
    settings = state.settings
    list_settings = settings.mailing_list(list_name)
    _signer(state)  # refuse early, before any work: every message needs signed links
    engine = state.engine()
    issue = state.issue(name)
    with transaction(engine) as session:
        lst = people.ensure_list(session, list_settings)
        existing = outbox.find_dispatch(session, issue.slug, lst)
    if existing is not None and existing.finished_at is None:
        if existing.paused_reason:
            click.echo(f"resuming dispatch {existing.id} (it was paused: {existing.paused_reason})")
            with transaction(engine) as session:
                session.get(Dispatch, existing.id).paused_reason = ""  # type: ignore[union-attr]
            existing.paused_reason = ""
        else:
            click.echo(f"resuming dispatch {existing.id} of {issue.slug} to '{lst.name}'")
        if resend_unknown:
            with engine.begin() as conn:
                click.echo(f"{outbox.resend_unknown(conn, existing.id)} unknown deliveries queued again")
        if dry_run:
            return
        _run(state, existing, lst)
        return
    if existing is not None and not again:
        when = outbox.as_utc(existing.finished_at).strftime("%Y-%m-%d %H:%M UTC")  # type: ignore[arg-type]
        raise MailoutError(
            f"{issue.slug} was sent to '{lst.name}' already (dispatch {existing.id}, finished {when});"
            " use --again to send it once more"
        )
    variant = render_variant(issue, settings, Segment(list_settings.segment))
    with transaction(engine) as session:
        lst = people.ensure_list(session, list_settings)
        recipients = outbox.count_recipients(session, lst)
    transport = make_transport(settings)
    click.echo(f"subject:    {variant.subject}")
    click.echo(f"list:       {lst.name} ({lst.description or 'no description'})")
    click.echo(
        f"variant:    {variant.segment} ({variant.items_shown} items shown, {variant.items_hidden} left out)"
    )
    click.echo(f"recipients: {recipients:,}")
    click.echo(f"sender:     {settings.sender.name} <{settings.sender.address}>")
    click.echo(f"transport:  {transport.description}")
    if settings.smtp.host and not settings.newsletter.public_base_url.startswith("https://"):
        click.secho(
            f"warning: newsletter.public_base_url is {settings.newsletter.public_base_url}: the unsubscribe"
            " and view-in-browser links should be https for real readers",
            fg="yellow",
            err=True,
        )
    if dry_run:
        click.echo("dry run: nothing was written or sent")
        return
    if not yes:
        click.confirm(f"Send to {recipients:,} recipients?", abort=True)
    with transaction(engine) as session:
        lst = people.ensure_list(session, list_settings)
        dispatch = outbox.create_dispatch(
            session, issue.slug, lst, variant,
            from_name=settings.sender.name, from_address=settings.sender.address, reply_to=settings.sender.reply_to,
        )  # fmt: skip
    click.echo(f"dispatch {dispatch.id}: {dispatch.total:,} deliveries queued")
    _run(state, dispatch, lst)


@click.command("worker")
@click.option(
    "--dispatch", "dispatch_id", type=int, help="Only this dispatch (default: every unfinished one)."
)
@pass_state
def worker_command(state: State, dispatch_id: int | None) -> None:
    """Add a sending process to unfinished dispatches (PostgreSQL: on any machine).

    \b
    Example:
        mailout worker --dispatch 3
    """
    engine = state.engine()
    with transaction(engine) as session:
        query = select(Dispatch).where(Dispatch.finished_at.is_(None)).order_by(Dispatch.id)
        if dispatch_id is not None:
            query = query.where(Dispatch.id == dispatch_id)
        dispatches = list(session.scalars(query))
        lists = {d.id: session.get(MailingList, d.list_id) for d in dispatches}
    if not dispatches:
        click.echo("nothing to send")
        return
    for dispatch in dispatches:
        lst = lists[dispatch.id]
        assert lst is not None
        click.echo(f"dispatch {dispatch.id}: {dispatch.issue} to '{lst.name}'")
        _run(state, dispatch, lst)


@click.command("status")
@click.argument("dispatch_id", required=False, type=int, metavar="[DISPATCH]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
@pass_state
def status_command(state: State, dispatch_id: int | None, as_json: bool) -> None:
    """Show recent dispatches, or one dispatch: counts, rate, failures, unknowns.

    \b
    Example:
        mailout status 3 --json
    """
    engine = state.engine()
    with transaction(engine) as session:
        if dispatch_id is None:
            rows = session.execute(
                select(Dispatch, MailingList.name)
                .join(MailingList, MailingList.id == Dispatch.list_id)
                .order_by(Dispatch.id.desc())
                .limit(20)
            ).all()
            report = [_overview(session, d, list_name) for d, list_name in rows]
            if as_json:
                click.echo(json.dumps(report, indent=2))
                return
            click.echo(
                f"{'id':>4} {'issue':<16} {'list':<10} {'created':<17} {'total':>7} {'sent':>7} {'failed':>7}  state"
            )
            for r in report:
                click.echo(
                    f"{r['id']:>4} {r['issue']:<16} {r['list']:<10} {r['created'][:16]:<17} {r['total']:>7,}"
                    f" {r['counts']['sent']:>7,} {r['counts']['failed']:>7,}  {r['state']}"
                )
            if any(d.segment == Segment.PUBLIC for d, _ in rows):
                click.echo(f"archive: {Links(state.settings).archive()} (answered by `mailout serve`)")
            return
        found = session.execute(
            select(Dispatch, MailingList.name)
            .join(MailingList, MailingList.id == Dispatch.list_id)
            .where(Dispatch.id == dispatch_id)
        ).first()
        if found is None:
            raise MailoutError(f"no dispatch {dispatch_id}; `mailout status` lists them")
        dispatch, list_name = found
        report_one = _overview(session, dispatch, list_name)
        failures = session.execute(
            select(Delivery.reply, func.count())
            .where(
                Delivery.dispatch_id == dispatch.id,
                Delivery.status.in_([DeliveryStatus.FAILED, DeliveryStatus.DEFERRED]),
            )
            .group_by(Delivery.reply)
            .order_by(func.count().desc())
        ).all()
        report_one["failures"] = [{"reply": reply, "count": n} for reply, n in failures]
        report_one["unknown"] = [email for _, email in outbox.unknown_deliveries(session, dispatch.id)]
    if as_json:
        click.echo(json.dumps(report_one, indent=2))
        return
    click.echo(
        f"dispatch {report_one['id']}: {report_one['issue']} to '{report_one['list']}' ({report_one['state']})"
    )
    click.echo(f"subject: {report_one['subject']}")
    for status, n in report_one["counts"].items():
        click.echo(f"  {status:<9}{n:>9,}")
    click.echo(f"  {'total':<9}{report_one['total']:>9,}")
    if report_one["seconds"]:
        click.echo(f"time: {report_one['seconds']:,.0f} s, {report_one['rate']:,.1f} messages/s")
    if report_one["paused_reason"]:
        click.echo(f"paused: {report_one['paused_reason']}")
    if report_one["failures"]:
        click.echo("failures and deferrals by server reply:")
        for f in report_one["failures"]:
            click.echo(f"  {f['count']:>7,}  {safe(f['reply'])}")
    if report_one["unknown"]:
        click.echo("unknown (in flight when a process died; `send --resend-unknown` sends them again):")
        for email in report_one["unknown"]:
            click.echo(f"  {email}")


def _overview(session: Session, dispatch: Dispatch, list_name: str) -> dict[str, Any]:
    counts = {str(k): v for k, v in outbox.counts(session, dispatch.id).items()}
    end = outbox.as_utc(dispatch.finished_at) if dispatch.finished_at else dt.datetime.now(dt.UTC)
    seconds = (end - outbox.as_utc(dispatch.created_at)).total_seconds()
    state = "finished" if dispatch.finished_at else ("paused" if dispatch.paused_reason else "unfinished")
    return {
        "id": dispatch.id,
        "issue": dispatch.issue,
        "list": list_name,
        "subject": dispatch.subject,
        "created": outbox.as_utc(dispatch.created_at).isoformat(),
        "finished": outbox.as_utc(dispatch.finished_at).isoformat() if dispatch.finished_at else None,
        "state": state,
        "total": dispatch.total,
        "counts": counts,
        "seconds": round(seconds, 1),
        "rate": round(counts["sent"] / seconds, 2) if seconds > 0 else 0.0,
        "paused_reason": dispatch.paused_reason,
    }
