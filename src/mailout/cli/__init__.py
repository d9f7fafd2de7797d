"""The ``mailout`` command line: parse, call one domain function, print.

Every ``MailoutError`` becomes a message on stderr and exit status 1; a
traceback means a bug in mailout, never a mistake of the user's.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..db import DatabaseUnavailable
from ..errors import IssueError, MailoutError
from ..paths import display_path
from ..workspace import init_workspace
from .approval import approve_command
from .bounces import bounces_group
from .compose import issue, preview, templates
from .database import db
from .dkim import dkim_group
from .doctor import doctor_command
from .schedule import schedule_group
from .sending import send_command, status_command, test_command
from .signup import signup_form_command
from .state import State
from .subscribers import subscribers
from .terminal import safe
from .web import archive_group, serve_command
from .worker import worker_command

#: The status a shell reports for a program stopped by a closed pipe (128 + SIGPIPE), as
#: `yes | head` gives: the reader left, nothing went wrong, and scripts can tell it apart.
PIPE_CLOSED = 141


def _quiet_stdout() -> None:
    """Point standard output at nothing: its last flush at exit must not fail a second time."""
    # Not a real file (a test runner's buffer): then there is nothing to flush into a pipe.
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class MailoutGroup(click.Group):
    """The root group: turns a ``MailoutError`` into a clean message and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except IssueError as exc:
            for problem in exc.problems:
                click.secho(safe(problem), fg="red", err=True)
            count = len(exc.problems)
            click.echo(f"{count} error{'s' if count != 1 else ''}", err=True)
            ctx.exit(1)
        except MailoutError as exc:
            click.secho(f"error: {safe(exc)}", fg="red", err=True)
            ctx.exit(1)
        except BrokenPipeError:
            # `mailout subscribers list | head`: the reader has what it wanted; say nothing.
            _quiet_stdout()
            ctx.exit(PIPE_CLOSED)
        except DatabaseUnavailable as exc:
            # A database gone away or locked for too long mid-command.
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            click.secho(f"error: database: {reason}", fg="red", err=True)
            ctx.exit(1)
        except OSError as exc:
            # A folder where a file should be, a read-only disk, a missing permission: the
            # user's to fix, so a clean message rather than a traceback.
            where = f"{exc.filename}: " if exc.filename else ""
            click.secho(f"error: {where}{exc.strerror or exc}", fg="red", err=True)
            ctx.exit(1)


def _parse_set(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    overrides = {}
    for value in values:
        key, sep, setting = value.partition("=")
        if not sep or "." not in key:
            raise click.BadParameter(f"expected TABLE.KEY=VALUE, e.g. sender.name=Efus; got {value!r}")
        overrides[key.strip()] = setting
    return overrides


@click.group(cls=MailoutGroup)
@click.version_option(__version__, prog_name="mailout")
@click.option(
    "-C", "--workspace", type=click.Path(file_okay=False, path_type=Path),
    help="Workspace folder (default: the nearest folder with a mailout.toml).",
)  # fmt: skip
@click.option(
    "--set", "overrides", multiple=True, callback=_parse_set, metavar="TABLE.KEY=VALUE",
    help="Override one setting for this run, e.g. --set newsletter.public_base_url=https://news.example.org",
)  # fmt: skip
@click.pass_context
def cli(ctx: click.Context, workspace: Path | None, overrides: dict[str, str]) -> None:
    """Compose, preview, test and dispatch an email newsletter.

    \b
    Example:
        mailout init my-newsletter && cd my-newsletter
        mailout preview first-issue
    """
    ctx.obj = State(workspace=workspace, overrides=overrides)


@cli.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.pass_obj
def init(state: State, directory: Path | None) -> None:
    """Create a workspace: mailout.toml, templates/email/, subscribers/, issues/.

    Existing files are never overwritten.

    \b
    Example:
        mailout init newsletter
    """
    directory = directory or state.workspace or Path(".")
    result = init_workspace(directory)
    for path in result.created:
        click.echo(f"created  {display_path(path)}")
    for path in result.kept:
        click.echo(f"kept     {display_path(path)} (exists)")
    click.echo(f"Next: cd {directory} && mailout preview first-issue")


for command in (
    issue,
    preview,
    templates,
    db,
    subscribers,
    test_command,
    send_command,
    approve_command,
    status_command,
    schedule_group,
    worker_command,
    serve_command,
    archive_group,
    dkim_group,
    doctor_command,
    bounces_group,
    signup_form_command,
):
    cli.add_command(command)


def main() -> None:
    """Run the command line."""
    try:
        cli(prog_name="mailout")
    except BrokenPipeError:  # the reader left outside a command (see MailoutGroup.invoke)
        _quiet_stdout()
        sys.exit(PIPE_CLOSED)
