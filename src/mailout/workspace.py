"""Scaffold a workspace (``mailout init``), start an issue or its translation (``mailout issue new``).

Neither ``init`` nor ``issue new`` ever overwrites a file that exists: the
team's work is never lost to a second ``init``. Starting a translation edits
the issue file in place, inserting lines and changing no other byte.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import languages, yamlfile
from .config import CONFIG_FILE
from .errors import WorkspaceError
from .issues import ISSUE_FILE, ISSUE_TEXTS, ITEM_TEXTS, SECTION_TEXTS, UNTRANSLATED, load_issue
from .paths import display_path

SCAFFOLD = Path(__file__).parent / "scaffold"
STARTER_ISSUE = "first-issue"


@dataclass(frozen=True)
class Created:
    """What a scaffolding step did with each path: created it or left it alone."""

    created: list[Path]
    kept: list[Path]


def issue_skeleton(slug: str, today: dt.date) -> str:
    """Return the text of a new issue file dated ``today``."""
    template = (SCAFFOLD / ISSUE_FILE).read_text(encoding="utf-8")
    return (
        template.replace("{slug}", slug)
        .replace("{month}", f"{today:%B %Y}")
        .replace("{date}", today.isoformat())
    )


def init_workspace(root: Path, today: dt.date | None = None) -> Created:
    """Create a workspace in ``root``: settings, templates, subscribers and a starter issue."""
    today = today or dt.date.today()
    files = {
        root / CONFIG_FILE: (SCAFFOLD / "mailout.toml").read_text(encoding="utf-8"),
        root / "templates" / "email" / "README.md": (SCAFFOLD / "templates-README.md").read_text(
            encoding="utf-8"
        ),
        root / "subscribers" / "members.csv": (SCAFFOLD / "members.csv").read_text(encoding="utf-8"),
        root / "subscribers" / "public.csv": (SCAFFOLD / "members.csv").read_text(encoding="utf-8"),
        root / "issues" / STARTER_ISSUE / ISSUE_FILE: issue_skeleton(STARTER_ISSUE, today),
        root / ".gitignore": "build/\noutbox/\n*.db\n*.db-wal\n*.db-shm\n",
    }
    result = Created([], [])
    for path, text in files.items():
        if _write_new(path, text):
            result.created.append(path)
        else:
            result.kept.append(path)
    return result


def new_issue(issues_dir: Path, slug: str, today: dt.date | None = None) -> Path:
    """Write the skeleton of issue ``slug``; refuse if it exists."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", slug):
        raise WorkspaceError(
            f"'{slug}' is not a usable issue name: use lower-case letters, digits, '-', '_' or '.',"
            " e.g. 2019-01"
        )
    path = issues_dir / slug / ISSUE_FILE
    if not _write_new(path, issue_skeleton(slug, today or dt.date.today())):
        raise WorkspaceError(f"{path} exists already; pick another name or edit that file")
    (issues_dir / slug / "images").mkdir(exist_ok=True)
    return path


def _write_new(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it exists; return whether it wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        return False
    return True


@dataclass(frozen=True)
class TranslationStarted:
    """What ``start_translation`` did: the language added and how many fields it copied."""

    language: str
    languages: tuple[str, ...]
    copied: int


def start_translation(path: Path, language: str, *, default_language: str) -> TranslationStarted:
    """Add ``language`` to the issue at ``path``, with a marked copy of every text to translate.

    The language joins ``languages:`` (made from ``language:``, else
    ``default_language``, when the issue has none). After each text field's block
    (and its translations) comes ``KEY.LANG:``, a copy of the default language's
    text marked ``# untranslated``, which the loader counts as missing until a
    translator deletes the marker. Every other byte of the file stays as it was,
    and the file is replaced in one step; two translations started at once both
    land, one after the other. Refuse an issue that does not load, a language
    that is not one, and one the issue already has.
    """
    tag = languages.canonical(language)
    if tag is None:
        raise WorkspaceError(f"'{language}' is not a language tag such as fr, es or pt-BR")
    with _locked(path):
        return _start_translation(path, tag, default_language)


def _start_translation(path: Path, tag: str, default_language: str) -> TranslationStarted:
    issue = load_issue(path, check_files=False)
    current = issue.languages
    if not current:
        single = issue.language or default_language
        written = languages.canonical(single)
        if written is None:
            raise WorkspaceError(f"{display_path(path)}: its language '{single}' is not one mailout knows")
        current = (written,)
    if tag in current:
        raise WorkspaceError(f"{display_path(path)} is already written in {tag} ({', '.join(current)})")
    text = path.read_bytes().decode("utf-8")
    root = yamlfile.compose(text)
    if not isinstance(root, yaml.MappingNode):  # load_issue accepted it: cannot happen
        raise WorkspaceError(f"{display_path(path)}: expected the issue's fields")
    editor = _Insertions(text, tag)
    editor.declare(root, current)
    editor.copy_texts(root, ISSUE_TEXTS)
    for section in _entries(root, "sections"):
        editor.copy_texts(section, SECTION_TEXTS)
        for item in _entries(section, "items"):
            editor.copy_texts(item, ITEM_TEXTS)
    _replace_file(path, editor.result())
    return TranslationStarted(tag, (*current, tag), editor.copied)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file at ``path``, against another ``--translate`` of it.

    The lock is on the file, and a translation replaces the file: so once the lock
    is ours, it must still be on the file at ``path``, else we take the new one's.
    """
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise WorkspaceError(f"cannot read {display_path(path)}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held, current = os.fstat(fd), os.stat(path)
        except OSError as exc:
            os.close(fd)
            raise WorkspaceError(f"cannot lock {display_path(path)}: {exc.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
            break
        os.close(fd)  # replaced while we waited: lock the file that is there now
    try:
        yield
    finally:
        os.close(fd)  # and with it the lock


def _entries(mapping: yaml.MappingNode, key: str) -> list[yaml.MappingNode]:
    """Return the mappings listed under ``key`` (the sections, an section's items)."""
    for key_node, value in mapping.value:
        if key_node.value == key and isinstance(value, yaml.SequenceNode):
            return [entry for entry in value.value if isinstance(entry, yaml.MappingNode)]
    return []


#: A line break as YAML counts one (and as ``str.splitlines`` does for a valid YAML file).
_BREAK = re.compile(r"\r\n|[\n\r\x85\u2028\u2029]")


class _Insertions:
    """Text to insert into an issue file at character offsets, applied all at once."""

    def __init__(self, text: str, language: str) -> None:
        self.text = text
        self.language = language
        self.starts = [0] + [m.end() for m in _BREAK.finditer(text)]
        first = _BREAK.search(text)
        self.newline = first.group() if first else "\n"
        self.edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
        self.copied = 0

    def line(self, number: int) -> str:
        """Return line ``number`` (from 0) without its line break."""
        start = self.starts[number]
        end = self.starts[number + 1] if number + 1 < len(self.starts) else len(self.text)
        return _BREAK.sub("", self.text[start:end])

    def after_line(self, number: int, lines: list[str]) -> None:
        """Insert ``lines`` after line ``number``."""
        block = "".join(line + self.newline for line in lines)
        if number + 1 < len(self.starts):
            self.edits.append((self.starts[number + 1], self.starts[number + 1], block))
        else:  # the last line, without a line break of its own
            self.edits.append(
                (len(self.text), len(self.text), self.newline + block.removesuffix(self.newline))
            )

    def declare(self, root: yaml.MappingNode, current: tuple[str, ...]) -> None:
        """Add the language to ``languages:``, or write ``languages:`` in place of ``language:``."""
        pairs = {k.value: (k, v) for k, v in root.value}
        if "languages" in pairs:
            sequence = pairs["languages"][1]
            assert isinstance(sequence, yaml.SequenceNode) and sequence.value  # load_issue checked it
            last = sequence.value[-1]
            if sequence.flow_style:
                self.edits.append((last.end_mark.pointer, last.end_mark.pointer, f", {self.language}"))
            else:
                prefix = self.line(last.start_mark.line)[: last.start_mark.column]
                self.after_line(last.end_mark.line, [prefix + self.language])
            return
        listed = f"languages: [{', '.join((*current, self.language))}]"
        if "language" in pairs:
            key, value = pairs["language"]
            self.edits.append((key.start_mark.pointer, value.end_mark.pointer, listed))
            return
        key, value = pairs["date"]
        self.after_line(value.end_mark.line, [" " * key.start_mark.column + listed])

    def copy_texts(self, mapping: yaml.MappingNode, names: tuple[str, ...]) -> None:
        """After each text field of ``mapping`` (and its translations), insert a marked copy."""
        last_lines: dict[str, int] = {}
        for key, value in mapping.value:
            name = str(key.value).partition(".")[0]
            if name in names:
                last_lines[name] = max(last_lines.get(name, -1), self.last_line(value))
        for key, value in mapping.value:
            if key.value in names and isinstance(value, yaml.ScalarNode) and value.value.strip():
                self.after_line(last_lines[key.value], self.copy(key, value))
                self.copied += 1

    def last_line(self, value: yaml.Node) -> int:
        """Return the last line (from 0) with text of ``value``'s block."""
        end = value.end_mark
        line = end.line if self.text[self.starts[end.line] : end.pointer].strip() else end.line - 1
        while line > value.start_mark.line and not self.line(line).strip():
            line -= 1
        return line

    def copy(self, key: yaml.Node, value: yaml.ScalarNode) -> list[str]:
        """Return the lines of ``KEY.LANG:``: the default's text as written, marked untranslated."""
        start = f"{' ' * key.start_mark.column}{key.value}.{self.language}: "
        marker = f"  # {UNTRANSLATED}"
        if value.style in ("|", ">"):
            header = yamlfile.BLOCK_HEADER.match(self.text, value.start_mark.pointer)
            assert header is not None
            body = range(value.start_mark.line + 1, self.last_line(value) + 1)
            return [start + header.group() + marker, *(self.line(n) for n in body)]
        if value.start_mark.line == value.end_mark.line == key.start_mark.line:
            return [start + self.text[value.start_mark.pointer : value.end_mark.pointer] + marker]
        # Text over several lines in quotes or plain: the marker has to end the key's line.
        return [start + json.dumps(value.value, ensure_ascii=False) + marker]

    def result(self) -> str:
        out = self.text
        # From the end, so that each offset still points where it did. At one offset, a
        # replacement (of 'language:') goes first, for the lines inserted there to go
        # before it; then the insertion made last, so that insertions keep their order.
        for _, (start, end, replacement) in sorted(
            enumerate(self.edits), key=lambda e: (e[1][0], e[1][1] > e[1][0], e[0]), reverse=True
        ):
            out = out[:start] + replacement + out[end:]
        return out


def _replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` in one step: a reader sees the old file or the new one, whole."""
    try:
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, kept on success
            "w", encoding="utf-8", newline="", dir=path.parent, prefix=f".{path.name}.", delete=False
        )
    except OSError as exc:
        raise WorkspaceError(f"cannot write beside {display_path(path)}: {exc.strerror}") from None
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, path.stat().st_mode & 0o7777)
        os.replace(handle.name, path)
    except BaseException as exc:
        Path(handle.name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WorkspaceError(f"cannot write {display_path(path)}: {exc.strerror}") from None
        raise
