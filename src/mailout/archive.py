"""The archive of sent issues: the pages behind "view in browser", and their static export.

A page is the variant exactly as it was frozen with its dispatch, filled in like
a message: the public page with no one's name, a member's page (reached only
through the signed link in that member's own message) with theirs. Nothing is
rendered again, so the archive shows what readers got, whatever happened to the
issue file since.

Only issues dispatched to a public list are in the public archive; an issue sent
to members only has no public page.

An issue written in several languages has a page per language, each the frozen
public variant of that language (``outbox.frozen_variants``): the pages name each
other with ``<link rel="alternate" hreflang>`` and show a switcher
(``with_languages``). Only public variants are read for public pages, in every
language.
"""

from __future__ import annotations

import datetime as dt
import hmac
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from markupsafe import Markup, escape
from sqlalchemy import Connection, and_, bindparam, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from . import i18n, outbox
from .config import Settings
from .errors import WorkspaceError
from .issues import is_slug
from .languages import canonical, choose
from .links import PRIVATE_PICTURES, Links
from .models import Delivery, DeliveryStatus, Dispatch
from .outbox import as_utc
from .render import DIGEST_LENGTH, Recipient, Variant, first_name, image_digest
from .segments import Segment
from .tokens import Claim, Signer

#: Picture files the web app and the export may publish from an issue's folder.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})
#: The delivery states in which a recipient may have the message, and so its links.
RECEIVED = (DeliveryStatus.SENT, DeliveryStatus.SENDING, DeliveryStatus.UNKNOWN)


@dataclass(frozen=True)
class ArchivedIssue:
    """One issue in the public archive."""

    slug: str
    subject: str
    preheader: str
    sent_at: dt.datetime
    #: The newest public dispatch's number and random key: what its versions are kept under.
    dispatch_id: int = 0
    dispatch_key: str = ""


@dataclass(frozen=True)
class Version:
    """An archived issue in one of its languages: what the index shows of it."""

    language: str
    subject: str
    preheader: str


def _published() -> ColumnElement[bool]:
    """Select the dispatches whose page is public: started, not cancelled (a scheduled one is not out yet)."""
    return and_(Dispatch.started_at.is_not(None), Dispatch.cancelled_at.is_(None))


def archived_issues(session: Session) -> list[ArchivedIssue]:
    """Return the issues dispatched to a public list, newest first.

    The subject is the newest public dispatch's; the date is the first one's.
    """
    rows = session.execute(
        select(
            Dispatch.issue,
            Dispatch.subject,
            Dispatch.preheader,
            Dispatch.started_at,  # the day it went out, not the day it was written (scheduled)
            Dispatch.id,
            Dispatch.key,
        )
        .where(Dispatch.segment == Segment.PUBLIC.value, _published())
        .order_by(Dispatch.id)
    ).all()
    first: dict[str, dt.datetime] = {}
    latest: dict[str, tuple[str, str, int, str]] = {}
    for slug, subject, preheader, started_at, id_, key in rows:
        assert started_at is not None, "only started dispatches are selected"
        first.setdefault(slug, as_utc(started_at))
        latest[slug] = (subject, preheader, int(id_), str(key))
    found = [
        ArchivedIssue(slug, subject, preheader, first[slug], id_, key)
        for slug, (subject, preheader, id_, key) in latest.items()
    ]
    return sorted(found, key=lambda entry: entry.sent_at, reverse=True)


def variants(session: Session | Connection, dispatch: Dispatch, default_language: str) -> dict[str, Variant]:
    """Return every language variant frozen with a dispatch, its default language first.

    ``default_language`` names the one variant of a dispatch frozen before mailout kept
    languages (``newsletter.language``).
    """
    default = canonical(default_language) or default_language
    return {
        language or default: variant
        for language, variant in outbox.frozen_variants(session, dispatch).items()
    }


def versions(session: Session, dispatch: Dispatch, default_language: str) -> tuple[Version, ...]:
    """Return a dispatch's subject and preheader in each of its languages, the default first."""
    return tuple(
        Version(language, variant.subject, variant.preheader)
        for language, variant in variants(session, dispatch, default_language).items()
    )


def public_dispatch(session: Session, slug: str) -> Dispatch | None:
    """Return the newest dispatch of ``slug`` to a public list, if any."""
    return session.scalars(
        select(Dispatch)
        .where(Dispatch.issue == slug, Dispatch.segment == Segment.PUBLIC.value, _published())
        .order_by(Dispatch.id.desc())
        .limit(1)
    ).first()


def public_dispatch_key(conn: Connection | Session, slug: str) -> tuple[int, str] | None:
    """Return the number and random key of the newest dispatch of ``slug`` to a public list, if any.

    Only those: the row itself holds the whole page, twice (HTML and text).
    """
    row = conn.execute(_NEWEST_PUBLIC, {"slug": slug}).first()
    return (int(row[0]), str(row[1])) if row is not None else None


# Built once: the web app runs it for issue pages.
_NEWEST_PUBLIC = (
    select(Dispatch.id, Dispatch.key)
    .where(Dispatch.issue == bindparam("slug"), Dispatch.segment == Segment.PUBLIC.value, _published())
    .order_by(Dispatch.id.desc())
    .limit(1)
)


def member_dispatch(session: Session, slug: str, claim: Claim) -> tuple[Dispatch, Delivery] | None:
    """Return the newest dispatch of ``slug`` that was sent to the token's holder.

    A view token names a subscriber and a list; it opens only the issues that went to
    that person on that list, not every issue the list ever got (someone who left
    the network keeps the issues they received, and sees none sent after).
    """
    row = session.execute(
        select(Dispatch, Delivery)
        .join(Delivery, Delivery.dispatch_id == Dispatch.id)
        .where(
            Dispatch.issue == slug,
            Dispatch.list_id == claim.list_id,
            Delivery.subscriber_id == claim.subscriber_id,
            # Sent to them (or possibly: on the wire when a process died), not merely listed:
            # someone skipped because they left, or whose address bounced, did not get it.
            Delivery.status.in_(RECEIVED),
        )
        .order_by(Dispatch.id.desc())
        .limit(1)
    ).first()
    return (row[0], row[1]) if row is not None else None


def public_page(variant: Variant, slug: str, language: str, links: Links) -> str:
    """Return the public page of a dispatch in one language: its HTML filled in for no one.

    ``language`` is the one its "view in browser" link names ("": the issue's plain address).
    """
    html, _ = variant.personalize(
        Recipient(
            first_name="",
            unsubscribe_url=links.unsubscribe_by_mail(),
            view_url=links.issue(slug, language),
            # No one's page: a visitor who wants the newsletter finds the sign-up form.
            preferences_url=links.signup_form(language=language),
        )
    )
    return html


def member_page(variant: Variant, dispatch: Dispatch, delivery: Delivery, links: Links, language: str) -> str:
    """Return a member's own page in one language: their message's HTML, with their name and links."""
    html, _ = variant.personalize(
        Recipient(
            first_name=first_name(delivery.name),
            unsubscribe_url=links.unsubscribe(delivery.subscriber_id, dispatch.list_id, language),
            view_url=links.member_view(dispatch.issue, delivery.subscriber_id, dispatch.list_id, language),
            preferences_url=links.preferences(delivery.subscriber_id, dispatch.list_id, language),
        )
    )
    return html


@dataclass(frozen=True)
class Alternate:
    """Another language's page of the same issue: for ``hreflang`` (absolute) and the switcher."""

    language: str
    href: str
    nav_href: str


_HEAD_END = re.compile(r"</head\s*>", re.IGNORECASE)
_BODY_START = re.compile(r"<body\b[^>]*>", re.IGNORECASE)


def with_languages(
    html: str,
    settings: Settings,
    language: str,
    alternates: list[Alternate],
    x_default: str | None,
) -> str:
    """Return an issue page that names its other languages: ``hreflang`` links and a switcher.

    ``alternates`` holds every language's page, this one's included (a set of hreflang
    links names itself too); ``x_default`` is the page for a reader of no listed
    language (None: no ``hreflang`` links, as on a member's page, which no search
    engine reads). A page in one language is returned as it is.
    """
    if len(alternates) < 2:
        return html
    head = Markup("")
    if x_default is not None:
        for alt in alternates:
            head += Markup('<link rel="alternate" hreflang="%s" href="%s">\n') % (alt.language, alt.href)
        head += Markup('<link rel="alternate" hreflang="x-default" href="%s">\n') % (x_default,)
    entries = []
    for alt in alternates:
        name = i18n.language_name(alt.language)
        if alt.language == language:
            entries.append(Markup('<strong aria-current="page" lang="%s">%s</strong>') % (alt.language, name))
        else:
            entries.append(
                Markup('<a href="%s" hreflang="%s" lang="%s" style="color:#0b57a4">%s</a>')
                % (alt.nav_href, alt.language, alt.language, name)
            )
    label = escape(i18n.gettext(settings, language, "This issue in other languages", "web"))
    nav = (
        Markup(
            '<nav class="mo-languages" aria-label="%s" style="margin:0;padding:8px 16px;background:#ffffff;'
            "color:#1d2330;font:14px/1.6 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;"
            'text-align:center">'
        )
        % (label,)
        + Markup(" · ").join(entries)
        + Markup("</nav>\n")
    )
    html = _HEAD_END.sub(lambda m: str(head) + m.group(0), html, count=1) if head else html
    return _BODY_START.sub(lambda m: m.group(0) + "\n" + str(nav), html, count=1)


def images_in(html: str, prefix: str) -> list[str]:
    """Return the picture file names that ``html`` loads from under ``prefix``, each once."""
    pattern = re.compile(re.escape(prefix) + r"""([^"'\s?#()<>]+)""")
    # Links carry names percent-encoded (``Links.picture``): the files have them decoded.
    names = dict.fromkeys(unquote(m.group(1)) for m in pattern.finditer(html))
    return [n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES and ".." not in n.split("/")]


def image_file(settings: Settings, slug: str, name: str) -> Path | None:
    """Return the file of picture ``name`` in issue ``slug``'s folder, if it is a picture there."""
    if not is_slug(slug) or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    folder = (settings.path("issues") / slug).resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        return None
    return path


_PRIVATE = re.compile(rf"{PRIVATE_PICTURES}/([0-9a-f]{{{DIGEST_LENGTH}}})/(.+)")


def private_image_file(settings: Settings, slug: str, path: str) -> Path | None:
    """Return the members-only picture at ``m/<digest>/<name>``, if the digest is its content's."""
    match = _PRIVATE.fullmatch(path)
    if match is None:
        return None
    found = image_file(settings, slug, match.group(2))
    if found is None or not hmac.compare_digest(image_digest(found), match.group(1)):
        return None
    return found


def strip_private(path: str) -> str:
    """Return the file name in a picture's address, private (``m/<digest>/``) or not."""
    match = _PRIVATE.fullmatch(path)
    return match.group(2) if match else path


@dataclass(frozen=True)
class IndexEntry:
    """An issue on the archive's index: in the language chosen, with the others offered."""

    slug: str
    sent_at: dt.datetime
    shown: Version
    others: tuple[Version, ...]
    #: The issue's default language: its page is also at the issue's plain address.
    default: str

    def language_of(self, version: Version) -> str:
        """Return the language to put in a link to ``version``: "" for the default language's page."""
        return "" if version.language == self.default else version.language


def issue_versions(session: Session, entry: ArchivedIssue, default_language: str) -> tuple[Version, ...]:
    """Return the versions of an archived issue's newest public dispatch, the default language first."""
    dispatch = session.get(Dispatch, entry.dispatch_id)
    if dispatch is None:  # removed since it was listed
        return (Version(default_language, entry.subject, entry.preheader),)
    return versions(session, dispatch, default_language)


def index_entries(
    issues: list[ArchivedIssue], versions_of: Callable[[ArchivedIssue], tuple[Version, ...]], choice: str
) -> list[IndexEntry]:
    """Return the index's entries: each issue once, in ``choice`` (exact, base) or its default language."""
    entries = []
    for entry in issues:
        found = versions_of(entry)
        by_language = {v.language: v for v in found}
        shown = by_language[choose(choice, list(by_language), found[0].language)]
        others = tuple(v for v in found if v != shown)
        entries.append(IndexEntry(entry.slug, entry.sent_at, shown, others, found[0].language))
    return entries


@dataclass(frozen=True)
class ExportResult:
    issues: list[ArchivedIssue]
    files: int
    missing_images: list[str]


def export_archive(
    session: Session,
    settings: Settings,
    signer: Signer | None,
    out_dir: Path,
    index_html: str,
    assets: Mapping[str, Path] | None = None,
) -> ExportResult:
    """Write the public archive as static files: ``index.html`` and ``<slug>/index.html`` with pictures.

    ``index_html`` is the rendered index page (the web app's template, with relative links);
    ``assets`` maps more file names (the stylesheet) to the files to copy there.
    Only public variants are written: no member's page, no members-only picture. An
    issue in several languages gets ``<slug>/<language>/index.html`` for each, and
    ``<slug>/index.html`` in its default language, all naming each other (``hreflang``).
    Nothing is written through a symbolic link found inside ``out_dir``: a link where a
    file goes is replaced by the file, and a link where a folder goes stops the export
    before anything is written.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise WorkspaceError(f"{out_dir}: exists and is not a folder")
    links = Links(settings, signer)
    issues = archived_issues(session)
    pages: dict[Path, str] = {}
    copies: dict[Path, Path] = {out_dir / name: source for name, source in (assets or {}).items()}
    missing: list[str] = []
    for entry in issues:
        dispatch = public_dispatch(session, entry.slug)
        assert dispatch is not None  # listed because it has one
        prefix = links.pictures(entry.slug)
        folder = out_dir / entry.slug
        found = variants(session, dispatch, settings.newsletter.language)
        default = next(iter(found))
        for language, variant in found.items():
            html = public_page(variant, entry.slug, "" if language == default else language, links)
            for name in images_in(html, prefix):
                source = image_file(settings, entry.slug, name)
                if source is None:
                    missing.append(f"{entry.slug}/{name}")
                    continue
                copies[folder / name] = source
            if len(found) > 1:
                # <slug>/<language>/index.html, as the web app's /issues/<slug>/<language>.
                nested = [Alternate(tag, f"../{tag}/index.html", f"../{tag}/index.html") for tag in found]
                pages[folder / language / "index.html"] = with_languages(
                    html.replace(prefix, "../"), settings, language, nested, "../index.html"
                )
            if language == default:
                top = [Alternate(tag, f"{tag}/index.html", f"{tag}/index.html") for tag in found]
                pages[folder / "index.html"] = with_languages(
                    html.replace(prefix, ""), settings, language, top, "index.html"
                )
    pages[out_dir / "index.html"] = index_html
    _refuse_linked_folders(out_dir, [*copies, *pages])
    out_dir.mkdir(parents=True, exist_ok=True)
    for target, source in copies.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        write_file(target, source.read_bytes())
    for target, text in pages.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        write_file(target, text.encode("utf-8"))
    return ExportResult(issues, len(copies) + len(pages) - len(assets or {}), missing)


def _refuse_linked_folders(out_dir: Path, targets: list[Path]) -> None:
    """Raise ``WorkspaceError`` if a folder between ``out_dir`` and a target is a symbolic link."""
    for target in targets:
        for folder in target.relative_to(out_dir).parents:
            path = out_dir / folder
            if path != out_dir and path.is_symlink():
                raise WorkspaceError(
                    f"{path}: a symbolic link; the export never writes through one"
                    " (remove it, or export to another folder)"
                )


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a new temporary file, so a reader never sees half a file.

    The temporary file must not exist yet (so no link planted there is followed), and
    renaming it over ``path`` replaces a symbolic link at ``path``, not the file it points to.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: fail rather than open whatever sits at that name, a link included.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
