"""The routes: unsubscribe, the archive, the team's preview; and the headers every page gets."""

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

from .. import archive
from ..db import reader
from ..errors import IssueError, MailoutError
from ..issues import ISSUE_FILE, Issue, find_issue, is_slug, load_issue
from ..links import PRIVATE_PICTURES, SampleToken
from ..models import Dispatch, MailingList, Source, Subscriber
from ..net import is_loopback
from ..preview import sample_recipient
from ..render import private_images, render_issue
from ..segments import Segment
from ..subscribers import unsubscribe_by_link
from ..tokens import Purpose
from . import Mailout

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


def page(template: str, status: int = 200, *, policy: str = _OWN_PAGE, **context: Any) -> Response:
    context.setdefault("css_url", url_for("static", filename="mailout.css"))
    html = render_template(template, newsletter=mailout().settings.newsletter, **context)
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
    response = page("mailout/message.html", 503, title="Please try again", text="The service is busy.")
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
    # The same answer for a forged, truncated, foreign or unknown token: nothing tells them apart.
    return page("mailout/unsubscribe_invalid.html", 404, title="This link is not valid")


def mask(address: str) -> str:
    """Return ``address`` with most of its local part hidden: enough to recognise, not to harvest."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}{'•' * min(max(len(local) - 1, 3), 8)}@{domain}"


@blueprint.get("/unsubscribe/")
def unsubscribe_help() -> Response:
    return page("mailout/unsubscribe_help.html", title="Unsubscribe")


@blueprint.get("/unsubscribe/<token>")
def unsubscribe_form(token: str) -> Response:
    """Ask for confirmation. A GET never unsubscribes: mail scanners open every link."""
    if token in _SAMPLE_TOKENS:
        return page("mailout/message.html", title="A sample link", text=_SAMPLE_TEXT)
    found = _recipient(token)
    if found is None:
        return _invalid_link()
    person, lst = found
    # The same page whether or not they are still subscribed: the link reveals nothing.
    response = page(
        "mailout/unsubscribe_form.html",
        title="Unsubscribe",
        address=mask(person.email),
        list=lst,
        action=url_for("mailout.unsubscribe_post", token=token),
    )
    response.headers["X-Robots-Tag"] = "noindex"
    return response


_SAMPLE_TEXT = (
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
        return page("mailout/message.html", title="A sample link", text=_SAMPLE_TEXT)
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
    return page(
        "mailout/unsubscribed.html",
        title="You are unsubscribed",
        list_name=done.list_description or done.list_name,
        every_list=every_list,
    )


# --- the archive -----------------------------------------------------------------


@blueprint.get("/issues/")
def archive_index() -> Response:
    with session() as s:
        issues = archive.archived_issues(s)
    response = page(
        "mailout/archive.html",
        title=f"{mailout().settings.newsletter.name}: past issues",
        issues=issues,
        issue_url=lambda slug: url_for("mailout.issue_page", slug=slug),
    )
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@blueprint.get("/issues/<slug>")
def issue_page(slug: str) -> Response:
    """The public variant; with ``?t=``, the member variant for the member the token names."""
    token = request.args.get("t")
    if token is None:
        return _public_issue_page(slug)
    state = mailout()
    links = state.links
    with session() as s:
        claim = state.signer.verify(Purpose.VIEW, token)
        found = archive.member_dispatch(s, slug, claim) if claim is not None else None
        if found is None:
            # Forged, foreign, or not this person's issue: one answer, and never the members' text.
            public = archive.public_dispatch_key(s, slug) is not None
            return page(
                "mailout/view_invalid.html",
                403,
                title="This link is not valid",
                public_url=url_for("mailout.issue_page", slug=slug) if public else None,
            )
        html = archive.member_page(*found, links)
    html = html.replace(links.pictures(slug), url_for("mailout.issue_page", slug=slug) + "/")
    response = Response(html, 200, mimetype="text/html")
    response.headers["Content-Security-Policy"] = _ISSUE_PAGE
    # A member's own page: never kept by a cache, never by this app's.
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def _public_issue_page(slug: str) -> Response:
    """The public page of the issue's newest public dispatch, from the app's cache when it has it.

    A dispatch's page never changes: it is made once and kept under the dispatch's
    number and random key. Which dispatch is the issue's newest public one is looked
    up at most once every ``NEWEST_SECONDS``.
    """
    state = mailout()
    found = state.newest.get(slug, lambda: _newest_public(slug))
    if found is None:
        return page("mailout/message.html", 404, title="No such issue", text=_NO_ISSUE)
    # The page's own address is part of it (the pictures' links): behind two mount points,
    # two entries.
    cached = state.pages.get((*found, request.script_root))
    if cached is None:
        with session() as s:
            dispatch = archive.public_dispatch(s, slug)  # the newest now, whatever was known
            if dispatch is None:
                return page("mailout/message.html", 404, title="No such issue", text=_NO_ISSUE)
            html = archive.public_page(dispatch, state.links)
            key = (dispatch.id, dispatch.key, request.script_root)
        html = html.replace(state.links.pictures(slug), url_for("mailout.issue_page", slug=slug) + "/")
        cached = state.pages.put(key, html.encode("utf-8"))
    if request.if_none_match.contains_weak(cached.etag):
        response = Response(status=304)
    else:
        response = Response(cached.body, 200, mimetype="text/html")
    response.set_etag(cached.etag)
    response.headers["Content-Security-Policy"] = _ISSUE_PAGE
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def _newest_public(slug: str) -> tuple[int, str] | None:
    with reader(mailout().engine).connect() as conn:
        return archive.public_dispatch_key(conn, slug)


_NO_ISSUE = "There is no issue at this address in the archive."


def public_images(slug: str) -> frozenset[str]:
    """Return the pictures anyone may load for ``slug``.

    Those its public dispatches load, and those the public items of its issue file
    show now: test messages go out before any dispatch, and must show their pictures.
    """
    state = mailout()
    prefix = state.links.pictures(slug)
    with session() as s:
        pages = s.scalars(
            select(Dispatch.html).where(Dispatch.issue == slug, Dispatch.segment == Segment.PUBLIC)
        ).all()
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
        "mailout/message.html", 401, title="Password needed", text="The preview needs the team's password."
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
    """Every variant side by side at desktop and mobile width, rendered from the file as it is now."""
    settings = mailout().settings
    try:
        issue = _load(slug)
        variants = render_issue(issue, settings)
    except IssueError as exc:
        return page(
            "mailout/preview_error.html",
            422,
            title=f"Preview: {slug}",
            problems=[str(p) for p in exc.problems],
        )
    except MailoutError as exc:
        return page("mailout/preview_error.html", 422, title=f"Preview: {slug}", problems=[str(exc)])
    recipient = sample_recipient(settings, issue)
    base = mailout().links.pictures(issue.slug)
    files = url_for("mailout.preview_page", slug=slug) + "/files/"
    shown = []
    default = issue.variant_languages(settings.newsletter.language)[0]
    for (segment, language), variant in variants.items():
        html, text = variant.personalize(recipient)
        shown.append(
            {
                "segment": segment if language == default else f"{segment}-{language}",
                "label": ("Members" if segment is Segment.MEMBER else "Public")
                + ("" if language == default else f" ({language})"),
                "subject": variant.subject,
                "html": html.replace(base, files),
                "text": text,
                "html_bytes": len(html.encode()),
                "text_bytes": len(text.encode()),
                "items_shown": variant.items_shown,
                "items_hidden": variant.items_hidden,
                "warnings": [str(w) for w in variant.warnings],
            }
        )
    return page(
        "mailout/preview.html",
        title=f"Preview: {slug}",
        slug=slug,
        variants=shown,
        clip_bytes=settings.preview.html_warn_bytes,
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
