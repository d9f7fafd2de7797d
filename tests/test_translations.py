"""Issues in several languages: the format, what check reports, localized issues, starting a translation.

Every case starts from BASE, an issue in English, French and Spanish with every
text translated (so it loads with no warning), and changes one thing.
"""

from __future__ import annotations

import difflib
import fcntl
import os
import re
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailout import markup
from mailout.cli import cli
from mailout.config import Settings
from mailout.errors import IssueError, Problem, Severity, WorkspaceError
from mailout.issues import Issue, load_issue
from mailout.render import Recipient, render_variant
from mailout.segments import Segment
from mailout.workspace import start_translation
from tests.conftest import DATA, REPO, edit_config

BASE = """\
subject: "Newsletter – March 2019"
subject.fr: "Lettre – mars 2019"
subject.es: "Boletín – marzo de 2019"
preheader: "Events and news"
preheader.fr: "Événements et nouvelles"
preheader.es: "Eventos y noticias"
date: 2019-03-01
languages: [en, fr, es]
sections:
  - kind: agenda
    items:
      - title: "Oslo conference"
        title.fr: "Conférence d'Oslo"
        title.es: "Conferencia de Oslo"
        date: 2019-03-27
        city: Oslo
        city.fr: Oslo
        city.es: Oslo
        country: NO
        link: https://example.org/oslo
        link.fr: https://example.org/fr/oslo
  - kind: news
    title: "Network news"
    title.fr: "Nouvelles du réseau"
    title.es: "Noticias de la red"
    items:
      - title: "A report"
        title.fr: "Un rapport"
        title.es: "Un informe"
        summary: |
          The report shows **what works**.
        summary.fr: |
          Le rapport montre **ce qui marche**.
        summary.es: |
          El informe muestra **lo que funciona**.
        link: https://example.org/report
        image: report.png
        image.fr: report-fr.png
        image_alt: "The report's cover"
        image_alt.fr: "La couverture du rapport"
        image_alt.es: "La portada del informe"
"""


READER = Recipient(
    "Ann",
    "https://news.example/unsubscribe/t",
    "https://news.example/issues/x?t=v",
    "https://news.example/preferences/t",
)


def write(folder: Path, text: str) -> Path:
    """Write ``text`` as ``folder/issue.yaml`` beside the pictures BASE names."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("report.png", "report-fr.png"):
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    path = folder / "issue.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def changed(old: str, new: str, text: str = BASE) -> str:
    """Return ``text`` with one change."""
    assert text.count(old) == 1, old
    return text.replace(old, new)


def line_of(text: str, needle: str) -> int:
    """Return the line (from 1) of the only line of ``text`` that holds ``needle``."""
    found = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(found) == 1, (needle, found)
    return found[0]


def problems_of(path: Path, *, require_translations: bool = False) -> list[Problem]:
    """Return the errors, or else the warnings, of loading ``path``."""
    try:
        issue = load_issue(path, require_translations=require_translations)
    except IssueError as exc:
        return exc.problems
    return list(issue.warnings)


def check(workspace: Path, issue: str) -> Result:
    return CliRunner().invoke(cli, ["-C", str(workspace), "issue", "check", issue], catch_exceptions=False)


def translate(workspace: Path, slug: str, language: str) -> Result:
    args = ["-C", str(workspace), "issue", "new", slug, "--translate", language]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture
def base(tmp_path: Path) -> Issue:
    return load_issue(write(tmp_path / "base", BASE))


# --- the format -------------------------------------------------------------------


def test_base_loads_clean_with_its_languages(base: Issue) -> None:
    assert base.warnings == ()
    assert base.languages == ("en", "fr", "es")
    assert base.language == "en"
    assert base.variant_languages("de") == ("en", "fr", "es")
    assert base.subject == "Newsletter – March 2019"
    assert base.translations[("subject", "fr")] == "Lettre – mars 2019"
    report = base.sections[1].items[0]
    assert report.translations[("summary", "es")] == "El informe muestra **lo que funciona**."
    assert report.translations[("image", "fr")] == "report-fr.png"
    assert hash(base) == hash(load_issue(base.source)), "frozen and hashable, translations too"


def test_language_tags_are_made_canonical(tmp_path: Path) -> None:
    text = changed("languages: [en, fr, es]", "languages: [EN, fr_be, es]", BASE)
    text = text.replace(".fr:", ".fr-BE:")
    issue = load_issue(write(tmp_path / "tags", text))
    assert issue.languages == ("en", "fr-BE", "es")
    assert issue.localized("fr_BE").subject == "Lettre – mars 2019"


def test_languages_must_be_a_list(tmp_path: Path) -> None:
    text = changed("languages: [en, fr, es]", "languages: en fr es")
    problems = problems_of(write(tmp_path / "listless", text))
    assert (line_of(text, "languages:"), Severity.ERROR) in [(p.line, p.severity) for p in problems]
    assert any(
        "field 'languages' must list the issue's languages, the default first, e.g. [en, fr]" in p.message
        for p in problems
    )


def test_a_block_list_of_languages_names_each_entry_by_its_line(tmp_path: Path) -> None:
    text = changed("languages: [en, fr, es]", "languages:\n  - en\n  - fr\n  - klingon\n  - es", BASE)
    problems = problems_of(write(tmp_path / "block", text))
    assert [(p.line, p.severity) for p in problems] == [(line_of(text, "- klingon"), Severity.ERROR)]
    assert "field 'languages': 'klingon' is not a language tag such as en, fr or pt-BR" in problems[0].message


# case -> (what to replace in BASE, the replacement, the line's distinctive text, the message)
ERRORS: dict[str, tuple[str, str, str, str]] = {
    "garbage_tag": (
        "languages: [en, fr, es]",
        "languages: [en, fr, es, xx-1]",
        "languages:",
        "field 'languages': 'xx-1' is not a language tag such as en, fr or pt-BR",
    ),
    "duplicate_tag": (
        "languages: [en, fr, es]",
        "languages: [en, fr, es, FR]",
        "languages:",
        "field 'languages': fr is listed twice ('FR' is fr)",
    ),
    "language_and_languages": (
        "languages: [en, fr, es]\nsections:",
        "languages: [en, fr, es]\nlanguage: en\nsections:",
        "language: en",
        "both 'language' and 'languages': keep 'languages'",
    ),
    "date_per_language": (
        "date: 2019-03-01\n",
        "date: 2019-03-01\ndate.fr: 2019-03-02\n",
        "date.fr",
        "field 'date' is the same in every language, so it has no 'date.fr': write it once, as 'date'",
    ),
    "country_per_language": (
        "country: NO\n",
        "country: NO\n        country.fr: FR\n",
        "country.fr",
        "item 'Oslo conference': field 'country' is the same in every language",
    ),
    "end_date_per_language": (
        "date: 2019-03-27\n",
        "date: 2019-03-27\n        end_date: 2019-03-28\n        end_date.es: 2019-03-29\n",
        "end_date.es",
        "item 'Oslo conference': field 'end_date' is the same in every language",
    ),
    "members_only_per_language": (
        '    title: "Network news"\n',
        '    title: "Network news"\n    members_only.fr: true\n',
        "members_only.fr",
        "section 'Network news': field 'members_only' is the same in every language",
    ),
    "kind_per_language": (
        "  - kind: agenda\n",
        "  - kind: agenda\n    kind.fr: news\n",
        "kind.fr",
        "section 'Agenda': field 'kind' is the same in every language",
    ),
    "number_per_language": (
        "date: 2019-03-01\n",
        "date: 2019-03-01\nnumber: 3\nnumber.fr: 4\n",
        "number.fr",
        "field 'number' is the same in every language",
    ),
    "languages_per_language": (
        "languages: [en, fr, es]\n",
        "languages: [en, fr, es]\nlanguages.fr: [fr]\n",
        "languages.fr",
        "field 'languages' is the same in every language",
    ),
    "undeclared_language": (
        "        city.es: Oslo\n",
        "        city.es: Oslo\n        city.de: Oslo\n",
        "city.de",
        "item 'Oslo conference': 'city.de': de is not one of the issue's languages (en, fr, es);"
        " add de to 'languages' to translate into it",
    ),
    "undeclared_region": (
        "        city.es: Oslo\n",
        "        city.es: Oslo\n        city.fr_FR: Oslo\n",
        "city.fr_FR",
        "'city.fr_FR': fr-FR is not one of the issue's languages (en, fr, es); did you mean 'city.fr'?",
    ),
    "not_a_tag": (
        "        city.es: Oslo\n",
        "        city.es: Oslo\n        city.french: Oslo\n",
        "city.french",
        "'city.french': 'french' is not a language tag (en, fr, es); did you mean 'city.fr'?",
    ),
    "default_language": (
        "        city.es: Oslo\n",
        "        city.es: Oslo\n        city.en: Oslo\n",
        "city.en",
        "item 'Oslo conference': 'city.en': en is the default language; write its text as 'city'",
    ),
    "twice": (
        "        city.es: Oslo\n",
        "        city.es: Oslo\n        city.FR: Oslo\n",
        "city.FR",
        "item 'Oslo conference': 'city.FR' gives the fr 'city' again ('city.fr', line",
    ),
    "translation_without_default": (
        "  - kind: agenda\n",
        "  - kind: agenda\n    title.fr: Agenda\n",
        "title.fr: Agenda",
        "section 'Agenda': field 'title.fr' has no 'title' beside it: write the en text as 'title'",
    ),
    "override_without_default": (
        "        image: report.png\n",
        "",
        "image.fr",
        "item 'A report': field 'image.fr' has no 'image' beside it: write the en one as 'image'",
    ),
    "misspelt_field": (
        "        city.es: Oslo\n",
        "        city.es: Oslo\n        citty.de: Oslo\n",
        "citty.de",
        "item 'Oslo conference': unknown field 'citty.de' (did you mean 'city.de'?)",
    ),
    "two_lines": (
        'title.fr: "Un rapport"',
        'title.fr: "Un\\nrapport"',
        "Un\\nrapport",
        "item 'A report': field 'title.fr' must fit on one line",
    ),
    "control_character": (
        'title.es: "Un informe"',
        'title.es: "Un\\vinforme"',
        "Un\\vinforme",
        "item 'A report': field 'title.es': special character #x000b is not allowed",
    ),
    "markdown_heading": (
        "Le rapport montre **ce qui marche**.",
        "# Le rapport",
        "summary.fr",
        "item 'A report': field 'summary.fr': headings are not allowed in a summary",
    ),
    "unsafe_link": (
        "link.fr: https://example.org/fr/oslo",
        "link.fr: 'javascript:alert(1)'",
        "link.fr",
        "item 'Oslo conference': link.fr 'javascript:alert(1)' must start with https://, http:// or mailto:",
    ),
    "image_outside": (
        "image.fr: report-fr.png",
        "image.fr: ../secret.png",
        "image.fr",
        "item 'A report': image.fr '../secret.png' must be inside the issue folder",
    ),
    "image_missing": (
        "image.fr: report-fr.png",
        "image.fr: rapport.png",
        "image.fr",
        "item 'A report': image.fr file 'rapport.png' not found",
    ),
    "image_http": (
        "image.fr: report-fr.png",
        "image.fr: http://cdn.example/r.png",
        "image.fr",
        "item 'A report': image.fr 'http://cdn.example/r.png' must be an https:// URL",
    ),
    "not_text": (
        'subject.es: "Boletín – marzo de 2019"',
        "subject.es: [Boletín]",
        "subject.es",
        "field 'subject.es' must be text, not a list",
    ),
}


@pytest.mark.parametrize(("old", "new", "at", "message"), list(ERRORS.values()), ids=list(ERRORS))
def test_each_mistake_is_one_error_on_its_line(
    old: str, new: str, at: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = changed(old, new)
    path = write(tmp_path / "case", text)
    with pytest.raises(IssueError) as raised:
        load_issue(path)
    problems = raised.value.problems
    assert [(p.line, p.severity) for p in problems] == [(line_of(text, at), Severity.ERROR)], problems
    assert message in problems[0].message
    assert str(problems[0]).startswith(f"{Path('case', 'issue.yaml')}:{line_of(text, at)}: ")


def test_a_translation_needs_declared_languages(tmp_path: Path) -> None:
    text = (DATA / "broken" / "broken_template" / "issue.yaml").read_text(encoding="utf-8")
    text = changed(
        'title: "SOLIDIFY audit"\n', 'title: "SOLIDIFY audit"\n        title.fr: "Audit SOLIDIFY"\n', text
    )
    with pytest.raises(IssueError) as raised:
        load_issue(write(tmp_path / "single", text))
    [problem] = raised.value.problems
    assert problem.line == line_of(text, "title.fr")
    assert problem.message == (
        "item 'SOLIDIFY audit': 'title.fr': the issue declares no languages to translate into;"
        " list them first, the default first, e.g. languages: [en, fr]"
    )


@pytest.mark.parametrize(
    ("old", "new", "at", "message"),
    [
        (
            'subject.fr: "Lettre – mars 2019"',
            'subject.fr: "' + "Lettre " * 14 + '"',
            "subject.fr",
            "subject.fr is 97 characters; mail clients cut it off after about 80",
        ),
        (
            "link.fr: https://example.org/fr/oslo",
            "link.fr: www.example.org/fr/oslo",
            "link.fr",
            "item 'Oslo conference': link.fr 'www.example.org/fr/oslo' is not an absolute http(s) URL",
        ),
        (
            "Le rapport montre **ce qui marche**.",
            "Le rapport montre <b>ce qui marche</b>.",
            "summary.fr",
            "item 'A report': field 'summary.fr': HTML is not allowed",
        ),
    ],
    ids=["long_subject", "link_without_scheme", "html"],
)
def test_a_translation_gets_the_warnings_of_its_field(
    old: str, new: str, at: str, message: str, tmp_path: Path
) -> None:
    text = changed(old, new)
    warnings = load_issue(write(tmp_path / "warned", text)).warnings
    assert [(w.line, w.severity) for w in warnings] == [(line_of(text, at), Severity.WARNING)]
    assert message in warnings[0].message


# --- missing translations -----------------------------------------------------------

# case -> (the translation left out, the line of the field, the warning)
MISSING: dict[str, tuple[str, str, str]] = {
    "subject": (
        'subject.es: "Boletín – marzo de 2019"\n',
        'subject: "Newsletter',
        "field 'subject' has no es translation; the es variant shows the en text",
    ),
    "section_title": (
        '    title.fr: "Nouvelles du réseau"\n',
        'title: "Network news"',
        "section 'Network news': field 'title' has no fr translation; the fr variant shows the en text",
    ),
    "item_title": (
        '        title.es: "Conferencia de Oslo"\n',
        'title: "Oslo conference"',
        "item 'Oslo conference': field 'title' has no es translation; the es variant shows the en text",
    ),
    "image_alt": (
        '        image_alt.es: "La portada del informe"\n',
        'image_alt: "The report\'s cover"',
        "item 'A report': field 'image_alt' has no es translation; the es variant shows the en text",
    ),
}


@pytest.mark.parametrize(("gone", "at", "message"), list(MISSING.values()), ids=list(MISSING))
def test_a_missing_translation_is_a_warning_that_says_what_shows(
    gone: str, at: str, message: str, workspace: Path
) -> None:
    text = changed(gone, "")
    write(workspace / "issues" / "partial", text)
    issue = load_issue(workspace / "issues" / "partial" / "issue.yaml")
    assert [(w.line, w.message) for w in issue.warnings] == [(line_of(text, at), message)]
    result = check(workspace, "partial")
    assert result.exit_code == 0, result.output
    assert (
        f"{Path('issues', 'partial', 'issue.yaml')}:{line_of(text, at)}: warning: {message}" in result.output
    )
    language = re.search(r"has no (\w+) translation", message)
    assert language is not None
    assert f"{language[1]} (1 field in en)" in result.output


def test_require_translations_makes_a_missing_one_an_error(workspace: Path) -> None:
    text = changed('        title.es: "Conferencia de Oslo"\n', "")
    path = write(workspace / "issues" / "partial", text)
    [problem] = problems_of(path, require_translations=True)
    assert problem.severity is Severity.ERROR
    assert problem.line == line_of(text, 'title: "Oslo conference"')
    assert problem.message == (
        "item 'Oslo conference': field 'title' has no es translation"
        " (newsletter.require_translations is true: every language must be complete)"
    )
    assert check(workspace, "partial").exit_code == 0
    edit_config(workspace, ("[newsletter]\n", "[newsletter]\nrequire_translations = true\n"))
    result = check(workspace, "partial")
    assert result.exit_code == 1
    assert "field 'title' has no es translation (newsletter.require_translations is true" in result.output
    write(workspace / "issues" / "complete", BASE)
    assert check(workspace, "complete").exit_code == 0


def test_require_translations_leaves_one_language_issues_alone(workspace: Path) -> None:
    edit_config(workspace, ("[newsletter]\n", "[newsletter]\nrequire_translations = true\n"))
    result = check(workspace, "first-issue")
    assert result.exit_code == 0, result.output


# --- the untranslated marker --------------------------------------------------------


def test_a_marked_copy_counts_as_missing_and_shows_the_default(tmp_path: Path) -> None:
    text = changed('title.es: "Conferencia de Oslo"', 'title.es: "Conferencia"  # untranslated')
    issue = load_issue(write(tmp_path / "marked", text))
    [warning] = issue.warnings
    assert warning.line == line_of(text, 'title.es: "Conferencia"')
    assert warning.message == (
        "item 'Oslo conference': field 'title.es' is still marked '# untranslated';"
        " the es variant shows the en text until the marker is deleted"
    )
    oslo = issue.localized("es").sections[0].items[0]
    assert oslo.title == "Oslo conference"
    assert oslo.untranslated == frozenset({"title"})
    [problem] = problems_of(write(tmp_path / "required", text), require_translations=True)
    assert problem.severity is Severity.ERROR and "still marked '# untranslated'" in problem.message


def test_a_marker_after_a_block_header_counts(tmp_path: Path) -> None:
    text = changed("summary.es: |\n", "summary.es: |  # Untranslated\n")
    issue = load_issue(write(tmp_path / "block", text))
    assert [w.line for w in issue.warnings] == [line_of(text, "summary.es")]
    assert issue.localized("es").sections[1].items[0].summary == "The report shows **what works**."


@pytest.mark.parametrize(
    "written",
    [
        'title.es: "Conferencia # untranslated"',  # inside the quotes: text, not a comment
        'title.es: "Conferencia de Oslo"  # checked by Ana',
        'title.es: "Conferencia de Oslo"  # untranslatedness is not the marker',
    ],
)
def test_only_the_marker_comment_marks(written: str, tmp_path: Path) -> None:
    text = changed('title.es: "Conferencia de Oslo"', written)
    issue = load_issue(write(tmp_path / "comment", text))
    assert issue.warnings == ()
    assert issue.localized("es").sections[0].items[0].untranslated == frozenset()


# --- localized issues ---------------------------------------------------------------


def test_localized_gives_each_language_its_text_and_overrides(base: Issue) -> None:
    fr, es, en = base.localized("fr"), base.localized("es"), base.localized("en")
    assert (fr.language, fr.languages, fr.translations) == ("fr", (), {})
    assert (fr.subject, es.subject, en.subject) == (
        "Lettre – mars 2019",
        "Boletín – marzo de 2019",
        base.subject,
    )
    assert [s.title for s in fr.sections] == ["", "Nouvelles du réseau"]
    oslo_fr, oslo_es = fr.sections[0].items[0], es.sections[0].items[0]
    assert (oslo_fr.title, oslo_fr.link) == ("Conférence d'Oslo", "https://example.org/fr/oslo")
    assert (oslo_es.title, oslo_es.link) == ("Conferencia de Oslo", "https://example.org/oslo")
    report_fr, report_es = fr.sections[1].items[0], es.sections[1].items[0]
    assert (report_fr.image, report_fr.image_alt) == ("report-fr.png", "La couverture du rapport")
    assert (report_es.image, report_es.image_alt) == ("report.png", "La portada del informe")
    for issue in (fr, es, en):
        assert issue.untranslated_fields() == 0, "an override left out is never missing"
    assert base.localized("FR") == fr
    assert sorted(base.images()) == ["report-fr.png", "report.png"]


def test_localized_names_every_field_that_fell_back(tmp_path: Path) -> None:
    text = BASE
    for gone in ('preheader.es: "Eventos y noticias"\n', '    title.es: "Noticias de la red"\n',
                 "        city.es: Oslo\n", "        summary.es: |\n          El informe muestra **lo que funciona**.\n"):  # fmt: skip
        text = changed(gone, "", text)
    issue = load_issue(write(tmp_path / "partial", text))
    es = issue.localized("es")
    assert es.untranslated == frozenset({"preheader"})
    assert es.preheader == "Events and news"
    assert [s.untranslated for s in es.sections] == [frozenset(), frozenset({"title"})]
    assert es.sections[1].title == "Network news"
    assert [i.untranslated for s in es.sections for i in s.items] == [
        frozenset({"city"}),
        frozenset({"summary"}),
    ]
    assert es.untranslated_fields() == 4
    assert issue.localized("fr").untranslated_fields() == 0
    assert issue.localized("en").untranslated_fields() == 0, "the default language is never untranslated"
    assert len(issue.warnings) == 4


def test_localized_refuses_a_language_the_issue_lacks(base: Issue) -> None:
    with pytest.raises(ValueError, match="not written in 'de'"):
        base.localized("de")


def test_a_one_language_issue_is_as_before(tmp_path: Path) -> None:
    baseline = DATA / "broken" / "broken_template" / "issue.yaml"
    issue = load_issue(baseline)
    assert (issue.languages, issue.language, issue.translations, issue.warnings) == ((), "", {}, ())
    assert issue.variant_languages("de") == ("de",)
    assert issue.localized("de") == replace(issue, language="de")
    assert issue.in_every_language() == (issue,)
    text = baseline.read_text(encoding="utf-8").replace("date:", "language: fr\ndate:", 1)
    french = load_issue(write(tmp_path / "fr", text))
    assert (french.language, french.languages) == ("fr", ())


def test_members_only_pictures_are_known_in_every_language(tmp_path: Path) -> None:
    text = changed(
        "        image.fr: report-fr.png\n",
        "        image.fr: report-fr.png\n        members_only: true\n",
    )
    issue = load_issue(write(tmp_path / "pictures", text))
    assert issue.members_only_images() == {"report.png", "report-fr.png"}
    assert [issue.localized(lang).members_only_images() for lang in issue.languages] == [
        {"report.png", "report-fr.png"}
    ] * 3, "each language's variants give a picture the address the others give it"
    # The same picture on a public item (in one language): the public gets it anyway.
    public = changed(
        "        country: NO\n",
        "        country: NO\n        image: https://example.org/oslo.png\n        image.es: report-fr.png\n",
        text,
    )
    shared = load_issue(write(tmp_path / "shared", public))
    assert shared.members_only_images() == {"report.png"}
    assert shared.localized("fr").members_only_images() == {"report.png"}


# --- members-only text in every language ----------------------------------------------

MENTION = """\
subject: "{subject}"
subject.fr: "{subject_fr}"
preheader: Public news
preheader.fr: Nouvelles publiques
date: 2019-01-10
languages: [en, fr]
sections:
  - kind: news
    items:
      - title: Open item
        title.fr: Sujet ouvert
        summary: "{summary}"
        summary.fr: "{summary_fr}"
        link: https://example.org/open
        link.fr: "{link_fr}"
  - kind: calls
    members_only: true
    items:
      - title: Harm reduction strategies
        title.fr: Stratégies de réduction des risques
        link: https://example.org/members/harm
        link.fr: https://example.org/fr/members/harm
"""
CLEAN = {
    "subject": "January",
    "subject_fr": "Janvier",
    "summary": "Nothing secret",
    "summary_fr": "Rien de secret",
    "link_fr": "https://example.org/fr/open",
}


@pytest.mark.parametrize(
    ("fields", "at", "where", "shown"),
    [
        ({"subject_fr": "Janvier : stratégies de réduction des risques"}, "subject.fr", "field 'subject.fr'", "fr"),
        ({"summary": "After the Stratégies de réduction des risques call"}, "- title: Open item", "public item 'Open item'", "en"),
        ({"summary_fr": "Voir https://example.org/fr/members/harm"}, "- title: Open item", "public item 'Open item'", "fr"),
        ({"link_fr": "https://example.org/members/harm"}, "- title: Open item", "public item 'Open item'", "fr"),
        ({"subject": "Harm reduction strategies"}, "subject: ", "field 'subject'", "en"),
    ],
    ids=["french_title_in_french_subject", "french_title_in_english", "french_link", "english_link_in_french", "en"],
)  # fmt: skip
def test_public_text_in_any_language_may_not_name_members_only_text(
    fields: dict[str, str], at: str, where: str, shown: str, tmp_path: Path
) -> None:
    assert load_issue(write(tmp_path / "clean", MENTION.format(**CLEAN))).warnings == ()
    text = MENTION.format(**{**CLEAN, **fields})
    with pytest.raises(IssueError) as raised:
        load_issue(write(tmp_path / "mention", text))
    problems = [p for p in raised.value.problems if "mentions the members-only item" in p.message]
    assert [(p.line, p.severity) for p in problems] == [(line_of(text, at), Severity.ERROR)]
    assert problems[0].message.startswith(
        f"{where} mentions the members-only item 'Harm reduction strategies'"
    )
    assert (
        f"; the public {shown} variant shows it, so leave members-only content out of it"
        in problems[0].message
    )


def test_a_fallback_in_two_languages_is_reported_once_for_both(tmp_path: Path) -> None:
    text = MENTION.format(**{**CLEAN, "summary": "Before the harm reduction strategies call"})
    text = changed('        summary.fr: "Rien de secret"\n', "", text)
    with pytest.raises(IssueError) as raised:
        load_issue(write(tmp_path / "fallback", text))
    [problem] = [p for p in raised.value.problems if "mentions" in p.message]
    assert problem.line == line_of(text, "- title: Open item")
    assert "the public en, fr variants show it" in problem.message


# --- nothing leaks, in any language (issue 14, part 4) ---------------------------------


def members_only_texts(issue: Issue) -> set[str]:
    """Every members-only string, in every language, that no public text of any language holds."""
    public: list[str] = []
    secret: set[str] = set()
    for variant in issue.in_every_language():
        for section in variant.sections:
            shown = section.visible_items(Segment.PUBLIC)
            if not section.members_only:
                public.append(f"{section.title} {section.intro}")
            for item in section.items:
                fields = [item.title, item.link, item.link_label, item.image_alt, item.city]
                if item in shown:
                    public += [*fields, item.summary, item.image]
                    continue
                secret |= {f for f in fields if f}
                words = markup.to_text(item.summary).split()
                secret |= {" ".join(words[n : n + 4]) for n in range(max(len(words) - 3, 0))}
            if section.members_only:
                secret |= {section.title} if section.title else set()
                words = markup.to_text(section.intro).split()
                secret |= {" ".join(words[n : n + 4]) for n in range(max(len(words) - 3, 0))}
    flat = " ".join(" ".join(public).split())
    return {s for s in secret if s not in flat}


def assert_public_variants_hold_none(issue: Issue, settings: Settings) -> None:
    secrets = members_only_texts(issue)
    assert secrets, "the issue must have members-only text for the test to mean anything"
    for language in issue.languages:
        localized = issue.localized(language)
        variant = render_variant(localized, settings, Segment.PUBLIC)
        html, text = variant.personalize(READER)
        visible = re.sub(r"<[^>]+>", " ", html)
        haystacks = [
            html,
            " ".join(visible.split()),
            " ".join(text.split()),
            variant.subject,
            variant.preheader,
        ]
        for secret in secrets:
            for haystack in haystacks:
                assert secret not in haystack, (language, secret)
        members = render_variant(localized, settings, Segment.MEMBER)
        hidden_titles = [
            i.title for s in localized.sections for i in s.items if s.members_only or i.members_only
        ]
        flat = " ".join(members.text.split())
        assert all(t in flat for t in hidden_titles), "members see their items in every language"


def test_no_public_variant_of_the_example_holds_members_only_text(
    example_issue: Issue, repo_settings: Settings
) -> None:
    assert example_issue.languages == ("en", "fr")
    assert_public_variants_hold_none(example_issue, repo_settings)


FALLBACK = """\
subject: "News"
subject.fr: "Nouvelles"
preheader: "Public news"
preheader.fr: "Nouvelles publiques"
date: 2019-01-10
languages: [en, fr]
sections:
  - kind: news
    items:
      - title: "Open meeting in Lyon"
        summary: "Everyone is welcome in Lyon."
        link: https://example.org/lyon
      - title: "Board minutes are out"
        title.fr: "Le compte rendu du bureau est paru"
        summary: "The board's minutes, for members only."
        summary.fr: "Le compte rendu confidentiel du bureau, pour les membres seulement."
        link: https://example.org/members/minutes
        link.fr: https://example.org/fr/members/minutes
        link_label: "Read the minutes"
        link_label.fr: "Lire le compte rendu"
        members_only: true
  - kind: calls
    members_only: true
    intro: "Secret call intro for members."
    intro.fr: "Introduction secrète de l'appel aux membres."
    items:
      - title: "Partners wanted for the secret project"
        title.fr: "Partenaires recherchés pour le projet secret"
        link: https://example.org/members/call
"""


def test_a_language_only_members_have_pulls_nothing_into_the_public_variant(
    tmp_path: Path, repo_settings: Settings
) -> None:
    issue = load_issue(write(tmp_path / "fallback", FALLBACK))
    fr = issue.localized("fr")
    lyon = fr.sections[0].items[0]
    assert (lyon.title, lyon.untranslated) == ("Open meeting in Lyon", frozenset({"title", "summary"}))
    assert [w.message for w in issue.warnings] == [
        "item 'Open meeting in Lyon': field 'title' has no fr translation; the fr variant shows the en text",
        "item 'Open meeting in Lyon': field 'summary' has no fr translation; the fr variant shows the en text",
    ]
    public = render_variant(fr, repo_settings, Segment.PUBLIC)
    assert "Open meeting in Lyon" in public.text, "the public item falls back to its own English text"
    for secret in (
        "Board minutes", "compte rendu", "Le compte rendu du bureau", "example.org/members", "example.org/fr/members",
        "Lire le compte rendu", "Read the minutes", "Secret call", "Introduction secrète", "secret project",
        "projet secret", "for members only.", "confidentiel",
    ):  # fmt: skip
        assert secret not in public.html and secret not in public.text, secret
        assert secret not in public.subject + public.preheader
    members = render_variant(fr, repo_settings, Segment.MEMBER)
    assert "Le compte rendu du bureau est paru" in members.text
    assert "https://example.org/fr/members/minutes" in members.text
    assert_public_variants_hold_none(issue, repo_settings)


# --- starting a translation -------------------------------------------------------------


def inserted_only(before: str, after: str) -> list[str]:
    """Return the lines ``after`` adds to ``before``; fail if it changes or drops any line."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    added = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        assert tag in ("equal", "insert"), (tag, old[i1:i2], new[j1:j2])
        if tag == "insert":
            added += new[j1:j2]
    return added


def test_translate_round_trip(workspace: Path, repo_settings: Settings) -> None:
    source = (DATA / "broken" / "broken_template" / "issue.yaml").read_text(encoding="utf-8")
    source = "# The February issue.\n" + source.replace(
        'title: "SOLIDIFY audit"', 'title: "SOLIDIFY audit"  # short!'
    )
    path = write(workspace / "issues" / "2019-02", source)
    os.chmod(path, 0o640)
    result = translate(workspace, "2019-02", "FR")
    assert result.exit_code == 0, result.output
    assert "languages en, fr; copied 6 fields into '.fr' keys marked '# untranslated'" in result.output
    after = path.read_text(encoding="utf-8")
    assert inserted_only(source, after) == [
        'subject.fr: "Newsletter – February 2019"  # untranslated\n',
        'preheader.fr: "Events, news and a call for partners"  # untranslated\n',
        "languages: [en, fr]\n",
        '        title.fr: "SOLIDIFY audit"  # untranslated\n',
        "        city.fr: Brussels  # untranslated\n",
        '        title.fr: "A new report on safer cities"  # untranslated\n',
        "        summary.fr: |  # untranslated\n",
        "          The report shows **what works** in ten cities.\n",
        "          Read the [full text](https://example.org/report).\n",
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["issue.yaml", "report-fr.png", "report.png"]

    issue = load_issue(path)
    assert issue.languages == ("en", "fr")
    assert len(issue.warnings) == 6
    assert all(
        "is still marked '# untranslated'; the fr variant shows the en text" in w.message
        for w in issue.warnings
    )
    assert sorted(w.line for w in issue.warnings) == [
        n for n, line in enumerate(after.splitlines(), start=1) if line.endswith("# untranslated")
    ]
    fr = issue.localized("fr")
    assert fr.subject == issue.subject and fr.untranslated_fields() == 6
    for language in issue.languages:
        for segment in Segment:
            assert render_variant(issue.localized(language), repo_settings, segment).text
    check_result = check(workspace, "2019-02")
    assert check_result.exit_code == 0 and "6 warnings" in check_result.output
    assert "languages: en (default), fr (6 fields in en)" in check_result.output

    # The translator's part: new text, marker deleted.
    path.write_text(
        after.replace('title.fr: "SOLIDIFY audit"  # untranslated', 'title.fr: "Audit SOLIDIFY"'),
        encoding="utf-8",
    )
    issue = load_issue(path)
    assert len(issue.warnings) == 5
    assert issue.localized("fr").sections[0].items[0].title == "Audit SOLIDIFY"

    # A third language goes after the second, each text's translations together.
    before = path.read_text(encoding="utf-8")
    assert translate(workspace, "2019-02", "es").exit_code == 0
    after = path.read_text(encoding="utf-8")
    assert inserted_only(before.replace("[en, fr]", "[en, fr, es]"), after)
    assert "languages: [en, fr, es]\n" in after
    assert '        title.fr: "Audit SOLIDIFY"\n        title.es: "SOLIDIFY audit"  # untranslated\n' in after
    assert len(load_issue(path).warnings) == 5 + 6


def test_translate_the_example_into_spanish(copy_example: Path, repo_settings: Settings) -> None:
    path = copy_example / "issue.yaml"
    before = path.read_text(encoding="utf-8")
    started = start_translation(path, "es", default_language="en")
    assert started.languages == ("en", "fr", "es")
    after = path.read_text(encoding="utf-8")
    assert inserted_only(before.replace("[en, fr]", "[en, fr, es]"), after)
    issue = load_issue(path)
    assert len(issue.warnings) == started.copied == 61
    es = issue.localized("es")
    assert es.subject == issue.subject
    assert es.sections[0].items[0].link == issue.sections[0].items[0].link, "link.fr stays French"
    assert_public_variants_hold_none(issue, repo_settings)


@pytest.mark.parametrize(
    ("languages", "language", "declared", "key", "warnings"),
    [
        # fr, not translated yet, warns too
        ("languages:\n  - en\n  - fr\n", "es", "languages:\n  - en\n  - fr\n  - es\n", "title.es", 12),
        ("language: fr  # French only\n", "en", "languages: [fr, en]  # French only\n", "title.en", 6),
    ],
    ids=["block_list", "one_language"],
)
def test_translate_extends_any_form_of_the_languages(
    languages: str, language: str, declared: str, key: str, warnings: int, tmp_path: Path
) -> None:
    text = (DATA / "broken" / "broken_template" / "issue.yaml").read_text(encoding="utf-8")
    text = text.replace("date:", languages + "date:", 1)
    path = write(tmp_path / "forms", text)
    start_translation(path, language, default_language="de")
    after = path.read_text(encoding="utf-8")
    assert declared in after
    assert f'        {key}: "SOLIDIFY audit"  # untranslated\n' in after
    assert inserted_only(text.replace(languages, declared), after)
    assert len(load_issue(path).warnings) == warnings


def test_translate_keeps_line_ends_and_an_unfinished_last_line(tmp_path: Path) -> None:
    text = (DATA / "broken" / "broken_template" / "issue.yaml").read_text(encoding="utf-8")
    text = text.rstrip("\n").replace("\n", "\r\n")  # Windows line ends, none after the last line
    text = text.replace("        link: https://example.org/news/report", "        link: https://example.org/news/report\r\n        city: Lyon")  # fmt: skip
    path = tmp_path / "crlf" / "issue.yaml"
    path.parent.mkdir()
    path.write_bytes(text.encode("utf-8"))
    start_translation(path, "fr", default_language="en")
    after = path.read_bytes().decode("utf-8")
    assert after.endswith("        city: Lyon\r\n        city.fr: Lyon  # untranslated")
    assert "\n" not in after.replace("\r\n", "")
    assert len(load_issue(path).warnings) == 7


def test_translate_copies_text_over_several_lines_as_one(tmp_path: Path) -> None:
    text = (DATA / "broken" / "broken_template" / "issue.yaml").read_text(encoding="utf-8")
    text = changed('title: "SOLIDIFY audit"', "title: SOLIDIFY\n          audit of Brussels", text)
    path = write(tmp_path / "folded", text)
    start_translation(path, "fr", default_language="en")
    assert '        title.fr: "SOLIDIFY audit of Brussels"  # untranslated\n' in path.read_text(
        encoding="utf-8"
    )
    issue = load_issue(path)
    assert issue.localized("fr").sections[0].items[0].title == "SOLIDIFY audit of Brussels"


@pytest.mark.parametrize(
    ("language", "message"),
    [
        ("fr", "is already written in fr (en, fr, es)"),
        ("EN", "is already written in en"),
        ("klingon", "'klingon' is not a language tag such as fr, es or pt-BR"),
    ],
)
def test_translate_refuses_and_leaves_the_file_alone(language: str, message: str, workspace: Path) -> None:
    path = write(workspace / "issues" / "done", BASE)
    result = translate(workspace, "done", language)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert path.read_text(encoding="utf-8") == BASE


def test_translate_needs_an_issue_that_loads(workspace: Path) -> None:
    result = translate(workspace, "2031-01", "fr")
    assert result.exit_code == 1 and "no issue '2031-01'" in result.output
    broken = changed("date: 2019-03-01", "date: 2019-02-30")
    path = write(workspace / "issues" / "broken", broken)
    result = translate(workspace, "broken", "de")
    assert result.exit_code == 1 and "'2019-02-30' is not a date" in result.output
    assert path.read_text(encoding="utf-8") == broken


def test_a_failed_write_leaves_the_issue_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "disk", BASE)

    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mailout.workspace.os.replace", full_disk)
    with pytest.raises(WorkspaceError, match=r"cannot write .*: No space left on device"):
        start_translation(path, "de", default_language="en")
    assert path.read_text(encoding="utf-8") == BASE
    assert sorted(p.name for p in path.parent.iterdir()) == ["issue.yaml", "report-fr.png", "report.png"]


def test_a_translation_waits_for_one_under_way_and_builds_on_it(tmp_path: Path) -> None:
    source = (DATA / "broken" / "broken_template" / "issue.yaml").read_text(encoding="utf-8")
    path = write(tmp_path / "busy", source)
    other = write(tmp_path / "other", source)
    start_translation(other, "es", default_language="en")  # what the other translation will write
    failures: list[BaseException] = []

    def french() -> None:
        try:
            start_translation(path, "fr", default_language="en")
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    with path.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a translation under way
        thread = threading.Thread(target=french)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive(), "the second translation waits for the first"
        assert path.read_text(encoding="utf-8") == source
        os.replace(other, path)  # the first one's result lands, then it lets go
    thread.join(10)
    assert not failures and not thread.is_alive()
    after = path.read_text(encoding="utf-8")
    assert "languages: [en, es, fr]\n" in after
    issue = load_issue(path)
    assert issue.languages == ("en", "es", "fr") and len(issue.warnings) == 12


def test_translations_started_at_once_all_land(tmp_path: Path) -> None:
    source = (DATA / "broken" / "broken_template" / "issue.yaml").read_text(encoding="utf-8")
    path = write(tmp_path / "race", source)
    script = "import sys, pathlib; from mailout.workspace import start_translation as t; t(pathlib.Path(sys.argv[1]), sys.argv[2], default_language='en')"  # fmt: skip
    started = [
        subprocess.Popen([sys.executable, "-c", script, str(path), language])
        for language in ("de", "es", "fr", "it")
    ]
    assert [p.wait(60) for p in started] == [0, 0, 0, 0]
    issue = load_issue(path)
    assert sorted(issue.languages) == ["de", "en", "es", "fr", "it"] and issue.languages[0] == "en"
    assert len(issue.warnings) == 4 * 6
    assert inserted_only(source, path.read_text(encoding="utf-8"))
    assert sorted(p.name for p in path.parent.iterdir()) == ["issue.yaml", "report-fr.png", "report.png"]


def test_the_example_check_names_its_languages() -> None:
    result = CliRunner().invoke(cli, ["-C", str(REPO), "issue", "check", "2019-01", "--strict"])
    assert result.exit_code == 0, result.output
    assert "languages: en (default), fr (complete)" in result.output
