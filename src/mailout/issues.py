"""Load and validate an issue: one folder under ``issues/`` with an ``issue.yaml``.

Loading collects every problem at once, each naming the file, the line and the
field, so that the comms team can fix a file in one pass. Errors stop the
issue from rendering; warnings (a link that is not http(s), an image without
alt text, a long subject, an empty section, a missing translation) are shown
but do not.

An issue may be written in several languages (``languages: [en, fr]``, the
default first). A field's text in another language sits beside it as
``KEY.LANG`` (``title.fr:`` under ``title:``); ``Issue.localized`` makes the
single-language issue a variant is rendered from.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from . import languages as tags
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

ISSUE_FIELDS = (
    "subject", "preheader", "date", "number", "language", "languages", "logo", "logo_alt", "intro",
    "sections",
)  # fmt: skip
SECTION_FIELDS = ("kind", "title", "intro", "members_only", "items")
ITEM_FIELDS = (
    "title", "summary", "date", "end_date", "city", "country",
    "link", "link_label", "image", "image_alt", "members_only",
)  # fmt: skip
#: The fields written in each language (``title.fr:`` beside ``title:``): one missing in a
#: language is reported, and that language's variant shows the default language's text.
ISSUE_TEXTS = ("subject", "preheader", "intro", "logo_alt")
SECTION_TEXTS = ("title", "intro")
ITEM_TEXTS = ("title", "summary", "link_label", "image_alt", "city")
#: The fields a language may set apart (a link to the French page of an article); without
#: one, a language uses the default's, and that is never reported as missing.
ISSUE_OVERRIDES = ("logo",)
ITEM_OVERRIDES = ("link", "image")
#: The comment that marks a ``KEY.LANG`` copied from the default language and not yet
#: translated (``mailout issue new SLUG --translate LANG`` writes it): such a field counts
#: as missing until a translator deletes the comment.
UNTRANSLATED = "untranslated"


class Translations(Mapping[tuple[str, str], str]):
    """The text of an issue's, a section's or an item's fields in its other languages.

    Keys are ``(field, language)``: ``("title", "fr")`` is the French title. Immutable
    and hashable, like the frozen dataclasses that hold it.
    """

    __slots__ = ("_texts",)

    def __init__(self, texts: Iterable[tuple[tuple[str, str], str]] = ()) -> None:
        self._texts = dict(texts)

    def __getitem__(self, key: tuple[str, str]) -> str:
        return self._texts[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def __hash__(self) -> int:
        return hash(frozenset(self._texts.items()))

    def __repr__(self) -> str:
        return f"Translations({self._texts!r})"


NO_TRANSLATIONS = Translations()


def _localize(
    obj: Any, texts: tuple[str, ...], overrides: tuple[str, ...], language: str, default: str
) -> tuple[dict[str, Any], frozenset[str]]:
    """Return ``obj``'s fields in ``language`` and the names of those that fell back."""
    if language == default:
        return {}, frozenset()  # the fields' own text
    values: dict[str, Any] = {}
    missing = set()
    for name in (*texts, *overrides):
        translated = obj.translations.get((name, language), "")
        if translated:
            values[name] = translated
        elif name in texts and getattr(obj, name):
            missing.add(name)
    return values, frozenset(missing)


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
    #: The fields' text in the issue's other languages (empty once localized).
    translations: Translations = NO_TRANSLATIONS

    def localized(self, language: str, default: str) -> Item:
        """Return the item in ``language``, the ``default`` language's text where it has none."""
        values, missing = _localize(self, ITEM_TEXTS, ITEM_OVERRIDES, language, default)
        return replace(self, **values, untranslated=missing, translations=NO_TRANSLATIONS)


@dataclass(frozen=True)
class Section:
    kind: SectionKind
    title: str
    line: int
    items: tuple[Item, ...] = ()
    intro: str = ""
    members_only: bool = False
    untranslated: frozenset[str] = frozenset()
    translations: Translations = NO_TRANSLATIONS

    def localized(self, language: str, default: str) -> Section:
        """Return the section and its items in ``language``, the ``default``'s text where it has none."""
        values, missing = _localize(self, SECTION_TEXTS, (), language, default)
        return replace(
            self,
            **values,
            items=tuple(item.localized(language, default) for item in self.items),
            untranslated=missing,
            translations=NO_TRANSLATIONS,
        )

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
    translations: Translations = NO_TRANSLATIONS
    #: In a localized issue: ``members_only_images`` of the issue in all its languages, so
    #: that every language's variants give a picture the same address.
    members_only_pictures: frozenset[str] | None = field(default=None, compare=False, repr=False)
    warnings: tuple[Problem, ...] = field(default=(), compare=False)

    def variant_languages(self, default: str) -> tuple[str, ...]:
        """Return the languages to render, the default first; ``default`` is ``newsletter.language``."""
        return self.languages or (self.language or default,)

    def localized(self, language: str) -> Issue:
        """Return the issue in one of its languages: a single-language issue, ready to render.

        Text without a translation in ``language`` is the default language's, and is
        named in the ``untranslated`` fields of the issue, its sections and items; a
        language's own link, image or logo replaces the default's. Raise ``ValueError``
        for a language a multilingual issue does not declare (pick one with
        ``languages.choose``). An issue in one language only gets ``language`` set.
        """
        if not self.languages:
            return replace(self, language=language)
        tag = tags.canonical(language) or language
        if tag not in self.languages:
            raise ValueError(
                f"issue {self.slug} is not written in {language!r} ({', '.join(self.languages)})"
            )
        return replace(self._localized(tag), members_only_pictures=frozenset(self.members_only_images()))

    def _localized(self, tag: str) -> Issue:
        default = self.languages[0]
        values, missing = _localize(self, ISSUE_TEXTS, ISSUE_OVERRIDES, tag, default)
        return replace(
            self,
            **values,
            language=tag,
            languages=(),
            sections=tuple(section.localized(tag, default) for section in self.sections),
            untranslated=missing,
            translations=NO_TRANSLATIONS,
        )

    def in_every_language(self) -> tuple[Issue, ...]:
        """Return the issue localized in each of its languages, the default first (itself if one)."""
        return tuple(self.localized(language) for language in self.languages) or (self,)

    def untranslated_fields(self) -> int:
        """Return how many fields of this localized issue show the default language's text."""
        return len(self.untranslated) + sum(
            len(s.untranslated) + sum(len(i.untranslated) for i in s.items) for s in self.sections
        )

    def images(self) -> list[str]:
        """Return every local image file the issue references in any language, relative to its folder."""
        names: list[str] = []
        for issue in self.in_every_language():
            names += [issue.logo] if issue.logo else []
            names += [i.image for s in issue.sections for i in s.items if i.image]
        return [n for n in dict.fromkeys(names) if not is_url(n)]

    def members_only_images(self) -> set[str]:
        """Return the local pictures that only members-only items show, in any language.

        A picture that a public item shows in some language, or the logo, is not one:
        the public gets it anyway.
        """
        if self.members_only_pictures is not None:
            return set(self.members_only_pictures)
        public: set[str] = set()
        hidden: set[str] = set()
        for issue in [self._localized(tag) for tag in self.languages] or [self]:
            public.add(issue.logo)
            for s in issue.sections:
                for i in s.items:
                    if i.image:
                        (hidden if s.members_only or i.members_only else public).add(i.image)
        return {name for name in hidden - public if not is_url(name)}


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


def load_issue(path: Path, *, check_files: bool = True, require_translations: bool = False) -> Issue:
    """Load and validate the issue file at ``path``; raise ``IssueError`` listing every error.

    ``require_translations`` (``newsletter.require_translations``) makes a missing
    translation an error instead of a warning.
    """
    reader = _Reader(path, require_translations=require_translations)
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


#: How each field's ``KEY.LANG`` is read and checked, when not as one line of text.
_MARKDOWN = ("intro", "summary")
_IMAGES = ("image", "logo")


class _Reader:
    """Turn one ``issue.yaml`` into an ``Issue``, collecting problems as it goes."""

    def __init__(self, path: Path, *, require_translations: bool = False) -> None:
        self.path = path
        self.name = display_path(path)
        self.problems: list[Problem] = []
        self.require_translations = require_translations
        #: The declared languages, the default first; () for an issue in one language.
        self.languages: tuple[str, ...] = ()

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
            name = key.partition(".")[0]  # a translation: translations() checks the rest
            if name not in allowed:
                match = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
                suffix = key[len(name) :]
                hint = (
                    f" (did you mean '{match[0]}{suffix}'?)" if match else f" (allowed: {', '.join(allowed)})"
                )
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
        name = key if "." in key else "link"
        if value and is_url(value) and _scheme(value) not in ("http", "https", "mailto"):
            self.report(
                data.key_lines[key], f"{where}{name} '{value}' must start with https://, http:// or mailto:"
            )
            return ""
        if value and not re.match(r"^(https?://[^\s/]+|mailto:)", value, re.IGNORECASE):
            self.report(
                data.key_lines[key],
                f"{where}{name} '{value}' is not an absolute http(s) URL",
                Severity.WARNING,
            )
        return value

    def image(self, data: LineMap, key: str, where: str) -> str:
        value = self.text(data, key, where)
        if not value:
            return value
        name = key if "." in key else "image"
        if is_url(value):
            if _scheme(value) != "https":
                self.report(
                    data.key_lines[key],
                    f"{where}{name} '{value}' must be an https:// URL or a file in the issue folder",
                )
                return ""
            return value
        folder = self.path.parent.resolve()
        target = (folder / value).resolve()
        if not target.is_relative_to(folder):
            self.report(data.key_lines[key], f"{where}{name} '{value}' must be inside the issue folder")
            return ""
        if self.check_files and not target.is_file():
            self.report(
                data.key_lines[key],
                f"{where}{name} file '{value}' not found (looked for {display_path(target)})",
            )
        return value

    def subject_length(self, data: LineMap, key: str, subject: str) -> None:
        if len(subject) > 80:
            self.report(
                data.key_lines[key],
                f"{key} is {len(subject)} characters; mail clients cut it off after about 80",
                Severity.WARNING,
            )

    # -- languages -------------------------------------------------------------

    def declared_languages(self, data: LineMap) -> tuple[str, ...]:
        """Read ``languages:``: canonical tags, the default first; each bad one is an error."""
        raw = data.get("languages")
        if raw is None:
            return ()
        line = data.key_lines["languages"]
        if "language" in data:
            self.report(
                data.key_lines["language"],
                "both 'language' and 'languages': keep 'languages' (its first language is the"
                " default) and delete 'language'",
            )
        if not isinstance(raw, list) or not raw:
            self.report(
                line,
                "field 'languages' must list the issue's languages, the default first, e.g. [en, fr]",
            )
            return ()
        lines = raw.lines if isinstance(raw, yamlfile.LineList) else [line] * len(raw)
        found: dict[str, int] = {}
        for value, at in zip(raw, lines, strict=True):
            if isinstance(value, bool) or not isinstance(value, str):
                self.report(at, f"field 'languages': {value!r} is not a language tag such as en, fr or pt-BR")
                continue
            tag = tags.canonical(value)
            if tag is None:
                self.report(at, f"field 'languages': '{value}' is not a language tag such as en, fr or pt-BR")
            elif tag in found:
                again = "" if tag == value else f" ('{value}' is {tag})"
                self.report(
                    at, f"field 'languages': {tag} is listed twice{again} (first on line {found[tag]})"
                )
            else:
                found[tag] = at
        return tuple(found)

    def translations(
        self,
        data: LineMap,
        defaults: Mapping[str, str],
        overrides: tuple[str, ...],
        same: tuple[str, ...],
        where: str,
    ) -> Translations:
        """Read the ``KEY.LANG`` fields of one mapping and report the missing ones.

        ``defaults`` are the text fields that take a translation, with their text in
        the default language; ``overrides`` the fields a language may set apart;
        ``same`` the fields that are the same in every language.
        """
        found: dict[tuple[str, str], str] = {}
        marked: dict[tuple[str, str], str] = {}
        first: dict[tuple[str, str], str] = {}
        for key in data:
            name, dot, suffix = key.partition(".")
            if not dot or (name not in defaults and name not in overrides and name not in same):
                continue  # not a translation, or an unknown field (reported as such)
            line = data.key_lines[key]
            if name in same:
                self.report(
                    line,
                    f"{where}field '{name}' is the same in every language, so it has no '{key}':"
                    f" write it once, as '{name}'",
                )
                continue
            language = self.translation_language(key, name, suffix, line, where)
            if language is None:
                continue
            if (name, language) in first:
                earlier = first[(name, language)]
                self.report(
                    line,
                    f"{where}'{key}' gives the {language} '{name}' again"
                    f" ('{earlier}', line {data.key_lines[earlier]}): keep one",
                )
                continue
            first[(name, language)] = key
            if data.get(name) in (None, ""):
                what = "text" if name in defaults else "one"
                self.report(
                    line,
                    f"{where}field '{key}' has no '{name}' beside it: write the {self.languages[0]}"
                    f" {what} as '{name}' (languages without their own show it)",
                )
            value = self.translated_value(data, key, name, where)
            if re.match(rf"{UNTRANSLATED}\b", data.comments.get(key, ""), re.IGNORECASE):
                marked[(name, language)] = key
            elif value:
                found[(name, language)] = value
        self.missing(data, defaults, found, marked, where)
        return Translations(found.items())

    def translation_language(self, key: str, name: str, suffix: str, line: int, where: str) -> str | None:
        """Return the declared language ``suffix`` names, or report why it names none."""
        tag = tags.canonical(suffix)
        declared = self.languages
        if not declared:
            self.report(
                line,
                f"{where}'{key}': the issue declares no languages to translate into; list them first,"
                f" the default first, e.g. languages: [en, {tag or 'fr'}]",
            )
            return None
        if tag == declared[0]:
            self.report(line, f"{where}'{key}': {tag} is the default language; write its text as '{name}'")
            return None
        if tag in declared:
            return tag
        if tag:  # fr-FR may mean fr; de does not mean es
            match = [d for d in declared[1:] if tags.base(d) == tags.base(tag)]
        else:
            match = difflib.get_close_matches(suffix, declared[1:], n=1, cutoff=0.5)
        if match:
            hint = f"did you mean '{name}.{match[0]}'?"
        elif tag:
            hint = f"add {tag} to 'languages' to translate into it"
        else:
            hint = f"write '{name}.' and one of them"
        what = f"{tag} is not one of the issue's languages" if tag else f"'{suffix}' is not a language tag"
        self.report(line, f"{where}'{key}': {what} ({', '.join(declared)}); {hint}")
        return None

    def translated_value(self, data: LineMap, key: str, name: str, where: str) -> str:
        """Read ``KEY.LANG`` with the checks ``KEY`` gets."""
        if name in _MARKDOWN:
            return self.markdown(data, key, where)
        if name == "link":
            return self.link(data, key, where)
        if name in _IMAGES:
            return self.image(data, key, where)
        if name == "subject":
            subject = self.text(data, key, where)
            self.subject_length(data, key, subject)
            return subject
        return self.text(data, key, where)

    def missing(
        self,
        data: LineMap,
        defaults: Mapping[str, str],
        found: Mapping[tuple[str, str], str],
        marked: Mapping[tuple[str, str], str],
        where: str,
    ) -> None:
        """Report each text field of ``defaults`` that a language does not translate."""
        default = self.languages[0] if self.languages else ""
        severity = Severity.ERROR if self.require_translations else Severity.WARNING
        required = " (newsletter.require_translations is true: every language must be complete)"
        for name, text in defaults.items():
            if not text:
                continue
            for language in self.languages[1:]:
                if (name, language) in found:
                    continue
                key = marked.get((name, language))
                if key is not None:
                    line = data.key_lines[key]
                    message = f"{where}field '{key}' is still marked '# {UNTRANSLATED}'"
                else:
                    line = data.key_lines.get(name, data.line)
                    message = f"{where}field '{name}' has no {language} translation"
                if severity is Severity.ERROR:
                    message += required
                else:
                    message += f"; the {language} variant shows the {default} text"
                    if key is not None:
                        message += " until the marker is deleted"
                self.report(line, message, severity)

    # -- structure -------------------------------------------------------------

    def issue(self, data: LineMap) -> Issue | None:
        self.unknown_fields(data, ISSUE_FIELDS, "")
        self.languages = self.declared_languages(data)
        subject = self.text(data, "subject", "", required=True)
        self.subject_length(data, "subject", subject)
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
        texts = {"subject": subject, "preheader": preheader, "intro": intro, "logo_alt": logo_alt}
        same = tuple(f for f in ISSUE_FIELDS if f not in ISSUE_TEXTS and f not in ISSUE_OVERRIDES)
        translations = self.translations(data, texts, ISSUE_OVERRIDES, same, "")
        sections = self.sections(data)
        if date is None or not subject or sections is None:
            return None
        issue = Issue(
            slug=self.path.resolve().parent.name,
            folder=self.path.parent,
            source=self.path,
            subject=subject,
            preheader=preheader,
            date=date,
            number=number,
            language=self.languages[0] if self.languages else language,
            languages=self.languages,
            logo=logo,
            logo_alt=logo_alt,
            intro=intro,
            sections=sections,
            translations=translations,
        )
        self.members_only_mentions(data, issue)
        return replace(issue, warnings=tuple(p for p in self.problems if p.severity is Severity.WARNING))

    def members_only_mentions(self, data: LineMap, issue: Issue) -> None:
        """Refuse public text that names a members-only item: the public variant carries it.

        Public text is the subject, preheader and intro, and the titles, intros
        and items of what the public sees, in every language. A members-only link
        (in any language) found there is an error, and so is a distinctive title
        (in any language); a short title ("Budget vote") may be an ordinary phrase,
        so finding one is a warning.
        """
        hidden = [
            (item, _every_language(item, "title"), _every_language(item, "link"))
            for s in issue.sections
            for item in s.items
            if s.members_only or item.members_only
        ]
        if not hidden:
            return
        # (line, where, members-only item) -> (severity, the languages whose public text names it)
        found: dict[tuple[int, str, str], tuple[Severity, list[str]]] = {}
        for variant in issue.in_every_language():
            for what, line, value in _public_places(data, issue, variant):
                folded = " ".join(value.split()).casefold()
                for item, titles, links in hidden:
                    if any(link in value for link in links):
                        severity = Severity.ERROR
                    else:
                        named = [t for t in titles if re.search(rf"(?<!\w){re.escape(t)}(?!\w)", folded)]
                        if not named:
                            continue
                        severity = Severity.ERROR if max(map(len, named)) >= 15 else Severity.WARNING
                    key = (line, what, item.title)
                    worst, languages = found.get(key, (Severity.WARNING, []))
                    found[key] = (
                        Severity.ERROR if Severity.ERROR in (worst, severity) else severity,
                        [*languages, variant.language],
                    )
        for (line, what, title), (severity, languages) in found.items():
            shown = (
                "the public variant shows it"
                if not issue.languages
                else f"the public {', '.join(languages)} variant{'s show' if len(languages) > 1 else ' shows'} it"
            )
            self.report(
                line,
                f"{what} mentions the members-only item '{title}'; {shown},"
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
        # The title as written: without one, the templates show the kind's own, translated.
        title = self.text(data, "title", f"section {index}: ")
        where = f"section '{title or (DEFAULT_TITLES[kind] if kind else f'#{index}')}': "
        self.unknown_fields(data, SECTION_FIELDS, where)
        members_only = self.flag(data, "members_only", where)
        intro = self.markdown(data, "intro", where)
        same = tuple(f for f in SECTION_FIELDS if f not in SECTION_TEXTS)
        translations = self.translations(data, {"title": title, "intro": intro}, (), same, where)
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
            items=tuple(i for i in items if i is not None),
            translations=translations,
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
        summary = self.markdown(data, "summary", where)
        city = self.text(data, "city", where)
        link = self.link(data, "link", where)
        link_label = self.text(data, "link_label", where)
        members_only = self.flag(data, "members_only", where)
        texts = {
            "title": title, "summary": summary, "link_label": link_label, "image_alt": image_alt, "city": city,
        }  # fmt: skip
        same = tuple(f for f in ITEM_FIELDS if f not in ITEM_TEXTS and f not in ITEM_OVERRIDES)
        translations = self.translations(data, texts, ITEM_OVERRIDES, same, where)
        item = Item(
            title=title,
            line=data.line,
            summary=summary,
            date=date,
            end_date=end_date,
            city=city,
            country=country,
            link=link,
            link_label=link_label,
            image=image,
            image_alt=image_alt,
            members_only=members_only,
            translations=translations,
        )
        return item if title else None


def _every_language(obj: Item, name: str) -> list[str]:
    """Return a field's value in every language it is written in (the default's first)."""
    values = [getattr(obj, name)] + [text for (field, _), text in obj.translations.items() if field == name]
    return (
        [v for v in dict.fromkeys(values) if v]
        if name == "link"
        else [folded for v in values if (folded := " ".join(v.split()).casefold())]
    )


def _public_places(data: LineMap, issue: Issue, variant: Issue) -> list[tuple[str, int, str]]:
    """Return what the public reads in one language: (what, line, text), each named and placed.

    ``variant`` is ``issue`` localized; a field's translation is named and placed by its
    own key (``subject.fr``), a fallback by the default's, so that a finding in two
    languages from the same text is reported once.
    """
    places = []
    for key in ("subject", "preheader", "intro"):
        own = _translation_key(data, key, variant.language)
        if (key, variant.language) in issue.translations and own:
            places.append((f"field '{own}'", data.key_lines[own], getattr(variant, key)))
        else:
            places.append((f"field '{key}'", data.key_lines.get(key, data.line), getattr(variant, key)))
    for original, section in zip(issue.sections, variant.sections, strict=True):
        if section.members_only:
            continue
        name = original.title or DEFAULT_TITLES[original.kind]
        places.append((f"section '{name}'", section.line, f"{section.title} {section.intro}"))
        public = zip(
            original.visible_items(Segment.PUBLIC), section.visible_items(Segment.PUBLIC), strict=True
        )
        for default, item in public:
            text = " ".join((item.title, item.summary, item.link, item.link_label, item.image_alt))
            places.append((f"public item '{default.title}'", item.line, text))
    return places


def _translation_key(data: LineMap, name: str, language: str) -> str | None:
    """Return the key that gives field ``name`` in ``language`` (``title.fr``, or ``title.FR``)."""
    for key in data:
        field, dot, suffix = key.partition(".")
        if dot and field == name and tags.canonical(suffix) == language:
            return key
    return None


def _bad_date() -> dt.date:
    raise ValueError("not YYYY-MM-DD")


def _kind(value: Any) -> str:
    return {
        list: "a list",
        yamlfile.LineList: "a list",
        dict: "a mapping",
        LineMap: "a mapping",
        bool: "true/false",
    }.get(type(value), type(value).__name__)
