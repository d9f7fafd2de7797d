"""Render an issue into its variants: Jinja -> MJML -> HTML -> inlined CSS, plus plain text.

A variant is rendered once per segment and language and reused for every recipient. The
per-recipient fields (first name, unsubscribe URL, view-in-browser URL, the
reader's preference page) are left
in the finished HTML and text as placeholder tokens and filled at send time by
``Variant.personalize``, a plain substitution that costs microseconds.

Each render picks a fresh random token prefix, so text that an author writes
can never be mistaken for a placeholder.

The words the templates write themselves ("Unsubscribe", "Read more") come from
the catalogs of ``i18n`` through Jinja's i18n extension: each render installs
its language's translations on the environment, so an environment serves one
render at a time (``render_issue`` makes its own).
"""

from __future__ import annotations

import datetime as dt
import functools
import gettext
import hashlib
import html
import logging
import re
import secrets
import traceback
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import jinja2
import mjml
import premailer
from lxml import etree
from markupsafe import Markup, escape

from . import i18n, markup
from .config import Settings
from .errors import Problem, Severity, TemplateError
from .headers import one_line
from .issues import DEFAULT_LINK_LABELS, DEFAULT_TITLES, Issue, Item, Section, is_url
from .links import Links, private_picture_path
from .paths import display_path
from .pictures import pixel_size, scaled_height
from .segments import Segment

BUILTIN_TEMPLATES = Path(__file__).parent / "templates" / "email"
#: The per-recipient fields every variant carries, filled by ``Variant.personalize``.
#: A variant frozen before ``preferences_url`` existed has no placeholder for it: its
#: Slots have no such key, and the value given is simply not used.
FIELDS = ("first_name", "unsubscribe_url", "view_url", "preferences_url")
#: A document as text (a variant) or as bytes (its encoded part in a message).
Doc = TypeVar("Doc", str, bytes)
#: How many characters an inbox shows of the preview line, at most (Gmail and Apple Mail
#: show about 100-140): the hidden preheader is padded to this length, so the first
#: words of the body ("View this email in your browser") stay out of the preview.
PREVIEW_LENGTH = 150
#: One unit of the padding: a zero-width non-joiner and a no-break space. The
#: non-joiner stops clients from collapsing the spaces into one.
PREVIEW_FILLER = "\u200c\u00a0"


def first_name(name: str) -> str:
    """Return the first word of a full name, for the greeting ("" when there is none)."""
    words = one_line(name).split()
    return words[0] if words else ""


@dataclass(frozen=True)
class Recipient:
    """The per-recipient values filled into a variant at send time."""

    first_name: str
    unsubscribe_url: str
    view_url: str
    #: The reader's signed preference page (name, language, lists).
    preferences_url: str


class Slots(Generic[Doc]):
    """A finished document split around its placeholders, ready to be filled cheaply.

    ``pieces`` holds the text between the placeholders, ``keys`` the field each
    placeholder stands for: one piece more than keys.
    """

    def __init__(self, pieces: Sequence[Doc], keys: Sequence[str]) -> None:
        if len(pieces) != len(keys) + 1:
            raise ValueError(f"{len(pieces)} pieces around {len(keys)} placeholders")
        self.pieces: list[Doc] = list(pieces)
        self.keys: list[str] = list(keys)
        self._empty: Doc = pieces[0][:0]

    @staticmethod
    def split(source: str, tokens: Mapping[str, str]) -> Slots[str]:
        """Return ``source`` split around the placeholder ``tokens`` (token -> field name)."""
        pattern = re.compile("|".join(re.escape(t) for t in tokens))
        return Slots(pattern.split(source), [tokens[t] for t in pattern.findall(source)])

    def fill(self, values: Mapping[str, Doc]) -> Doc:
        """Return the document with each placeholder replaced by its field's value."""
        out = [self.pieces[0]]
        for key, piece in zip(self.keys, self.pieces[1:], strict=True):
            out.append(values[key])
            out.append(piece)
        return self._empty.join(out)


@dataclass(frozen=True)
class Variant:
    """One rendering of an issue for one segment: frozen HTML and text with placeholders."""

    slug: str
    segment: Segment
    #: The language of the variant's text and words (a canonical tag); "" when not known
    #: (a variant read back from a dispatch made before languages were recorded).
    language: str
    subject: str
    preheader: str
    html: str
    text: str
    tokens: Mapping[str, str]
    greeting_fallback: str
    #: Items shown and members-only items left out; None for a variant read back from a
    #: dispatch (``outbox.frozen_variant``), which stores the finished documents only.
    items_shown: int | None
    items_hidden: int | None
    warnings: tuple[Problem, ...] = ()
    html_slots: Slots[str] = field(init=False, repr=False, compare=False)
    text_slots: Slots[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "html_slots", Slots.split(self.html, self.tokens))
        object.__setattr__(self, "text_slots", Slots.split(self.text, self.tokens))

    def field_values(self, recipient: Recipient) -> tuple[dict[str, str], dict[str, str]]:
        """Return the recipient's values for the HTML part (escaped) and for the text part."""
        # Control characters (ESC, NUL, BEL...) have no place in a greeting; whitespace runs collapse.
        name = one_line(recipient.first_name) or self.greeting_fallback
        raw = {
            "first_name": name,
            "unsubscribe_url": recipient.unsubscribe_url,
            "view_url": recipient.view_url,
            "preferences_url": recipient.preferences_url,
        }
        return {key: html.escape(value, quote=True) for key, value in raw.items()}, raw

    def personalize(self, recipient: Recipient) -> tuple[str, str]:
        """Return this variant's HTML and text filled in for one recipient."""
        escaped, raw = self.field_values(recipient)
        return self.html_slots.fill(escaped), self.text_slots.fill(raw)


def template_environment(settings: Settings) -> jinja2.Environment:
    """Return the Jinja environment: workspace templates first, then the built-in ones."""
    loader = jinja2.ChoiceLoader(
        [jinja2.FileSystemLoader(settings.path("templates")), jinja2.FileSystemLoader(BUILTIN_TEMPLATES)]
    )
    env = jinja2.Environment(
        loader=loader,
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("mjml", "mjml.j2", "html", "html.j2"), default=False
        ),
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["markdown"] = _markdown_html
    env.filters["markdown_text"] = _markdown_text
    env.filters["wrap"] = markup.wrap
    env.filters["when"] = _when
    env.filters["place"] = _place
    env.filters["date"] = _date
    env.install_null_translations(newstyle=True)  # type: ignore[attr-defined]
    return env


# Every variant of an issue (segment × language) writes the same summaries: each is
# parsed once per process, not once per variant (a fifth of a variant's cost).
_markdown_html = functools.lru_cache(maxsize=4096)(markup.to_html)
_markdown_text = functools.lru_cache(maxsize=4096)(markup.to_text)


def format_when(item: Item, language: str = i18n.SOURCE_LANGUAGE) -> str:
    """Return an item's date or date range in ``language``, e.g. ``27–28 February 2019``."""
    return i18n.format_date_range(item.date, item.end_date, language) if item.date else ""


def format_place(item: Item, language: str = i18n.SOURCE_LANGUAGE) -> str:
    """Return ``City (Country)`` with the country named in ``language``, or whichever is set."""
    country = i18n.country_name(item.country, language)
    if item.city and country:
        return f"{item.city} ({country})"
    return item.city or country


@jinja2.pass_context
def _when(context: Any, item: Item) -> str:
    return format_when(item, context["language"])


@jinja2.pass_context
def _place(context: Any, item: Item) -> str:
    return format_place(item, context["language"])


@jinja2.pass_context
def _date(context: Any, value: dt.date) -> str:
    return i18n.format_date(value, context["language"])


def _install_words(env: jinja2.Environment, words: gettext.NullTranslations) -> None:
    """Give the templates ``_()`` and ``ngettext()`` in one language, the catalog's text escaped.

    Jinja trusts a translation as markup in an HTML template; a catalog is text
    written by translators, so it is escaped there like the authors' text (and left
    as it is in the plain-text part).
    """

    @jinja2.pass_eval_context
    def _gettext(eval_ctx: Any, message: str) -> str:
        text = words.gettext(message)
        return escape(text) if eval_ctx.autoescape else text

    @jinja2.pass_eval_context
    def _ngettext(eval_ctx: Any, singular: str, plural: str, count: int) -> str:
        text = words.ngettext(singular, plural, count)
        return escape(text) if eval_ctx.autoescape else text

    env.install_gettext_callables(_gettext, _ngettext, newstyle=True)  # type: ignore[attr-defined]


def render_issue(issue: Issue, settings: Settings) -> dict[tuple[Segment, str], Variant]:
    """Render every variant of ``issue``: each segment in each of its languages, the default first."""
    env = template_environment(settings)
    return {
        (segment, language): render_language(issue, settings, segment, language, env=env)
        for language in issue.variant_languages(settings.newsletter.language)
        for segment in Segment
    }


def render_language(
    issue: Issue,
    settings: Settings,
    segment: Segment,
    language: str,
    *,
    env: jinja2.Environment | None = None,
) -> Variant:
    """Render the variant of ``issue`` (in all its languages) for ``segment`` in ``language``.

    What every sender of an issue calls (preview, test, dispatch), so that they all
    render alike: text without a translation shows, and is marked as, the issue's default.
    """
    default = issue.variant_languages(settings.newsletter.language)[0]
    return render_variant(issue.localized(language), settings, segment, env=env, source_language=default)


def render_variant(
    issue: Issue,
    settings: Settings,
    segment: Segment,
    *,
    env: jinja2.Environment | None = None,
    source_language: str = "",
) -> Variant:
    """Render one variant of ``issue`` for ``segment``, in ``issue.language or newsletter.language``.

    ``source_language`` is the language of the text an untranslated field shows
    (the issue's default language; default ``newsletter.language``).
    """
    env = env or template_environment(settings)
    language = issue.language or settings.newsletter.language
    _install_words(env, i18n.translations(settings, language))
    # Placeholders no author can type: a fresh random prefix per variant.
    prefix = f"mo{secrets.token_hex(6)}"
    tokens = {f"{prefix}{key.replace('_', '')}": key for key in FIELDS}
    visible = visible_sections(issue, segment)
    shown = sum(len(items) for _, items in visible)
    hidden = sum(len(s.items) for s in issue.sections) - shown
    sizes: dict[str, tuple[int, int]] = {}
    context = _template_context(issue, settings, segment, visible, hidden, tokens, sizes)
    context.update(_language_context(settings, language, source_language or settings.newsletter.language))
    mjml_source = _render_template(env, "layout.mjml.j2", context)
    text = _render_template(env, "layout.txt.j2", context)
    html_out = _to_html(mjml_source, settings, sizes)
    return Variant(
        slug=issue.slug,
        segment=segment,
        language=language,
        subject=issue.subject,
        preheader=issue.preheader,
        html=html_out,
        text=_tidy_text(text),
        tokens=tokens,
        greeting_fallback=i18n.newsletter_text(settings, language, "greeting_fallback")[0],
        items_shown=shown,
        items_hidden=hidden,
        warnings=(
            *_variant_warnings(issue, settings, segment, html_out),
            *language_warnings(settings, language, hidden),
        ),
    )


def _language_context(settings: Settings, language: str, source: str) -> dict[str, Any]:
    """Return what the templates see of the variant's language: its direction, texts, defaults."""
    marks = Markup(' lang="{}"').format(source)
    if i18n.direction(source) != i18n.direction(language):
        marks += Markup(' dir="{}"').format(i18n.direction(source))

    def lang_of(obj: Any, name: str) -> Markup:
        """Return `` lang="en"`` for a field that shows the default language's text, else ""."""
        return marks if name in getattr(obj, "untranslated", ()) else Markup("")

    return {
        "language": language,
        "direction": i18n.direction(language),
        "source_language": source,
        "lang_of": lang_of,
        "newsletter_name": i18n.newsletter_text(settings, language, "name")[0],
        "reason": i18n.newsletter_text(settings, language, "reason")[0],
        "DEFAULT_TITLES": DEFAULT_TITLES,
        "DEFAULT_LINK_LABELS": DEFAULT_LINK_LABELS,
    }


def language_warnings(settings: Settings, language: str, hidden: int = 1) -> list[Problem]:
    """Return what a variant in ``language`` shows in another language: catalog strings, texts.

    ``hidden`` is how many members-only items the variant leaves out: the teaser is
    shown, and so checked, only when some are.
    """
    where = settings.config_file.name if settings.config_file else "settings"
    warnings = []
    if not i18n.has_catalog(settings, language):
        warnings.append(
            Problem(
                where,
                None,
                f"no catalog for language '{language}': the {language} variant shows the template's"
                f" words in English (add {settings.paths.locale.as_posix()}/{language.replace('-', '_')}"
                "/LC_MESSAGES/email.po to the workspace, see templates/email/README.md)",
                Severity.WARNING,
            )
        )
    else:
        missing = i18n.missing_strings(settings, language)
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (", ..." if len(missing) > 5 else "")
            warnings.append(
                Problem(
                    where,
                    None,
                    f"{len(missing)} template string{'s' if len(missing) != 1 else ''} with no"
                    f" '{language}' translation, shown in English: {shown} (add them to"
                    f" {settings.paths.locale.as_posix()}/{language.replace('-', '_')}/LC_MESSAGES/email.po)",
                    Severity.WARNING,
                )
            )
    names = [
        n for n in i18n.TEXTS if n != "members_teaser" or (hidden and settings.newsletter.members_teaser)
    ]
    for name in names:
        if not i18n.newsletter_text(settings, language, name)[1]:
            warnings.append(
                Problem(
                    where,
                    None,
                    f"newsletter.{name} is shown in '{settings.newsletter.language}' in the '{language}'"
                    f' variant: add {name} = "..." to a [newsletter.translations.{language}] table',
                    Severity.WARNING,
                )
            )
    return warnings


def _template_context(
    issue: Issue,
    settings: Settings,
    segment: Segment,
    visible: list[tuple[Section, tuple[Item, ...]]],
    hidden: int,
    tokens: Mapping[str, str],
    sizes: dict[str, tuple[int, int]],
) -> dict[str, Any]:
    """Return what the templates see: the visible sections, the teaser, links and placeholders.

    ``sizes`` collects the pixel size of every local picture the template asks a URL for.
    """
    language = issue.language or settings.newsletter.language
    teaser = i18n.members_teaser(settings, language, hidden)
    links = Links(settings)
    private = private_images(issue)

    def asset_url(name: str) -> str:
        if is_url(name):
            return name
        url = links.picture(issue.slug, private_image_path(issue, name) if name in private else name)
        size = pixel_size(issue.folder / name)
        if size is not None:
            sizes[url] = size
        return url

    return {
        "issue": issue,
        "segment": segment.value,
        "sections": visible,
        "items_hidden": hidden,
        "members_teaser": teaser,
        "members_teaser_url": settings.newsletter.members_teaser_url,
        "newsletter": settings.newsletter,
        "sender": settings.sender,
        "placeholder": {key: token for token, key in tokens.items()},
        "asset_url": asset_url,
        "preheader_filler": preview_filler(issue.preheader),
    }


def preview_filler(preheader: str) -> str:
    """Return the invisible padding after ``preheader`` that fills an inbox's preview line."""
    return PREVIEW_FILLER * max(0, PREVIEW_LENGTH - len(preheader))


def _variant_warnings(
    issue: Issue, settings: Settings, segment: Segment, html_out: str
) -> tuple[Problem, ...]:
    """Return the issue's warnings, plus a missing postal address and a size Gmail would clip."""
    warnings = [*issue.warnings]
    if not settings.newsletter.postal_address:
        warnings.append(
            Problem(
                settings.config_file.name if settings.config_file else "settings",
                None,
                "newsletter.postal_address is empty: the footer must give the sender's postal address",
                Severity.WARNING,
            )
        )
    limit = settings.preview.html_warn_bytes
    size = len(html_out.encode("utf-8"))
    if size > limit:
        warnings.append(
            Problem(
                display_path(issue.source),
                None,
                f"{segment} variant HTML is {size / 1000:.0f} KB; Gmail clips messages over about 102 KB"
                f" (warning from {limit / 1000:.0f} KB)",
                Severity.WARNING,
            )
        )
    return tuple(warnings)


def private_images(issue: Issue) -> set[str]:
    """Return the local pictures only members-only items show (none the public variant shows)."""
    return issue.members_only_images()


#: How many hex digits of a picture's SHA-256 its private address carries (80 bits).
DIGEST_LENGTH = 20


def image_digest(path: Path) -> str:
    """Return the part of a members-only picture's address that only its readers know."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:DIGEST_LENGTH]
    except OSError:  # checked by load_issue; a preview of a file being edited may race it
        return "0" * DIGEST_LENGTH


def private_image_path(issue: Issue, name: str) -> str:
    """Return where a members-only picture is published: ``m/<digest>/<name>``.

    Its address holds a digest of its content, so only those who got the members'
    version can ask for it; the public variant and archive never name it.
    """
    return private_picture_path(name, image_digest(issue.folder / name))


def _render_template(env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateSyntaxError as exc:
        where = (
            f"{display_path(Path(exc.filename))}:{exc.lineno}" if exc.filename else f"{exc.name}:{exc.lineno}"
        )
        raise TemplateError(f"{where}: template syntax error: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        where = _template_frame(exc) or name
        raise TemplateError(
            f"{where}: template '{exc.name}' not found in the workspace or the built-in templates"
        ) from None
    except Exception as exc:  # a bug in a (trusted, but user-editable) template
        raise TemplateError(f"{_template_frame(exc) or name}: template error: {exc}") from None


def _template_frame(exc: BaseException) -> str:
    """Return ``file:line`` of the innermost template frame of ``exc``'s traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
    return f"{display_path(Path(frames[-1].filename))}:{frames[-1].lineno}" if frames else ""


#: Characters mjml-python writes into an attribute as a Rust escape ("\\u{a0}") instead of
#: themselves: the non-ASCII ones Python does not print, and combining marks.
_UNPRINTED = re.compile(r"[^\x00-\x7f]")


def _character_references(source: str) -> str:
    """Write the characters mjml-python would mangle in attributes as references (``&#xa0;``).

    A no-break space in a French aria-label ("Lire la suite : ...") or a combining
    accent in an alt text would otherwise reach the reader as ``\\u{a0}``. In text
    the reference is the same character once parsed.
    """

    def reference(match: re.Match[str]) -> str:
        char = match.group()
        if char.isprintable() and unicodedata.category(char) not in ("Mn", "Me"):
            return char
        return f"&#x{ord(char):x};"

    return _UNPRINTED.sub(reference, source)


def _to_html(mjml_source: str, settings: Settings, sizes: Mapping[str, tuple[int, int]]) -> str:
    try:
        # fonts={}: MJML would otherwise link a web font from a remote host.
        converted = mjml.mjml2html(_character_references(mjml_source), disable_comments=True, fonts={})
    except Exception as exc:
        folder = settings.path("templates")
        overrides = (
            sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.j2")) if folder.is_dir() else []
        )
        suspects = f" (workspace templates in use: {', '.join(overrides)})" if overrides else ""
        raise TemplateError(f"the rendered MJML is not valid: {exc}{suspects}") from None
    page = etree.fromstring(converted.strip(), etree.HTMLParser())
    inliner = premailer.Premailer(
        allow_network=False,  # never fetch anything: no remote CSS, and no crash offline
        cssutils_logging_level=logging.CRITICAL,  # cssutils warns on every vendor property
        keep_style_tags=False,
        remove_classes=False,
        strip_important=False,
        disable_validation=True,
        # MJML writes the pixel width of every image and table; premailer would replace
        # it with the CSS width (width="100%"), which Outlook reads as the file's own width.
        disable_basic_attributes=["width", "height"],
    )
    inliner.transform(page)  # in place: a <style data-premailer="ignore"> stays as written
    _size_images(page, sizes)
    inlined: str = etree.tostring(page, method="html", encoding="unicode", pretty_print=True)
    return "<!doctype html>\n" + inlined


def _size_images(page: Any, sizes: Mapping[str, tuple[int, int]]) -> None:
    """Give every image a pixel ``height`` for its pixel ``width`` where its file's size is known.

    Outlook for Windows ignores CSS sizes; without both attributes it shows a picture
    at its own size. MJML's ``height="auto"`` is not valid HTML and is dropped.
    """
    for img in page.iter("img"):
        width = img.get("width", "")
        size = sizes.get(img.get("src", ""))
        if width.isdigit() and size is not None:
            img.set("height", str(scaled_height(size, int(width))))
        elif not img.get("height", "").isdigit():
            img.attrib.pop("height", None)


def _tidy_text(text: str) -> str:
    """Collapse runs of blank lines and trailing spaces that template logic leaves behind."""
    lines = [line.rstrip() for line in text.splitlines()]
    tidy = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return tidy + "\n"


def visible_sections(issue: Issue, segment: Segment) -> list[tuple[Section, tuple[Item, ...]]]:
    """Return the sections ``segment`` sees, each with its visible items."""
    return [
        (s, items) for s in issue.sections if (items := s.visible_items(segment)) or segment is Segment.MEMBER
    ]
