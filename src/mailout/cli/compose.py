"""Commands that compose: start and check issues, preview them, show templates."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click

from ..errors import DatabaseError, MailoutError, Severity
from ..issues import find_issue
from ..paths import display_path
from ..preview import all_warnings, write_preview
from ..render import BUILTIN_TEMPLATES, render_issue
from ..workspace import new_issue, start_translation
from .state import State, pass_state
from .terminal import safe


@click.group()
def issue() -> None:
    """Start and check issues (one folder per issue under issues/)."""


@issue.command("new")
@click.argument("slug")
@click.option(
    "--translate",
    metavar="LANG",
    help="Start a translation of the existing issue SLUG: add LANG to its languages and copy"
    " the default language's text into LANG, each copy marked '# untranslated'.",
)
@pass_state
def issue_new(state: State, slug: str, translate: str | None) -> None:
    """Write the skeleton of a new issue, or start a translation of one.

    \b
    Example:
        mailout issue new 2019-02
        mailout issue new 2019-02 --translate fr
    """
    if translate is None:
        path = new_issue(state.settings.path("issues"), slug)
        click.echo(f"created {display_path(path)}; edit it, then run: mailout issue check {slug}")
        return
    path = find_issue(slug, state.settings.path("issues"))
    started = start_translation(path, translate, default_language=state.settings.newsletter.language)
    click.echo(
        f"{display_path(path)}: languages {', '.join(started.languages)}; copied {started.copied}"
        f" field{'s' if started.copied != 1 else ''} into '.{started.language}' keys marked"
        f" '# untranslated': translate each and delete its marker, then run: mailout issue check {slug}"
    )


@issue.command("check")
@click.argument("name", metavar="ISSUE")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@pass_state
def issue_check(state: State, name: str, strict: bool) -> None:
    """Validate an issue and render every variant; exit 1 on any error.

    \b
    Example:
        mailout issue check 2019-01
    """
    loaded = state.issue(name)
    variants = render_issue(loaded, state.settings)
    warnings = {str(w): w for v in variants.values() for w in v.warnings}
    for text in warnings:
        click.secho(safe(text), fg="yellow", err=True)
    items = sum(len(s.items) for s in loaded.sections)
    several = len({lang for _, lang in variants}) > 1
    sizes = ", ".join(
        f"{seg}{f' {lang}' if several else ''} {len(v.html.encode()) / 1000:.0f} KB"
        for (seg, lang), v in variants.items()
    )
    click.echo(
        f"{display_path(loaded.source)}: {items} items in {len(loaded.sections)} sections; {sizes};"
        f" {len(warnings)} warning{'s' if len(warnings) != 1 else ''}"
    )
    if loaded.languages:
        default, *others = loaded.languages
        described = [f"{default} (default)"]
        for language in others:
            missing = loaded.localized(language).untranslated_fields()
            described.append(
                f"{language} ({missing} field{'s' if missing != 1 else ''} in {default})"
                if missing
                else f"{language} (complete)"
            )
        click.echo(f"languages: {', '.join(described)}")
    if strict and warnings:
        raise click.exceptions.Exit(1)


@click.command()
@click.argument("name", metavar="ISSUE")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write to (default: build/ISSUE).",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the HTML of every variant in a browser.")
@pass_state
def preview(state: State, name: str, out: Path | None, open_browser: bool) -> None:
    """Write each variant as .html and .txt and show sizes and warnings.

    \b
    Example:
        mailout preview 2019-01 --open
    """
    loaded = state.issue(name)
    # With approvals in use, the grid says whether each list has these variants approved.
    engine = None
    if state.settings.sending.require_approval:
        try:
            engine = state.engine()
        except DatabaseError as exc:
            click.secho(f"warning: the grid cannot say what is approved: {safe(exc)}", fg="yellow", err=True)
    files = write_preview(loaded, state.settings, out, engine=engine)
    limit = state.settings.preview.html_warn_bytes
    click.echo(f"{'variant':<9} {'HTML':>9} {'text':>9} {'items':>6} {'hidden':>6} {'warnings':>8}  file")
    for f in files:
        size = f"{f.html_bytes / 1000:.1f} KB"
        click.echo(
            # "member", or "member-fr" for a language other than the issue's default
            f"{f.html_path.stem:<9} {size:>9} {f.text_bytes / 1000:>6.1f} KB {f.variant.items_shown:>6}"
            f" {f.variant.items_hidden:>6} {len(f.variant.warnings):>8}  {display_path(f.html_path)}"
            + (click.style("  over the clipping warning size", fg="yellow") if f.html_bytes > limit else "")
        )
    for warning in all_warnings(files):
        click.secho(safe(warning), fg="yellow" if warning.severity is Severity.WARNING else "red", err=True)
    names = ", ".join(p.name for f in files for p in (f.html_path, f.text_path))
    click.echo(f"Wrote {names} to {display_path(files[0].html_path.parent)}/")
    if open_browser:
        for f in files:
            webbrowser.open(f.html_path.resolve().as_uri())


@click.group()
def templates() -> None:
    """List and show the email templates (built-in or overridden by the workspace)."""


@templates.command("list")
@pass_state
def templates_list(state: State) -> None:
    """List every template and where it comes from.

    \b
    Example:
        mailout templates list
    """
    workspace = state.settings.path("templates")
    for path in sorted(BUILTIN_TEMPLATES.rglob("*.j2")):
        name = path.relative_to(BUILTIN_TEMPLATES).as_posix()
        origin = "workspace" if (workspace / name).is_file() else "built-in"
        click.echo(f"{name:<32} {origin}")


@templates.command("show")
@click.argument("name")
def templates_show(name: str) -> None:
    """Print a built-in template, to copy into templates/email/ and edit.

    \b
    Example:
        mailout templates show theme.mjml.j2 > templates/email/theme.mjml.j2
    """
    path = BUILTIN_TEMPLATES / name
    if not path.resolve().is_relative_to(BUILTIN_TEMPLATES.resolve()) or not path.is_file():
        raise MailoutError(f"no built-in template '{name}'; see `mailout templates list`")
    click.echo(path.read_text(encoding="utf-8"), nl=False)
