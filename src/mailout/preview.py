"""Every variant of an issue, segment × language, for eyes and browsers: the build folder and the grid.

The files are exactly what is sent, filled for a sample recipient; only image
URLs under the public base URL are made relative so that the preview shows the
issue's images before they are published. ``mailout preview`` writes each
variant (``member.html``, ``public.html`` in the default language,
``member-fr.html`` and so on for the others) and ``index.html``, the grid that
shows them all side by side at desktop and mobile width, as the web app's
``/preview/<slug>`` does. Given the database, the grid also says whether the
variants shown are approved for each list, and by whom (``list_approvals``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from html import escape
from pathlib import Path

from sqlalchemy import Engine

from . import i18n
from .approvals import ListApproval, for_lists
from .config import Settings
from .errors import Problem
from .issues import Issue
from .links import Links
from .render import Recipient, Variant, private_image_path, private_images, render_issue
from .segments import Segment

#: How the grid names each segment (the preview is the team's: its own words are English).
SEGMENT_LABELS = {Segment.MEMBER: "Members", Segment.PUBLIC: "Public"}


@dataclass(frozen=True)
class PreviewFile:
    """One written variant and its measurements."""

    variant: Variant
    language: str
    html_path: Path
    text_path: Path
    html_bytes: int
    text_bytes: int


@dataclass(frozen=True)
class Shown:
    """One variant as the preview grid shows it: filled for the sample recipient, labelled."""

    segment: Segment
    language: str
    variant: Variant
    html: str
    text: str

    @property
    def label(self) -> str:
        """Return "Members · français (fr)": the segment, and the language in its own name."""
        return f"{SEGMENT_LABELS[self.segment]} · {i18n.language_name(self.language)} ({self.language})"

    @property
    def key(self) -> str:
        """Return a name for the variant in ids and file names: ``member-fr``."""
        return f"{self.segment}-{self.language}"

    @property
    def html_bytes(self) -> int:
        return len(self.html.encode("utf-8"))

    @property
    def text_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


def sample_recipient(settings: Settings, issue: Issue, language: str = "") -> Recipient:
    """Return the recipient a preview is filled for: no name, so the fallback shows."""
    urls = Links(settings).preview_sample(issue.slug, language)
    return Recipient(
        first_name="", unsubscribe_url=urls.unsubscribe, view_url=urls.view, preferences_url=urls.preferences
    )


def every_variant(issue: Issue, settings: Settings) -> dict[tuple[Segment, str], Variant]:
    """Return every variant of ``issue`` by (segment, language): each language in the issue's order,
    members then public."""
    rendered = render_issue(issue, settings)
    order = {tag: n for n, tag in enumerate(issue.variant_languages(settings.newsletter.language))}
    segments = list(Segment)
    return dict(
        sorted(
            rendered.items(), key=lambda pair: (order.get(pair[0][1], len(order)), segments.index(pair[0][0]))
        )
    )


def preview_variants(issue: Issue, settings: Settings, pictures: str) -> list[Shown]:
    """Return every variant filled in for the sample recipient, the pictures' prefix replaced by ``pictures``."""
    base = Links(settings).pictures(issue.slug)
    shown = []
    for (segment, language), variant in every_variant(issue, settings).items():
        recipient = sample_recipient(settings, issue, language)
        html, text = variant.personalize(recipient)
        # The pictures only: the view link of a language's page (.../issues/<slug>/fr) lies
        # under the same prefix and stays absolute. Its attribute is escaped like the HTML's.
        view = escape(recipient.view_url)
        parts = [part.replace(base, pictures) for part in html.split(view)]
        shown.append(Shown(segment, language, variant, view.join(parts), text))
    return shown


def list_approvals(engine: Engine, settings: Settings, slug: str, shown: list[Shown]) -> list[ListApproval]:
    """Return whether the variants ``shown`` are approved for each list of the settings, and by whom."""
    return for_lists(engine, settings, slug, {(each.segment, each.language): each.variant for each in shown})


def write_preview(
    issue: Issue, settings: Settings, out_dir: Path | None = None, *, engine: Engine | None = None
) -> list[PreviewFile]:
    """Render every variant of ``issue`` into ``out_dir`` (default: build/<slug>/), and the grid page.

    With ``engine``, the grid says whether the variants are approved for each list.
    """
    from .web import PACKAGE, standalone_page

    out = out_dir or settings.path("build") / issue.slug
    shown = preview_variants(issue, settings, "")
    approvals = list_approvals(engine, settings, issue.slug, shown) if engine is not None else None
    out.mkdir(parents=True, exist_ok=True)
    private = private_images(issue)
    for name in issue.images():
        # Where the variants load it from: members-only pictures under their private path.
        target = out / (private_image_path(issue, name) if name in private else name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(issue.folder / name, target)
    default = shown[0].language
    written = []
    for each in shown:
        # The default language keeps the names the files had before languages: member.html.
        stem = str(each.segment) if each.language == default else f"{each.segment}-{each.language}"
        html_path = out / f"{stem}.html"
        text_path = out / f"{stem}.txt"
        html_path.write_text(each.html, encoding="utf-8")
        text_path.write_text(each.text, encoding="utf-8")
        written.append(
            PreviewFile(
                variant=each.variant,
                language=each.language,
                html_path=html_path,
                text_path=text_path,
                html_bytes=each.html_bytes,
                text_bytes=each.text_bytes,
            )
        )
    grid = standalone_page(
        "mailout/preview.html",
        settings,
        title=f"Preview: {issue.slug}",
        variants=shown,
        approvals=approvals,
        sources={each.key: f.html_path.name for each, f in zip(shown, written, strict=True)},
        clip_bytes=settings.preview.html_warn_bytes,
        index_url=None,
        css_url="mailout.css",
    )
    (out / "index.html").write_text(grid, encoding="utf-8")
    shutil.copyfile(PACKAGE / "static" / "mailout.css", out / "mailout.css")
    return written


def all_warnings(files: list[PreviewFile]) -> list[Problem]:
    """Return the warnings of every variant, each once."""
    seen: dict[str, Problem] = {}
    for f in files:
        for warning in f.variant.warnings:
            seen.setdefault(str(warning), warning)
    return list(seen.values())
