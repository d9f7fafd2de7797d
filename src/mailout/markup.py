"""The short Markdown that content authors write, as safe HTML and as plain text.

Content is data: raw HTML in a summary is shown as text (markdown-it with
``html`` off escapes it), links other than http(s) and mailto are not made
into links, and nothing an author writes is ever evaluated as a template.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from functools import lru_cache

from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

from .errors import Severity

_SAFE_LINK = re.compile(r"^(https?:|mailto:)", re.IGNORECASE)


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.validateLink = lambda url: bool(_SAFE_LINK.match(url.strip()))  # type: ignore[method-assign]
    return md


def to_html(source: str) -> Markup:
    """Render Markdown to HTML that is safe to put into an email."""
    if not source:
        return Markup("")
    # Safe by construction: the parser escapes raw HTML (html=False) and drops unsafe links.
    return Markup(_parser().render(source).strip())  # noqa: S704


def lint(source: str) -> Iterator[tuple[str, Severity]]:
    """Yield what is wrong with a summary's Markdown, with how serious it is."""
    if not source:
        return
    tokens = _parser().parse(source)
    for token in tokens:
        if token.type == "heading_open":
            yield "headings are not allowed in a summary; keep it to a few sentences", Severity.ERROR
        if token.type != "inline":
            continue
        for child in token.children or []:
            if child.type == "image":
                yield "images go in the 'image' field, not in the Markdown", Severity.ERROR
            if child.type != "text":
                continue
            # The parser leaves a link it refused (validateLink) as text: say why.
            target = re.search(r"\]\(\s*([^)\s]+)", child.content)
            if target and not _SAFE_LINK.match(target.group(1)):
                yield (
                    f"link '{target.group(1)}' is not allowed: a link in a summary must start with"
                    " https://, http:// or mailto:",
                    Severity.ERROR,
                )
            elif re.search(r"\]\(|\[[^\]]*\]\([^)]*$", child.content):
                yield (
                    f"broken Markdown link near '{child.content.strip()[:40]}'; write [text](https://...)",
                    Severity.ERROR,
                )
    if re.search(r"<[a-zA-Z/!][^>]*>", source):
        yield "HTML is not allowed and will be shown as plain text; use Markdown", Severity.WARNING


def to_text(source: str, width: int = 72) -> str:
    """Render Markdown as wrapped plain text; links become ``label <https://...>``."""
    if not source:
        return ""
    blocks: list[str] = []
    prefix = ""
    for token in _parser().parse(source):
        if token.type in ("bullet_list_open", "ordered_list_open"):
            prefix = "- "
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            prefix = ""
        elif token.type == "inline":
            text = _inline_text(token.children or [])
            blocks.append(_wrap(text, width, prefix))
        elif token.type in ("code_block", "fence"):
            blocks.append(token.content.rstrip("\n"))
    joiner = "\n" if prefix else "\n\n"
    return joiner.join(blocks) if len(blocks) > 1 else "".join(blocks)


def _inline_text(children: list[Token]) -> str:
    parts: list[str] = []
    href_stack: list[str] = []
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "link_open":
            href_stack.append(str(child.attrGet("href") or ""))
        elif child.type == "link_close" and href_stack:
            href = href_stack.pop()
            if href and not "".join(parts).rstrip().endswith(href):
                parts.append(f" <{href}>")
    return "".join(parts)


def wrap(text: str, width: int = 72, first: str = "", rest: str | None = None) -> str:
    """Wrap one paragraph of plain text; long words (URLs) are never broken."""
    return textwrap.fill(
        " ".join(text.split()),
        width=width,
        initial_indent=first,
        subsequent_indent=first if rest is None else rest,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _wrap(text: str, width: int, prefix: str) -> str:
    return "\n".join(wrap(line, width, prefix, " " * len(prefix)) for line in text.split("\n"))
