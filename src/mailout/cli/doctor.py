"""``mailout doctor``: check the sending domain's DNS, the SMTP server and the signing key."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from .state import State, pass_state
from .terminal import safe

if TYPE_CHECKING:
    from ..doctor import Finding

# By the values of doctor.Status. The checks (and dnspython) are imported when a command
# runs them, not by every command.
SYMBOLS = {"ok": "✓", "error": "✗", "warning": "!", "skipped": "-"}
COLOURS = {"ok": "green", "error": "red", "warning": "yellow", "skipped": None}


def finding_line(finding: Finding) -> str:
    """Return one check's line: its symbol, id, what was found and, when there is one, the fix."""
    fix = f"; fix: {finding.fix}" if finding.fix else ""
    return safe(f"{SYMBOLS[finding.status]} {finding.id}: {finding.message}{fix}")


def print_findings(findings: Sequence[Finding], *, err: bool = False) -> None:
    for finding in findings:
        click.secho(finding_line(finding), fg=COLOURS[finding.status], err=err)


@click.command("doctor")
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON list (id, status, message, fix), for scripts."
)
@pass_state
def doctor_command(state: State, as_json: bool) -> None:
    """Check SPF, DKIM, DMARC, MX, the base URL, the SMTP server and the secret key.

    Each check prints one line: ✓ fine, ✗ an error, ! a warning, - skipped,
    with the record or setting that fixes it. Exits 1 on any error. A check
    can be switched off with doctor.skip in mailout.toml.

    \b
    Example:
        mailout doctor
        mailout --set doctor.nameservers=203.0.113.53 doctor --json
    """
    from ..doctor import Status, diagnose

    findings = diagnose(state.settings)
    errors = sum(f.status is Status.ERROR for f in findings)
    if as_json:
        click.echo(json.dumps([asdict(f) for f in findings], indent=2, ensure_ascii=False))
    else:
        print_findings(findings)
        warnings = sum(f.status is Status.WARNING for f in findings)
        fine = sum(f.status is Status.OK for f in findings)
        click.echo(
            f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''},"
            f" {fine} fine"
        )
    if errors:
        raise click.exceptions.Exit(1)
