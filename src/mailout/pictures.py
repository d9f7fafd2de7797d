"""The pixel size of an issue's picture files, read from their headers (PNG, GIF, JPEG).

Outlook for Windows sizes an image by its ``width`` and ``height`` attributes, not
by CSS; the renderer writes both, and needs the file's own proportions for the
height. Only the first bytes of a file are read; a format not known here, or a
file that cannot be read, has no size (the ``height`` attribute is then left out).
"""

from __future__ import annotations

import struct
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG "start of frame" markers (baseline, progressive, ...), which carry the size;
#: C4, C8 and CC are other segments in the same range.
JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def pixel_size(path: Path) -> tuple[int, int] | None:
    """Return the ``(width, height)`` of a PNG, GIF or JPEG file, or None when unknown."""
    try:
        with path.open("rb") as file:
            head = file.read(26)
            if head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR":
                width, height = struct.unpack(">II", head[16:24])
            elif head[:6] in (b"GIF87a", b"GIF89a"):
                width, height = struct.unpack("<HH", head[6:10])
            elif head.startswith(b"\xff\xd8"):
                file.seek(2)
                found = _jpeg_size(file.read())
                if found is None:
                    return None
                width, height = found
            else:
                return None
    except (OSError, struct.error):
        return None
    return (width, height) if width > 0 and height > 0 else None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Return the size in the first frame header of a JPEG's segments (after its SOI)."""
    at = 0
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in JPEG_FRAMES:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


def scaled_height(size: tuple[int, int], width: int) -> int:
    """Return the height that keeps a picture of ``size`` in proportion at ``width`` pixels."""
    natural_width, natural_height = size
    return max(1, round(width * natural_height / natural_width))
