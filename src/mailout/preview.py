"""Write every variant of an issue into the build folder, for eyes and browsers.

The files are exactly what is sent, filled for a sample recipient; only image
URLs under the public base URL are made relative so that the preview shows the
issue's images before they are published.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .errors import Problem
from .issues import Issue
from .links import Links
from .render import Recipient, Variant, private_image_path, private_images, render_issue


@dataclass(frozen=True)
class PreviewFile:
    """One written variant and its measurements."""

    variant: Variant
    html_path: Path
    text_path: Path
    html_bytes: int
    text_bytes: int


def sample_recipient(settings: Settings, issue: Issue) -> Recipient:
    """Return the recipient a preview is filled for: no name, so the fallback shows."""
    urls = Links(settings).preview_sample(issue.slug)
    return Recipient(first_name="", unsubscribe_url=urls.unsubscribe, view_url=urls.view)


def write_preview(issue: Issue, settings: Settings, out_dir: Path | None = None) -> list[PreviewFile]:
    """Render every variant of ``issue`` into ``out_dir`` (default: build/<slug>/)."""
    variants = render_issue(issue, settings)
    out = out_dir or settings.path("build") / issue.slug
    out.mkdir(parents=True, exist_ok=True)
    private = private_images(issue)
    for name in issue.images():
        # Where the variants load it from: members-only pictures under their private path.
        target = out / (private_image_path(issue, name) if name in private else name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(issue.folder / name, target)
    recipient = sample_recipient(settings, issue)
    base = Links(settings).pictures(issue.slug)
    written = []
    default = issue.variant_languages(settings.newsletter.language)[0]
    for (segment, language), variant in variants.items():
        html, text = variant.personalize(recipient)
        # The default language's files keep their names; another language's carry its tag.
        name = str(segment) if language == default else f"{segment}-{language}"
        html_path = out / f"{name}.html"
        text_path = out / f"{name}.txt"
        html_path.write_text(html.replace(base, ""), encoding="utf-8")
        text_path.write_text(text, encoding="utf-8")
        written.append(
            PreviewFile(
                variant=variant,
                html_path=html_path,
                text_path=text_path,
                html_bytes=len(html.encode("utf-8")),
                text_bytes=len(text.encode("utf-8")),
            )
        )
    return written


def all_warnings(files: list[PreviewFile]) -> list[Problem]:
    """Return the warnings of every variant, each once."""
    seen: dict[str, Problem] = {}
    for f in files:
        for warning in f.variant.warnings:
            seen.setdefault(str(warning), warning)
    return list(seen.values())
