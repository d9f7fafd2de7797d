"""The reader's preference page: the signed link in every message's footer.

``/preferences/<token>`` (``tokens.Purpose.PREFERENCES``: subscriber id, list id)
works as the unsubscribe link does: a GET shows, only a POST changes, and a
forged, foreign or unknown token (or an erased person) gets the unsubscribe
link's 404 page, byte for byte. The form: name, the language of the messages,
the lists open to the reader (every list with ``public_signup``, and every list
they are on now, a members list included, which they may leave but never join
here), and "unsubscribe from everything". Each change is a consent event
(``subscribers.update_preferences``), written through the app's ``WriteQueue``.

Joining a list takes someone whose status is ``subscribed``: a person who left
everything, bounced or complained comes back only through the sign-up form's
double opt-in, and the page says so. No cookies, no scripts: the form carries
nothing but its fields, and the token is in the address it posts to.
"""

from __future__ import annotations

from flask import Response, request, url_for

from .. import i18n, signup
from ..db import reader
from ..links import SampleToken
from ..models import SubscriberStatus
from ..subscribers import InvalidSubscriber, Preferences, preferences_of, update_preferences
from ..tokens import Purpose
from .views import _invalid_link, blueprint, mailout, mask, page, requested_language
from .words import N_

_SAMPLE_TOKENS = frozenset(SampleToken)

#: Why someone receives nothing, by their status: the page says it.
_STATE = {
    SubscriberStatus.UNSUBSCRIBED: N_("This address receives nothing: it was unsubscribed from every list."),
    SubscriberStatus.BOUNCED: N_("This address receives nothing: messages to it came back undelivered."),
    SubscriberStatus.COMPLAINED: N_("This address receives nothing: a message to it was reported as spam."),
}
_SAMPLE_TEXT = N_(
    "This is the preference link of a test message or a preview. In a real message,"
    " it leads to the reader's own page: name, language and lists."
)
_BAD_NAME = N_("Please check the name: at most 200 characters, on one line.")


def _claim(token: str) -> tuple[int, int] | None:
    claim = mailout().signer.verify(Purpose.PREFERENCES, token)
    return (claim.subscriber_id, claim.list_id) if claim is not None else None


def _open_lists() -> list[str]:
    """Return the names of the lists open to sign-up (``public_signup``)."""
    return [entry.name for entry in mailout().settings.lists if entry.public_signup]


def _read(subscriber_id: int, list_id: int) -> Preferences | None:
    with reader(mailout().engine).connect() as conn, conn.begin():
        return preferences_of(conn, subscriber_id, list_id, _open_lists())


def _languages(current: str) -> list[tuple[str, str]]:
    """Return the language menu: (value, name) for each language the newsletter or the pages offer.

    Someone with no language of their own gets the newsletter's language: its entry
    keeps them so (value ""), so that saving the form changes nothing they did not touch.
    """
    settings = mailout().settings
    default = settings.newsletter.language
    tags = [default, *settings.newsletter.translations, *mailout().words.languages]
    if current:
        tags.append(current)
    return [
        ("" if tag == default and not current else tag, i18n.language_name(tag))
        for tag in dict.fromkeys(tags)
    ]


def _sample_page() -> Response:
    _ = mailout().words.translator(requested_language())
    return page("mailout/message.html", title=_("A sample link"), text=_(_SAMPLE_TEXT))


def _form(token: str, found: Preferences, *, status: int = 200, error: str = "") -> Response:
    language = requested_language()
    _ = mailout().words.translator(language)
    response = page(
        "mailout/preferences.html",
        status,
        title=_("Your preferences"),
        address=mask(found.email),
        person=found,
        subscribed=found.status is SubscriberStatus.SUBSCRIBED,
        state=_(_STATE[found.status]) if found.status in _STATE else "",
        languages=_languages(found.language),
        signup_url=mailout().links.signup_form(language=language),
        # Joining a list here is consent as on the sign-up form: the same text, recorded.
        consent=signup.consent_text(mailout().settings, language),
        error=_(error) if error else "",
        # The checked language, never the parameter as given.
        action=url_for("mailout.preferences_post", token=token, lang=language),
    )
    response.headers["X-Robots-Tag"] = "noindex"
    return response


@blueprint.get("/preferences/<token>")
def preferences_form(token: str) -> Response:
    """Show the reader's preferences. A GET changes nothing: mail scanners open every link."""
    if token in _SAMPLE_TOKENS:
        return _sample_page()
    claim = _claim(token)
    found = _read(*claim) if claim is not None else None
    if found is None:
        return _invalid_link()
    return _form(token, found)


@blueprint.post("/preferences/<token>")
def preferences_post(token: str) -> Response:
    """Save the form: each change a consent event; then a page that says what changed."""
    if token in _SAMPLE_TOKENS:
        return _sample_page()
    claim = _claim(token)
    found = _read(*claim) if claim is not None else None
    if claim is None or found is None:
        return _invalid_link()
    offered = {choice.id for choice in found.lists}
    chosen = set(request.form.getlist("list"))
    lists = {list_id: str(list_id) in chosen for list_id in offered}
    # A language the menu does not offer (a forged form) keeps the one they have.
    language = request.form.get("language", found.language)
    if language not in {value for value, _ in _languages(found.language)}:
        language = found.language
    state = mailout()
    try:
        # One write at a time in this process on SQLite: see WriteQueue.
        with state.writes.transaction() as conn:
            done = update_preferences(
                conn,
                *claim,
                name=request.form.get("name", found.name),
                language=language,
                lists=lists,
                leave_all=request.form.get("leave_all") == "1",
                # The page, never its token (the token is the reader's key to it).
                page=request.script_root + request.path.rpartition("/")[0] + "/",
                consent_text=signup.consent_text(state.settings, requested_language()),
                consent_language=requested_language(),
            )
    except InvalidSubscriber:
        return _form(token, found, status=422, error=_BAD_NAME)
    if done is None:
        return _invalid_link()
    names = {choice.name: choice.description or choice.name for choice in found.lists}
    shown = requested_language()
    _ = state.words.translator(shown)
    return page(
        "mailout/preferences_saved.html",
        title=_("Your preferences") if done.changed else _("Nothing changed"),
        done=done,
        joined=", ".join(names.get(n, n) for n in done.joined),
        left=", ".join(names.get(n, n) for n in done.left),
        refused=", ".join(names.get(n, n) for n in done.refused),
        signup_url=state.links.signup_form(language=shown),
        back_url=url_for("mailout.preferences_form", token=token, lang=shown),
    )
