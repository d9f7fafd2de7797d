"""The archive of sent issues: the pages behind "view in browser", and their static export.

A page is the variant exactly as it was frozen with its dispatch, filled in like
a message: the public page with no one's name, a member's page (reached only
through the signed link in that member's own message) with theirs. Nothing is
rendered again, so the archive shows what readers got, whatever happened to the
issue file since.

Only issues dispatched to a public list are in the public archive; an issue sent
to members only has no public page.
"""

from __future__ import annotations

import datetime as dt
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from .config import Settings
from .errors import WorkspaceError
from .issues import is_slug
from .links import PRIVATE_PICTURES, Links
from .models import Delivery, DeliveryStatus, Dispatch
from .outbox import as_utc, frozen_variant
from .render import DIGEST_LENGTH, Recipient, first_name, image_digest
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


def archived_issues(session: Session) -> list[ArchivedIssue]:
    """Return the issues dispatched to a public list, newest first.

    The subject is the newest public dispatch's; the date is the first one's.
    """
    rows = session.execute(
        select(Dispatch.issue, Dispatch.subject, Dispatch.preheader, Dispatch.created_at)
        .where(Dispatch.segment == Segment.PUBLIC.value)
        .order_by(Dispatch.id)
    ).all()
    first: dict[str, dt.datetime] = {}
    latest: dict[str, tuple[str, str]] = {}
    for slug, subject, preheader, created_at in rows:
        first.setdefault(slug, as_utc(created_at))
        latest[slug] = (subject, preheader)
    found = [ArchivedIssue(slug, *latest[slug], first[slug]) for slug in first]
    return sorted(found, key=lambda entry: entry.sent_at, reverse=True)


def public_dispatch(session: Session, slug: str) -> Dispatch | None:
    """Return the newest dispatch of ``slug`` to a public list, if any."""
    return session.scalars(
        select(Dispatch)
        .where(Dispatch.issue == slug, Dispatch.segment == Segment.PUBLIC.value)
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
    .where(Dispatch.issue == bindparam("slug"), Dispatch.segment == Segment.PUBLIC.value)
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


def public_page(dispatch: Dispatch, links: Links) -> str:
    """Return the public page of a dispatch: its HTML filled in for no one in particular."""
    html, _ = frozen_variant(dispatch).personalize(
        Recipient(
            first_name="", unsubscribe_url=links.unsubscribe_by_mail(), view_url=links.issue(dispatch.issue)
        )
    )
    return html


def member_page(dispatch: Dispatch, delivery: Delivery, links: Links) -> str:
    """Return a member's own page: their message's HTML, with their name and links."""
    html, _ = frozen_variant(dispatch).personalize(
        Recipient(
            first_name=first_name(delivery.name),
            unsubscribe_url=links.unsubscribe(delivery.subscriber_id, dispatch.list_id),
            view_url=links.member_view(dispatch.issue, delivery.subscriber_id, dispatch.list_id),
        )
    )
    return html


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
    Only public variants are written: no member's page, no members-only picture.
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
        html = public_page(dispatch, links)
        folder = out_dir / entry.slug
        for name in images_in(html, prefix):
            source = image_file(settings, entry.slug, name)
            if source is None:
                missing.append(f"{entry.slug}/{name}")
                continue
            copies[folder / name] = source
        pages[folder / "index.html"] = html.replace(prefix, "")
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
