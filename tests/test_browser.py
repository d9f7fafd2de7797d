"""The rendered member variant in real headless Chromium, at desktop and phone widths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailout.config import Settings
from mailout.issues import Issue
from mailout.preview import write_preview

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("width", [600, 375])
def test_member_variant_fits_the_screen(
    browser: Any, tmp_path: Path, example_issue: Issue, repo_settings: Settings, width: int
) -> None:
    files = write_preview(example_issue, repo_settings, tmp_path / "build")
    member = next(f for f in files if f.variant.segment == "member")
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(member.html_path.as_uri())
    page.wait_for_load_state("load")
    assert page.title() == example_issue.subject
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= width, f"horizontal scrolling at {width}px: content is {scroll_width}px wide"
    # every item title is on the page, as text (not an image of text)
    body_text = page.inner_text("body")
    for section in example_issue.sections:
        for item in section.items:
            assert item.title in body_text
    images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.naturalWidth])")
    assert images and all(alt and natural > 0 for alt, natural in images), images
    if width == 375:
        # one column on a phone: the news images sit above their text, not beside it
        columns = page.evaluate(
            "Array.from(document.querySelectorAll('.mj-column-per-35')).map(c => c.getBoundingClientRect().width)"
        )
        assert columns and all(w > 300 for w in columns), columns
    shot = tmp_path / f"member-{width}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not errors and not failed, (errors, failed)
    page.close()
