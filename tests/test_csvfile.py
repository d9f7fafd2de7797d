"""Subscriber CSV files: encodings, delimiters, header aliases, line numbers, errors, safe export."""

from __future__ import annotations

import codecs
import csv
import io
import re
import tracemalloc
from pathlib import Path

import pytest

from mailout.csvfile import (
    FIELDS,
    CsvFormat,
    Row,
    detect_delimiter,
    detect_encoding,
    neutralize,
    read_rows,
    unneutralize,
    write_rows,
)
from mailout.errors import CsvError, MailoutError
from mailout.subscribers import InvalidSubscriber, clean_fields, normalise_email

SUBSCRIBERS = Path(__file__).resolve().parent.parent / "subscribers"


def read_all(path: Path, **options: str) -> tuple[CsvFormat, list[Row]]:
    with read_rows(path, **options) as (fmt, rows):
        return fmt, list(rows)


def write(tmp_path: Path, data: bytes, name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# Encodings


def test_utf8_with_bom(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + "Email,Name\nzoe@example.org,Zoë Müller\n".encode())
    assert detect_encoding(path) == "utf-8-sig"
    fmt, rows = read_all(path)
    assert fmt.encoding == "utf-8-sig"
    assert fmt.columns == {"email": "Email", "name": "Name"}
    assert rows == [Row(2, "zoe@example.org", "Zoë Müller", "", "")]


def test_utf8_without_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "email,name\nl@stadt-münchen.example,Łucja Wiśniewska\n".encode())
    assert detect_encoding(path) == "utf-8"
    fmt, rows = read_all(path)
    assert (fmt.encoding, fmt.delimiter) == ("utf-8", ",")
    assert rows[0].email == "l@stadt-münchen.example"
    assert rows[0].name == "Łucja Wiśniewska"


def test_excel_windows_export_is_cp1252_and_semicolons(tmp_path: Path) -> None:
    text = (
        "Email;Nom complet;Organisme;Langue\r\n"
        "zoe@example.org;Zoë Müller;Mairie de Saint-Étienne;fr\r\n"
        "jose@example.net;José Núñez;Ayuntamiento de Villanueva;es\r\n"
    )
    path = write(tmp_path, text.encode("cp1252"))
    assert detect_encoding(path) == "cp1252"
    fmt, rows = read_all(path)
    assert (fmt.encoding, fmt.delimiter) == ("cp1252", ";")
    assert rows == [
        Row(2, "zoe@example.org", "Zoë Müller", "Mairie de Saint-Étienne", "fr"),
        Row(3, "jose@example.net", "José Núñez", "Ayuntamiento de Villanueva", "es"),
    ]


def test_a_non_utf8_byte_near_the_end_of_a_large_file_means_cp1252(tmp_path: Path) -> None:
    lines = ["email,name"] + [f"person{i}@example.org,Person {i}" for i in range(10_000)]
    lines.append("last@example.org,Zoë Müller")
    path = write(tmp_path, "\n".join(lines).encode("cp1252"))
    assert path.stat().st_size > 200_000
    assert detect_encoding(path) == "cp1252"
    with read_rows(path) as (fmt, rows):
        *_, last = rows
    assert fmt.encoding == "cp1252"
    assert last == Row(10_002, "last@example.org", "Zoë Müller", "", "")


def test_a_utf8_character_cut_by_a_chunk_boundary_is_still_utf8(tmp_path: Path) -> None:
    # "é" is two bytes; put it across every position around the 64 KiB chunk size.
    for pad in range(65_530, 65_540):
        path = write(tmp_path, ("email\n" + "a" * pad + "é@example.org\n").encode())
        assert detect_encoding(path) == "utf-8"


def test_forced_encoding_and_delimiter(tmp_path: Path) -> None:
    # Detection would say UTF-8 and ',': this header has two commas inside one column name.
    path = write(tmp_path, "email|name, title, rank\nzoe@example.org|Zoë\n".encode("latin-1"))
    fmt, rows = read_all(path, encoding="latin-1", delimiter="|")
    assert (fmt.encoding, fmt.delimiter) == ("latin-1", "|")
    assert fmt.ignored == ("name, title, rank",)
    assert rows == [Row(2, "zoe@example.org", "", "", "")]


def test_tab_delimited(tmp_path: Path) -> None:
    path = write(tmp_path, b"email\tname\na@example.org\tAnn\n")
    fmt, rows = read_all(path)
    assert fmt.delimiter == "\t"
    assert rows[0].name == "Ann"


def test_forced_utf8_on_a_cp1252_file_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "email,name\na@example.org,Ann\nb@example.org,Zoë\n".encode("cp1252"))
    with pytest.raises(CsvError, match=r"list\.csv:3: not valid utf-8 text") as caught:
        read_all(path, encoding="utf-8")
    assert "CSV UTF-8" in str(caught.value)


def test_unknown_forced_encoding(tmp_path: Path) -> None:
    path = write(tmp_path, b"email\na@example.org\n")
    with pytest.raises(CsvError, match="unknown encoding 'klingon'"):
        read_all(path, encoding="klingon")


@pytest.mark.parametrize("encoding", ["rot13", "base64", "hex", "zlib"])
def test_a_forced_encoding_must_be_a_text_encoding(tmp_path: Path, encoding: str) -> None:
    path = write(tmp_path, b"email\na@example.org\n")
    with pytest.raises(CsvError, match=rf"list\.csv: '{encoding}' is not a text encoding"):
        read_all(path, encoding=encoding)


def test_forced_utf16_without_a_bom_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, b"email\na@example.org\n")
    with pytest.raises(CsvError, match=r"list\.csv:1: not valid utf-16 text \(.*BOM"):
        read_all(path, encoding="utf-16")


# Mixed encodings: UTF-8 lines, then a row pasted in from a Windows-1252 file.

MIXED_HEAD = "email,name\nmarie@example.org,Marie Lefèvre\nann@example.org,Ann Lee\n".encode()


def test_utf8_with_a_cp1252_row_is_refused_not_garbled(tmp_path: Path) -> None:
    path = write(tmp_path, MIXED_HEAD + "renee@example.org,Renée Café\n".encode("cp1252"), "members.csv")
    with pytest.raises(CsvError) as caught:
        detect_encoding(path)
    message = str(caught.value)
    assert re.search(r"members\.csv:4: not valid UTF-8, although line 2 is UTF-8", message)
    assert "mixes encodings" in message and "CSV UTF-8" in message
    with pytest.raises(CsvError, match=r"members\.csv:4: .*mixes encodings"):
        read_all(path)


def test_a_cp1252_row_before_utf8_lines_is_refused_too(tmp_path: Path) -> None:
    data = b"email,name\n" + "renee@example.org,Renée\n".encode("cp1252") + MIXED_HEAD[11:]
    with pytest.raises(CsvError, match=r"list\.csv:2: not valid UTF-8, although line 3 is UTF-8"):
        read_all(write(tmp_path, data))


def test_mixed_encodings_are_found_far_apart_in_a_large_file(tmp_path: Path) -> None:
    filler = b"".join(b"person%d@example.org,Person %d\n" % (i, i) for i in range(10_000))
    data = MIXED_HEAD + filler + "renee@example.org,Renée\n".encode("cp1252")
    assert len(data) > 4 * 65_536
    with pytest.raises(CsvError, match=r"list\.csv:10004: not valid UTF-8, although line 2"):
        detect_encoding(write(tmp_path, data))


def test_an_invalid_byte_right_after_a_chunk_boundary_names_its_line(tmp_path: Path) -> None:
    for pad in range(65_530, 65_540):
        data = "email\né@example.org\n".encode() + b"a" * pad + b"\n\xe9@example.org\n"
        with pytest.raises(CsvError, match=r"list\.csv:4: not valid UTF-8, although line 2"):
            detect_encoding(write(tmp_path, data))


def test_high_bytes_without_any_utf8_character_are_still_cp1252(tmp_path: Path) -> None:
    # "é" then "»" in Windows-1252 is E9 BB: not a UTF-8 sequence (E9 needs two continuation bytes).
    path = write(tmp_path, "email,name\na@example.org,Zoé »\n".encode("cp1252"))
    assert detect_encoding(path) == "cp1252"
    assert read_all(path)[1] == [Row(2, "a@example.org", "Zoé »", "", "")]


# UTF-16 and workbooks: what Excel's other "Save as" choices give.


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_excel_unicode_text_is_utf16_and_tabs(tmp_path: Path, codec: str) -> None:
    bom = codecs.BOM_UTF16_LE if codec == "utf-16-le" else codecs.BOM_UTF16_BE
    text = 'E-mail\tNom\r\nzoe@example.org\tZoë Müller\r\n\r\nłucja@example.pl\t"Łucja\r\nW."\r\nx@example.org\tX\r\n'
    path = write(tmp_path, bom + text.encode(codec))
    assert detect_encoding(path) == "utf-16"
    fmt, rows = read_all(path)
    assert (fmt.encoding, fmt.delimiter) == ("utf-16", "\t")
    assert fmt.columns == {"email": "E-mail", "name": "Nom"}
    assert rows == [
        Row(2, "zoe@example.org", "Zoë Müller", "", ""),
        Row(4, "łucja@example.pl", "Łucja\r\nW.", "", ""),
        Row(6, "x@example.org", "X", "", ""),
    ]


def test_a_broken_utf16_file_names_the_line(tmp_path: Path) -> None:
    text = "email\tname\na@example.org\tAnn\nb@example.org\tBo\ud800\n"
    path = write(tmp_path, codecs.BOM_UTF16_LE + text.encode("utf-16-le", "surrogatepass"))
    with pytest.raises(CsvError, match=r"list\.csv:3: not valid utf-16 text"):
        read_all(path)


@pytest.mark.parametrize("encoding", [None, "utf-8", "cp1252"])
@pytest.mark.parametrize(
    "start", [b"PK\x03\x04\x14\x00\x06\x00\x08\x00", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00\x00"]
)
def test_an_excel_workbook_is_not_a_csv_file(tmp_path: Path, start: bytes, encoding: str | None) -> None:
    path = write(tmp_path, start + b"\x00!\x00", "members.xlsx")
    options = {"encoding": encoding} if encoding else {}
    with pytest.raises(CsvError, match=r"members\.xlsx: this is an Excel workbook, not a CSV") as caught:
        read_all(path, **options)
    assert "CSV UTF-8" in str(caught.value)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("email;name;org", ";"),
        ("email,name", ","),
        ("email\tname", "\t"),
        ("email", ","),
        ('"a;b;c",d,e', ","),
    ],
)
def test_detect_delimiter(header: str, expected: str) -> None:
    assert detect_delimiter(header) == expected


def test_excel_sep_line_names_the_delimiter(tmp_path: Path) -> None:
    path = write(tmp_path, b"sep=;\nemail;name,with comma\na@example.org;Ann, Bo\n")
    fmt, rows = read_all(path)
    assert fmt.delimiter == ";"
    assert rows == [Row(3, "a@example.org", "", "", "")]


# Headers


@pytest.mark.parametrize(
    ("header", "columns"),
    [
        ("E-mail,Name", {"email": "E-mail", "name": "Name"}),
        ("Email Address,Full Name,Company,Locale", None),
        ("e_mail,full-name,Organization,lang", None),
        ("MAIL,NAME,ORG,LANGUAGE", None),
        ("Courriel,Nom complet,Organisme,Langue", None),
        ("Adresse e-mail,Nom,Institution,Langue", None),
        ("  E-Mail Address ,  Full name ,organisation,language", None),
    ],
)
def test_header_aliases(tmp_path: Path, header: str, columns: dict[str, str] | None) -> None:
    path = write(tmp_path, f"{header}\na@example.org,Ann Lee,City of Example,en\n".encode())
    fmt, rows = read_all(path)
    written = [cell.strip() for cell in header.split(",")]
    assert fmt.columns == (columns or dict(zip(FIELDS, written, strict=False)))
    assert fmt.ignored == ()
    assert rows[0].email == "a@example.org"
    assert rows[0].name == "Ann Lee"


def test_first_and_last_name_make_the_name(tmp_path: Path) -> None:
    text = "Prénom;Nom de famille;E-mail;Téléphone\nÉlodie;Le Goff;e@example.org;0102\n;Solo;s@example.org;\n"
    fmt, rows = read_all(write(tmp_path, text.encode()))
    assert fmt.columns == {"first_name": "Prénom", "last_name": "Nom de famille", "email": "E-mail"}
    assert fmt.ignored == ("Téléphone",)
    assert [r.name for r in rows] == ["Élodie Le Goff", "Solo"]


def test_french_prenom_and_nom_are_first_and_last_name(tmp_path: Path) -> None:
    fmt, rows = read_all(write(tmp_path, b"Prenom,NOM,Courriel\nJean,Dupont,j@example.org\n"))
    assert fmt.columns == {"first_name": "Prenom", "last_name": "NOM", "email": "Courriel"}
    assert rows[0].name == "Jean Dupont"


def test_a_full_name_column_wins_over_first_and_last(tmp_path: Path) -> None:
    text = "First name,Last name,Full name,Email\nAnn,Lee,Dr Ann Lee,a@example.org\n"
    fmt, rows = read_all(write(tmp_path, text.encode()))
    assert fmt.columns == {"name": "Full name", "email": "Email"}
    assert fmt.ignored == ("First name", "Last name")
    assert rows[0].name == "Dr Ann Lee"


def test_no_email_column(tmp_path: Path) -> None:
    path = write(tmp_path, b"Name;Phone\nAnn;0102\n")
    with pytest.raises(CsvError) as caught:
        read_all(path)
    message = str(caught.value)
    assert re.search(r"list\.csv:1: no email column \(read as utf-8, ';'-delimited\)", message)
    assert "'Name', 'Phone'" in message
    assert "e-mail" in message and "courriel" in message
    assert "\n" not in message
    assert isinstance(caught.value, MailoutError)


@pytest.mark.parametrize("data", [b"", b"\n\n", b"\xef\xbb\xbf", b" ;;\r\n"])
def test_empty_file(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(CsvError, match="empty"):
        read_all(write(tmp_path, data))


def test_cannot_open(tmp_path: Path) -> None:
    with pytest.raises(CsvError, match="no such file"):
        read_all(tmp_path / "missing.csv")
    with pytest.raises(CsvError, match="folder"):
        read_all(tmp_path)


# Rows and lines


def test_a_multiline_quoted_cell_does_not_shift_line_numbers(tmp_path: Path) -> None:
    text = (
        "email,name,organisation\r\n"
        'a@example.org,Ann,"Ville de Lyon\r\nDirection de la sécurité\r\n3e étage"\r\n'
        "b@example.org,Bo,Stadt Essen\r\n"
        "\r\n"
        "c@example.org,Cy,\r\n"
    )
    _, rows = read_all(write(tmp_path, text.encode()))
    assert [(r.line, r.email) for r in rows] == [
        (2, "a@example.org"),
        (5, "b@example.org"),
        (7, "c@example.org"),
    ]
    assert rows[0].organisation == "Ville de Lyon\r\nDirection de la sécurité\r\n3e étage"


def test_ragged_and_blank_rows(tmp_path: Path) -> None:
    text = "email;name;organisation;language\na@example.org\n\nb@example.org;Bo;Org;de;extra;cells\n;;;\n  c@example.org ; Cy \n"
    _, rows = read_all(write(tmp_path, text.encode()))
    assert rows == [
        Row(2, "a@example.org", "", "", ""),
        Row(4, "b@example.org", "Bo", "Org", "de"),
        Row(6, "c@example.org", "Cy", "", ""),
    ]


def test_a_row_without_email_is_still_yielded(tmp_path: Path) -> None:
    _, rows = read_all(write(tmp_path, b"email,name\n,Ann\n"))
    assert rows == [Row(2, "", "Ann", "", "")]


def test_a_row_with_a_nul_byte_is_yielded_for_the_importer_to_reject(tmp_path: Path) -> None:
    data = (
        b'email,name\na@example.org,Ann\nb@exam\x00ple.org,Bo\nc@example.org,"C\x00y\nCy"\nd@example.org,Di\n'
    )
    _, rows = read_all(write(tmp_path, data))
    assert rows == [
        Row(2, "a@example.org", "Ann", "", ""),
        Row(3, "b@exam\0ple.org", "Bo", "", ""),
        Row(4, "c@example.org", "C\0y\nCy", "", ""),
        Row(6, "d@example.org", "Di", "", ""),
    ]
    with pytest.raises(InvalidSubscriber, match="NUL"):
        normalise_email(rows[1].email)
    with pytest.raises(InvalidSubscriber, match="NUL"):
        clean_fields(rows[2].name, "", "")


def test_a_nul_header_hints_at_utf16_without_a_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "email\tname\na@example.org\tAnn\n".encode("utf-16-le"))
    with pytest.raises(CsvError, match=r"list\.csv:1: NUL characters in the header.*UTF-16") as caught:
        read_all(path)
    assert "\0" not in str(caught.value)


def test_a_field_over_the_csv_module_limit_is_yielded(tmp_path: Path) -> None:
    long_name = "N" * 200_000
    data = f'email,name\na@example.org,"{long_name}"\nb@example.org,Bo\n'.encode()
    limit = csv.field_size_limit()
    assert len(long_name) > limit
    _, rows = read_all(write(tmp_path, data))
    assert rows == [Row(2, "a@example.org", long_name, "", ""), Row(3, "b@example.org", "Bo", "", "")]
    assert csv.field_size_limit() == limit, "the csv module's limit is put back"


def test_a_quote_never_closed_in_a_large_file_is_still_an_error(tmp_path: Path) -> None:
    rows = "".join(f"p{i}@example.org,P {i}\n" for i in range(100_000))
    path = write(tmp_path, f'email,name\na@example.org,"Ann\n{rows}'.encode())
    with pytest.raises(CsvError, match=r"list\.csv:2: cannot read this record.*a quote that is never closed"):
        read_all(path)


def test_an_unclosed_quote_names_where_it_starts(tmp_path: Path) -> None:
    path = write(tmp_path, b'email,name\na@example.org,Ann\nb@example.org,"Bo\nc@example.org,Cy\n')
    with pytest.raises(CsvError, match=r"list\.csv:3: cannot read this record.*runs to line 4"):
        read_all(path)


def test_rows_are_read_lazily(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("email,name,organisation,language\n")
        for i in range(50_000):
            handle.write(f"person{i}@example.org,Person Number {i},Ville de Quelque-Part {i},fr\n")
    assert path.stat().st_size > 3_000_000
    tracemalloc.start()
    try:
        count = 0
        with read_rows(path) as (_, rows):
            first = next(rows)
            count += 1
            for _row in rows:
                count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert first.line == 2
    assert count == 50_000
    assert peak < 1_000_000, f"peak {peak:,} bytes: the rows were held in memory"


# Writing, and formulas


TRICKY = [
    "",
    "'",
    "''",
    "=1+1",
    "'=1+1",
    "''=1+1",
    "+33 1 23 45 67 89",
    "-5",
    "@SUM(A1:A2)",
    "\tindented",
    "\r=cmd",
    "'Tis the season",
    "O'Brien",
    "'-",
    '=HYPERLINK("http://example.com","click")',
    'Ann "Bo" Lee',
    "a,b;c\td",
    "two\nlines",
    "Zoë Müller",
    "plain",
]


@pytest.mark.parametrize("cell", TRICKY)
def test_neutralize_round_trips(cell: str) -> None:
    assert unneutralize(neutralize(cell)) == cell


def test_neutralize_prefixes_formulas_only() -> None:
    assert neutralize("=1+1") == "'=1+1"
    assert neutralize("@x") == "'@x"
    assert neutralize("'Tis") == "'Tis"
    assert unneutralize("'Tis") == "'Tis"
    assert neutralize("Ann") == "Ann"


def test_write_rows_neutralizes_every_cell(tmp_path: Path) -> None:
    out = io.StringIO(newline="")
    count = write_rows(out, ["email", "=name"], [["a@example.org", '=HYPERLINK("http://example.com","x")']])
    assert count == 1
    assert out.getvalue() == 'email,\'=name\r\na@example.org,"\'=HYPERLINK(""http://example.com"",""x"")"\r\n'


def test_write_rows_output_reads_back_unchanged(tmp_path: Path) -> None:
    # The reader trims cells, so the values here have no surrounding spaces.
    values = [cell for cell in TRICKY if cell == cell.strip()]
    rows = [(f"p{i}@example.org", cell, cell, "fr") for i, cell in enumerate(values)]
    path = tmp_path / "export.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        assert write_rows(handle, FIELDS, iter(rows)) == len(rows)
    fmt, read = read_all(path)
    assert (fmt.encoding, fmt.delimiter) == ("utf-8", ",")
    assert [(r.email, r.name, r.organisation, r.language) for r in read] == rows


# The sample lists


def test_sample_lists_read_with_their_headers() -> None:
    fmt, members = read_all(SUBSCRIBERS / "members.csv")
    assert fmt.columns == {field: field for field in FIELDS}
    assert 20 <= len(members) <= 30
    assert any(r.email.endswith("@stadt-münchen.example") for r in members)
    assert "=1+1" in {r.name for r in members}

    fmt, public = read_all(SUBSCRIBERS / "public.csv")
    assert fmt.columns == {
        "email": "E-mail",
        "first_name": "First name",
        "last_name": "Last name",
        "language": "Language",
    }
    assert 25 <= len(public) <= 35
    assert "Małgorzata Nowak" in {r.name for r in public}
    for rows in (members, public):
        emails = [r.email for r in rows]
        assert "" in emails
        assert any("@" not in e for e in emails if e)
        assert any(" " in e for e in emails)
        lowered = [e.rsplit("@", 1)[0] + "@" + e.rsplit("@", 1)[-1].lower() for e in emails]
        assert len(set(lowered)) < len(lowered), "a duplicate differing in the domain's case"
