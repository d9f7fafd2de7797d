"""Subscriber CSV files as people really save them: read with detection, written safe for spreadsheets.

The comms team's lists come from a member directory and a website sign-up form,
and are often opened and re-saved in Excel. So the reader detects the encoding
(UTF-8 with or without a BOM, UTF-16 with a BOM as in Excel's "Unicode Text",
else Excel's Windows-1252) and the delimiter (``,``, ``;`` or tab), maps headers
to our fields through aliases in English, French and German, and streams the
rows: a file of a million lines is never held in memory. It refuses a workbook
saved under a .csv name, and a UTF-8 file with lines of another encoding pasted
in, rather than garble every accent in it. It reads strictly, so that a quote
left open is reported where it starts rather than silently swallowing the rows
below it; a row with a bad cell (a NUL, a huge field) is still yielded, for the
importer to report with its line while the good rows import.

The writer prefixes every cell a spreadsheet would run as a formula with ``'``
(CSV injection, see OWASP); the reader takes that prefix off again, so an export
imports back unchanged.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .errors import CsvError
from .paths import display_path

if TYPE_CHECKING:
    from _csv import Reader  # what csv.reader returns: an iterator that also counts lines

FIELDS = ("email", "name", "organisation", "language")

#: Header names accepted for each field, compared case-, accent-, space-, '-' and '_'-insensitively.
#: ``first_name`` and ``last_name`` make ``name`` when the file has no full-name column.
ALIASES: dict[str, tuple[str, ...]] = {
    "email": (
        "email",
        "e-mail",
        "email address",
        "mail",
        "e-mail address",
        "courriel",
        "adresse e-mail",
        "adresse courriel",
        "e-mail-adresse",
        "correo electrónico",
    ),
    "name": ("name", "full name", "nom", "nom complet", "display name"),
    "first_name": ("first name", "firstname", "prénom", "given name", "vorname"),
    "last_name": ("last name", "lastname", "surname", "nom de famille", "family name", "nachname"),
    "organisation": ("organisation", "organization", "org", "company", "organisme", "institution"),
    "language": ("language", "lang", "langue", "locale", "sprache"),
}

DELIMITERS = (",", ";", "\t")
#: Characters that make a spreadsheet treat a cell as a formula (OWASP's list).
_FORMULA_STARTS = frozenset("=+-@\t\r")
_BOM = codecs.BOM_UTF8
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
#: How .xlsx (a zip archive) and .xls files start.
_WORKBOOK_STARTS = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
_CHUNK = 1 << 16
#: The csv module refuses fields over 128 KiB; the importer reports long fields row by row instead.
_FIELD_LIMIT = 1 << 20
# What the "surrogateescape" error handler makes of bytes that are not UTF-8, and real non-ASCII text.
_ESCAPED = re.compile("[\udc80-\udcff]")
_NON_ASCII = re.compile("[^\x00-\x7f\udc80-\udcff]")
# Excel writes, and honours, a first line "sep=;" naming the delimiter.
_SEP_LINE = re.compile(r"^sep=(.)\r?\n?$")


@dataclass(frozen=True)
class CsvFormat:
    """How a file was read: its encoding, delimiter and which header feeds which field."""

    encoding: str
    delimiter: str
    columns: dict[str, str]
    ignored: tuple[str, ...]


@dataclass(frozen=True)
class Row:
    """One record of a subscriber file, cells stripped but not validated."""

    line: int
    email: str
    name: str
    organisation: str
    language: str


def detect_encoding(path: Path) -> str:
    """Return "utf-8-sig", "utf-16", "utf-8" or "cp1252" for the file at ``path``, reading it in chunks.

    Raise ``CsvError`` for an Excel workbook, and for UTF-8 text with bytes of another encoding in it.
    """
    start = _check_not_workbook(path)
    if start.startswith(_BOM):
        return "utf-8-sig"
    if start.startswith(_UTF16_BOMS):
        return "utf-16"
    invalid, utf8 = _scan_utf8(path)
    if invalid is None:
        return "utf-8"
    if utf8 is None:  # high bytes, but never a UTF-8 character: a Windows file
        return "cp1252"
    raise CsvError(
        f"{display_path(path)}:{invalid}: not valid UTF-8, although line {utf8} is UTF-8: "
        "the file mixes encodings; save it again as 'CSV UTF-8'"
    )


def detect_delimiter(header_line: str) -> str:
    """Return the most frequent of ",", ";" and tab outside quotes in ``header_line`` ("," if none)."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for char in header_line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(DELIMITERS, key=counts.__getitem__)
    return best if counts[best] else ","


@contextmanager
def read_rows(
    path: Path, *, encoding: str | None = None, delimiter: str | None = None
) -> Iterator[tuple[CsvFormat, Iterator[Row]]]:
    """Open a subscriber CSV and yield its format and a lazy iterator over its rows."""
    name = display_path(path)
    if encoding is not None:
        try:
            codec = codecs.lookup(encoding)
        except LookupError:
            raise CsvError(f"{name}: unknown encoding '{encoding}' (try utf-8 or cp1252)") from None
        if not codec._is_text_encoding:  # rot13, base64, zlib...: bytes to bytes or str to str
            raise CsvError(f"{name}: '{encoding}' is not a text encoding (try utf-8 or cp1252)")
    if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
        raise CsvError(f"{name}: the delimiter must be one character other than a quote, got {delimiter!r}")
    try:
        if encoding is not None:
            _check_not_workbook(path)
        used_encoding = encoding or detect_encoding(path)
        handle = path.open(encoding=used_encoding, newline="")
    except OSError as exc:
        raise CsvError(f"{name}: cannot read the file: {_os_reason(exc)}") from None
    with handle:
        try:
            # Leading blank lines (or lines of bare delimiters) are not the header.
            skipped = 0
            first = handle.readline()
            while first and not first.strip(" \t\r\n,;\ufeff"):
                skipped += 1
                first = handle.readline()
            if sep := _SEP_LINE.match(first.lstrip("\ufeff")):
                delimiter = delimiter or sep.group(1)
                skipped += 1
                first = handle.readline()
        except UnicodeError as exc:
            raise _decode_error(path, name, used_encoding, exc) from None
        if not first:
            raise CsvError(f"{name}: the file is empty; it needs a header line with an email column")
        used_delimiter = delimiter or detect_delimiter(first)
        reader = csv.reader(itertools.chain([first], handle), delimiter=used_delimiter, strict=True)
        header = _next_record(reader, path, name, used_encoding, skipped)[1] or []
        fmt, indexes = _map_header(header, used_encoding, used_delimiter)
        if "email" not in indexes:
            if "\0" in first:
                raise CsvError(
                    f"{name}:{skipped + 1}: NUL characters in the header line; this is not a text CSV "
                    "(UTF-16 text without a byte order mark, or a binary file?); save it as 'CSV UTF-8'"
                )
            found = ", ".join(f"'{_label(h)}'" for h in header if _label(h)) or "none"
            accepted = ", ".join(ALIASES["email"])
            how = f"read as {used_encoding}, {_delimiter_name(used_delimiter)}-delimited"
            raise CsvError(
                f"{name}:{skipped + 1}: no email column ({how}); headers found: {found}; "
                f"name the email column one of: {accepted}"
            )
        yield fmt, _rows(reader, indexes, path, name, used_encoding, skipped)


def neutralize(cell: str) -> str:
    """Prefix ``'`` to a cell a spreadsheet would run as a formula."""
    # A cell already of the form "'=..." gets one more quote, so that unneutralize
    # gives it back exactly: the two are inverses on every string.
    return "'" + cell if cell.lstrip("'")[:1] in _FORMULA_STARTS else cell


def unneutralize(cell: str) -> str:
    """Remove the ``'`` that ``neutralize`` put before a formula-like cell."""
    if cell.startswith("'") and cell.lstrip("'")[:1] in _FORMULA_STARTS:
        return cell[1:]
    return cell


def write_rows(handle: TextIO, header: Sequence[str], rows: Iterable[Sequence[str]]) -> int:
    """Write ``header`` and ``rows`` as comma-separated CSV with every cell neutralized; return the row count."""
    writer = csv.writer(handle)
    writer.writerow([neutralize(cell) for cell in header])
    written = 0
    for row in rows:
        writer.writerow([neutralize(cell) for cell in row])
        written += 1
    return written


def _map_header(header: list[str], encoding: str, delimiter: str) -> tuple[CsvFormat, dict[str, int]]:
    by_key = {_key(alias): field for field, aliases in ALIASES.items() for alias in aliases}
    indexes: dict[str, int] = {}
    for index, cell in enumerate(header):
        field = by_key.get(_key(cell))
        if field is not None and field not in indexes:  # the first of two same-field columns wins
            indexes[field] = index
    # In French, "Prénom" next to "Nom" means first and last name, not "Nom" as a full name.
    french_pair = "first_name" in indexes and "last_name" not in indexes and "name" in indexes
    if french_pair and _key(header[indexes["name"]]) == "nom":
        indexes["last_name"] = indexes.pop("name")
    if "name" in indexes:
        indexes.pop("first_name", None)
        indexes.pop("last_name", None)
    used = set(indexes.values())
    labels = [_label(cell) for cell in header]
    fmt = CsvFormat(
        encoding=encoding,
        delimiter=delimiter,
        columns={field: labels[index] for field, index in indexes.items()},
        ignored=tuple(label for index, label in enumerate(labels) if index not in used and label),
    )
    return fmt, indexes


def _rows(
    reader: Reader, indexes: dict[str, int], path: Path, name: str, encoding: str, skipped: int
) -> Iterator[Row]:
    def cell(values: list[str], field: str) -> str:
        index = indexes.get(field)
        return values[index] if index is not None and index < len(values) else ""

    while True:
        line, cells = _next_record(reader, path, name, encoding, skipped)
        if cells is None:
            return
        if not any(c.strip() for c in cells):  # a blank line, or Excel's ";;;" after the data
            continue
        # A NUL stays in its cell: the importer rejects the row, naming its line.
        values = [unneutralize(c.strip()).strip() for c in cells]
        if "first_name" in indexes or "last_name" in indexes:  # only when there is no full-name column
            full_name = f"{cell(values, 'first_name')} {cell(values, 'last_name')}".strip()
        else:
            full_name = cell(values, "name")
        yield Row(
            line=line,
            email=cell(values, "email"),
            name=full_name,
            organisation=cell(values, "organisation"),
            language=cell(values, "language"),
        )


def _next_record(
    reader: Reader, path: Path, name: str, encoding: str, skipped: int
) -> tuple[int, list[str] | None]:
    """Return the line where the next record starts and its cells (None at the end of the file)."""
    # The csv module counts the lines it has taken from the file: a record starts
    # on the line after the previous one ended, however many lines a quoted cell spans.
    start = skipped + reader.line_num + 1
    # The limit is the csv module's global: raise it for this record only, the reading being lazy.
    limit = csv.field_size_limit()
    if limit < _FIELD_LIMIT:
        csv.field_size_limit(_FIELD_LIMIT)
    try:
        return start, next(reader)
    except StopIteration:
        return start, None
    except csv.Error as exc:
        end = skipped + reader.line_num
        hint = f" (the record runs to line {end}: a quote that is never closed?)" if end > start else ""
        raise CsvError(f"{name}:{start}: cannot read this record: {exc}{hint}") from None
    except UnicodeError as exc:
        raise _decode_error(path, name, encoding, exc) from None
    finally:
        if limit < _FIELD_LIMIT:
            csv.field_size_limit(limit)


def _check_not_workbook(path: Path) -> bytes:
    """Return the first bytes of the file; raise ``CsvError`` if they are those of an Excel workbook."""
    with path.open("rb") as handle:
        start = handle.read(8)
    if start.startswith(_WORKBOOK_STARTS):
        raise CsvError(
            f"{display_path(path)}: this is an Excel workbook, not a CSV file: "
            "in Excel, save it as 'CSV UTF-8'"
        )
    return start


def _scan_utf8(path: Path) -> tuple[int | None, int | None]:
    """Return the lines of the first byte that is not UTF-8 and of the first non-ASCII UTF-8 character."""
    # Bytes that are not UTF-8 decode to lone surrogates, so one pass finds both; a
    # character cut at a chunk's end waits in the decoder for the next chunk.
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    invalid: int | None = None
    utf8: int | None = None
    line = 1
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            text = decoder.decode(chunk, final=not chunk)
            if not text.isascii():
                if invalid is None and (found := _ESCAPED.search(text)):
                    invalid = line + text.count("\n", 0, found.start())
                if utf8 is None and (found := _NON_ASCII.search(text)):
                    utf8 = line + text.count("\n", 0, found.start())
                if invalid is not None and utf8 is not None:
                    break
            line += text.count("\n")
            if not chunk:
                break
    return invalid, utf8


def _decode_error(path: Path, name: str, encoding: str, exc: UnicodeError) -> CsvError:
    line = _undecodable_line(path, encoding)
    where = f"{name}:{line}" if line else name
    reason = exc.reason if isinstance(exc, UnicodeDecodeError) else str(exc)
    return CsvError(f"{where}: not valid {encoding} text ({reason}); save the file as 'CSV UTF-8'")


def _undecodable_line(path: Path, encoding: str) -> int | None:
    """Return the line of the first byte ``encoding`` cannot decode, or None if it all decodes."""
    decoder = codecs.getincrementaldecoder(encoding)()
    line = 1
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            state = decoder.getstate()  # its bytes are a character cut at the last chunk's end
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeError as exc:
                if not isinstance(exc, UnicodeDecodeError):  # e.g. UTF-16 without a BOM: no position
                    return line
                # Count decoded newlines, not b"\n": in UTF-16 other characters have that byte too.
                decoder.setstate(state)
                return line + decoder.decode(chunk[: max(exc.start - len(state[0]), 0)]).count("\n")
            line += text.count("\n")
            if not chunk:
                return None


def _label(header: str) -> str:
    """Return a header as written, without surrounding spaces or a BOM read as text."""
    return header.strip().lstrip("\ufeff").strip()


def _key(header: str) -> str:
    folded = unicodedata.normalize("NFKD", _label(header).casefold())
    return "".join(c for c in folded if c not in " -_" and not unicodedata.combining(c))


def _delimiter_name(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else f"'{delimiter}'"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "it is a folder, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)
