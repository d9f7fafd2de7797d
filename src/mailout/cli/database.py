"""Commands for the database: create and upgrade its schema, back it up."""

from __future__ import annotations

from pathlib import Path

import click

from ..backup import backup, backup_before_upgrade
from ..db import safe_url, upgrade
from .state import State, pass_state


@click.group()
def db() -> None:
    """Create, upgrade and back up the database (SQLite by default, or PostgreSQL)."""


@db.command("upgrade")
@pass_state
def db_upgrade(state: State) -> None:
    """Create the database schema, or upgrade it to this version of mailout.

    Safe to run any time: an up-to-date database is left as it is, and an
    upgrade keeps every row. It runs in one transaction: an upgrade that fails
    changes nothing. A SQLite database is backed up first, beside it, when
    there is an upgrade to make.

    \b
    Example:
        mailout db upgrade
    """
    url = state.settings.database_url()
    where = safe_url(url)
    synchronous = state.settings.database.sqlite_synchronous
    saved = backup_before_upgrade(url, sqlite_synchronous=synchronous)
    if saved is not None:
        click.echo(f"{where}: backed up to {saved}")
    before, after = upgrade(url, sqlite_synchronous=synchronous)
    if before == after:
        click.echo(f"{where}: up to date (schema {after})")
    elif before is None:
        click.echo(f"{where}: created (schema {after})")
    else:
        click.echo(f"{where}: upgraded from schema {before} to {after}")


@db.command("backup")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@pass_state
def db_backup(state: State, file: Path | None, force: bool) -> None:
    """Copy the SQLite database to FILE, safely even while a dispatch is sending.

    FILE defaults to a new file beside the database, named after it and the
    time (UTC): mailout.backup-20261125T101500Z.db. An existing FILE is
    replaced only with --force. To restore: stop every mailout process, move
    the database and its -wal and -shm files aside, and copy the backup in
    its place (docs/database.md). For PostgreSQL, it prints the pg_dump
    command to run instead.

    \b
    Example:
        mailout db backup
        mailout db backup ~/backups/newsletter.db
    """
    url = state.settings.database_url()
    saved = backup(url, file, force=force)
    click.echo(f"{safe_url(url)}: backed up to {saved}")
