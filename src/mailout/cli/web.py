"""``mailout serve`` and ``mailout archive export``: the web side, locally and as static files."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import click

from .. import i18n
from ..archive import archived_issues, export_archive, index_entries, issue_versions
from ..db import transaction
from ..errors import MailoutError
from ..links import Links
from ..net import is_loopback
from ..paths import display_path
from ..web import PACKAGE, create_app, standalone_page
from ..web.server import make_server
from .state import State, pass_state
from .terminal import safe


@click.command("serve")
@click.option("--host", help="Address to listen on (default: web.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: web.port, 8025).")
@click.option(
    "--threads", type=click.IntRange(1, 64), help="Requests handled at once (default: web.threads, 4)."
)
@click.option(
    "--behind-proxy",
    is_flag=True,
    help="Requests come through a web server on this machine: the preview asks for the password.",
)
@pass_state
def serve_command(
    state: State, host: str | None, port: int | None, threads: int | None, behind_proxy: bool
) -> None:
    """Run the web app: unsubscribe links, the archive, the preview.

    It runs under waitress, a WSGI server made to face the internet, so what you
    start here is what you can run in production (behind a web server for https).
    On loopback (the default) the team's preview is open. Bound to another address,
    the preview asks for MAILOUT_PREVIEW_PASSWORD, and is off without one; so it
    does behind a web server on this machine (--behind-proxy).

    \b
    Example:
        mailout serve
        open http://127.0.0.1:8025/preview/
        mailout serve --behind-proxy --port 8025
    """
    settings = state.settings
    host = host or settings.web.host
    port = port or settings.web.port
    # Behind a proxy every request comes from loopback, and may name it as its host.
    local = is_loopback(host) and not behind_proxy
    app = create_app(settings, local=local)
    click.get_current_context().call_on_close(app.extensions["mailout"].engine.dispose)
    try:
        server = make_server(
            app, host, port, threads or settings.web.threads, proxy_hops=settings.web.proxy_hops
        )
    except OSError as exc:
        raise MailoutError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            " (is another `mailout serve` running? choose another with --port)"
        ) from None
    where = f"http://{host if ':' not in host else f'[{host}]'}:{server.effective_port}"
    click.echo(f"serving {settings.newsletter.name} at {where}/ (Ctrl-C to stop)")
    here = Links(settings, base_url=where)
    click.echo(f"  archive:  {here.archive()}")
    if local or settings.web.preview_password:
        protected = "" if local else " (password: MAILOUT_PREVIEW_PASSWORD)"
        click.echo(f"  preview:  {here.preview()}{protected}")
    else:
        why = "behind a proxy" if behind_proxy else "bound beyond loopback"
        click.echo(f"  preview:  off ({why}: set MAILOUT_PREVIEW_PASSWORD to turn it on)")
    public = Links(settings).base
    base = urlsplit(public)
    default_port = 443 if base.scheme == "https" else 80
    if base.hostname and is_loopback(base.hostname) and (base.port or default_port) != server.effective_port:
        click.secho(
            f"warning: messages link to {public}, not to this server;"
            " set newsletter.public_base_url or --port to match",
            fg="yellow",
            err=True,
        )

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        # Let requests in progress (an unsubscribe being recorded) finish, then close.
        server.task_dispatcher.shutdown(cancel_pending=False, timeout=10)
        server.close()
        # The confirmation messages still queued go out before the process ends.
        app.extensions["mailout.signup"].close()
        click.echo("stopped")


@click.group("archive")
def archive_group() -> None:
    """The public archive of sent issues."""


@archive_group.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@pass_state
def export_command(state: State, directory: Path) -> None:
    """Write the public archive as static files, for a website without Python.

    Writes DIRECTORY/index.html and DIRECTORY/<issue>/index.html with the issue's
    pictures: the public version of every issue sent to a public list, as sent.
    An issue in several languages also gets DIRECTORY/<issue>/<language>/index.html
    for each of them.

    \b
    Example:
        mailout archive export build/archive
    """
    settings = state.settings
    engine = state.engine()
    # Public pages carry no one's token: no key is needed to write them.
    signer = state.signer() if settings.secret_key else None
    language = settings.newsletter.language
    with transaction(engine) as session:
        issues = archived_issues(session)
        # The index in the newsletter's language; each issue offers its other languages' pages.
        entries = index_entries(issues, lambda entry: issue_versions(session, entry, language), language)
        title = i18n.gettext(settings, language, "%(name)s: past issues", "web")
        index = standalone_page(
            "mailout/archive.html",
            settings,
            language=language,
            title=title % {"name": settings.newsletter.name},
            entries=entries,
            css_url="mailout.css",
            issue_url=Links.exported_issue,
            switcher=[],
            choice=language,
            date=i18n.format_date,
            language_name=i18n.language_name,
        )
        result = export_archive(
            session, settings, signer, directory, index, {"mailout.css": PACKAGE / "static" / "mailout.css"}
        )
    for missing in result.missing_images:
        click.secho(
            f"warning: picture {safe(missing)} is not in the issue's folder any more", fg="yellow", err=True
        )
    count = len(result.issues)
    click.echo(f"wrote {count} issue{'s' if count != 1 else ''} to {display_path(directory / 'index.html')}")
    click.echo(f"the web app (`mailout serve`) shows it at {Links(settings).archive()}")
