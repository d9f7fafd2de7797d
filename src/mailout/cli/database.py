"""Commands for the database: create and upgrade its schema."""

from __future__ import annotations

import click

from ..db import safe_url, upgrade
from .state import State, pass_state


@click.group()
def db() -> None:
    """Create and upgrade the database (SQLite by default, or PostgreSQL)."""


@db.command("upgrade")
@pass_state
def db_upgrade(state: State) -> None:
    """Create the database schema, or upgrade it to this version of mailout.

    Safe to run any time: an up-to-date database is left as it is, and an
    upgrade keeps every row.

    \b
    Example:
        mailout db upgrade
    """
    url = state.settings.database_url()
    before, after = upgrade(url)
    where = safe_url(url)
    if before == after:
        click.echo(f"{where}: up to date (schema {after})")
    elif before is None:
        click.echo(f"{where}: created (schema {after})")
    else:
        click.echo(f"{where}: upgraded from schema {before} to {after}")
