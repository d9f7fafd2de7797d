"""``mailout signup-form``: the sign-up form as an HTML snippet, to paste into a team's website."""

from __future__ import annotations

from html import escape

import click

from .. import signup
from ..config import Settings
from ..errors import MailoutError
from ..languages import canonical
from ..links import Links
from .state import State, pass_state

#: The fields ``POST /subscribe`` reads (the web app's sign-up routes): keep these names.
FIELDS = ("email", "name", "language", "lists", "website", "page")


def snippet(settings: Settings, list_name: str = "", language: str = "", page: str = "") -> str:
    """Return the form: a plain POST to mailout's sign-up page, no script, no outside resource."""
    offered = signup.signup_lists(settings)
    if not offered:
        raise MailoutError("no list is open to sign-up: set public_signup = true in a [lists.NAME] table")
    if list_name:
        chosen = [lst for lst in offered if lst.name == list_name]
        if not chosen:
            names = ", ".join(lst.name for lst in offered)
            raise MailoutError(f"--list {list_name}: not a list open to sign-up (open: {names})")
        offered = tuple(chosen)
    tag = ""
    if language:
        tag = canonical(language) or ""
        if not tag:
            raise MailoutError(f"--language '{language}' is not a language tag such as en, fr or pt-BR")
    action = Links(settings).signup_form(list_name, tag)
    consent = signup.consent_text(settings, tag or settings.newsletter.language)
    lines = [
        "<!-- Sign-up form of mailout. A plain form: no script, no cookie, nothing loaded from elsewhere.",
        "     It posts to mailout, which answers with its own page, the form filled in, where the",
        "     person presses the button once more; then a confirmation message is sent (double opt-in).",
        "     Change the words and the look as you like; keep the names of the fields.",
        '     "page": the address of the page this form is on (kept with the consent). -->',
        f'<form method="post" action="{escape(action)}" accept-charset="utf-8">',
        f'  <input type="hidden" name="page" value="{escape(page)}">',
        f'  <input type="hidden" name="language" value="{escape(tag or settings.newsletter.language)}">',
        '  <p><label>Email address<br><input type="email" name="email" required maxlength="254"'
        ' autocomplete="email"></label></p>',
        '  <p><label>Name (optional)<br><input type="text" name="name" maxlength="200"'
        ' autocomplete="name"></label></p>',
    ]
    if len(offered) == 1:
        lst = offered[0]
        lines.append(f'  <input type="hidden" name="lists" value="{escape(lst.name)}">')
    else:
        for lst in offered:
            label = escape(lst.description or lst.name)
            lines.append(
                f'  <p><label><input type="checkbox" name="lists" value="{escape(lst.name)}"> {label}</label></p>'
            )
    lines += [
        "  <!-- Left empty by people; robots fill it in, and then nothing is done. -->",
        '  <p style="position: absolute; left: -10000px; width: 1px; height: 1px; overflow: hidden;"'
        ' aria-hidden="true"><label>Leave this field empty'
        ' <input type="text" name="website" value="" tabindex="-1" autocomplete="off"></label></p>',
        f"  <p>{escape(consent)}</p>",
        '  <p><button type="submit">Subscribe</button></p>',
        "</form>",
    ]
    return "\n".join(lines) + "\n"


@click.command("signup-form")
@click.option(
    "--list",
    "list_name",
    default="",
    metavar="NAME",
    help="Only this list (default: every list open to sign-up).",
)
@click.option(
    "--language",
    default="",
    metavar="TAG",
    help="The language of mailout's pages and messages (default: newsletter.language).",
)
@click.option(
    "--page",
    default="",
    metavar="URL",
    help="The address of the page the form goes on (kept with each consent).",
)
@pass_state
def signup_form_command(state: State, list_name: str, language: str, page: str) -> None:
    """Print the sign-up form as HTML, to paste into the team's website.

    A plain HTML form that posts to mailout's sign-up page
    (newsletter.public_base_url/subscribe): no script, no cookie, nothing
    loaded from another site, so no CORS either. Browsers send a form POST to
    another site as they follow a link. A pasted form cannot carry the signed
    time token of mailout's own form (it would go stale on the page), so mailout
    answers it with its own sign-up page, the form filled in, and the person
    presses the button once more; the confirmation message (double opt-in)
    follows. The fields: email, name, language, lists (one per list, the list's
    name), website (a trap for robots: must stay empty, hidden) and page.

    The lists offered are those with public_signup = true in mailout.toml.

    \b
    Example:
        mailout signup-form --language fr --page https://efus.example/newsletter > form.html
    """
    click.echo(snippet(state.settings, list_name, language, page), nl=False)
