"""Load and validate an issue: one folder under ``issues/`` with an ``issue.yaml``.

Loading collects every problem at once, each naming the file, the line and the
field, so that the comms team can fix a file in one pass. Errors stop the
issue from rendering; warnings (a link that is not http(s), an image without
alt text, a long subject, an empty section) are shown but do not.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from . import markup, yamlfile
from .config import LANGUAGE_TAG
from .errors import IssueError, Problem, Severity, WorkspaceError
from .paths import display_path
from .segments import Segment
from .yamlfile import LineMap

ISSUE_FILE = "issue.yaml"
#: What an issue's folder may be called. The name is a part of every link to the issue
#: (see ``links.Links.issue``), so it holds only characters a URL carries as they are.
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class SectionKind(StrEnum):
    AGENDA = "agenda"
    NEWS = "news"
    CALLS = "calls"
    GOOD_PRACTICE = "good_practice"
    PUBLICATIONS = "publications"


DEFAULT_TITLES = {
    SectionKind.AGENDA: "Agenda",
    SectionKind.NEWS: "News",
    SectionKind.CALLS: "Calls for partners",
    SectionKind.GOOD_PRACTICE: "Good practice",
    SectionKind.PUBLICATIONS: "Publications",
}
DEFAULT_LINK_LABELS = {
    SectionKind.AGENDA: "Information",
    SectionKind.NEWS: "Read more",
    SectionKind.CALLS: "More information",
    SectionKind.GOOD_PRACTICE: "Read more",
    SectionKind.PUBLICATIONS: "Read the publication",
}

ISSUE_FIELDS = ("subject", "preheader", "date", "number", "language", "logo", "logo_alt", "intro", "sections")
SECTION_FIELDS = ("kind", "title", "intro", "members_only", "items")
ITEM_FIELDS = (
    "title", "summary", "date", "end_date", "city", "country",
    "link", "link_label", "image", "image_alt", "members_only",
)  # fmt: skip


@dataclass(frozen=True)
class Item:
    title: str
    line: int
    summary: str = ""
    date: dt.date | None = None
    end_date: dt.date | None = None
    city: str = ""
    country: str = ""
    link: str = ""
    link_label: str = ""
    image: str = ""
    image_alt: str = ""
    members_only: bool = False
    #: In an issue from ``Issue.localized``: the text fields that had no translation in its
    #: language and show the default language's text instead.
    untranslated: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Section:
    kind: SectionKind
    title: str
    line: int
    items: tuple[Item, ...] = ()
    intro: str = ""
    members_only: bool = False
    untranslated: frozenset[str] = frozenset()

    def visible_items(self, segment: Segment) -> tuple[Item, ...]:
        """Return the items ``segment`` may see (all of them for members)."""
        if segment is Segment.MEMBER:
            return self.items
        if self.members_only:
            return ()
        return tuple(item for item in self.items if not item.members_only)


@dataclass(frozen=True)
class Issue:
    slug: str
    folder: Path
    source: Path
    subject: str
    preheader: str
    date: dt.date
    sections: tuple[Section, ...]
    number: int | None = None
    language: str = ""
    logo: str = ""
    logo_alt: str = ""
    intro: str = ""
    #: The languages the issue is written in, the default first (canonical BCP 47 tags);
    #: empty for an issue in one language (``language``, else ``newsletter.language``).
    languages: tuple[str, ...] = ()
    untranslated: frozenset[str] = frozenset()
    warnings: tuple[Problem, ...] = field(default=(), compare=False)

    def variant_languages(self, default: str) -> tuple[str, ...]:
        """Return the languages to render, the default first; ``default`` is ``newsletter.language``."""
        return self.languages or (self.language or default,)

    def localized(self, language: str) -> Issue:
        """Return the issue in one of its languages: a single-language issue, ready to render.

        Text without a translation in ``language`` is the default language's, and is
        named in the ``untranslated`` fields of the issue, its sections and items.
        """
        return replace(self, language=language, languages=())

    def images(self) -> list[str]:
        """Return every local image file the issue references, relative to its folder."""
        names = [self.logo] if self.logo else []
        names += [i.image for s in self.sections for i in s.items if i.image]
        return [n for n in names if not is_url(n)]


def is_slug(value: str) -> bool:
    """Return whether ``value`` can name an issue: a folder name, no path, safe in a link as it is."""
    return bool(_SLUG.fullmatch(value)) and ".." not in value


def slug_problem(name: str) -> str | None:
    """Return why folder ``name`` cannot name an issue, with a name that can; None if it can."""
    if is_slug(name):
        return None
    fixed = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", name)).strip("._-")[:200] or "issue"
    return (
        f"the folder name '{name}' cannot name an issue, as it is part of every link to it:"
        " use letters, digits, '.', '-' and '_', starting with a letter or digit;"
        f" rename the folder, e.g. to '{fixed}'"
    )


def find_issue(name: str | Path, issues_dir: Path) -> Path:
    """Return the ``issue.yaml`` for a slug, a folder or a file path."""
    candidates = [Path(name), issues_dir / str(name)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
        if candidate.is_dir() and (candidate / ISSUE_FILE).is_file():
            return candidate / ISSUE_FILE
    known = sorted(p.parent.name for p in issues_dir.glob(f"*/{ISSUE_FILE}")) if issues_dir.is_dir() else []
    hint = f" (issues here: {', '.join(known)})" if known else ""
    raise WorkspaceError(
        f"no issue '{name}': expected {display_path(issues_dir / str(name) / ISSUE_FILE)}{hint}"
    )


def load_issue(path: Path, *, check_files: bool = True) -> Issue:
    """Load and validate the issue file at ``path``; raise ``IssueError`` listing every error."""
    reader = _Reader(path)
    issue = reader.read(check_files=check_files)
    errors = [p for p in reader.problems if p.severity is Severity.ERROR]
    if errors or issue is None:
        raise IssueError(errors)
    return issue


def is_url(value: str) -> bool:
    """Return whether ``value`` names a resource elsewhere (it has a scheme, or starts with //)."""
    return value.startswith("//") or bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", value))


def _scheme(value: str) -> str:
    return value.split(":", 1)[0].lower() if is_url(value) and not value.startswith("//") else ""


class _Reader:
    """Turn one ``issue.yaml`` into an ``Issue``, collecting problems as it goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = display_path(path)
        self.problems: list[Problem] = []

    def report(self, line: int | None, message: str, severity: Severity = Severity.ERROR) -> None:
        self.problems.append(Problem(self.name, line, message, severity))

    def read(self, *, check_files: bool) -> Issue | None:
        self.check_files = check_files
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise WorkspaceError(f"{self.name}: cannot read: {exc.strerror}") from None
        problem = slug_problem(self.path.resolve().parent.name)
        if problem is not None:
            self.report(None, problem)
        try:
            data = yamlfile.parse(raw)
        except yamlfile.SyntaxProblem as exc:
            self.report(exc.line, exc.message)
            return None
        if not isinstance(data, LineMap):
            self.report(1, "expected the issue's fields (subject:, date:, sections:, ...), found no mapping")
            return None
        return self.issue(data)

    # -- fields ----------------------------------------------------------------

    def unknown_fields(self, data: LineMap, allowed: tuple[str, ...], where: str) -> None:
        for key in data:
            if key not in allowed:
                match = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f" (did you mean '{match[0]}'?)" if match else f" (allowed: {', '.join(allowed)})"
                self.report(data.key_lines[key], f"{where}unknown field '{key}'{hint}")

    def text(
        self, data: LineMap, key: str, where: str, *, required: bool = False, one_line: bool = True
    ) -> str:
        value = data.get(key)
        line = data.key_lines.get(key, data.line)
        if value is None or value == "":
            if required:
                self.report(line, f"{where}missing required field '{key}'")
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.report(line, f"{where}field '{key}' must be text, not {_kind(value)}")
            return ""
        value = str(value)
        # Before stripping, which would quietly drop a "\v" or "\x1c" at either end.
        if one_line and any(c in value.strip() for c in "\n\r\x85\u2028\u2029"):
            self.report(line, f"{where}field '{key}' must fit on one line")
            return ""
        if "\0" in value:
            self.report(line, f"{where}field '{key}' contains a NUL character")
            return ""
        escaped = yamlfile.escaped_character(value)
        if escaped:
            self.report(line, f"{where}field '{key}': {escaped}")
            return ""
        return value.strip()

    def date(self, data: LineMap, key: str, where: str, *, required: bool = False) -> dt.date | None:
        raw = self.text(data, key, where, required=required)
        if not raw:
            return None
        try:
            return dt.date.fromisoformat(raw) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw) else _bad_date()
        except ValueError:
            self.report(
                data.key_lines[key],
                f"{where}field '{key}': '{raw}' is not a date; write YYYY-MM-DD, e.g. 2019-01-31",
            )
            return None

    def flag(self, data: LineMap, key: str, where: str) -> bool:
        value = data.get(key, False)
        if not isinstance(value, bool):
            self.report(data.key_lines[key], f"{where}field '{key}' must be true or false, not {value!r}")
            return False
        return value

    def markdown(self, data: LineMap, key: str, where: str) -> str:
        source = self.text(data, key, where, one_line=False)
        line = data.key_lines.get(key)
        for message, severity in markup.lint(source):
            self.report(line, f"{where}field '{key}': {message}", severity)
        return source

    def link(self, data: LineMap, key: str, where: str) -> str:
        value = self.text(data, key, where)
        if value and is_url(value) and _scheme(value) not in ("http", "https", "mailto"):
            self.report(
                data.key_lines[key], f"{where}link '{value}' must start with https://, http:// or mailto:"
            )
            return ""
        if value and not re.match(r"^(https?://[^\s/]+|mailto:)", value, re.IGNORECASE):
            self.report(
                data.key_lines[key], f"{where}link '{value}' is not an absolute http(s) URL", Severity.WARNING
            )
        return value

    def image(self, data: LineMap, key: str, where: str) -> str:
        value = self.text(data, key, where)
        if not value:
            return value
        if is_url(value):
            if _scheme(value) != "https":
                self.report(
                    data.key_lines[key],
                    f"{where}image '{value}' must be an https:// URL or a file in the issue folder",
                )
                return ""
            return value
        folder = self.path.parent.resolve()
        target = (folder / value).resolve()
        if not target.is_relative_to(folder):
            self.report(data.key_lines[key], f"{where}image '{value}' must be inside the issue folder")
            return ""
        if self.check_files and not target.is_file():
            self.report(
                data.key_lines[key],
                f"{where}image file '{value}' not found (looked for {display_path(target)})",
            )
        return value

    # -- structure -------------------------------------------------------------

    def issue(self, data: LineMap) -> Issue | None:
        self.unknown_fields(data, ISSUE_FIELDS, "")
        subject = self.text(data, "subject", "", required=True)
        if len(subject) > 80:
            self.report(
                data.key_lines["subject"],
                f"subject is {len(subject)} characters; mail clients cut it off after about 80",
                Severity.WARNING,
            )
        preheader = self.text(data, "preheader", "", required=True)
        date = self.date(data, "date", "", required=True)
        number = data.get("number")
        if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 0):
            self.report(data.key_lines["number"], f"field 'number' must be a whole number, not {number!r}")
            number = None
        language = self.text(data, "language", "")
        if language and not LANGUAGE_TAG.fullmatch(language):
            self.report(
                data.key_lines["language"],
                f"field 'language': '{language}' is not a language tag such as en or fr",
            )
            language = ""
        logo = self.image(data, "logo", "")
        logo_alt = self.text(data, "logo_alt", "")
        if logo and not logo_alt:
            self.report(data.key_lines["logo"], "logo has no 'logo_alt' text", Severity.WARNING)
        intro = self.markdown(data, "intro", "")
        sections = self.sections(data)
        if date is None or not subject or sections is None:
            return None
        self.members_only_mentions(
            data, sections, {"subject": subject, "preheader": preheader, "intro": intro}
        )
        return Issue(
            slug=self.path.resolve().parent.name,
            folder=self.path.parent,
            source=self.path,
            subject=subject,
            preheader=preheader,
            date=date,
            number=number,
            language=language,
            logo=logo,
            logo_alt=logo_alt,
            intro=intro,
            sections=sections,
            warnings=tuple(p for p in self.problems if p.severity is Severity.WARNING),
        )

    def members_only_mentions(
        self, data: LineMap, sections: tuple[Section, ...], shared: dict[str, str]
    ) -> None:
        """Refuse public text that names a members-only item: the public variant carries it.

        Public text is the subject, preheader and intro, and the titles, intros
        and items of what the public sees. A members-only link found there is an
        error, and so is a distinctive title; a short title ("Budget vote") may be
        an ordinary phrase, so finding one is a warning.
        """
        hidden = [i for s in sections for i in s.items if s.members_only or i.members_only]
        if not hidden:
            return
        places = [
            (f"field '{key}'", data.key_lines.get(key, data.line), value) for key, value in shared.items()
        ]
        for section in sections:
            if section.members_only:
                continue
            places.append((f"section '{section.title}'", section.line, f"{section.title} {section.intro}"))
            for item in section.visible_items(Segment.PUBLIC):
                text = " ".join((item.title, item.summary, item.link, item.link_label, item.image_alt))
                places.append((f"public item '{item.title}'", item.line, text))
        for what, line, value in places:
            folded = " ".join(value.split()).casefold()
            for item in hidden:
                title = " ".join(item.title.split()).casefold()
                if item.link and item.link in value:
                    severity = Severity.ERROR
                elif title and re.search(rf"(?<!\w){re.escape(title)}(?!\w)", folded):
                    severity = Severity.ERROR if len(title) >= 15 else Severity.WARNING
                else:
                    continue
                self.report(
                    line,
                    f"{what} mentions the members-only item '{item.title}'; the public variant shows it,"
                    " so leave members-only content out of it",
                    severity,
                )

    def sections(self, data: LineMap) -> tuple[Section, ...] | None:
        raw = data.get("sections")
        if raw is None:
            self.report(data.line, "missing required field 'sections'")
            return None
        if not isinstance(raw, list):
            self.report(
                data.key_lines["sections"],
                "field 'sections' must be a list (each entry starts with '- kind:')",
            )
            return None
        sections = []
        for index, entry in enumerate(raw, start=1):
            section = self.section(entry, index, data.key_lines["sections"])
            if section is not None:
                sections.append(section)
        return tuple(sections)

    def section(self, data: Any, index: int, parent_line: int) -> Section | None:
        if not isinstance(data, LineMap):
            self.report(parent_line, f"section {index} must be a mapping with 'kind:' and 'items:'")
            return None
        raw_kind = self.text(data, "kind", f"section {index}: ", required=True)
        kind: SectionKind | None = None
        if raw_kind:
            try:
                kind = SectionKind(raw_kind)
            except ValueError:
                kinds = [k.value for k in SectionKind]
                match = difflib.get_close_matches(raw_kind, kinds, n=1, cutoff=0.5)
                hint = f" (did you mean '{match[0]}'?)" if match else f" (known kinds: {', '.join(kinds)})"
                self.report(
                    data.key_lines["kind"], f"section {index}: unknown section kind '{raw_kind}'{hint}"
                )
        title = self.text(data, "title", f"section {index}: ") or (
            DEFAULT_TITLES[kind] if kind else f"#{index}"
        )
        where = f"section '{title}': "
        self.unknown_fields(data, SECTION_FIELDS, where)
        members_only = self.flag(data, "members_only", where)
        intro = self.markdown(data, "intro", where)
        raw_items = data.get("items") or []
        if not isinstance(raw_items, list):
            self.report(
                data.key_lines["items"],
                f"{where}field 'items' must be a list (each item starts with '- title:')",
            )
            raw_items = []
        if not raw_items:
            self.report(data.line, f"{where}section has no items", Severity.WARNING)
        items = [self.item(entry, number, where, data) for number, entry in enumerate(raw_items, start=1)]
        if kind is None:
            return None
        return Section(
            kind=kind,
            title=title,
            line=data.line,
            intro=intro,
            members_only=members_only,
            items=tuple(
                i if i.link_label or not i.link else _with_label(i, DEFAULT_LINK_LABELS[kind])
                for i in items
                if i is not None
            ),
        )

    def item(self, data: Any, number: int, section_where: str, section: LineMap) -> Item | None:
        if not isinstance(data, LineMap):
            self.report(
                section.key_lines.get("items"),
                f"{section_where}item {number} must be a mapping starting with 'title:'",
            )
            return None
        title = self.text(data, "title", f"{section_where}item {number}: ", required=True)
        where = f"item '{title}': " if title else f"{section_where}item {number}: "
        self.unknown_fields(data, ITEM_FIELDS, where)
        date = self.date(data, "date", where)
        end_date = self.date(data, "end_date", where)
        if end_date and not data.get("date"):
            self.report(data.key_lines["end_date"], f"{where}'end_date' needs a 'date' to start from")
        if date and end_date and end_date < date:
            self.report(data.key_lines["end_date"], f"{where}'end_date' {end_date} is before 'date' {date}")
        country = self.text(data, "country", where)
        if country and not re.fullmatch(r"[A-Z]{2}", country):
            self.report(
                data.key_lines["country"],
                f"{where}field 'country' must be a two-letter code such as FR or DE, not '{country}'",
            )
        image = self.image(data, "image", where)
        image_alt = self.text(data, "image_alt", where)
        if image and not image_alt:
            self.report(
                data.key_lines["image"],
                f"{where}image has no 'image_alt' text (screen readers and blocked images need it)",
                Severity.WARNING,
            )
        item = Item(
            title=title,
            line=data.line,
            summary=self.markdown(data, "summary", where),
            date=date,
            end_date=end_date,
            city=self.text(data, "city", where),
            country=country,
            link=self.link(data, "link", where),
            link_label=self.text(data, "link_label", where),
            image=image,
            image_alt=image_alt,
            members_only=self.flag(data, "members_only", where),
        )
        return item if title else None


def _with_label(item: Item, label: str) -> Item:
    return replace(item, link_label=label)


def _bad_date() -> dt.date:
    raise ValueError("not YYYY-MM-DD")


def _kind(value: Any) -> str:
    return {list: "a list", dict: "a mapping", LineMap: "a mapping", bool: "true/false"}.get(
        type(value), type(value).__name__
    )
