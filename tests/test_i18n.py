"""Variants in each language: the catalogs, dates, countries, direction, workspace overrides."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html as htmlmod
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailout import i18n
from mailout.config import Settings, load_settings
from mailout.errors import ConfigError
from mailout.issues import Issue, load_issue
from mailout.links import Links
from mailout.preview import write_preview
from mailout.render import Recipient, Variant, render_issue, render_language, render_variant
from mailout.segments import Segment

NOBODY = Recipient("", "https://news.example/u/1", "https://news.example/v/1", "https://news.example/p/1")
ALICE = Recipient("Alice", "https://news.example/u/2", "https://news.example/v/2", "https://news.example/p/2")
TRANSLATED = ("fr", "es", "de", "it")


def workspace(tmp_path: Path, toml: str = "") -> Settings:
    """Return the settings of a workspace with the built-in texts (and a postal address)."""
    address = 'postal_address = "1 Main Street"\n'
    if "[newsletter]\n" in toml:
        toml = toml.replace("[newsletter]\n", "[newsletter]\n" + address, 1)
    else:
        toml = "[newsletter]\n" + address + toml
    (tmp_path / "mailout.toml").write_text(toml, encoding="utf-8")
    return load_settings(tmp_path, env={})


def without_defaults(issue: Issue) -> Issue:
    """The issue as the author wrote it: no section title, no link label (the template's defaults)."""
    sections = tuple(
        dataclasses.replace(s, title="", items=tuple(dataclasses.replace(i, link_label="") for i in s.items))
        for s in issue.sections
    )
    return dataclasses.replace(issue, sections=sections)


def sample_issue(folder: Path) -> Issue:
    """An issue of every section kind, a members-only section and item, and author text in French.

    The author's text uses none of the template's English words, so that any English
    word found in a French variant can only come from the template.
    """
    item = {
        "title": "Rencontre à Lyon",
        "summary": "Texte du résumé, sans mot anglais.",
        "date": "2019-01-16",
        "end_date": "2019-01-17",
        "city": "Essen",
        "country": "DE",
        "link": "https://example.org/a",
    }
    data = {
        "subject": "Numéro d’hiver",
        "preheader": "Le programme du trimestre",
        "date": "2019-01-10",
        "number": 112,
        "intro": "Bonne année à toutes et à tous.",
        "sections": [
            {
                "kind": "agenda",
                "items": [
                    item,
                    {
                        **item,
                        "title": "Visite à Madrid",
                        "link": "https://example.org/m",
                        "members_only": True,
                    },
                ],
            },
            {"kind": "news", "items": [{**item, "title": "Nouvelles de Nice"}]},
            {
                "kind": "calls",
                "members_only": True,
                "items": [{**item, "title": "Appel fermé", "link": "https://example.org/c"}],
            },
            {"kind": "good_practice", "items": [{**item, "title": "Pratique de Malmö"}]},
            {"kind": "publications", "items": [{**item, "title": "Rapport annuel"}]},
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "issue.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return without_defaults(load_issue(folder / "issue.yaml"))


def in_language(issue: Issue, language: str) -> Issue:
    return dataclasses.replace(issue, language=language)


def readable(variant: Variant, recipient: Recipient = NOBODY) -> tuple[str, str]:
    """Return what a reader sees and hears of the HTML (text and attributes), and the text part."""
    html_out, text_out = variant.personalize(recipient)
    body = html_out.split("<body", 1)[1]
    attributes = " ".join(re.findall(r'(?:aria-label|alt|title)="([^"]*)"', body))
    visible = htmlmod.unescape(re.sub(r"<[^>]+>", " ", body))
    # ASCII whitespace only: the no-break spaces of French typography stay.
    return re.sub(r"[ \t\r\n]+", " ", f"{visible} {htmlmod.unescape(attributes)}"), text_out


def english_words(language: str, settings: Settings) -> list[str]:
    """Return every English msgid (its words, without placeholders) the language translates differently."""
    catalog = i18n.translations(settings, language)
    words = []
    for message in i18n.messages(settings):
        forms = message if isinstance(message, tuple) else (message,)
        translated = catalog.ngettext(*message, 2) if isinstance(message, tuple) else catalog.gettext(message)
        english = message[1] if isinstance(message, tuple) else message
        if translated == english:
            continue  # the same word in both ("Agenda", "Publications" in French)
        for form in forms:
            for piece in re.split(r"%\(\w+\)[sd]", form):
                if len(piece.strip(" ,.:")) > 2:
                    words.append(piece.strip())
    return words


# -- dates, countries, names ------------------------------------------------------


def test_dates_in_each_language() -> None:
    day = dt.date(2019, 1, 16)
    assert i18n.format_date(day, "en") == "16 January 2019"
    assert i18n.format_date(day, "fr") == "16 janvier 2019"
    assert i18n.format_date(day, "de") == "16. Januar 2019"
    assert i18n.format_date(day, "es") == "16 de enero de 2019"
    assert i18n.format_date(dt.date(2019, 2, 1), "fr-BE") == "1 février 2019"


@pytest.mark.parametrize(
    ("language", "start", "end", "expected"),
    [
        ("en", (2019, 2, 27), (2019, 2, 28), "27\u201328 February 2019"),
        ("en", (2019, 12, 31), (2020, 1, 2), "31 December 2019 \u2013 2 January 2020"),
        ("fr", (2019, 1, 16), (2019, 1, 17), "16\u201317 janvier 2019"),
        ("fr", (2019, 1, 30), (2019, 2, 2), "30 janvier \u2013 2 f\u00e9vrier 2019"),
        ("fr", (2019, 12, 30), (2020, 1, 2), "30 d\u00e9cembre 2019 \u2013 2 janvier 2020"),
        ("de", (2019, 2, 27), (2019, 3, 1), "27. Februar \u2013 1. M\u00e4rz 2019"),
        ("es", (2019, 1, 16), (2019, 1, 17), "16\u201317 de enero de 2019"),
        ("it", (2019, 1, 30), (2019, 2, 2), "30 gennaio \u2013 2 febbraio 2019"),
        ("fr", (2019, 1, 16), (2019, 1, 16), "16 janvier 2019"),
    ],
)
def test_date_ranges_the_local_way(
    language: str, start: tuple[int, int, int], end: tuple[int, int, int], expected: str
) -> None:
    assert i18n.format_date_range(dt.date(*start), dt.date(*end), language) == expected


def test_country_and_language_names() -> None:
    assert i18n.country_name("DE", "fr") == "Allemagne"
    assert i18n.country_name("DE", "de") == "Deutschland"
    assert i18n.country_name("DE", "en") == "Germany"
    assert i18n.country_name("GB", "it") == "Regno Unito"
    assert i18n.country_name("QQ", "fr") == "QQ", "an unknown code stays as written"
    assert i18n.language_name("fr") == "français" and i18n.language_name("de") == "Deutsch"
    assert i18n.direction("ar") == "rtl" and i18n.direction("he") == "rtl" and i18n.direction("fr") == "ltr"


# -- the catalogs -----------------------------------------------------------------


def test_shipped_catalogs_translate_every_template_word() -> None:
    # A new _("...") in a built-in template without its translations fails here:
    # run `scripts/catalogs update`, then translate.
    assert i18n.available_languages() == ["en", "de", "es", "fr", "it"]
    for language in TRANSLATED:
        assert i18n.missing_strings(None, language) == [], language


@pytest.mark.parametrize("language", TRANSLATED)
def test_translations_keep_their_placeholders(language: str) -> None:
    from babel.messages.pofile import read_po

    path = i18n.LOCALE_DIR / language / "LC_MESSAGES" / "email.po"
    with path.open("rb") as handle:
        catalog = read_po(handle)
    assert not catalog.fuzzy
    for message in catalog:
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        wanted = set(re.findall(r"%\(\w+\)[sd]", ids[0]))
        for string in strings:
            assert string and set(re.findall(r"%\(\w+\)[sd]", string)) == wanted, (message.id, string)
            assert "%" not in re.sub(r"%\(\w+\)[sd]", "", string), f"a lone % breaks formatting: {string!r}"


@pytest.mark.parametrize("language", TRANSLATED)
def test_no_english_template_word_in_a_translated_variant(tmp_path: Path, language: str) -> None:
    settings = workspace(tmp_path)
    issue = in_language(sample_issue(tmp_path / "issues" / "x"), language)
    words = english_words(language, settings)
    assert "View this email in your browser" in words and "For members only" in words
    assert "Dear" in words and "more items in this issue for members of the network" in words
    catalog = i18n.translations(settings, language)
    for segment in Segment:
        variant = render_variant(issue, settings, segment)
        assert variant.language == language
        assert f'<html lang="{language}" dir="ltr"' in variant.html
        assert not variant.warnings, variant.warnings
        seen, text = readable(variant)
        for word in words:
            for form in (word, word.upper()):
                found = re.search(rf"(?<!\w){re.escape(form)}(?!\w)", f"{seen}\n{text}")
                assert not found, f"English {form!r} in the {language} {segment} variant"
        for english in ("Unsubscribe", "View this email in your browser", "Read the publication"):
            assert catalog.gettext(english) in seen, english
        assert catalog.gettext("View in your browser") in text
        greeting = catalog.gettext("Dear %(name)s,") % {"name": catalog.gettext("reader")}
        assert greeting in seen and greeting in text
        assert i18n.format_date_range(dt.date(2019, 1, 16), dt.date(2019, 1, 17), language) in text
        assert f"Essen ({i18n.country_name('DE', language)})" in seen
    public = render_variant(issue, settings, Segment.PUBLIC)
    assert i18n.members_teaser(settings, language, 2) in readable(public)[0]


def test_a_french_variant_in_the_example_workspace(example_issue: Issue, repo_settings: Settings) -> None:
    variant = render_variant(
        in_language(without_defaults(example_issue), "fr"), repo_settings, Segment.PUBLIC
    )
    seen, text = readable(variant, ALICE)
    assert "Bonjour Alice," in seen and "Bonjour Alice," in text
    assert "Afficher cet e-mail dans votre navigateur" in seen and "Se désabonner" in seen
    assert "16\u201317 janvier 2019 · Essen (Allemagne)" in seen
    assert "10 janvier 2019 · n\u00b0\u00a0112" in seen
    assert "Lettre d’information de l’Efus" in seen, "[newsletter.translations.fr] name"
    assert "Vous recevez cette lettre d’information parce que vous êtes en contact" in seen
    assert re.search(r"\d autres articles dans ce numéro pour les membres du réseau\u00a0: rejoignez", seen)
    assert "ACTUALITÉS" in text and "Lire la suite\u00a0: https://" in text
    assert not variant.warnings


def test_german_umlauts_survive_mjml_and_inlining(tmp_path: Path) -> None:
    settings = workspace(tmp_path)
    variant = render_variant(in_language(sample_issue(tmp_path / "x"), "de"), settings, Segment.MEMBER)
    seen, text = readable(variant)
    for word in (
        "Veröffentlichungen",
        "Nur für Mitglieder",
        "Zur Veröffentlichung",
        "Diese E-Mail im Browser",
    ):
        assert word in seen, word
    assert "VERÖFFENTLICHUNGEN" in text and "(nur für Mitglieder)" in text
    assert "Hallo zusammen," in text
    assert "16.\u201317. Januar 2019 - Essen (Deutschland)" in text


def test_english_words_are_unchanged(example_issue: Issue, repo_settings: Settings) -> None:
    variant = render_variant(without_defaults(example_issue), repo_settings, Segment.PUBLIC)
    seen, text = readable(variant, ALICE)
    assert variant.language == "en" and '<html lang="en" dir="ltr"' in variant.html
    for expected in (
        "View this email in your browser",
        "10 January 2019 · No. 112",
        "Dear Alice,",
        "Information: SOLIDIFY, study visit",
        "Read more ›",
        "Unsubscribe · Preferences · View in your browser",
        "16\u201317 January 2019 · Essen (Germany)",
        "You receive this newsletter because you are in touch with the European Forum for Urban Security.",
    ):
        assert expected in seen, expected
    assert "View in your browser: https://news.example/v/2" in text
    assert "Unsubscribe: https://news.example/u/2" in text
    assert "Efus Newsletter - 10 January 2019 - No. 112" in text and "\nAGENDA\n------\n" in text
    assert "3 more items in this issue for members of the network: join Efus" in text
    assert not variant.warnings


def test_members_teaser_plural_forms(tmp_path: Path) -> None:
    settings = workspace(tmp_path)
    assert i18n.members_teaser(settings, "en", 1) == "1 more item in this issue for members of the network"
    assert i18n.members_teaser(settings, "en", 3) == "3 more items in this issue for members of the network"
    assert i18n.members_teaser(settings, "fr", 1) == (
        "1 autre article de ce numéro est réservé aux membres du réseau"
    )
    assert i18n.members_teaser(settings, "fr", 4) == (
        "4 autres articles de ce numéro sont réservés aux membres du réseau"
    )
    assert i18n.members_teaser(settings, "de", 1).startswith("1 weiterer Beitrag")
    assert i18n.members_teaser(settings, "de", 2).startswith("2 weitere Beiträge")
    assert i18n.members_teaser(settings, "fr", 0) == ""
    own = workspace(
        tmp_path,
        '[newsletter]\nmembers_teaser = "{count} more for members"\n'
        '[newsletter.translations.fr]\nmembers_teaser = "{count} article{s} de plus"\n',
    )
    assert i18n.members_teaser(own, "fr", 1) == "1 article de plus"
    assert i18n.members_teaser(own, "fr-BE", 2) == "2 articles de plus", "the base language's table"
    assert i18n.members_teaser(own, "de", 2) == "2 more for members", "no German: the setting, warned"


# -- the workspace's own strings and texts --------------------------------------------


def write_po(path: Path, entries: dict[str, str], language: str = "fr") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f'msgid "{k}"\nmsgstr "{v}"\n\n' for k, v in entries.items())
    path.write_text(
        f'msgid ""\nmsgstr ""\n"Language: {language}\\n"\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n{body}',
        encoding="utf-8",
    )


def test_a_workspace_catalog_wins_string_by_string(tmp_path: Path) -> None:
    settings = workspace(tmp_path)
    issue = in_language(sample_issue(tmp_path / "x"), "fr")
    po = tmp_path / "locale" / "fr" / "LC_MESSAGES" / "email.po"
    write_po(po, {"Unsubscribe": "Quitter la liste"})
    seen, _ = readable(render_variant(issue, settings, Segment.PUBLIC))
    assert "Quitter la liste" in seen and "Se désabonner" not in seen
    assert "Afficher cet e-mail dans votre navigateur" in seen, "the other strings stay built in"
    # A changed file is read again, in the same process.
    time.sleep(0.01)
    write_po(po, {"Unsubscribe": "Ne plus recevoir cette lettre"})
    assert i18n.gettext(settings, "fr", "Unsubscribe") == "Ne plus recevoir cette lettre"
    # fr-BE readers get the French override; a fr_BE catalog of their own wins over it.
    assert i18n.gettext(settings, "fr-BE", "Unsubscribe") == "Ne plus recevoir cette lettre"
    write_po(tmp_path / "locale" / "fr_BE" / "LC_MESSAGES" / "email.po", {"Unsubscribe": "Se désinscrire"})
    assert i18n.gettext(settings, "fr-BE", "Unsubscribe") == "Se désinscrire"
    assert i18n.gettext(settings, "fr-BE", "Read more") == "Lire la suite"


def test_a_string_no_catalog_has_is_english_and_warned(tmp_path: Path) -> None:
    settings = workspace(tmp_path)
    footer = tmp_path / "templates" / "email" / "footer.mjml.j2"
    footer.parent.mkdir(parents=True)
    footer.write_text(
        '<mj-section><mj-column><mj-text><p><a href="{{ placeholder.unsubscribe_url }}">'
        '{{ _("Manage your subscription") }}</a> {{ reason }}</p></mj-text></mj-column></mj-section>\n',
        encoding="utf-8",
    )
    assert i18n.missing_strings(settings, "fr") == ["Manage your subscription"]
    assert i18n.missing_strings(settings, "en") == []
    variant = render_variant(in_language(sample_issue(tmp_path / "x"), "fr"), settings, Segment.MEMBER)
    assert "Manage your subscription" in variant.html
    warnings = [w.message for w in variant.warnings]
    assert any("no 'fr' translation" in w and "'Manage your subscription'" in w for w in warnings), warnings
    # The workspace's catalog can supply it.
    write_po(tmp_path / "locale" / "fr" / "LC_MESSAGES" / "email.po", {"Manage your subscription": "Gérer"})
    variant = render_variant(in_language(sample_issue(tmp_path / "x"), "fr"), settings, Segment.MEMBER)
    assert ">Gérer<" in variant.html and not variant.warnings


def test_newsletter_texts_per_language(tmp_path: Path) -> None:
    settings = workspace(
        tmp_path,
        '[newsletter]\nreason = "You signed up at the conference."\n'
        '[newsletter.translations.fr]\nreason = "Vous vous êtes inscrit au congrès."\n',
    )
    issue = sample_issue(tmp_path / "x")
    french = render_variant(in_language(issue, "fr"), settings, Segment.MEMBER)
    assert "Vous vous êtes inscrit au congrès." in french.text and not french.warnings
    # No German text: the English one is shown, and said.
    german = render_variant(in_language(issue, "de"), settings, Segment.MEMBER)
    assert "You signed up at the conference." in german.text
    assert [w.message for w in german.warnings] == [
        "newsletter.reason is shown in 'en' in the 'de' variant: add reason = \"...\" to a"
        " [newsletter.translations.de] table"
    ]
    # The built-in default reason and greeting fallback come from the catalog.
    assert "Hallo zusammen," in german.personalize(NOBODY)[1]
    assert german.greeting_fallback == "zusammen"


@pytest.mark.parametrize(
    ("toml", "error"),
    [
        (
            "[newsletter.translations.fr]\nreasons = 'x'\n",
            r"translations\.fr\.reasons: unknown text \(did you mean 'reason'",
        ),
        (
            "[newsletter.translations.FR]\nreason = 'x'\n",
            r"translations\.FR: not a language tag .*write 'fr'",
        ),
        ("[newsletter.translations.fr]\nmembers_teaser = '{n} more'\n", r"only \{count\} and \{s\}"),
        ("[newsletter]\ntranslations = 'fr'\n", r"one \[newsletter.translations.<tag>\] table each"),
    ],
)
def test_bad_translation_tables_are_refused(tmp_path: Path, toml: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        workspace(tmp_path, toml)


# -- languages without a catalog, right to left, untranslated fields ----------------


def test_right_to_left_language_without_a_catalog(tmp_path: Path) -> None:
    settings = workspace(tmp_path)
    variant = render_variant(in_language(sample_issue(tmp_path / "x"), "ar"), settings, Segment.PUBLIC)
    assert '<html lang="ar" dir="rtl"' in variant.html
    assert 'class="mo-body" role="article" lang="ar" dir="rtl"' in variant.html
    # The text aligned right and the columns ordered right to left, as MJML does not by itself.
    subject = re.search(r'(<div[^>]*>)\s*<h1 class="mo-subject"', variant.html)
    assert subject and "text-align:right" in subject.group(1)
    assert "direction:rtl" in variant.html and "direction:ltr" not in variant.html
    seen, _ = readable(variant)
    assert "View this email in your browser" in seen, "no Arabic catalog: English words"
    assert "\u0623\u0644\u0645\u0627\u0646\u064a\u0627" in seen, "the country named in Arabic"
    assert any("no catalog for language 'ar'" in w.message for w in variant.warnings)


def test_an_unknown_language_renders_in_english_and_says_so(tmp_path: Path) -> None:
    settings = workspace(tmp_path)
    variant = render_variant(in_language(sample_issue(tmp_path / "x"), "nl"), settings, Segment.PUBLIC)
    assert '<html lang="nl" dir="ltr"' in variant.html and "Unsubscribe" in variant.html
    assert "16\u201317 januari 2019" in variant.text, "dates come from CLDR even without a catalog"
    messages = [w.message for w in variant.warnings]
    assert any(
        m.startswith("no catalog for language 'nl'") and "locale/nl/LC_MESSAGES" in m for m in messages
    )


def test_untranslated_fields_carry_the_default_language(tmp_path: Path) -> None:
    settings = workspace(tmp_path)
    issue = sample_issue(tmp_path / "x")
    first = issue.sections[1]
    item = dataclasses.replace(first.items[0], untranslated=frozenset({"title", "summary", "link_label"}))
    section = dataclasses.replace(first, items=(item,), untranslated=frozenset({"intro"}), intro="Some news.")
    issue = dataclasses.replace(
        issue, sections=(section,), untranslated=frozenset({"subject"}), language="fr"
    )
    out = render_variant(issue, settings, Segment.MEMBER, source_language="en").html
    assert re.search(r'<h1 class="mo-subject" lang="en"[^>]*>Numéro', out)
    assert re.search(r'<h3 class="mo-item-title" lang="en"[^>]*>Nouvelles de Nice', out)
    assert re.search(r'<div lang="en"[^>]*><p[^>]*>Texte du résumé', out)
    assert re.search(r'<div lang="en"[^>]*><p[^>]*>Some news', out)
    assert re.search(r'<a class="mo-more" href="https://example.org/a" lang="en"', out)
    assert out.count('lang="en"') == 5
    arabic = render_variant(dataclasses.replace(issue, language="ar"), settings, Segment.MEMBER).html
    assert re.search(r'<h3 class="mo-item-title" lang="en" dir="ltr"', arabic)


def test_render_issue_gives_each_segment_in_each_language(tmp_path: Path) -> None:
    settings = workspace(tmp_path)
    issue = dataclasses.replace(sample_issue(tmp_path / "x"), languages=("en", "fr", "de"))
    variants = render_issue(issue, settings)
    assert list(variants) == [(s, lang) for lang in ("en", "fr", "de") for s in Segment]
    for (segment, language), variant in variants.items():
        assert variant.segment is segment and variant.language == language
        assert f'<html lang="{language}"' in variant.html
    assert "Se désabonner" in variants[Segment.PUBLIC, "fr"].html
    assert "Abmelden" in variants[Segment.MEMBER, "de"].html
    assert "Unsubscribe" in variants[Segment.MEMBER, "en"].html
    # Each render installs its own language: the last one does not leak into the next.
    again = render_variant(in_language(issue, "en"), settings, Segment.MEMBER)
    assert "Unsubscribe" in again.html and "Abmelden" not in again.html


def test_preview_writes_every_language(tmp_path: Path) -> None:
    settings = workspace(tmp_path)
    issue = dataclasses.replace(sample_issue(tmp_path / "x"), languages=("en", "fr"))
    files = write_preview(issue, settings, tmp_path / "build")
    assert sorted(f.html_path.name for f in files) == [
        "member-fr.html",
        "member.html",
        "public-fr.html",
        "public.html",
    ]
    links = Links(settings)
    for file in files:
        page = file.html_path.read_text(encoding="utf-8")
        language = "fr" if "-fr" in file.html_path.name else "en"
        # The pictures are made relative to show before they are published; the view link
        # (the language's page, under the same prefix) stays whole.
        assert f'href="{links.issue(issue.slug, language)}"' in page, file.html_path.name
        assert 'href="en"' not in page and 'href="fr"' not in page


# -- in a browser -------------------------------------------------------------------

FRAME_JS = """
() => ({
  scroll: document.documentElement.scrollWidth,
  text: document.body.innerText,
  lang: document.documentElement.lang,
  overflowing: Array.from(document.body.querySelectorAll('*'))
    .filter(e => e.getBoundingClientRect().width > 0 && getComputedStyle(e).display !== 'none')
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
    .map(e => e.tagName + '.' + e.className),
})
"""


@pytest.mark.browser
@pytest.mark.parametrize("width", [600, 375])
def test_french_variant_in_chromium(
    browser: Any, tmp_path: Path, example_issue: Issue, repo_settings: Settings, width: int
) -> None:
    issue = dataclasses.replace(without_defaults(example_issue), languages=("en", "fr"))
    files = write_preview(issue, repo_settings, tmp_path / "build")
    french = next(f for f in files if f.variant.language == "fr" and f.variant.segment is Segment.PUBLIC)
    # Headless Chromium makes no window narrower than 500 px: the phone width is a frame's.
    host = french.html_path.parent / "frame.html"
    host.write_text(
        f'<!doctype html><html><body style="margin:0"><iframe name="mail" src="{french.html_path.name}"'
        f' style="width:{width}px;height:4000px;border:0"></iframe></body></html>',
        encoding="utf-8",
    )
    page = browser.new_page(viewport={"width": max(width, 600), "height": 900})
    page.goto(host.as_uri())
    page.wait_for_load_state("load")
    frame = page.frame(name="mail")
    assert frame is not None
    found = frame.evaluate(FRAME_JS)
    assert found["lang"] == "fr"
    assert found["scroll"] <= width, f"horizontal scrolling at {width}px: {found['scroll']}px wide"
    assert not found["overflowing"], found["overflowing"]
    text = " ".join(found["text"].split())
    for words in (
        "Afficher cet e-mail dans votre navigateur",
        "Actualités",
        "Lire la suite",
        "Se désabonner",
    ):
        assert words in text, words
    assert "16–17 janvier 2019 · Essen (Allemagne)" in text
    shot = tmp_path / f"french-{width}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()


def test_no_break_spaces_and_combining_accents_survive_in_attributes(tmp_path: Path) -> None:
    # mjml-python writes such characters into attributes as Rust escapes ("\u{a0}").
    settings = workspace(tmp_path)
    issue = in_language(sample_issue(tmp_path / "x"), "fr")
    section = issue.sections[1]
    title = "Bilan\u00a0: Mont-Saint-Miche\u0301l"  # a no-break space, and a decomposed é
    item = dataclasses.replace(
        section.items[0], title=title, image="https://img.example/a.png", image_alt=title
    )
    issue = dataclasses.replace(issue, sections=(dataclasses.replace(section, items=(item,)),))
    out = render_variant(issue, settings, Segment.MEMBER).html
    assert "\\u{" not in out
    labels = [htmlmod.unescape(v) for v in re.findall(r'aria-label="([^"]*)"', out)]
    assert f"Lire la suite\u00a0: {title}" in labels
    assert title in [htmlmod.unescape(v) for v in re.findall(r'alt="([^"]*)"', out)]


def test_issue_check_warns_of_a_string_without_translation(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mailout.cli import cli
    from mailout.workspace import init_workspace

    init_workspace(tmp_path)
    issue = tmp_path / "issues" / "first-issue" / "issue.yaml"
    issue.write_text("language: fr\n" + issue.read_text(encoding="utf-8"), encoding="utf-8")
    footer = tmp_path / "templates" / "email" / "footer.mjml.j2"
    footer.write_text(
        '<mj-section><mj-column><mj-text><p>{{ _("Manage your subscription") }} {{ reason }}</p>'
        '<a href="{{ placeholder.unsubscribe_url }}">x</a></mj-text></mj-column></mj-section>\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["--workspace", str(tmp_path), "issue", "check", "first-issue"])
    assert result.exit_code == 0, result.output
    assert "1 template string with no 'fr' translation, shown in English: 'Manage your subscription'" in (
        result.stderr
    )
    assert "no catalog" not in result.stderr, "French has a catalog"


def test_every_sender_marks_fallback_text_with_the_issues_default_language(tmp_path: Path) -> None:
    """An issue written first in French, in a workspace whose newsletter.language is English:
    the English variant's untranslated text is French, and says so, in the preview (render_issue),
    in a test message and in a dispatch (render_language, which both call) alike."""
    settings = workspace(tmp_path)
    folder = tmp_path / "issues" / "fr-first"
    folder.mkdir(parents=True)
    (folder / "issue.yaml").write_text(
        "languages: [fr, en]\n"
        'subject: "Numéro de janvier"\n'
        'subject.en: "January issue"\n'
        'preheader: "Les nouvelles"\n'
        'preheader.en: "The news"\n'
        "date: 2019-01-10\n"
        "intro: Texte seulement en français.\n"
        "sections:\n"
        "  - kind: news\n"
        "    items:\n"
        '      - title: "Rencontre à Lyon"\n'
        '        title.en: "Meeting in Lyon"\n',
        encoding="utf-8",
    )
    issue = load_issue(folder / "issue.yaml")
    previewed = render_issue(issue, settings)[Segment.PUBLIC, "en"].html
    sent = render_language(issue, settings, Segment.PUBLIC, "en").html
    for html in (previewed, sent):
        assert re.search(r'<div lang="fr"[^>]*><p[^>]*>Texte seulement', html), "the intro is French"
        assert html.count('lang="fr"') == 1, "only the intro is untranslated"


# -- the team's catalogs are checked like its settings -----------------------------


def check_in_french(tmp_path: Path, po_text: bytes) -> tuple[int, str]:
    from click.testing import CliRunner

    from mailout.cli import cli
    from mailout.workspace import init_workspace

    init_workspace(tmp_path)
    issue = tmp_path / "issues" / "first-issue" / "issue.yaml"
    issue.write_text("language: fr\n" + issue.read_text(encoding="utf-8"), encoding="utf-8")
    po = tmp_path / "locale" / "fr" / "LC_MESSAGES" / "email.po"
    po.parent.mkdir(parents=True)
    po.write_bytes(po_text)
    result = CliRunner().invoke(cli, ["--workspace", str(tmp_path), "issue", "check", "first-issue"])
    return result.exit_code, result.output + result.stderr


@pytest.mark.parametrize(
    "po_text",
    [
        b'msgid "Unsubscribe"\nmsgstr "x\nmsgid\n',  # an unterminated string
        b"\xff\xfemsgid",  # not UTF-8
    ],
)
def test_a_malformed_workspace_catalog_is_one_clear_error(tmp_path: Path, po_text: bytes) -> None:
    code, out = check_in_french(tmp_path, po_text)
    assert code == 1 and "Traceback" not in out
    assert "locale/fr/LC_MESSAGES/email.po" in out and "catalog" in out


def test_a_translation_with_a_placeholder_its_english_lacks_is_refused_with_its_line(tmp_path: Path) -> None:
    po = (
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
        'msgid "Unsubscribe"\nmsgstr "Quitter"\n\n'
        'msgid "No. %(number)s"\nmsgstr "N° %(nombre)s"\n'
    )
    code, out = check_in_french(tmp_path, po.encode())
    assert code == 1 and "Traceback" not in out
    assert "email.po:8: the translation of 'No. %(number)s' uses %(nombre)s" in out


def test_catalog_text_is_escaped_in_html_and_kept_in_text(tmp_path: Path) -> None:
    settings = workspace(tmp_path)
    issue = in_language(sample_issue(tmp_path / "x"), "fr")
    po = tmp_path / "locale" / "fr" / "LC_MESSAGES" / "email.po"
    write_po(po, {"Unsubscribe": "<img src=x onerror=alert(1)>Quitter & partir"})
    variant = render_variant(issue, settings, Segment.PUBLIC)
    assert "<img src=x" not in variant.html
    assert "&lt;img src=x onerror=alert(1)&gt;Quitter &amp; partir" in variant.html
    assert "<img src=x onerror=alert(1)>Quitter & partir" in variant.text


def test_a_broken_web_catalog_stops_the_app_at_start_and_one_broken_later_shows_english(
    tmp_path: Path,
) -> None:
    from mailout.db import upgrade
    from mailout.web import create_app

    settings = dataclasses.replace(workspace(tmp_path), secret_key="k" * 32)
    upgrade(settings.database_url())
    po = tmp_path / "locale" / "fr" / "LC_MESSAGES" / "web.po"
    po.parent.mkdir(parents=True)
    po.write_text('msgid "Unsubscribe"\nmsgstr "x\nmsgid\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"web\.po"):
        create_app(settings)
    write_po(po, {"Past issues": "Anciens numéros"})
    app = create_app(settings)
    time.sleep(0.01)
    po.write_text('msgid "Unsubscribe"\nmsgstr "x\nmsgid\n', encoding="utf-8")  # broken while it runs
    try:
        with app.test_client() as client:
            response = client.get("/issues/?lang=fr")
    finally:
        app.extensions["mailout"].engine.dispose()
    assert response.status_code == 200
