"""Subscriber CSV files: encodings, delimiters, header aliases, line numbers, errors, safe export."""

from __future__ import annotations

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


def test_nul_byte_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"email,name\na@example.org,Ann\nb@exam\x00ple.org,Bo\n")
    with pytest.raises(CsvError, match=r"list\.csv:3: NUL character"):
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
