"""Issue files: every mistake is named by file, line and field, and never by a traceback.

Each folder under tests/data/broken/ holds an otherwise valid issue with exactly one
mistake; CASES says on which line it is and what the message must say. The
baseline they all start from is broken_template/issue.yaml, which is valid (that
case breaks a template instead).
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailout.cli import cli
from mailout.config import Settings
from mailout.errors import IssueError, Severity
from mailout.issues import Issue, SectionKind, display_path, load_issue
from mailout.render import render_issue
from mailout.segments import Segment
from tests.conftest import DATA

BROKEN = DATA / "broken"
BASELINE = BROKEN / "broken_template" / "issue.yaml"

# case folder -> (line of the mistake, a distinctive part of the message)
CASES: dict[str, tuple[int, str]] = {
    "yaml_syntax_indent": (11, "YAML syntax error: mapping values are not allowed here"),
    "yaml_syntax_quote": (11, "YAML syntax error: while scanning a quoted scalar"),
    "yaml_missing_colon": (11, "YAML syntax error: while scanning a simple key could not find expected ':'"),
    "tab_indent": (11, "found character '\\t' that cannot start any token"),
    "duplicate_key": (13, "duplicate key 'city'"),
    "unknown_item_field": (13, "item 'SOLIDIFY audit': unknown field 'lnk' (did you mean 'link'?)"),
    "unknown_section_kind": (6, "section 1: unknown section kind 'agneda' (did you mean 'agenda'?)"),
    "unknown_top_field": (1, "unknown field 'subjet' (did you mean 'subject'?)"),
    "missing_subject": (1, "missing required field 'subject'"),
    "missing_item_title": (8, "section 'Agenda': item 1: missing required field 'title'"),
    "bad_date": (9, "item 'SOLIDIFY audit': field 'date': '2019-02-30' is not a date; write YYYY-MM-DD"),
    "bad_date_format": (3, "field 'date': '31/01/2019' is not a date; write YYYY-MM-DD"),
    "end_before_start": (10, "item 'SOLIDIFY audit': 'end_date' 2019-02-26 is before 'date' 2019-02-27"),
    "missing_image": (22, "image file 'images/report.png' not found"),
    "image_outside_folder": (22, "image '../secret.png' must be inside the issue folder"),
    "bad_country": (12, "field 'country' must be a two-letter code such as FR or DE, not 'France'"),
    "members_only_not_bool": (16, "section 'News': field 'members_only' must be true or false, not 'yes'"),
    "sections_not_list": (5, "field 'sections' must be a list"),
    "markdown_heading_in_summary": (18, "field 'summary': headings are not allowed in a summary"),
    "markdown_image_in_summary": (18, "field 'summary': images go in the 'image' field"),
    "broken_markdown_link": (18, "broken Markdown link near 'Read the [full text](https://example.org'"),
    "not_utf8": (11, "not UTF-8 text"),
    "control_character": (19, "special character #x000b is not allowed"),
    "empty_file": (1, "found no mapping"),
    "multiline_subject": (1, "field 'subject' must fit on one line"),
}
# Renaming 'subject' also leaves the issue without one: the only mistake worth two errors.
TWO_ERRORS = {"unknown_top_field"}


def check(workspace: Path, issue: str | Path, *options: str) -> Result:
    """Run `mailout -C WORKSPACE issue check ISSUE` on the real command group."""
    args = ["-C", str(workspace), "issue", "check", str(issue), *options]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def write_issue(folder: Path, text: str) -> Path:
    """Write ``text`` as ``folder/issue.yaml`` beside an image file ``report.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    path = folder / "issue.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def baseline_with(old: str, new: str) -> str:
    """Return the baseline issue's text with one change."""
    text = BASELINE.read_text(encoding="utf-8")
    assert old in text, old
    return text.replace(old, new, 1)


# --- errors -------------------------------------------------------------------


def test_every_case_folder_is_listed() -> None:
    folders = {p.parent.name for p in BROKEN.glob("*/issue.yaml")}
    assert folders == {*CASES, "broken_template"}


def test_baseline_is_valid_and_clean(workspace: Path) -> None:
    issue = load_issue(BASELINE)
    assert [s.kind for s in issue.sections] == [SectionKind.AGENDA, SectionKind.NEWS]
    assert issue.warnings == ()
    result = check(workspace, BASELINE)
    assert result.exit_code == 0, result.output
    assert "2 items in 2 sections" in result.output and "0 warnings" in result.output


@pytest.mark.parametrize(("case", "line", "message"), [(c, *v) for c, v in CASES.items()], ids=list(CASES))
def test_mistake_is_named_by_file_and_line(
    case: str, line: int, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # outside tests/, so problems name the file by its full path
    path = BROKEN / case / "issue.yaml"
    with pytest.raises(IssueError) as raised:
        load_issue(path)
    problems = raised.value.problems
    matching = [p for p in problems if message in p.message]
    assert matching, "\n".join(str(p) for p in problems)
    problem = matching[0]
    assert problem.line == line
    assert problem.severity is Severity.ERROR
    assert str(problem).startswith(f"{path}:{line}: ")
    assert len(problems) == (2 if case in TWO_ERRORS else 1), "\n".join(str(p) for p in problems)


@pytest.mark.parametrize(("case", "line", "message"), [(c, *v) for c, v in CASES.items()], ids=list(CASES))
def test_check_command_prints_file_and_line(case: str, line: int, message: str, workspace: Path) -> None:
    path = BROKEN / case / "issue.yaml"
    result = check(workspace, path)
    assert result.exit_code == 1, result.output
    assert f"{path}:{line}: " in result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_problems_name_the_file_relative_to_the_current_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BROKEN)
    with pytest.raises(IssueError) as raised:
        load_issue(BROKEN / "bad_country" / "issue.yaml")
    assert str(raised.value).startswith(f"{Path('bad_country', 'issue.yaml')}:12: item 'SOLIDIFY audit': ")


def test_missing_image_is_only_checked_when_asked() -> None:
    issue = load_issue(BROKEN / "missing_image" / "issue.yaml", check_files=False)
    assert issue.images() == ["images/report.png"]


def test_broken_template_names_file_and_line(workspace: Path) -> None:
    shutil.copy(BROKEN / "broken_template" / "layout.mjml.j2", workspace / "templates" / "email")
    result = check(workspace, BASELINE)
    assert result.exit_code == 1
    assert "layout.mjml.j2:5: template syntax error" in result.output
    assert "Traceback" not in result.output


# field -> (text in the baseline, the same with {escape} where the escape goes, line, where)
ESCAPE_FIELDS: dict[str, tuple[str, str, int, str]] = {
    "subject": (
        'subject: "Newsletter – February 2019"',
        'subject: "Newsletter{escape} – February 2019"',
        1,
        "",
    ),
    "title": (
        'title: "SOLIDIFY audit"',
        'title: "SOLIDIFY{escape} audit"',
        8,
        "section 'Agenda': item 1: ",
    ),
    "summary": (
        "summary: |\n          The report shows **what works** in ten cities.\n"
        "          Read the [full text](https://example.org/report).\n",
        'summary: "The report shows **what works**{escape} in ten cities."\n',
        18,
        "item 'A new report on safer cities': ",
    ),
}
# escape as written in YAML -> the character's code
ESCAPES = {"\\v": 0x0B, "\\f": 0x0C, "\\e": 0x1B, "\\ud800": 0xD800, "\\x9b": 0x9B, "\\b": 0x08}


@pytest.mark.parametrize("escape", list(ESCAPES))
@pytest.mark.parametrize("field", list(ESCAPE_FIELDS))
def test_an_escaped_special_character_is_named_by_file_line_and_field(
    workspace: Path, field: str, escape: str
) -> None:
    old, new, line, where = ESCAPE_FIELDS[field]
    path = write_issue(workspace / "issues" / "escaped", baseline_with(old, new.format(escape=escape)))
    message = (
        f"{where}field '{field}': special character #x{ESCAPES[escape]:04x} is not allowed"
        f' (written "{escape}"); delete it'
    )
    with pytest.raises(IssueError) as raised:
        load_issue(path)
    assert [(p.line, p.message) for p in raised.value.problems] == [(line, message)]
    result = check(workspace, path)
    assert result.exit_code == 1
    assert f"{display_path(path)}:{line}: {message}" in result.output
    assert "MJML" not in result.output


def test_a_raw_and_an_escaped_special_character_say_the_same(workspace: Path) -> None:
    raw = write_issue(workspace / "issues" / "raw", baseline_with("SOLIDIFY audit", "SOLIDIFY\x0baudit"))
    escaped = write_issue(workspace / "issues" / "esc", baseline_with("SOLIDIFY audit", "SOLIDIFY\\vaudit"))
    messages = []
    for path in (raw, escaped):
        with pytest.raises(IssueError) as raised:
            load_issue(path)
        [problem] = raised.value.problems
        assert problem.line == 8
        messages.append(problem.message)
    assert "special character #x000b is not allowed" in messages[0]
    assert "special character #x000b is not allowed" in messages[1]


def test_an_escape_at_either_end_is_not_quietly_stripped(workspace: Path) -> None:
    path = write_issue(
        workspace / "issues" / "ends", baseline_with('title: "SOLIDIFY audit"', 'title: "SOLIDIFY audit\\v"')
    )
    with pytest.raises(IssueError, match=r"field 'title': special character #x000b"):
        load_issue(path)
    path = write_issue(
        workspace / "issues" / "nel",
        baseline_with('subject: "Newsletter – February 2019"', 'subject: "Newsletter\\N February 2019"'),
    )
    with pytest.raises(IssueError, match=r"field 'subject' must fit on one line"):
        load_issue(path)


# --- warnings -----------------------------------------------------------------

# case -> (text in the baseline, what replaces it, line, a distinctive part of the warning)
WARNINGS: dict[str, tuple[str, str, int, str]] = {
    "link_without_scheme": (
        "link: https://example.org/events/solidify",
        "link: www.example.org/events/solidify",
        13,
        "item 'SOLIDIFY audit': link 'www.example.org/events/solidify' is not an absolute http(s) URL",
    ),
    "image_without_alt": (
        "link: https://example.org/news/report",
        "link: https://example.org/news/report\n        image: report.png",
        22,
        "item 'A new report on safer cities': image has no 'image_alt' text",
    ),
    "long_subject": (
        '"Newsletter – February 2019"',
        '"Newsletter of February 2019: events in five cities, news, calls for partners and good practice"',
        1,
        "subject is 94 characters; mail clients cut it off after about 80",
    ),
    "empty_section": (
        "  - kind: news\n",
        "  - kind: calls\n    items: []\n\n  - kind: news\n",
        15,
        "section 'Calls for partners': section has no items",
    ),
    "html_in_summary": (
        "**what works**",
        "<b>what works</b>",
        18,
        "item 'A new report on safer cities': field 'summary': HTML is not allowed and will be shown as plain text",
    ),
}


UNSAFE_URLS = {
    "link_javascript": (
        "link: https://example.org/news/report",
        "link: 'javascript:alert(document.cookie)'",
        21,
        "link 'javascript:alert(document.cookie)' must start with https://, http:// or mailto:",
    ),
    "link_ftp": (
        "link: https://example.org/news/report",
        "link: ftp://example.org/report.pdf",
        21,
        "link 'ftp://example.org/report.pdf' must start with",
    ),
    "link_protocol_relative": (
        "link: https://example.org/news/report",
        "link: //tracker.example/x",
        21,
        "link '//tracker.example/x' must start with",
    ),
    "link_data": (
        "link: https://example.org/news/report",
        "link: 'data:text/html,<script>1</script>'",
        21,
        "must start with https://",
    ),
    "image_http": (
        "link: https://example.org/news/report",
        "link: https://example.org/news/report\n        image: http://cdn.example/x.png\n        image_alt: x",
        22,
        "image 'http://cdn.example/x.png' must be an https:// URL or a file in the issue folder",
    ),
    "image_javascript": (
        "link: https://example.org/news/report",
        "link: https://example.org/news/report\n        image: 'javascript:x'\n        image_alt: x",
        22,
        "image 'javascript:x' must be an https:// URL",
    ),
}


@pytest.mark.parametrize(("old", "new", "line", "message"), list(UNSAFE_URLS.values()), ids=list(UNSAFE_URLS))
def test_unsafe_urls_are_errors(old: str, new: str, line: int, message: str, workspace: Path) -> None:
    path = write_issue(workspace / "issues" / "unsafe", baseline_with(old, new))
    with pytest.raises(IssueError) as caught:
        load_issue(path)
    assert [(p.line, p.severity) for p in caught.value.problems if message in p.message] == [
        (line, Severity.ERROR)
    ]


@pytest.mark.parametrize(("old", "new", "line", "message"), list(WARNINGS.values()), ids=list(WARNINGS))
def test_warning_does_not_stop_the_issue(
    old: str, new: str, line: int, message: str, workspace: Path
) -> None:
    path = write_issue(workspace / "issues" / "warned", baseline_with(old, new))
    issue = load_issue(path)
    assert [(w.line, w.severity) for w in issue.warnings if message in w.message] == [
        (line, Severity.WARNING)
    ], issue.warnings
    result = check(workspace, "warned")
    assert result.exit_code == 0, result.output
    assert f"{Path('issues', 'warned', 'issue.yaml')}:{line}: warning: {message}" in result.output


def test_strict_turns_warnings_into_failure(workspace: Path) -> None:
    write_issue(workspace / "issues" / "clean", BASELINE.read_text(encoding="utf-8"))
    write_issue(workspace / "issues" / "warned", baseline_with("**what works**", "<b>what works</b>"))
    assert check(workspace, "clean", "--strict").exit_code == 0
    assert check(workspace, "warned").exit_code == 0
    result = check(workspace, "warned", "--strict")
    assert result.exit_code == 1
    assert "HTML is not allowed" in result.output


# --- what a valid file becomes --------------------------------------------------

PARSED = """\
subject: "Newsletter – March 2019"
preheader: "Events, news and a call"
date: 2019-03-01
sections:
  - kind: agenda
    items:
      - title: "Oslo conference"
        date: 2019-03-27
        end_date: 2019-03-28
        country: NO
        link: https://example.org/oslo
      - title: "Members' meeting"
        date: 2019-04-02
        members_only: true
        link: https://example.org/members/meeting
  - kind: news
    items:
      - title: "A report"
        link: https://example.org/report
      - title: "A labelled report"
        link: https://example.org/other
        link_label: "Download the PDF"
      - title: "Without a link"
  - kind: calls
    members_only: true
    items:
      - title: "A call for partners"
        link: https://example.org/members/call
"""


def load_parsed(tmp_path: Path) -> Issue:
    return load_issue(write_issue(tmp_path / "parsed", PARSED))


def test_country_no_stays_norway(tmp_path: Path) -> None:
    oslo = load_parsed(tmp_path).sections[0].items[0]
    assert oslo.country == "NO"


def test_dates_become_dates(tmp_path: Path) -> None:
    issue = load_parsed(tmp_path)
    oslo = issue.sections[0].items[0]
    assert issue.date == dt.date(2019, 3, 1)
    assert (oslo.date, oslo.end_date) == (dt.date(2019, 3, 27), dt.date(2019, 3, 28))
    assert type(oslo.date) is dt.date


def test_default_link_labels_follow_the_section_kind(tmp_path: Path, repo_settings: Settings) -> None:
    issue = load_parsed(tmp_path)
    agenda, news, calls = issue.sections
    # Only what the author wrote: the templates show (and translate) the kind's default.
    assert [i.link_label for i in agenda.items] == ["", ""]
    assert [i.link_label for i in news.items] == ["", "Download the PDF", ""]
    assert [i.link_label for i in calls.items] == [""]
    assert [s.title for s in issue.sections] == ["", "", ""]
    text = render_issue(issue, repo_settings)[Segment.MEMBER, "en"].text
    for line in (
        "Information: https://example.org/oslo",
        "Read more: https://example.org/report",
        "Download the PDF: https://example.org/other",
        "More information: https://example.org/members/call",
        "AGENDA\n------",
        "CALLS FOR PARTNERS (for members only)",
    ):
        assert line in text


def test_members_only_on_sections_and_items(tmp_path: Path) -> None:
    agenda, news, calls = load_parsed(tmp_path).sections
    assert (agenda.members_only, news.members_only, calls.members_only) == (False, False, True)
    assert [i.members_only for i in agenda.items] == [False, True]
    assert not any(i.members_only for i in calls.items), "the section, not its items, is members-only"


def test_public_sees_no_members_only_item_or_section(tmp_path: Path) -> None:
    agenda, news, calls = load_parsed(tmp_path).sections
    assert [i.title for i in agenda.visible_items(Segment.PUBLIC)] == ["Oslo conference"]
    assert agenda.visible_items(Segment.MEMBER) == agenda.items
    assert len(agenda.items) == 2
    assert news.visible_items(Segment.PUBLIC) == news.items
    assert calls.visible_items(Segment.PUBLIC) == ()
    assert [i.title for i in calls.visible_items(Segment.MEMBER)] == ["A call for partners"]


MENTION = """subject: "{subject}"
preheader: Public news
date: 2019-01-10
sections:
  - kind: news
    intro: "{intro}"
    items:
      - title: Open item
        summary: "{summary}"
        link: https://example.org/open
  - kind: calls
    members_only: true
    items:
      - title: Harm reduction strategies
        link: https://example.org/members/harm
      - title: Budget vote
        link: https://example.org/members/budget
"""


@pytest.mark.parametrize(
    ("fields", "line", "severity"),
    [
        ({"subject": "Harm reduction strategies inside"}, 1, Severity.ERROR),
        ({"intro": "Also: the harm reduction strategies call"}, 5, Severity.ERROR),
        ({"summary": "See https://example.org/members/harm"}, 8, Severity.ERROR),
        ({"summary": "After the budget vote, a new plan"}, 8, Severity.WARNING),
    ],
)
def test_public_text_may_not_name_a_members_only_item(
    workspace: Path, fields: dict[str, str], line: int, severity: Severity
) -> None:
    values = {"subject": "January", "intro": "Welcome", "summary": "Nothing secret", **fields}
    path = write_issue(workspace / "issues" / "mention", MENTION.format(**values))
    clean = write_issue(
        workspace / "issues" / "clean",
        MENTION.format(subject="January", intro="Welcome", summary="Nothing secret"),
    )
    assert load_issue(clean).warnings == ()
    if severity is Severity.ERROR:
        with pytest.raises(IssueError) as caught:
            load_issue(path)
        problems = caught.value.problems
    else:
        problems = list(load_issue(path).warnings)
    assert [(p.line, p.severity) for p in problems if "mentions the members-only item" in p.message] == [
        (line, severity)
    ]


def test_issue_language_must_be_a_tag(workspace: Path) -> None:
    path = write_issue(
        workspace / "issues" / "lang",
        BASELINE.read_text(encoding="utf-8").replace("date:", "language: English\ndate:", 1),
    )
    with pytest.raises(IssueError, match="'English' is not a language tag"):
        load_issue(path)
