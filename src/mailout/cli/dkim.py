"""Commands for DKIM: the DNS records that publish the signing keys."""

from __future__ import annotations

import click

from ..dkim import check, load_signer
from ..errors import ConfigError
from .state import State, pass_state
from .terminal import safe


@click.group("dkim")
def dkim_group() -> None:
    """DKIM signatures: what to publish in DNS for the keys of [dkim]."""


@dkim_group.command("record")
@pass_state
def record_command(state: State) -> None:
    """Print the DNS TXT record of each signing key, to publish before the first send.

    The record is printed as a zone file line; a DNS provider's form takes the
    name before "IN TXT" and the text between the quotes (joined, if it splits
    them itself).

    \b
    Example:
        mailout dkim record
    """
    settings = state.settings
    signer = load_signer(settings)
    if signer is None:
        raise ConfigError(
            "no DKIM key: set dkim.domain, dkim.selector and dkim.key_file (or dkim.key_env) in mailout.toml"
        )
    for warning in check(settings, signer):
        click.secho(f"warning: {safe(warning)}", fg="yellow", err=True)
    for key in signer.keys:
        click.echo(key.zone_line())
