"""Commands that send: a test to yourself, a dispatch to a list, its status, extra workers."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict

import click

from .. import clock, dispatching, instants
from .. import subscribers as people
from ..dispatching import DispatchState, Ending, Plan, Report, Result, Summary
from ..dkim import check as check_dkim
from ..dkim import load_signer
from ..envelope import envelope_sender
from ..errors import MailoutError
from ..languages import canonical, choose
from ..links import Links
from ..mailer import Tally
from ..message import Addressing, MessageTemplate, feedback_id
from ..models import FINAL
from ..operators import current_operator
from ..render import Recipient, render_language, template_environment
from ..segments import Segment
from ..tokens import check_real_key
from ..transports import DeliveryFailure, make_transport
from .doctor import finding_line, print_findings
from .state import State, pass_state
from .terminal import safe

NOT_FINISHED = 3

SKIP_CHECKS = click.option(
    "--skip-checks",
    is_flag=True,
    help="Do not run mailout doctor's checks first (DNS, SMTP, the secret key).",
)


def _check_before_sending(state: State, *, refuse: bool) -> None:
    """Run ``mailout doctor``'s checks before mail goes to a real server; refuse or warn on an error."""
    settings = state.settings
    if not settings.sends_mail or not settings.doctor.before_send:
        return
    from ..doctor import preflight  # DNS code, loaded only when the checks run

    errors = preflight(settings)
    if not errors:
        return
    if not refuse:
        for finding in errors:
            click.secho(f"warning: {finding_line(finding)}", fg="yellow", err=True)
        return
    click.secho("mailout doctor found errors; nothing was queued or sent:", fg="red", err=True)
    print_findings(errors, err=True)
    count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
    raise MailoutError(
        f"{count} before sending to {settings.smtp.host or 'the routes'}: fix {'them' if len(errors) != 1 else 'it'}"
        " (`mailout doctor` shows every check), switch a check off in doctor.skip where you know"
        " better, or send anyway with --skip-checks"
    )


@click.command("test")
@click.argument("name", metavar="ISSUE")
@click.option(
    "--to",
    "addresses",
    multiple=True,
    help="Send to this address (repeatable; default: preview.test_recipients).",
)
@click.option(
    "--language",
    "language",
    default="",
    help="Send only the variants a reader of this language gets (default: every language of the issue).",
)
@SKIP_CHECKS
@pass_state
def test_command(
    state: State, name: str, addresses: tuple[str, ...], language: str, skip_checks: bool
) -> None:
    """Send each variant to yourself, the subject marked [TEST member] or [TEST public].

    An issue in several languages sends each variant in each language, the
    subject marked [TEST member fr] and so on; --language sends only the ones a
    reader of that language gets. Nothing is recorded as a delivery: a later
    dispatch to the same address is not affected. To a real server, mailout
    doctor's errors are printed as warnings first: a test to yourself before
    DNS is ready is a normal step.

    \b
    Example:
        mailout test 2019-01 --to me@example.org
        mailout test 2019-01 --to me@example.org --language fr
    """
    settings = state.settings
    targets = [people.normalise_email(a) for a in (addresses or settings.preview.test_recipients)]
    if not targets:
        raise MailoutError(
            "no test recipients: give --to ADDRESS or set preview.test_recipients in mailout.toml"
        )
    issue = state.issue(name)  # an unknown issue is said before any DNS question
    written_in = dispatching.issue_languages(issue, settings)
    chosen = written_in
    if language:
        tag = canonical(language)
        if tag is None:
            raise MailoutError(f"--language '{language}' is not a language tag such as en, fr or pt-BR")
        chosen = (choose(tag, written_in, written_in[0]),)
        if chosen[0] != tag:
            click.echo(f"{issue.slug} is not written in {tag}: a reader of {tag} gets {chosen[0]}")
    if not skip_checks:
        _check_before_sending(state, refuse=False)
    if settings.sends_mail:  # to real mailboxes: refuse a public key as `send` does
        for warning in check_real_key(settings.secret_key):
            click.secho(f"warning: {warning}", fg="yellow", err=True)
    dkim = load_signer(settings)
    for warning in check_dkim(settings, dkim):
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    # Through the route sends go through by default (sending.route), else [smtp] or the outbox.
    transport = make_transport(settings, settings.sending.route)
    urls = Links(settings).test_message(issue.slug)
    sender = envelope_sender(settings)
    env = template_environment(settings)
    variants = {
        (segment, lang): render_language(issue, settings, segment, lang, env=env)
        for lang, segment in itertools.product(chosen, Segment)
    }
    # Whether each list has them approved, in the subject: "[TEST member · approved by Zoë]".
    from .approval import approval_label, approvals_for_test

    approved = approvals_for_test(state, issue.slug, variants)
    connection = transport.connect()
    try:
        for (segment, lang), variant in variants.items():
            label = f"{segment} {lang}" if len(written_in) > 1 else str(segment)
            label += approval_label(approved, segment)
            addressing = Addressing(
                settings.sender.name, settings.sender.address, settings.sender.reply_to, f"test-{segment}"
            )
            template = MessageTemplate(
                variant,
                addressing,
                subject=f"[TEST {label}] {variant.subject}",
                dkim=dkim,
                feedback_id=feedback_id("test", f"test-{segment}", issue.slug, addressing.domain),
            )
            for address in targets:
                data = template.build(
                    to_name="",
                    to_address=address,
                    message_id=f"test.{uuid.uuid4().hex}@{template.addressing.domain}",
                    # "View in browser" of a test opens the team's preview: nothing is published yet.
                    recipient=Recipient("", urls.unsubscribe, urls.view, urls.preferences),
                    unsubscribe_mailto=urls.unsubscribe_mailto,
                )
                try:
                    reply = connection.send(sender, address, data)
                except DeliveryFailure as failure:
                    raise MailoutError(f"test {label} to {address}: {failure}") from None
                click.echo(f"[TEST {label}] to {address}: {safe(reply)}")
    finally:
        connection.close()
    click.echo(f"sent through {transport.description}; nothing recorded as a delivery")


def _progress_printer(total: int) -> Callable[[Tally], None]:
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


#: How a run may end and the command still exit 0: nothing is left for this process to do now
#: (a quota wait: the worker's next round goes on).
DONE = (Ending.FINISHED, Ending.OTHERS, Ending.WAITING)


def run_dispatch(
    state: State,
    dispatch_id: int,
    total: int,
    stop: threading.Event | None = None,
    *,
    max_wait: float | None = None,
) -> dispatching.Result:
    """Send the dispatch with a progress line, print how it ended, and return that.

    Ctrl-C and SIGTERM stop it cleanly: caught here, or by the caller, which then sets ``stop``.
    A quota wait longer than ``max_wait`` seconds ends it (the worker's rounds).
    """
    result = dispatching.run(
        state.engine(), state.settings, dispatch_id, state.signer(),
        on_progress=_progress_printer(total), on_notice=click.echo, handle_signals=stop is None, stop=stop,
        clock=clock.SYSTEM, max_wait=max_wait,
    )  # fmt: skip
    if sys.stderr.isatty():
        click.echo("", err=True)
    _print_ending(result)
    return result


def _adds_up(summary: Summary) -> str:
    """Return the sum of the final states, which is the number of recipients once finished."""
    counts = summary.counts
    line = " + ".join(f"{counts[status]:,} {status}" for status in FINAL)
    if summary.done == summary.total:
        return f"{line} = {summary.total:,} recipients"
    return (
        f"{line} = {summary.done:,} of {summary.total:,} recipients ({summary.total - summary.done:,} to go)"
    )


def _print_refused(report: Report) -> None:
    """Say how many were refused by policy, and how to send them again."""
    if report.refused:
        click.echo(
            f"{report.refused:,} refused by policy (5.7.x): once the cause is fixed,"
            f" `mailout send {report.issue} --list {report.list} --retry-policy` sends them again"
        )


def _print_ending(result: Result) -> None:
    report = result.report
    click.echo(f"dispatch {report.id}: {_adds_up(report)}")
    _print_refused(report)
    if report.unknown:
        click.echo(
            f"{len(report.unknown)} unknown (no answer from the server after the whole message, or in flight"
            " when a sending process died: they may have it; resend with --resend-unknown):"
        )
        for email in report.unknown[:20]:
            click.echo(f"  {email}")
        if len(report.unknown) > 20:
            click.echo(
                f"  and {len(report.unknown) - 20:,} more: `mailout status {report.id}` lists them all"
            )
    if result.ending is Ending.FINISHED:
        click.echo("finished")
    elif result.ending is Ending.PAUSED:
        click.secho(f"paused: {report.paused_reason}", fg="red", err=True)
    elif result.ending is Ending.OTHERS:
        click.echo("other processes are sending the last messages; `mailout status` follows them")
    elif result.ending is Ending.WAITING:
        click.echo(f"{result.waiting}; the worker's next round after that goes on")
    else:
        click.echo(f"paused at {report.done:,} of {report.total:,}; run the same command to resume")


def _print_plan(plan: Plan) -> None:
    """Print what a new dispatch would be, and the warnings."""
    variant = plan.variant
    assert variant is not None
    click.echo(f"subject:    {variant.subject}")
    click.echo(f"list:       {plan.list_name} ({plan.list_description or 'no description'})")
    click.echo(
        f"variant:    {variant.segment} ({variant.items_shown} items shown, {variant.items_hidden} left out)"
    )
    click.echo(f"recipients: {plan.recipients:,}")
    if len(plan.variants) > 1:
        # Each reader gets their language, else its primary language, else the default.
        click.echo(f"languages:  {_per_language(plan.by_language)}")
        for language, other in plan.variants.items():
            if language != variant.language:
                click.echo(f"subject {language}: {safe(other.subject)}")
    click.echo(f"sender:     {plan.sender}")
    click.echo(f"transport:  {plan.transport}")
    for warning in plan.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)


def _per_language(counts: dict[str, int]) -> str:
    """Return ``en 120, fr 34``: recipients per language, in the order given ("" : the default)."""
    return ", ".join(f"{language or 'default'} {n:,}" for language, n in counts.items())


def _print_resume(plan: Plan, zone: str) -> None:
    resume = plan.resume
    assert resume is not None
    if resume.waiting is not None:
        head = f"dispatch {resume.dispatch_id} of {plan.issue} to '{plan.list_name}' ({resume.waiting}"
        head += f", for {instants.show(resume.scheduled_at, zone)})" if resume.scheduled_at else ")"
        if resume.reschedule is not None:
            click.echo(f"rescheduling {head} to {instants.show(resume.reschedule, zone)}")
        else:
            click.echo(f"starting {head} now")
        return
    if resume.finished:
        when = resume.finished.strftime("%Y-%m-%d %H:%M UTC")
        click.echo(
            f"reopening dispatch {resume.dispatch_id} of {plan.issue} to '{plan.list_name}' (finished {when})"
        )
    elif resume.paused_reason:
        click.echo(f"resuming dispatch {resume.dispatch_id} (it was paused: {resume.paused_reason})")
    else:
        click.echo(f"resuming dispatch {resume.dispatch_id} of {plan.issue} to '{plan.list_name}'")
    if resume.resend_unknown:
        click.echo(f"unknown:    {resume.unknown:,} (may have the message already)")
    if resume.retry_policy:
        click.echo(f"refused:    {resume.refused:,} by policy (5.7.x)")


def _resend_questions(plan: Plan) -> list[str]:
    """Return the questions to ask before sending again to deliveries that were settled."""
    resume = plan.resume
    if resume is None:
        return []
    questions = []
    if resume.resend_unknown and resume.unknown:
        questions.append(
            f"Send again to {resume.unknown:,} recipients whose delivery is unknown?"
            " They may receive it twice."
        )
    if resume.retry_policy and resume.refused:
        questions.append(
            f"Send again to {resume.refused:,} recipients refused by policy (5.7.x)?"
            " Do it once the cause (SPF, DKIM, the server's policy) is fixed."
        )
    return questions


@click.command("send")
@click.argument("name", metavar="ISSUE")
@click.option("--list", "list_name", required=True, help="The list to send to.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Show what would happen, and stop there.")
@click.option("--again", is_flag=True, help="Send an issue that was already sent to this list once more.")
@click.option(
    "--resend-unknown",
    is_flag=True,
    help="Send again to the unknown deliveries: no answer came, or a process died (they may get two; also once finished).",
)
@click.option(
    "--retry-policy",
    is_flag=True,
    help="Send again to those refused by policy (5.7.x), once the cause is fixed (also once finished).",
)
@click.option(
    "--at",
    "at",
    metavar="TIME",
    help="Write and freeze the dispatch now, send it at TIME ('2019-02-12 09:00', or with its offset"
    " '2019-02-12 09:00+01:00'): `mailout worker` starts it.",
)
@click.option("--tz", "zone", metavar="ZONE", help="The time zone of --at (default: sending.timezone).")
@click.option("--now", "now", is_flag=True, help="Start a scheduled or missed dispatch of the issue now.")
@click.option(
    "--by", "by", metavar="NAME", help="Who writes the dispatch (default: git's user, else the login)."
)
@click.option(
    "--route",
    default=None,
    metavar="NAME",
    help="Send through this [smtp.routes.NAME] (default: the list's).",
)
@SKIP_CHECKS
@pass_state
def send_command(
    state: State,
    name: str,
    list_name: str,
    yes: bool,
    dry_run: bool,
    again: bool,
    resend_unknown: bool,
    retry_policy: bool,
    at: str | None,
    zone: str | None,
    now: bool,
    by: str | None,
    route: str | None,
    skip_checks: bool,
) -> None:
    """Dispatch an issue to a list; run it again to resume after a stop or a crash.

    The dispatch and one delivery per recipient are written first, in one
    transaction (the rendered issue and the recipients are frozen: later edits
    change nothing); then the messages go out with a progress line. Nobody gets
    two copies: a message that got no answer from the server, or was in flight
    when a process died, is reported as unknown and sent again only with
    --resend-unknown. Messages refused by policy (5.7.x: SPF, DKIM, reputation)
    are sent again only with --retry-policy. To a real server, mailout
    doctor's checks run first, and an error stops the send before anything
    is written (--skip-checks sends anyway; --dry-run prints them as
    warnings). `mailout worker` resumes a dispatch without the checks: send
    ran them when it wrote the dispatch.

    With --at the dispatch is written and frozen now, and `mailout worker`
    starts it at that instant (a wall-clock time in sending.timezone or --tz;
    one that a daylight-saving change skips or repeats is refused). A dispatch
    no worker started within sending.max_lateness of its instant is missed:
    --now sends it (or a scheduled one early); --at again moves it. With
    sending.require_approval, a dispatch starts only once approved.

    \b
    Example:
        mailout send 2019-01 --list members
        mailout send 2019-01 --list members --at "2019-02-12 09:00" --tz Europe/Brussels
        mailout send 2019-01 --list members --now
        mailout send 2019-01 --list members --resend-unknown
    """
    if again and (resend_unknown or retry_policy):
        raise click.UsageError(
            "--again writes a new dispatch to everyone; --resend-unknown and --retry-policy take up the last one"
        )
    if at is not None and (now or resend_unknown or retry_policy):
        raise click.UsageError(
            "--at schedules a dispatch; it goes with neither --now, --resend-unknown nor --retry-policy"
        )
    if zone is not None and at is None:
        raise click.UsageError("--tz goes with --at")
    settings = state.settings
    instant = instants.parse(at, zone or settings.sending.timezone, clock.SYSTEM.now()) if at else None
    state.settings.mailing_list(list_name)  # an unknown list is the first thing to say
    if route:
        state.settings.route(route)
    issue = state.issue(name)  # then an unknown issue, before any DNS question
    state.signer()  # refuse early, before any work: every message needs signed links
    if not skip_checks:
        # Before the plan: nothing is written on refusal. A dry run writes nothing anyway: it
        # shows the errors as warnings, then the plan.
        _check_before_sending(state, refuse=not dry_run)
    plan = dispatching.plan(
        state.engine(),
        state.settings,
        issue,
        list_name,
        again=again,
        resend_unknown=resend_unknown,
        retry_policy=retry_policy,
        at=instant,
        by=current_operator(by),
        now=now,
        route=route,
    )
    if plan.resume is not None:
        if again:
            # Two dispatches of one issue to one list at once would send everyone two copies.
            click.secho(
                f"--again ignored: dispatch {plan.resume.dispatch_id} of {plan.issue} to '{plan.list_name}'"
                " is not finished; it is taken up instead (run --again once it is)",
                fg="yellow",
                err=True,
            )
        _print_resume(plan, state.settings.sending.timezone)
    else:
        _print_plan(plan)
    if plan.scheduled_at is not None and plan.resume is None:
        click.echo(f"at:         {instants.show(plan.scheduled_at, settings.sending.timezone)}")
    if dry_run:
        click.echo("dry run: nothing was written or sent")
        return
    if not yes:
        if plan.resume is None:
            when = (
                f" at {instants.show(plan.scheduled_at, settings.sending.timezone)}"
                if plan.scheduled_at
                else ""
            )
            click.confirm(f"Send to {plan.recipients:,} recipients{when}?", abort=True)
        elif plan.resume.waiting is not None and plan.resume.reschedule is None:
            click.confirm(f"Start dispatch {plan.resume.dispatch_id} now?", abort=True)
        for question in _resend_questions(plan):
            click.confirm(question, abort=True)
    started = dispatching.start(state.engine(), state.settings, plan, now=clock.SYSTEM.now())
    if started.created:
        click.echo(f"dispatch {started.dispatch_id}: {started.total:,} deliveries queued")
    if started.scheduled_at is not None:
        click.echo(
            f"dispatch {started.dispatch_id}: scheduled for"
            f" {instants.show(started.scheduled_at, settings.sending.timezone)}; `mailout worker` starts it"
            f" then (`mailout schedule list` shows it, `mailout schedule cancel {started.dispatch_id}` cancels it)"
        )
        return
    if not started.started:
        click.secho(
            f"dispatch {started.dispatch_id} waits for approval: {safe(started.waiting or 'not approved')}",
            fg="yellow",
            err=True,
        )
        click.echo(
            f"once approved (`mailout approve {plan.issue} --list {plan.list_name}`, by someone else),"
            f" `mailout worker` or `mailout send {plan.issue} --list {plan.list_name}` starts it"
        )
        raise click.exceptions.Exit(NOT_FINISHED)
    elif started.joined:
        click.echo(
            f"dispatch {started.dispatch_id} of {plan.issue} to '{plan.list_name}' was written by another"
            " send a moment ago; joining it (nobody gets two copies)"
        )
    if resend_unknown:
        click.echo(f"{started.requeued:,} unknown deliveries queued again")
    if retry_policy:
        click.echo(f"{started.retried:,} deliveries refused by policy queued again")
    if run_dispatch(state, started.dispatch_id, started.total).ending not in DONE:
        raise click.exceptions.Exit(NOT_FINISHED)


def _json(value: object) -> str:
    """Return ``value`` (dataclasses, times) as indented JSON."""

    def default(item: object) -> object:
        if isinstance(item, dt.datetime):
            return item.isoformat()
        raise TypeError(f"{type(item).__name__} is not JSON")

    return json.dumps(value, indent=2, default=default)


def _print_overview(state: State, summaries: list[Summary]) -> None:
    click.echo(
        f"{'id':>4} {'issue':<16} {'list':<10} {'created':<17} {'total':>7} {'sent':>7} {'failed':>7}  state"
    )
    for s in summaries:
        click.echo(
            f"{s.id:>4} {s.issue:<16} {s.list:<10} {s.created.isoformat()[:16]:<17} {s.total:>7,}"
            f" {s.counts['sent']:>7,} {s.counts['failed']:>7,}  {_state_line(s, state.settings.sending.timezone)}"
        )
    if any(s.segment == Segment.PUBLIC for s in summaries):
        click.echo(f"archive: {Links(state.settings).archive()} (answered by `mailout serve`)")


def _state_line(summary: Summary, zone: str) -> str:
    """Return ``scheduled 2019-02-12 09:00 CET (08:00 UTC)``: the state, with its instant when it has one."""
    if summary.state in (DispatchState.SCHEDULED, DispatchState.MISSED) and summary.scheduled:
        return f"{summary.state} {instants.show(summary.scheduled, zone)}"
    if summary.state is DispatchState.CANCELLED and summary.cancelled:
        return f"{summary.state} {instants.show(summary.cancelled, zone)}"
    return str(summary.state)


def _print_timeline(report: Report, zone: str) -> None:
    """Say when it was scheduled for, started, missed or cancelled, on the team's clock, and what next."""
    send = f"mailout send {report.issue} --list {report.list}"
    if report.created_by:
        click.echo(f"written by: {safe(report.created_by)}")
    if report.scheduled:
        click.echo(f"scheduled for: {instants.show(report.scheduled, zone)}")
    if report.started:
        click.echo(f"started: {instants.show(report.started, zone)}")
    if report.missed:
        click.echo(
            f"missed: no worker started it within sending.max_lateness (seen {instants.show(report.missed, zone)})"
        )
    if report.cancelled:
        click.echo(f"cancelled: {instants.show(report.cancelled, zone)}")
    if report.state is DispatchState.MISSED:
        click.echo(f"`{send} --now` sends it now; `mailout schedule cancel {report.id}` cancels it")
    elif report.state is DispatchState.SCHEDULED:
        click.echo(f"`mailout worker` starts it then; `{send} --now` sends it now")
    elif report.state is DispatchState.AWAITING_APPROVAL:
        click.echo(
            f"`mailout approve {report.issue} --list {report.list}` (by someone else), then `mailout worker`"
        )


def _print_report(report: Report, zone: str) -> None:
    click.echo(f"dispatch {report.id}: {report.issue} to '{report.list}' ({report.state})")
    click.echo(f"subject: {report.subject}")
    _print_timeline(report, zone)
    for status, n in report.counts.items():
        click.echo(f"  {status:<9}{n:>9,}")
    click.echo(f"  {'total':<9}{report.total:>9,}")
    click.echo(_adds_up(report))
    if len(report.languages) > 1 or any(report.languages):
        click.echo(f"languages: {_per_language(report.languages)}")
    if report.seconds:
        click.echo(f"time: {report.seconds:,.0f} s, {report.rate:,.1f} messages/s")
    click.echo(
        _history("signed", report.signing, report.done, lambda s: f"signed: {s}" if s else "not signed")
    )
    click.echo(_history("envelope sender", report.envelope_sender, report.done, "envelope sender: {}".format))
    if report.route or report.routes or report.route_changes:
        through = ", ".join(f"{n:,} through {name or '[smtp]'}" for name, n in report.routes.items())
        click.echo(f"route: {report.route or '[smtp]'}" + (f" ({through})" if through else ""))
        for line in report.route_changes:
            click.echo(f"  {safe(line)}")
    if report.approval:
        click.echo(safe(report.approval))
    if report.paused_reason:
        click.echo(f"paused: {report.paused_reason}")
    click.echo(
        f"reports by mail (mailout bounces process): {report.bounced:,} bounced, {report.complained:,} complained"
    )
    if report.failures:
        click.echo("failures and deferrals by server reply:")
        for failure in report.failures:
            click.echo(f"  {failure.count:>7,}  {safe(failure.reply)}")
    _print_refused(report)
    if report.unknown:
        command = f"mailout send {report.issue} --list {report.list} --resend-unknown"
        click.echo(
            "unknown (no answer from the server after the whole message, or in flight when a process died:"
            f" they may have it; `{command}` sends them again):"
        )
        for email in report.unknown:
            click.echo(f"  {email}")


def _history(what: str, runs: tuple[str, ...] | None, done: int, show: Callable[[str], str]) -> str:
    """Say what the dispatch's runs used: the latest, then the earlier ones that differed."""
    if runs is None:
        why = "sent before mailout recorded it" if done else "no send run has started"
        return f"{what}: unknown ({why})"
    latest = safe(show(runs[-1]))
    if len(runs) == 1:
        return latest
    return f"{latest} (earlier runs: {'; '.join(safe(show(r)) for r in runs[:-1])})"


@click.command("status")
@click.argument("dispatch_id", required=False, type=int, metavar="[DISPATCH]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
@pass_state
def status_command(state: State, dispatch_id: int | None, as_json: bool) -> None:
    """Show recent dispatches, or one dispatch: counts, rate, failures, unknowns.

    A dispatch not started shows as scheduled, missed or awaiting approval, a
    cancelled one as cancelled, each with its instant in sending.timezone.

    \b
    Example:
        mailout status 3 --json
    """
    # A dispatch no worker started in time is missed whether or not a worker has looked.
    dispatching.mark_missed(state.engine(), state.settings, clock.SYSTEM.now())
    if dispatch_id is None:
        summaries = dispatching.overview(state.engine())
        if as_json:
            click.echo(_json([asdict(s) for s in summaries]))
        else:
            _print_overview(state, summaries)
        return
    report = dispatching.report(state.engine(), dispatch_id)
    if as_json:
        click.echo(_json(asdict(report)))
    else:
        _print_report(report, state.settings.sending.timezone)
