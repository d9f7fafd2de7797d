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


# Inside the mail's frame: the layout as measured, for the assertions below.
LAYOUT_JS = """
() => {
  const box = e => e.getBoundingClientRect();
  const shown = e => box(e).width > 0 && getComputedStyle(e).display !== 'none';
  const columns = cls => Array.from(document.querySelectorAll('.' + cls)).map(c => [box(c).left, box(c).top, box(c).width]);
  return {
    viewport: window.innerWidth,
    body: document.body.clientWidth,
    scroll: document.documentElement.scrollWidth,
    narrow: columns('mj-column-per-35'),
    wide: columns('mj-column-per-65'),
    overflowing: Array.from(document.body.querySelectorAll('*')).filter(shown)
      .filter(e => box(e).right > window.innerWidth + 0.5 || box(e).left < -0.5)
      .map(e => e.tagName + '.' + e.className + ' ' + Math.round(box(e).left) + '-' + Math.round(box(e).right)),
    images: Array.from(document.images).map(i => [i.getAttribute('src'), box(i).left, box(i).right, i.naturalWidth]),
  };
}
"""


@pytest.mark.parametrize("width", [375, 640])
def test_layout_inside_an_iframe_of_the_phone_width(
    browser: Any, tmp_path: Path, example_issue: Issue, repo_settings: Settings, width: int
) -> None:
    # Headless Chromium makes no window narrower than 500 px (--window-size=375 shows the
    # desktop layout): the message is measured inside a frame of the width instead.
    files = write_preview(example_issue, repo_settings, tmp_path / "build")
    member = next(f for f in files if f.variant.segment == "member")
    host = member.html_path.parent / "frame.html"
    host.write_text(
        f'<!doctype html><html><body style="margin:0"><iframe name="mail" src="{member.html_path.name}"'
        f' style="width:{width}px;height:3000px;border:0"></iframe></body></html>',
        encoding="utf-8",
    )
    page = browser.new_page(viewport={"width": 1024, "height": 900})
    page.goto(host.as_uri())
    page.wait_for_load_state("load")
    frame = page.frame(name="mail")
    assert frame is not None
    layout = frame.evaluate(LAYOUT_JS)
    assert layout["viewport"] == width
    assert layout["scroll"] <= width, f"horizontal scrolling in {width}px: {layout['scroll']}px wide"
    assert not layout["overflowing"], layout["overflowing"]
    narrow, wide = layout["narrow"], layout["wide"]
    assert len(narrow) == len(wide) >= 5, "the news, calls and publications cards"
    images = layout["images"]
    assert len(images) >= 7 and all(natural > 0 for *_, natural in images), images
    assert all(left >= 0 and right <= width for _, left, right, _ in images), images
    for (n_left, n_top, n_width), (w_left, w_top, w_width) in zip(narrow, wide, strict=True):
        if width == 375:
            # the mobile layout: the columns stack, each as wide as the message
            assert abs(n_width - layout["body"]) <= 1 and abs(w_width - layout["body"]) <= 1, (narrow, wide)
            assert w_top > n_top and n_left == w_left
        else:
            # the desktop layout: the picture's column beside the text's, 35% and 65% of 600 px
            assert abs(n_width - 210) <= 1 and abs(w_width - 390) <= 1, (narrow, wide)
            assert n_top == w_top and w_left > n_left
    page.close()


def test_dark_mode_keeps_text_readable(
    browser: Any, tmp_path: Path, example_issue: Issue, repo_settings: Settings
) -> None:
    files = write_preview(example_issue, repo_settings, tmp_path / "build")
    member = next(f for f in files if f.variant.segment == "member")
    for scheme in ("light", "dark"):
        page = browser.new_page(viewport={"width": 600, "height": 900}, color_scheme=scheme)
        page.goto(member.html_path.as_uri())
        page.wait_for_load_state("load")
        background = page.evaluate("getComputedStyle(document.querySelector('.mo-content')).backgroundColor")
        # the dark styles apply (and only in dark mode): the content is no longer white
        assert (background == "rgb(255, 255, 255)") == (scheme == "light"), (scheme, background)
        ratios = page.evaluate(CONTRAST_JS)
        assert len(ratios) > 50
        low = [(text, round(ratio, 2)) for text, ratio in ratios if ratio < 4.5]
        assert not low, f"text below WCAG AA contrast (4.5:1) in {scheme} mode: {low}"
        page.close()


def test_the_preview_grid_shows_every_variant_at_both_widths(
    browser: Any, tmp_path: Path, example_issue: Issue, repo_settings: Settings
) -> None:
    files = write_preview(example_issue, repo_settings, tmp_path / "build")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto((tmp_path / "build" / "index.html").as_uri())
    page.wait_for_load_state("load")
    sections = page.locator("section.variant")
    assert sections.count() == len(files) >= 2  # every variant written, one section each
    for index, written in enumerate(files):
        section = sections.nth(index)
        assert section.get_attribute("data-language") == written.language
        assert section.get_attribute("data-segment") == written.variant.segment
        desktop, mobile = section.locator("iframe.desktop"), section.locator("iframe.mobile")
        assert desktop.get_attribute("src") == written.html_path.name
        for frame, width in ((desktop, 640), (mobile, 375)):
            box = frame.bounding_box()
            assert box is not None and abs(box["width"] - width) <= 2, box
            inside = frame.content_frame
            assert inside.locator("title").inner_text() == written.variant.subject
            scroll = inside.locator("html").evaluate("e => e.scrollWidth")
            assert scroll <= width, f"{written.html_path.name} scrolls sideways at {width} px: {scroll}"
            sizes = inside.locator("img").evaluate_all("i => i.map(x => x.complete ? x.naturalWidth : -1)")
            assert sizes and all(w > 0 for w in sizes), sizes
    shot = tmp_path / "grid.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000 and not errors, errors
    page.close()
