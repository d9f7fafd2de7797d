"""The built HTML as mail clients read it: image sizes, bands, colour schemes, type, links, preheader."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import lxml.html
import pytest
import yaml

import mailout
from mailout.config import Settings, load_settings
from mailout.issues import DEFAULT_LINK_LABELS, Issue, Item, load_issue
from mailout.pictures import pixel_size
from mailout.render import PREVIEW_FILLER, PREVIEW_LENGTH, Variant, render_issue
from mailout.segments import Segment

BUILTIN_BAND = "#eef1f4"
EFUS_BAND = "#f2f2f2"
#: Link names that say where they go without their surroundings.
CHROME_LINKS = {"View this email in your browser", "Unsubscribe", "View in your browser"}
#: Names that say nothing out of context, as a screen reader's list of links shows them.
GENERIC = re.compile(r"^\s*(read more|more|information|here|click here|link)\W*$", re.IGNORECASE)


@pytest.fixture(params=["efus", "builtin"])
def themed(request: pytest.FixtureRequest, repo_settings: Settings, tmp_path: Path) -> tuple[Settings, str]:
    """The team's theme (templates/email/theme.mjml.j2 of this repository), then the built-in one."""
    if request.param == "efus":
        return repo_settings, EFUS_BAND
    (tmp_path / "mailout.toml").write_text("", encoding="utf-8")
    return load_settings(tmp_path, env={}), BUILTIN_BAND


def variants(issue: Issue, settings: Settings) -> list[Variant]:
    rendered = render_issue(issue, settings)
    return [rendered[Segment.MEMBER, "en"], rendered[Segment.PUBLIC, "en"]]


def tree(variant: Variant) -> lxml.html.HtmlElement:
    return lxml.html.document_fromstring(variant.html)


def style(element: lxml.html.HtmlElement) -> dict[str, str]:
    """The element's inline style as a dict (later declarations win, as in CSS)."""
    pairs = (d.split(":", 1) for d in element.get("style", "").split(";") if ":" in d)
    return {k.strip().lower(): v.strip().lower() for k, v in pairs}


def colour(value: str) -> str:
    """``#fff`` -> ``#ffffff``; other values lower-cased as they are."""
    value = value.strip().lower()
    if re.fullmatch(r"#[0-9a-f]{3}", value):
        return "#" + "".join(c * 2 for c in value[1:])
    return value


def test_every_image_has_pixel_width_and_height(example_issue: Issue, themed: tuple[Settings, str]) -> None:
    settings, _ = themed
    natural = {Path(p).name: pixel_size(example_issue.folder / p) for p in example_issue.images()}
    for variant in variants(example_issue, settings):
        images = tree(variant).findall(".//img")
        assert len(images) >= 5, variant.segment
        for img in images:
            width, height = img.get("width", ""), img.get("height", "")
            assert width.isdigit() and height.isdigit(), (img.get("src"), width, height)
            size = natural[Path(img.get("src", "")).name]
            assert size is not None
            assert int(height) == round(int(width) * size[1] / size[0]), img.get("src")
            # the CSS still scales the picture down on a narrow screen, in proportion
            assert style(img)["height"] == "auto"
    news = [
        i
        for i in tree(variants(example_issue, settings)[0]).findall(".//img")
        if "madrid" in i.get("src", "")
    ]
    assert [(i.get("width"), i.get("height")) for i in news] == [("180", "90")]


def test_bands_keep_their_grey(example_issue: Issue, themed: tuple[Settings, str]) -> None:
    settings, band = themed
    for variant in variants(example_issue, settings):
        page = tree(variant)
        for name in ("mo-topbar", "mo-footer"):
            (outer,) = page.find_class(name)
            assert colour(style(outer)["background-color"]) == band, name
            cells = [outer, *outer.iter("table", "td", "div")]
            painted = [e for e in cells if "background-color" in style(e) or e.get("bgcolor")]
            assert len(painted) >= 2, name
            for element in painted:
                for value in (
                    style(element).get("background-color"),
                    style(element).get("background"),
                    element.get("bgcolor"),
                ):
                    assert value is None or colour(value) == band, (name, element.tag, value)
        # Outlook's own table for each band, in a conditional comment, carries the grey too
        for name in ("mo-topbar", "mo-footer"):
            outlook = re.search(rf'<table [^>]*bgcolor="([^"]+)"[^>]*class="{name}-outlook"', variant.html)
            assert outlook and colour(outlook.group(1)) == band, name


def test_colour_schemes_are_declared_and_dark_styles_stay_in_a_style_block(
    example_issue: Issue, themed: tuple[Settings, str]
) -> None:
    settings, _ = themed
    for variant in variants(example_issue, settings):
        page = tree(variant)
        head = page.find("head")
        assert head is not None
        metas = {m.get("name"): m.get("content") for m in head.findall("meta") if m.get("name")}
        assert metas["color-scheme"] == "light dark"
        assert metas["supported-color-schemes"] == "light dark"
        css = "\n".join(s.text or "" for s in head.findall("style"))
        assert re.search(r":root\s*\{\s*color-scheme:\s*light dark", css)
        dark = css[css.index("@media (prefers-color-scheme: dark)") :]
        # beats the inlined light colours: text, links and backgrounds
        for selector in (".mo-body p", ".mo-body a", ".mo-content"):
            assert selector in dark
        assert "!important" in dark
        assert "data-premailer" not in variant.html
        assert not page.get("style"), "the :root rule must not be inlined into <html>"
        assert "prefers-color-scheme" not in " ".join(
            e.get("style", "") for e in page.iter() if isinstance(e.tag, str)
        )


def test_a_theme_without_dark_styles_does_not_claim_dark_mode(example_issue: Issue, tmp_path: Path) -> None:
    """A workspace theme written before dark mode (no dark styles) keeps the light scheme only."""
    builtin = Path(mailout.__file__).parent / "templates" / "email" / "theme.mjml.j2"
    text = builtin.read_text(encoding="utf-8")
    old = re.sub(r"\s*<mj-raw>.*?</mj-raw>", "", text, flags=re.S)
    assert "prefers-color-scheme" not in old and "<mj-style>" in old
    (tmp_path / "templates" / "email").mkdir(parents=True)
    (tmp_path / "templates" / "email" / "theme.mjml.j2").write_text(old, encoding="utf-8")
    (tmp_path / "mailout.toml").write_text("", encoding="utf-8")
    for variant in variants(example_issue, load_settings(tmp_path, env={})):
        assert "color-scheme" not in variant.html


def test_no_text_under_13px(example_issue: Issue, themed: tuple[Settings, str]) -> None:
    settings, _ = themed
    for variant in variants(example_issue, settings):
        seen = 0
        for element in tree(variant).iter():
            if not isinstance(element.tag, str) or "font-size" not in style(element):
                continue
            value = style(element)["font-size"]
            number = re.fullmatch(r"([\d.]+)(px)?", value)
            assert number, value
            px = float(number.group(1))
            if px == 0:
                # MJML's way to remove the gaps between columns: such an element has no text of its own
                assert not (element.text or "").strip(), element.text
                continue
            seen += 1
            assert px >= 13, (element.tag, element.get("class"), (element.text_content() or "")[:40], value)
        assert seen > 40


def links_by_item(variant: Variant, issue: Issue) -> dict[str, Item]:
    """Return each item's link -> the item, with the label it shows (its kind's default if none)."""
    return {
        i.link: replace(i, link_label=i.link_label or DEFAULT_LINK_LABELS[s.kind])
        for s in issue.sections
        for i in s.visible_items(variant.segment)
        if i.link
    }


def accessible_name(link: lxml.html.HtmlElement) -> str:
    return link.get("aria-label") or " ".join(link.text_content().split())


def test_each_item_has_one_link_named_for_it(example_issue: Issue, repo_settings: Settings) -> None:
    for variant in variants(example_issue, repo_settings):
        items = links_by_item(variant, example_issue)
        links = tree(variant).iter("a")
        by_href: dict[str, list[str]] = {}
        for link in links:
            name = accessible_name(link)
            assert not GENERIC.match(name), name
            by_href.setdefault(link.get("href", ""), []).append(name)
            if "mo-more" in link.get("class", ""):
                item = items[link.get("href", "")]
                assert link.get("aria-label") == f"{item.link_label}: {item.title}"
                assert link.text_content().startswith(item.link_label), (
                    "the visible label is part of the name"
                )
        for href, item in items.items():
            assert len(by_href[href]) == 1, (item.title, by_href[href])
            assert item.title in by_href[href][0]
        # nothing but the items' links, the authors' own links in a summary, and the frame's
        authored = {
            n for s in example_issue.sections for i in s.items for n in re.findall(r"\[([^\]]+)\]", i.summary)
        }
        authored |= set(re.findall(r"\[([^\]]+)\]", example_issue.intro))
        others = [n for h, names in by_href.items() if h not in items for n in names]
        teaser = repo_settings.newsletter.members_teaser.split("{")[0]
        for name in others:
            assert (
                name in CHROME_LINKS or name in authored or teaser.strip() in name or "join Efus" in name
            ), name
        assert sum(n in CHROME_LINKS for n in others) == 3


def test_public_variant_teaser_is_a_self_describing_link(
    example_issue: Issue, repo_settings: Settings
) -> None:
    public = render_issue(example_issue, repo_settings)[Segment.PUBLIC, "en"]
    (teaser,) = [
        a for a in tree(public).iter("a") if a.get("href") == repo_settings.newsletter.members_teaser_url
    ]
    assert re.fullmatch(
        r"\d+ more items? in this issue for members of the network: join Efus", teaser.text_content()
    )


def test_preheader_is_hidden_without_a_faint_or_tiny_font(
    example_issue: Issue, themed: tuple[Settings, str]
) -> None:
    settings, _ = themed
    for variant in variants(example_issue, settings):
        (pre,) = tree(variant).find_class("mo-preheader")
        css = style(pre)
        assert css["display"] == "none" and css["opacity"] == "0" and css["max-height"] == "0"
        # what spam filters score as hidden text (SpamAssassin's HTML_FONT_LOW_CONTRAST, FONT_INVIS)
        assert "color" not in css and "font-size" not in css and "font" not in css
        text = pre.text_content()
        assert text.startswith(example_issue.preheader)
        filler = text[len(example_issue.preheader) :]
        assert filler == PREVIEW_FILLER * (PREVIEW_LENGTH - len(example_issue.preheader))
        assert set(filler) == {"\u200c", "\u00a0"}
        # the preheader comes first: before it only the head, nothing a client could show
        body_text = tree(variant).find("body").text_content()
        assert body_text.strip().startswith(example_issue.preheader)
        # the plain-text part starts with it too
        assert " ".join(variant.text.split()).startswith(" ".join(example_issue.preheader.split()))


def test_long_preheader_gets_no_filler(tmp_path: Path, repo_settings: Settings) -> None:
    path = write_issue(tmp_path, preheader="p" * (PREVIEW_LENGTH + 5), items=[{"title": "T", "summary": "S"}])
    variant = render_issue(load_issue(path), repo_settings)[Segment.MEMBER, "en"]
    (pre,) = tree(variant).find_class("mo-preheader")
    assert pre.text_content() == "p" * (PREVIEW_LENGTH + 5)


def write_issue(tmp_path: Path, *, items: list[dict[str, object]], preheader: str = "Pre") -> Path:
    folder = tmp_path / "issue"
    folder.mkdir()
    (folder / "images").mkdir()
    src = Path(__file__).resolve().parent.parent / "issues" / "2019-01" / "images" / "madrid.png"
    (folder / "images" / "pic.png").write_bytes(src.read_bytes())
    data = {
        "subject": "S",
        "preheader": preheader,
        "date": "2020-01-01",
        "sections": [{"kind": "news", "items": items}],
    }
    path = folder / "issue.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


HOSTILE_TITLE = "He said \"no\" & <b>left</b> 'now' " + "very long " * 40


def test_hostile_title_and_alt_stay_escaped_and_items_without_image_or_link(
    tmp_path: Path, repo_settings: Settings
) -> None:
    items: list[dict[str, object]] = [
        {"title": HOSTILE_TITLE, "summary": "One.", "link": "https://example.org/a?x=1&y=2",
         "image": "images/pic.png", "image_alt": 'A "quoted" <alt> & more'},
        {"title": "No picture", "summary": "Two.", "link": "https://example.org/b"},
        {"title": "No link", "summary": "Three.", "image": "images/pic.png", "image_alt": "A picture"},
    ]  # fmt: skip
    variant = render_issue(load_issue(write_issue(tmp_path, items=items)), repo_settings)[
        Segment.MEMBER, "en"
    ]
    assert "<b>left</b>" not in variant.html and "<alt>" not in variant.html
    page = tree(variant)
    (first,) = [a for a in page.iter("a") if a.get("href") == "https://example.org/a?x=1&y=2"]
    assert first.get("aria-label") == f"Read more: {HOSTILE_TITLE.strip()}"
    picture, _ = page.findall(".//img")
    assert picture.get("alt") == 'A "quoted" <alt> & more'
    assert (picture.get("width"), picture.get("height")) == ("180", "90")
    (second,) = [a for a in page.iter("a") if a.get("href") == "https://example.org/b"]
    assert second.get("aria-label") == "Read more: No picture"
    assert "No link" in page.text_content()
    item_links = [a for a in page.iter("a") if "mo-more" in a.get("class", "")]
    assert len(item_links) == 2, "the item without a link has none"
    assert len(page.findall(".//img")) == 2, "the two items with a picture (no logo)"
