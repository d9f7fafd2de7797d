"""The rendered member variant in real headless Chromium, at desktop and phone widths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailout.config import Settings
from mailout.issues import Issue
from mailout.preview import write_preview

pytestmark = pytest.mark.browser

# For every element with text of its own: its colour, and the first opaque background behind it.
CONTRAST_JS = """
() => {
  const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = c => {
    const [r, g, b] = c.slice(0, 3).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const out = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim());
    const style = getComputedStyle(el);
    if (!own || style.display === 'none' || style.opacity === '0' || el.closest('[style*="display:none"]')) continue;
    let bg = null;
    for (let p = el; p; p = p.parentElement) {
      const c = rgb(getComputedStyle(p).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) { bg = c; break; }
    }
    bg = bg || [255, 255, 255];
    const [l1, l2] = [lum(rgb(style.color)), lum(bg)].sort((a, b) => b - a);
    out.push([el.textContent.trim().slice(0, 40), (l1 + 0.05) / (l2 + 0.05)]);
  }
  return out;
}
"""


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
    ratios = page.evaluate(CONTRAST_JS)
    assert len(ratios) > 50
    low = [(text, round(ratio, 2)) for text, ratio in ratios if ratio < 4.5]
    assert not low, f"text below WCAG AA contrast (4.5:1): {low}"
    shot = tmp_path / f"member-{width}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not errors and not failed, (errors, failed)
    page.close()
