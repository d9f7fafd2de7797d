"""Picture sizes read from file headers: PNG, GIF, JPEG, and files that are none of them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from mailout.pictures import pixel_size, scaled_height

EXAMPLE = Path(__file__).resolve().parent.parent / "issues" / "2019-01" / "images"


def jpeg(width: int, height: int) -> bytes:
    """A JPEG's first segments: SOI, an APP0 (JFIF), a DQT, then a baseline frame header."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    dqt = b"\xff\xdb" + struct.pack(">H", 67) + bytes(65)
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes(9)
    return b"\xff\xd8" + app0 + dqt + b"\xff" + sof + b"\xff\xda"


def test_png_from_the_example_issue() -> None:
    assert pixel_size(EXAMPLE / "madrid.png") == (560, 280)
    assert pixel_size(EXAMPLE / "logo.png") == (300, 80)


@pytest.mark.parametrize(
    ("content", "size"),
    [
        (b"GIF89a" + struct.pack("<HH", 640, 427) + bytes(20), (640, 427)),
        (b"GIF87a" + struct.pack("<HH", 1, 2) + bytes(20), (1, 2)),
        (jpeg(1200, 800), (1200, 800)),
        (jpeg(1200, 800)[:40], None),  # cut before the frame header
        (b"\xff\xd8\x00garbage", None),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        (b"", None),
        (b"GIF89a" + bytes(4), None),  # a size of 0 x 0
    ],
)
def test_headers(tmp_path: Path, content: bytes, size: tuple[int, int] | None) -> None:
    path = tmp_path / "picture"
    path.write_bytes(content)
    assert pixel_size(path) == size


def test_missing_file_has_no_size(tmp_path: Path) -> None:
    assert pixel_size(tmp_path / "nothing.png") is None


def test_scaled_height_keeps_the_proportions() -> None:
    assert scaled_height((560, 280), 180) == 90
    assert scaled_height((300, 80), 300) == 80
    assert scaled_height((3000, 1), 100) == 1, "never 0"
