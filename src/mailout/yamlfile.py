"""YAML for files people edit by hand: every mapping knows its lines, every error its line.

The loader is PyYAML's safe loader with two changes that spare content authors
YAML 1.1's surprises: dates stay text (the caller parses them and reports a bad
one clearly), and only ``true``/``false`` are booleans, so that the country
code ``NO`` stays Norway rather than becoming ``False``. A key given twice is an
error rather than silently replacing the first.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class LineMap(dict[str, Any]):
    """A YAML mapping that remembers its own line, the line of each key, and their comments.

    ``comments`` holds, for a key whose value is text starting on the key's own
    line, the comment written after that value on that line (``title: Essen  #
    untranslated`` gives ``untranslated``; after a block scalar's ``|``, too).
    """

    line: int = 0
    key_lines: dict[str, int]
    comments: dict[str, str]


class LineList(list[Any]):
    """A YAML sequence that remembers its own line and the line of each entry."""

    line: int = 0
    lines: list[int]


class SyntaxProblem(Exception):
    """The file is not valid YAML (or not UTF-8); ``line`` is where to look."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


#: The characters a YAML file may not hold; the reader refuses them raw, but an escape in a
#: double-quoted string ("\e", "\v", "\ud800") puts them into the parsed text.
NOT_ALLOWED = yaml.reader.Reader.NON_PRINTABLE
_ESCAPES = {0x00: "\\0", 0x07: "\\a", 0x08: "\\b", 0x0B: "\\v", 0x0C: "\\f", 0x1B: "\\e"}


def special_character(code: int) -> str:
    """Return the message for a character a YAML file may not hold, raw or escaped."""
    return f"special character #x{code:04x} is not allowed"


def escaped_character(text: str) -> str | None:
    """Return what is wrong with parsed ``text`` holding a character the file could not, or None."""
    match = NOT_ALLOWED.search(text)
    if match is None:
        return None
    code = ord(match.group())
    escape = _ESCAPES.get(code) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return f'{special_character(code)} (written "{escape}"); delete it'


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineMap:
    loader.flatten_mapping(node)
    result = LineMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    result.comments = {}
    for key_node, value_node in node.value:
        key = str(loader.construct_object(key_node, deep=True))
        if key in result:
            raise _DuplicateKey(problem=f"duplicate key '{key}'", problem_mark=key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
        comment = trailing_comment(key_node, value_node)
        if comment is not None:
            result.comments[key] = comment
    return result


def _construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
#: A block scalar's header: ``|`` or ``>``, then an indentation digit and a chomping sign.
BLOCK_HEADER = re.compile(r"[|>][0-9+-]*")
_LINE_END = re.compile(r"\r\n|[\n\r\x85\u2028\u2029]")


def trailing_comment(key_node: yaml.Node, value_node: yaml.Node) -> str | None:
    """Return the comment after a text value that starts on its key's line, or None.

    For a block scalar (``|``, ``>``) that is the comment after its header; for
    other text, the comment after the value when the value ends on that line.
    """
    start, end = value_node.start_mark, value_node.end_mark
    if not isinstance(value_node, yaml.ScalarNode) or start.line != key_node.start_mark.line:
        return None
    buffer = start.buffer
    if not isinstance(buffer, str):
        return None
    if value_node.style in ("|", ">"):
        header = BLOCK_HEADER.match(buffer, start.pointer)
        after = header.end() if header else start.pointer
    elif end.line == start.line:
        after = end.pointer
    else:
        return None
    stop = _LINE_END.search(buffer, after)
    rest = buffer[after : stop.start() if stop else len(buffer)].rstrip("\0").strip()
    return rest[1:].strip() if rest.startswith("#") else None


def compose(text: str) -> yaml.Node | None:
    """Return the node tree of YAML ``text`` (already parsed once without error), with positions."""
    return yaml.compose(text, Loader=_Loader)


def parse(raw: bytes) -> Any:
    """Parse UTF-8 YAML; raise ``SyntaxProblem`` with the line of the first error."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SyntaxProblem(
            line, f"not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise SyntaxProblem(line, f"{special_character(exc.character)}; delete it") from None
    except yaml.MarkedYAMLError as exc:
        # A scanner error's context is where the broken token starts (an unclosed
        # quote, a key without ':'); its problem mark can be far below, even at the end.
        scanning = isinstance(exc, yaml.scanner.ScannerError) and exc.context_mark
        mark = exc.context_mark if scanning else exc.problem_mark or exc.context_mark
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise SyntaxProblem(
            mark.line + 1 if mark else None,
            f"YAML syntax error: {what} (check indentation, colons and quotes)",
        ) from None
    except yaml.YAMLError as exc:
        raise SyntaxProblem(None, f"YAML syntax error: {exc}") from None
    except RecursionError:
        raise SyntaxProblem(None, "YAML nested too deeply to be an issue file") from None
