"""Rendering against real MJML, premailer and Jinja: variants, leaks, escaping, placeholders."""

from __future__ import annotations

import html as htmlmod
import random
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from mailout import markup
from mailout.config import Settings, load_settings
from mailout.errors import IssueError, TemplateError
from mailout.issues import DEFAULT_LINK_LABELS, Issue, Item, load_issue
from mailout.render import Recipient, Variant, format_place, format_when, render_issue, render_variant
from mailout.segments import Segment

ALICE = Recipient(
    "Alice",
    "https://news.example/unsubscribe/tok-alice",
    "https://news.example/issues/x?t=alice",
    "https://news.example/preferences/tok-alice",
)
BOB = Recipient(
    "Bob & <Co>",
    "https://news.example/unsubscribe/tok-bob?a=1&b=2",
    "https://news.example/issues/x?t=bob",
    "https://news.example/preferences/tok-bob?a=1&b=2",
)


def members_only_items(issue: Issue) -> list[Item]:
    return [i for s in issue.sections for i in s.items if s.members_only or i.members_only]


def public_items(issue: Issue) -> list[Item]:
    return [i for s in issue.sections for i in s.visible_items(Segment.PUBLIC)]


def secret_strings(issue: Issue) -> set[str]:
    """Every string of every members-only section and item that nothing public shares."""
    public_sections = [s for s in issue.sections if not s.members_only]
    hidden_sections = [s for s in issue.sections if s.members_only]
    public_text = " ".join(
        [
            " ".join([i.title, i.summary, i.link, i.link_label, i.image, i.image_alt, i.city])
            for i in public_items(issue)
        ]
        + [f"{s.title} {s.intro}" for s in public_sections]
    )
    flat_public = " ".join(public_text.split())
    found: set[str] = {s.title for s in hidden_sections if s.title not in public_text}
    for item in members_only_items(issue):
        for value in (item.title, item.link, item.image, item.image_alt, item.link_label, item.city):
            if value and value not in public_text:
                found.add(value)
    for text in [s.intro for s in hidden_sections] + [i.summary for i in members_only_items(issue)]:
        words = markup.to_text(text).split()
        # Every run of four words: catches a sentence leaking in part.
        for start in range(max(len(words) - 3, 0)):
            shingle = " ".join(words[start : start + 4])
            if shingle not in flat_public:
                found.add(shingle)
    return found


def searchable(variant: Variant) -> list[str]:
    rendered_html, rendered_text = variant.personalize(ALICE)
    visible = " ".join(htmlmod.unescape(re.sub(r"<[^>]+>", " ", rendered_html)).split())
    return [
        rendered_html,
        htmlmod.unescape(rendered_html),
        visible,
        " ".join(rendered_text.split()),
        variant.preheader,
        variant.subject,
    ]


def assert_no_leak(issue: Issue, settings: Settings) -> None:
    secrets = secret_strings(issue)
    assert secrets, "the issue must have members-only content for this test to mean anything"
    public = render_issue(issue, settings)[Segment.PUBLIC, "en"]
    for haystack in searchable(public):
        for secret in secrets:
            assert secret not in haystack, f"members-only text leaked into the public variant: {secret!r}"
    member = render_issue(issue, settings)[Segment.MEMBER, "en"]
    member_text = " ".join(member.personalize(ALICE)[1].split())
    assert any(s in member_text for s in secrets), "members must see the members-only content"


def test_example_issue_renders_both_variants(example_issue: Issue, repo_settings: Settings) -> None:
    variants = render_issue(example_issue, repo_settings)
    languages = example_issue.variant_languages(repo_settings.newsletter.language)
    assert list(variants) == [(segment, lang) for lang in languages for segment in Segment]
    assert all(v.language == lang for (_, lang), v in variants.items())
    member, public = variants[Segment.MEMBER, "en"], variants[Segment.PUBLIC, "en"]
    total = sum(len(s.items) for s in example_issue.sections)
    assert member.items_shown == total and member.items_hidden == 0
    assert public.items_shown + public.items_hidden == total and public.items_hidden >= 3
    for variant in (member, public):
        assert variant.html.startswith("<!doctype html>")
        assert '<html lang="en" dir="ltr"' in variant.html
        assert len(variant.html.encode()) < 90_000
        assert f"<title>{htmlmod.escape(example_issue.subject, quote=False)}</title>" in variant.html
    teaser = repo_settings.newsletter.members_teaser.format(count=public.items_hidden, s="s")
    assert teaser in public.text and htmlmod.escape(teaser, quote=False) in public.html
    assert "more item" not in member.text


def test_public_variant_leaks_nothing_of_the_example(example_issue: Issue, repo_settings: Settings) -> None:
    assert_no_leak(example_issue, repo_settings)


def generated_issue(folder: Path, seed: int, sections: int = 6, items: int = 6) -> Path:
    """Write a random issue with members-only sections and items, and return its file."""
    rng = random.Random(seed)
    words = "".join(chr(c) for c in range(ord("a"), ord("z") + 1))

    def phrase(n: int) -> str:
        return " ".join("".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(n))

    kinds = ["agenda", "news", "calls", "good_practice", "publications"]
    data: dict[str, object] = {
        "subject": "Generated " + phrase(3),
        "preheader": "Public " + phrase(4),
        "date": "2020-03-01",
        "sections": [
            {
                "kind": kinds[n % len(kinds)],
                "title": "Section " + phrase(2),
                "intro": "Intro " + phrase(6),
                "members_only": rng.random() < 0.3,
                "items": [
                    {
                        "title": phrase(4),
                        "summary": f"{phrase(12)} [{phrase(2)}](https://example.org/{phrase(1)}) {phrase(6)}",
                        "link": f"https://example.org/{phrase(1)}/{n}/{m}",
                        "link_label": phrase(2),
                        "members_only": rng.random() < 0.3,
                        "city": phrase(1).title(),
                        "country": "FR",
                        "date": f"2020-03-{m + 1:02d}",
                        "image": f"https://img.example.org/{phrase(1)}.png",
                        "image_alt": "Picture of " + phrase(3),
                    }
                    for m in range(items)
                ],
            }
            for n in range(sections)
        ],
    }
    folder.mkdir(parents=True)
    path = folder / "issue.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_public_variant_leaks_nothing_of_a_generated_issue(
    tmp_path: Path, repo_settings: Settings, seed: int
) -> None:
    issue = load_issue(generated_issue(tmp_path / f"gen-{seed}", seed))
    assert_no_leak(issue, repo_settings)


def test_member_item_inside_a_public_section_is_left_out(tmp_path: Path, repo_settings: Settings) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "issue.yaml").write_text(
        "subject: S\npreheader: P\ndate: 2020-01-01\nsections:\n  - kind: news\n    items:\n"
        "      - {title: Open news, link: 'https://example.org/open'}\n"
        "      - {title: Closed news, link: 'https://example.org/closed', members_only: true}\n",
        encoding="utf-8",
    )
    public = render_issue(load_issue(folder / "issue.yaml"), repo_settings)[Segment.PUBLIC, "en"]
    assert "Open news" in public.text and "https://example.org/open" in public.html
    assert "Closed news" not in public.html + public.text
    assert "example.org/closed" not in public.html + public.text
    assert public.items_hidden == 1 and "1 more item in this issue" in public.text


HOSTILE = "<script>alert(1)</script> <b>bold</b> {{ config }} {% raw %}"


def test_author_text_is_escaped_and_never_evaluated(tmp_path: Path, repo_settings: Settings) -> None:
    folder = tmp_path / "hostile"
    folder.mkdir()
    data = {
        "subject": "Subject " + HOSTILE,
        "preheader": "Pre " + HOSTILE,
        "date": "2020-01-01",
        "intro": "Intro " + HOSTILE,
        "sections": [
            {
                "kind": "news",
                "title": "Title " + HOSTILE,
                "items": [
                    {
                        "title": "Item " + HOSTILE,
                        "summary": "Summary " + HOSTILE,
                        "link": "https://example.org/a?x=1&y=2",
                        "link_label": "Label " + HOSTILE,
                        "city": "City " + HOSTILE,
                    }
                ],
            }
        ],
    }
    (folder / "issue.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    variant = render_issue(load_issue(folder / "issue.yaml"), repo_settings)[Segment.MEMBER, "en"]
    html_out, text_out = variant.personalize(ALICE)
    assert "<script" not in html_out.lower()
    assert "<b>bold</b>" not in html_out
    assert html_out.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 6
    assert html_out.count("{{ config }}") >= 6, "template syntax in content must stay literal text"
    assert "{% raw %}" in html_out
    assert text_out.count("<script>alert(1)</script> <b>bold</b> {{ config }} {% raw %}") >= 5
    assert 'href="https://example.org/a?x=1&amp;y=2"' in html_out


def test_placeholders_survive_mjml_and_inlining(example_issue: Issue, repo_settings: Settings) -> None:
    variant = render_issue(example_issue, repo_settings)[Segment.PUBLIC, "en"]
    counts = {key: variant.html.count(token) for token, key in variant.tokens.items()}
    assert counts == {"first_name": 1, "unsubscribe_url": 1, "view_url": 2, "preferences_url": 1}
    text_counts = {key: variant.text.count(token) for token, key in variant.tokens.items()}
    assert text_counts == {"first_name": 1, "unsubscribe_url": 1, "view_url": 1, "preferences_url": 1}
    # premailer must not have URL-encoded them inside href attributes
    for token, key in variant.tokens.items():
        if key.endswith("_url"):
            assert f'href="{token}"' in variant.html


def test_each_recipient_gets_only_their_own_values(example_issue: Issue, repo_settings: Settings) -> None:
    variant = render_issue(example_issue, repo_settings)[Segment.MEMBER, "en"]
    alice_html, alice_text = variant.personalize(ALICE)
    bob_html, bob_text = variant.personalize(BOB)
    assert "Dear Alice," in alice_text and f'href="{ALICE.unsubscribe_url}"' in alice_html
    assert ALICE.view_url in alice_text
    assert f'href="{ALICE.preferences_url}"' in alice_html and ALICE.preferences_url in alice_text
    assert BOB.preferences_url not in alice_html + alice_text
    assert "Dear Bob & <Co>," in bob_text
    assert "Dear Bob &amp; &lt;Co&gt;," in bob_html
    assert 'href="https://news.example/unsubscribe/tok-bob?a=1&amp;b=2"' in bob_html
    for other in ("Bob", "tok-bob", "t=bob"):
        assert other not in alice_html + alice_text
    for other in ("Alice", "tok-alice", "t=alice"):
        assert other not in bob_html + bob_text
    for token in variant.tokens:
        assert token not in alice_html + alice_text + bob_html + bob_text


def test_empty_name_gets_the_fallback_and_names_stay_on_one_line(
    example_issue: Issue, repo_settings: Settings
) -> None:
    variant = render_issue(example_issue, repo_settings)[Segment.MEMBER, "en"]
    _, text = variant.personalize(
        Recipient("  ", "https://u.example/1", "https://v.example/1", "https://p.example/1")
    )
    assert f"Dear {repo_settings.newsletter.greeting_fallback}," in text
    _, text = variant.personalize(
        Recipient(
            "Eve\r\nBcc: x@evil.example", "https://u.example/1", "https://v.example/1", "https://p.example/1"
        )
    )
    assert "Dear Eve Bcc: x@evil.example," in text


def test_placeholder_tokens_differ_per_render(example_issue: Issue, repo_settings: Settings) -> None:
    first = render_variant(example_issue, repo_settings, Segment.PUBLIC)
    second = render_variant(example_issue, repo_settings, Segment.PUBLIC)
    assert set(first.tokens).isdisjoint(second.tokens)


class ReferenceCollector(HTMLParser):
    """Every URL an email makes a mail client fetch or follow: src, href, background, CSS url()."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "background", "srcset", "action", "poster") and value:
                self.urls.append(value.strip())
            if name == "style" and value:
                self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", value)

    def handle_data(self, data: str) -> None:
        if self.lasttag == "style":
            self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", data)
            self.urls += re.findall(r"@import\s+['\"]?([^'\";]+)", data)


def test_html_references_no_third_party_host(example_issue: Issue, repo_settings: Settings) -> None:
    allowed = {urlsplit(repo_settings.newsletter.public_base_url).netloc}
    allowed.add(urlsplit(repo_settings.newsletter.members_teaser_url).netloc)
    for item in (i for s in example_issue.sections for i in s.items):
        for url in (item.link, item.image, *re.findall(r"\((https?://[^)]+)\)", item.summary)):
            if url.startswith("http"):
                allowed.add(urlsplit(url).netloc)
    for variant in render_issue(example_issue, repo_settings).values():
        html_out, _ = variant.personalize(ALICE)
        references = ReferenceCollector()
        references.feed(html_out)
        assert len(references.urls) > 20
        for url in references.urls:
            parts = urlsplit(url)
            # a protocol-relative //host/x has no scheme: refused like any other
            assert parts.scheme in ("http", "https", "mailto"), url
            if parts.scheme != "mailto":
                assert parts.netloc in allowed | {"news.example"}, url
        assert "<link" not in html_out and "@import" not in html_out
        assert "fonts.googleapis" not in html_out


def test_reference_collector_sees_hidden_trackers() -> None:
    collector = ReferenceCollector()
    collector.feed(
        '<img src="//pixel.example/o.gif"><td style="background:url(https://t.example/b.png)"></td>'
    )
    assert collector.urls == ["//pixel.example/o.gif", "https://t.example/b.png"]


def test_plain_text_part_is_readable(example_issue: Issue, repo_settings: Settings) -> None:
    text = render_issue(example_issue, repo_settings)[Segment.MEMBER, "en"].text
    flat = " ".join(text.split())
    for section in example_issue.sections:
        for item in section.items:
            assert f"* {item.title}" in flat
            if item.link:
                assert f"{item.link_label or DEFAULT_LINK_LABELS[section.kind]}: {item.link}" in text
            if item.date:
                assert format_when(item) in text
            if item.city and item.country:
                assert f"{item.city} ({format_place(item)})" not in text
                assert format_place(item) in text and "(France)" in text
    assert "<" not in re.sub(r"<https?://[^>]+>", "", text), "no HTML in the text part"
    for line in text.splitlines():
        assert len(line) <= 78 or re.search(r"https?://\S+$", line), line


def test_dates_are_written_out() -> None:
    import datetime as dt

    one = Item(title="x", line=1, date=dt.date(2019, 2, 27))
    assert format_when(one) == "27 February 2019"
    assert (
        format_when(Item(title="x", line=1, date=dt.date(2019, 2, 27), end_date=dt.date(2019, 2, 28)))
        == "27\u201328 February 2019"
    )
    assert (
        format_when(Item(title="x", line=1, date=dt.date(2019, 2, 27), end_date=dt.date(2019, 3, 1)))
        == "27 February \u2013 1 March 2019"
    )
    assert (
        format_when(Item(title="x", line=1, date=dt.date(2019, 12, 31), end_date=dt.date(2020, 1, 2)))
        == "31 December 2019 \u2013 2 January 2020"
    )


def test_workspace_template_overrides_builtin_file_by_file(tmp_path: Path, example_issue: Issue) -> None:
    (tmp_path / "mailout.toml").write_text("", encoding="utf-8")
    override = tmp_path / "templates" / "email" / "footer.mjml.j2"
    override.parent.mkdir(parents=True)
    override.write_text(
        '<mj-section><mj-column><mj-text><p>Custom footer</p><a href="{{ placeholder.unsubscribe_url }}">Leave</a>'
        "</mj-text></mj-column></mj-section>\n",
        encoding="utf-8",
    )
    settings = load_settings(tmp_path, env={})
    variant = render_variant(example_issue, settings, Segment.PUBLIC)
    assert "Custom footer" in variant.html
    assert "View this email in your browser" in variant.html, "the other templates stay built in"


def test_broken_template_names_file_and_line(tmp_path: Path, example_issue: Issue) -> None:
    (tmp_path / "mailout.toml").write_text("", encoding="utf-8")
    broken = tmp_path / "templates" / "email" / "sections" / "news.mjml.j2"
    broken.parent.mkdir(parents=True)
    broken.write_text("<mj-section>\n{{ items | nosuchfilter }}\n</mj-section>\n", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"news\.mjml\.j2:2: template syntax error: .*nosuchfilter"):
        render_variant(example_issue, load_settings(tmp_path, env={}), Segment.MEMBER)
    broken.write_text("<mj-section>\n\n{{ no_such_variable.attr }}\n</mj-section>\n", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"news\.mjml\.j2:3: template error: .*no_such_variable"):
        render_variant(example_issue, load_settings(tmp_path, env={}), Segment.MEMBER)


def test_size_warning_before_gmail_clips(example_issue: Issue, tmp_path: Path) -> None:
    (tmp_path / "mailout.toml").write_text("[preview]\nhtml_warn_bytes = 1000\n", encoding="utf-8")
    variant = render_variant(example_issue, load_settings(tmp_path, env={}), Segment.MEMBER)
    assert any("Gmail clips" in w.message for w in variant.warnings)


def test_rendering_prints_nothing(
    example_issue: Issue, repo_settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    render_issue(example_issue, repo_settings)
    out, err = capfd.readouterr()
    assert out == "" and err == "", "premailer/cssutils must not flood the terminal"


def test_markdown_refuses_script_links() -> None:
    rendered = markup.to_html("[click](javascript:alert(1)) and [ok](https://example.org)")
    assert 'href="javascript' not in rendered and 'href="https://example.org"' in rendered
    assert 'href="https://example.org"' in markup.to_html("[ok](https://example.org)")
    assert any("not allowed" in m for m, _ in markup.lint("see [the site](www.example.org)"))
    problems = list(markup.lint("[click](javascript:alert(1))"))
    assert any("not allowed" in message for message, _ in problems)


def test_shared_fields_may_not_name_members_only_items(tmp_path: Path) -> None:
    folder = tmp_path / "mention"
    folder.mkdir()
    (folder / "issue.yaml").write_text(
        "subject: S\npreheader: 'Inside: the Harm reduction strategies call'\ndate: 2020-01-01\nsections:\n"
        "  - kind: calls\n    members_only: true\n    items:\n"
        "      - {title: Harm reduction strategies, link: 'https://example.org/closed'}\n",
        encoding="utf-8",
    )
    with pytest.raises(IssueError, match=r"issue.yaml:2: field 'preheader' mentions the members-only item"):
        load_issue(folder / "issue.yaml")
