"""The routes: unsubscribe, the archive, the team's preview; and the headers every page gets.

Every page answers in a language: the unsubscribe pages in the one their link
carries (``?lang=``), an issue's page in the one its address names
(``/issues/<slug>/<language>``), the index in the visitor's choice. See ``words``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from werkzeug.routing import BaseConverter

from .. import archive, i18n
from ..db import reader
from ..errors import IssueError, MailoutError
from ..issues import ISSUE_FILE, Issue, find_issue, is_slug, load_issue
from ..languages import canonical, choose
from ..links import PRIVATE_PICTURES, SampleToken
from ..models import Dispatch, MailingList, Source, Subscriber
from ..net import is_loopback
from ..preview import list_approvals, preview_variants
from ..render import private_images
from ..segments import Segment
from ..subscribers import unsubscribe_by_link
from ..tokens import Purpose
from . import Mailout
from .words import N_, strong

blueprint = Blueprint("mailout", __name__)

# Content-Security-Policy for each kind of page. None loads anything from another
# site; none runs a script.
_OWN_PAGE = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self';"
    " base-uri 'none'; frame-ancestors 'none'"
)
# An issue page is the email's HTML: every style is inline, and there is nothing to post.
_ISSUE_PAGE = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'none';"
    " base-uri 'none'; frame-ancestors 'none'"
)
# The preview shows each variant in an iframe with ``srcdoc``, which inherits this policy.
_PREVIEW_PAGE = (
    "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'none';"
    " base-uri 'none'; frame-ancestors 'none'"
)
#: The pseudo-tokens in test messages and previews, which unsubscribe nobody.
_SAMPLE_TOKENS = frozenset(SampleToken)


def mailout() -> Mailout:
    found: Mailout = current_app.extensions["mailout"]
    return found


@contextmanager
def session() -> Iterator[Session]:
    """A session for pages, which only read: on SQLite that takes no lock.

    Only the unsubscribe POST writes, through ``Mailout.writes``.
    """
    with Session(reader(mailout().engine), expire_on_commit=False) as s, s.begin():
        yield s


class LanguageConverter(BaseConverter):
    """A language tag in an address (``fr``, ``pt-BR``): no dot, so never one of an issue's pictures."""

    regex = r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*"


def requested_language() -> str:
    """Return the language of the pages for this request's ``?lang=`` (checked; else the default)."""
    return mailout().words.language(request.args.get("lang"))


def page(
    template: str, status: int = 200, *, policy: str = _OWN_PAGE, language: str | None = None, **context: Any
) -> Response:
    """Return one of the app's own pages in ``language`` (default: the request's ``?lang=``)."""
    state = mailout()
    context.setdefault("css_url", url_for("static", filename="mailout.css"))
    context.update(state.words.context(language or requested_language()))
    context.setdefault("strong", strong)
    html = render_template(template, newsletter=state.settings.newsletter, **context)
    response = Response(html, status)
    response.headers["Content-Security-Policy"] = policy
    return response


@blueprint.after_app_request
def security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", _OWN_PAGE)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    # Member pages carry a token in their address: no page tells another site where it came from.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@blueprint.app_errorhandler(OperationalError)
def database_unavailable(exc: OperationalError) -> Response:
    # A locked or unreachable database: the mail client's one-click POST is retried on a 503.
    current_app.logger.warning("database unavailable: %s", exc.orig)
    _ = mailout().words.translator(requested_language())
    response = page("mailout/message.html", 503, title=_("Please try again"), text=_("The service is busy."))
    response.headers["Retry-After"] = "30"
    return response


@blueprint.get("/")
def home() -> Response:
    return redirect(url_for("mailout.archive_index"))  # type: ignore[return-value]


@blueprint.get("/favicon.ico")
def favicon() -> Response:
    # Browsers ask for it on every page; an empty answer keeps their consoles free of 404s.
    response = Response(status=204)
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


# --- unsubscribe ---------------------------------------------------------------


def _recipient(token: str) -> tuple[Subscriber, MailingList] | None:
    """Return the subscriber and list a valid unsubscribe token names, or None for any other token."""
    claim = mailout().signer.verify(Purpose.UNSUBSCRIBE, token)
    if claim is None:
        return None
    with session() as s:
        person = s.get(Subscriber, claim.subscriber_id)
        lst = s.get(MailingList, claim.list_id)
    return (person, lst) if person is not None and lst is not None else None


def _invalid_link() -> Response:
    # The same answer for a forged, truncated, foreign or unknown token: nothing tells them apart
    # (in each language, the same page).
    _ = mailout().words.translator(requested_language())
    return page("mailout/unsubscribe_invalid.html", 404, title=_("This link is not valid"))


def mask(address: str) -> str:
    """Return ``address`` with most of its local part hidden: enough to recognise, not to harvest."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}{'•' * min(max(len(local) - 1, 3), 8)}@{domain}"


@blueprint.get("/unsubscribe/")
def unsubscribe_help() -> Response:
    _ = mailout().words.translator(requested_language())
    return page("mailout/unsubscribe_help.html", title=_("Unsubscribe"))


def _sample_page() -> Response:
    _ = mailout().words.translator(requested_language())
    return page("mailout/message.html", title=_("A sample link"), text=_(_SAMPLE_TEXT))


@blueprint.get("/unsubscribe/<token>")
def unsubscribe_form(token: str) -> Response:
    """Ask for confirmation. A GET never unsubscribes: mail scanners open every link."""
    if token in _SAMPLE_TOKENS:
        return _sample_page()
    found = _recipient(token)
    if found is None:
        return _invalid_link()
    person, lst = found
    language = requested_language()
    _ = mailout().words.translator(language)
    # The same page whether or not they are still subscribed: the link reveals nothing.
    response = page(
        "mailout/unsubscribe_form.html",
        title=_("Unsubscribe"),
        address=mask(person.email),
        list=lst,
        # The checked language, never the parameter as given: the result page answers in it.
        action=url_for("mailout.unsubscribe_post", token=token, lang=language),
    )
    response.headers["X-Robots-Tag"] = "noindex"
    return response


_SAMPLE_TEXT = N_(
    "This is the unsubscribe link of a test message or a preview. In a real message,"
    " it leads to a page where the reader confirms with one click."
)


def _is_one_click() -> bool:
    """Return whether this POST is RFC 8058's one-click: a body of ``List-Unsubscribe=One-Click``.

    The body decides, whatever the Content-Type says: mail programs send it form-encoded
    or as multipart, and some as ``text/plain`` (or with no type at all).
    """
    if request.form.get("List-Unsubscribe") == "One-Click":
        return True
    # Not a form as far as Werkzeug knows, so the body is still unread (at most MAX_CONTENT_LENGTH).
    fields = request.get_data(as_text=True).replace("&", " ").split()
    return "List-Unsubscribe=One-Click" in fields


@blueprint.post("/unsubscribe/<token>")
def unsubscribe_post(token: str) -> Response:
    """Unsubscribe: the page's button, or the mail client's RFC 8058 one-click POST.

    Answers 200 with no redirect, and is harmless to repeat.
    """
    if token in _SAMPLE_TOKENS:
        return _sample_page()
    state = mailout()
    claim = state.signer.verify(Purpose.UNSUBSCRIBE, token)
    if claim is None:
        return _invalid_link()
    one_click = _is_one_click()
    every_list = not one_click and request.form.get("scope") == "all"
    # One write at a time in this process on SQLite: see WriteQueue.
    with state.writes.transaction() as conn:
        done = unsubscribe_by_link(
            conn,
            claim.subscriber_id,
            claim.list_id,
            Source.ONE_CLICK if one_click else Source.LINK,
            every_list=every_list,
        )
    if done is None:
        return _invalid_link()
    _ = state.words.translator(requested_language())
    return page(
        "mailout/unsubscribed.html",
        title=_("You are unsubscribed"),
        list_name=done.list_description or done.list_name,
        every_list=every_list,
    )


# --- the archive -----------------------------------------------------------------


@blueprint.get("/issues/")
def archive_index() -> Response:
    """Every public issue once, in the visitor's choice: ``?lang=``, else Accept-Language, else the default."""
    state = mailout()
    default = state.settings.newsletter.language
    with session() as s:
        issues = archive.archived_issues(s)
        found = {entry.slug: _versions(s, entry, default) for entry in issues}
    offered = list(dict.fromkeys(v.language for versions in found.values() for v in versions))
    pool = list(dict.fromkeys([*offered, *state.words.languages]))
    asked = request.args.get("lang")
    choice = (
        choose(asked, pool, default) if asked else state.words.best(request.accept_languages, pool, default)
    )
    language = state.words.language(choice)
    _ = state.words.translator(language)
    entries = archive.index_entries(issues, lambda entry: found[entry.slug], choice)
    response = page(
        "mailout/archive.html",
        language=language,
        title=_("%(name)s: past issues", name=state.settings.newsletter.name),
        entries=entries,
        issue_url=lambda slug, tag: (
            url_for("mailout.issue_language_page", slug=slug, language=tag)
            if tag
            else url_for("mailout.issue_page", slug=slug)
        ),
        # The index in each language the issues are written in (a choice, so no hreflang).
        switcher=[(tag, url_for("mailout.archive_index", lang=tag)) for tag in offered]
        if len(offered) > 1
        else [],
        choice=choose(choice, offered, default) if offered else default,
        date=lambda value, tag: i18n.format_date(value, tag),
        language_name=i18n.language_name,
    )
    response.headers["Cache-Control"] = "public, max-age=300"
    response.vary.add("Accept-Language")
    return response


def _versions(s: Session, entry: archive.ArchivedIssue, default: str) -> tuple[archive.Version, ...]:
    """Return an archived issue's versions, read once per dispatch (a dispatch never changes)."""
    versions: tuple[archive.Version, ...] = mailout().versions.get(
        f"{entry.dispatch_id}:{entry.dispatch_key}", lambda: archive.issue_versions(s, entry, default)
    )
    return versions


@blueprint.get("/issues/<slug>")
def issue_page(slug: str) -> Response:
    """The public variant in the issue's default language; with ``?t=``, the member's variant."""
    return _issue(slug, None)


@blueprint.get("/issues/<slug>/<language:language>")
def issue_language_page(slug: str, language: str) -> Response:
    """The public variant in ``language``; with ``?t=``, the member's variant in it."""
    return _issue(slug, language)


def _issue(slug: str, language: str | None) -> Response:
    token = request.args.get("t")
    if token is None:
        return _public_issue_page(slug, language)
    state = mailout()
    links = state.links
    with session() as s:
        claim = state.signer.verify(Purpose.VIEW, token)
        found = archive.member_dispatch(s, slug, claim) if claim is not None else None
        if found is None:
            # Forged, foreign, or not this person's issue: one answer, and never the members' text.
            public = archive.public_dispatch_key(s, slug) is not None
            _ = state.words.translator(state.words.language(language))
            return page(
                "mailout/view_invalid.html",
                403,
                language=state.words.language(language),
                title=_("This link is not valid"),
                public_url=url_for("mailout.issue_page", slug=slug) if public else None,
            )
        dispatch, delivery = found
        variants = archive.variants(s, dispatch, state.settings.newsletter.language)
        # The link's language; without one (a link from before languages), the one the member
        # was sent; a language the dispatch has not: its default (the token is what matters here).
        chosen = choose(language or delivery.language or "", list(variants), next(iter(variants)))
        html = archive.member_page(variants[chosen], dispatch, delivery, links, chosen)
    html = html.replace(links.pictures(slug), url_for("mailout.issue_page", slug=slug) + "/")
    alternates = [
        archive.Alternate(tag, "", url_for("mailout.issue_language_page", slug=slug, language=tag, t=token))
        for tag in variants
    ]
    html = archive.with_languages(html, state.settings, chosen, alternates, None)
    response = Response(html, 200, mimetype="text/html")
    response.headers["Content-Security-Policy"] = _ISSUE_PAGE
    # A member's own page: never kept by a cache, never by this app's.
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def _public_issue_page(slug: str, language: str | None) -> Response:
    """The public page of the issue's newest public dispatch, from the app's cache when it has it.

    A dispatch's page never changes: it is made once and kept under the dispatch's
    number and random key, and the language. Which dispatch is the issue's newest
    public one is looked up at most once every ``NEWEST_SECONDS``.
    """
    state = mailout()
    tag = canonical(language) if language is not None else ""
    found = state.newest.get(slug, lambda: _newest_public(slug))
    if found is None or tag is None:
        return _no_issue(language)
    if tag and tag not in {v.language for v in _dispatch_versions(*found)}:
        # Not a language of this issue: no page, and no reading of the dispatch's pages for it.
        return _no_issue(language)
    # The page's own address is part of it (the pictures' links): behind two mount points,
    # two entries.
    cached = state.pages.get((*found, request.script_root, tag))
    if cached is None:
        with session() as s:
            dispatch = archive.public_dispatch(s, slug)  # the newest now, whatever was known
            if dispatch is None:
                return _no_issue(language)
            variants = archive.variants(s, dispatch, state.settings.newsletter.language)
            shown = tag or next(iter(variants))
            if shown not in variants:
                # Not a language of this issue: no such page (and nothing kept for it).
                return _no_issue(language)
            default = next(iter(variants))
            # The default language's page links to the issue's plain address, as before languages.
            html = archive.public_page(variants[shown], slug, "" if shown == default else shown, state.links)
            key = (dispatch.id, dispatch.key, request.script_root, tag)
        html = html.replace(state.links.pictures(slug), url_for("mailout.issue_page", slug=slug) + "/")
        alternates = [
            archive.Alternate(
                other,
                state.links.issue(slug, other),
                url_for("mailout.issue_language_page", slug=slug, language=other),
            )
            for other in variants
        ]
        html = archive.with_languages(html, state.settings, shown, alternates, state.links.issue(slug))
        cached = state.pages.put(key, html.encode("utf-8"))
    if request.if_none_match.contains_weak(cached.etag):
        response = Response(status=304)
    else:
        response = Response(cached.body, 200, mimetype="text/html")
    response.set_etag(cached.etag)
    response.headers["Content-Security-Policy"] = _ISSUE_PAGE
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def _dispatch_versions(dispatch_id: int, key: str) -> tuple[archive.Version, ...]:
    """Return the languages (with subjects) of a dispatch, read once per dispatch."""

    def read() -> tuple[archive.Version, ...]:
        with session() as s:
            dispatch = s.get(Dispatch, dispatch_id)
            default = mailout().settings.newsletter.language
            return archive.versions(s, dispatch, default) if dispatch is not None else ()

    versions: tuple[archive.Version, ...] = mailout().versions.get(f"{dispatch_id}:{key}", read)
    return versions


def _no_issue(language: str | None) -> Response:
    shown = mailout().words.language(language)
    _ = mailout().words.translator(shown)
    return page("mailout/message.html", 404, language=shown, title=_("No such issue"), text=_(_NO_ISSUE))


def _newest_public(slug: str) -> tuple[int, str] | None:
    with reader(mailout().engine).connect() as conn:
        return archive.public_dispatch_key(conn, slug)


_NO_ISSUE = N_("There is no issue at this address in the archive.")


def public_images(slug: str) -> frozenset[str]:
    """Return the pictures anyone may load for ``slug``.

    Those its public dispatches load, and those the public items of its issue file
    show now: test messages go out before any dispatch, and must show their pictures.
    """
    state = mailout()
    prefix = state.links.pictures(slug)
    with session() as s:
        dispatches = s.scalars(
            select(Dispatch).where(Dispatch.issue == slug, Dispatch.segment == Segment.PUBLIC)
        ).all()
        # Every language's public variant: a picture may differ by language.
        pages = [
            variant.html
            for dispatch in dispatches
            for variant in archive.variants(s, dispatch, state.settings.newsletter.language).values()
        ]
    names = {name for html in pages for name in archive.images_in(html, prefix)}
    try:
        issue = load_issue(find_issue(slug, state.settings.path("issues")))
    except MailoutError:
        pass  # no such issue file (any more), or one being edited: the dispatches' pictures only
    else:
        names |= set(issue.images()) - private_images(issue)
    return frozenset(names)


@blueprint.get("/issues/<slug>/<path:name>")
def issue_image(slug: str, name: str) -> Response:
    """A picture of a sent issue, never the issue file itself.

    Public pictures: those the public version loads. A members-only picture is
    published under ``m/<digest of its content>/``, an address only the members'
    version gives.
    """
    state = mailout()
    if not is_slug(slug):
        abort(404)
    if name.startswith(f"{PRIVATE_PICTURES}/"):
        path = archive.private_image_file(state.settings, slug, name)
        cache = "private, max-age=3600"
    else:
        # Unknown slugs are not cached: asking for many of them cannot fill the memory.
        names: frozenset[str] = state.images.get(slug, lambda: public_images(slug))
        path = archive.image_file(state.settings, slug, name) if name in names else None
        cache = "public, max-age=3600"
    if path is None:
        abort(404)
    response = send_file(path, max_age=3600)
    response.headers["Cache-Control"] = cache
    return response


# --- the team's preview ------------------------------------------------------------


@blueprint.before_request
def guard_preview() -> Response | None:
    if not request.path.startswith("/preview/"):
        return None
    state = mailout()
    if state.preview_open:
        # Open, but only under this machine's own names: a web page that rebinds its domain
        # to 127.0.0.1 (DNS rebinding) must not read unpublished issues through a team
        # member's browser.
        host = urlsplit(f"//{request.host}").hostname or ""
        if is_loopback(host):
            return None
        abort(403)
    password = state.settings.web.preview_password
    if not password:
        abort(404)  # off: bound beyond loopback with no password set
    given = request.authorization.password if request.authorization else None
    if given is not None and hmac.compare_digest(given.encode(), password.encode()):
        return None
    response = page(
        "mailout/message.html",
        401,
        language="en",
        title="Password needed",
        text="The preview needs the team's password.",
    )
    response.headers["WWW-Authenticate"] = 'Basic realm="mailout preview", charset="UTF-8"'
    return response


@blueprint.get("/preview/")
def preview_index() -> Response:
    folder = mailout().settings.path("issues")
    slugs = (
        sorted((p.parent.name for p in folder.glob("*/issue.yaml")), reverse=True) if folder.is_dir() else []
    )
    return page(
        "mailout/preview_index.html",
        language="en",
        title="Preview",
        slugs=slugs,
    )


def _load(slug: str) -> Issue:
    folder = mailout().settings.path("issues")
    # A folder whose name cannot be an issue's is loaded only to show why (the load refuses it).
    if not is_slug(slug) and slug not in {p.parent.name for p in folder.glob(f"*/{ISSUE_FILE}")}:
        abort(404)
    return load_issue(find_issue(slug, folder))


@blueprint.get("/preview/<slug>")
def preview_page(slug: str) -> Response:
    """Every variant (segment × language) side by side at desktop and mobile width, from the file as it is now."""
    settings = mailout().settings
    files = url_for("mailout.preview_page", slug=slug) + "/files/"
    try:
        issue = _load(slug)
        shown = preview_variants(issue, settings, files)
        approvals = list_approvals(mailout().engine, settings, issue.slug, shown)
    except IssueError as exc:
        return page(
            "mailout/preview_error.html",
            422,
            language="en",
            title=f"Preview: {slug}",
            problems=[str(p) for p in exc.problems],
        )
    except MailoutError as exc:
        return page(
            "mailout/preview_error.html", 422, language="en", title=f"Preview: {slug}", problems=[str(exc)]
        )
    return page(
        "mailout/preview.html",
        language="en",
        title=f"Preview: {slug}",
        slug=slug,
        variants=shown,
        approvals=approvals,
        sources={},
        clip_bytes=settings.preview.html_warn_bytes,
        index_url=url_for("mailout.preview_index"),
        policy=_PREVIEW_PAGE,
    )


@blueprint.get("/preview/<slug>/files/<path:name>")
def preview_file(slug: str, name: str) -> Response:
    """A picture of the issue being previewed (not yet published), only one the issue uses."""
    try:
        issue = _load(slug)
    except MailoutError:
        abort(404)
    name = archive.strip_private(name)
    if name not in issue.images():
        abort(404)
    path = archive.image_file(mailout().settings, slug, name)
    if path is None:
        abort(404)
    return send_file(path, max_age=0)
