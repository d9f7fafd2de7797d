"""Language tags: one canonical form, and the language each reader gets."""

from __future__ import annotations

import pytest

from mailout import languages


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("fr", "fr"),
        ("FR", "fr"),
        (" fr ", "fr"),
        ("fr_be", "fr-BE"),
        ("FR-be", "fr-BE"),
        ("pt_br", "pt-BR"),
        ("zh-hant-tw", "zh-Hant-TW"),
        ("es-419", "es-419"),
        ("de-CH-1996", "de-CH-1996"),
        ("ar", "ar"),
    ],
)
def test_a_tag_has_one_written_form(written: str, canonical: str) -> None:
    assert languages.canonical(written) == canonical


@pytest.mark.parametrize(
    "garbage",
    ["", "xx", "english", "fr--BE", "fr-", "f", "fr-BE-", "123", "fr BE", "x-klingon", "fr-" + "a" * 20],
)
def test_garbage_is_not_a_language(garbage: str) -> None:
    assert languages.canonical(garbage) is None


@pytest.mark.parametrize(
    ("tag", "chosen"),
    [
        ("fr", "fr"),
        ("FR", "fr"),
        ("fr-BE", "fr"),  # the base language
        ("fr-be", "fr"),  # stored before tags were made canonical
        ("es-MX", "es-MX"),  # the exact language before its base
        ("es-AR", "es"),
        ("de", "en"),  # not in the issue: the default
        ("", "en"),
        ("nonsense", "en"),
    ],
)
def test_a_reader_gets_their_language_else_its_base_else_the_default(tag: str, chosen: str) -> None:
    assert languages.choose(tag, ("en", "fr", "es", "es-MX"), "en") == chosen
