"""Show file paths to the user: relative to the current folder where they can be.

The lowest module of the package: it imports nothing from mailout, so that any
module (the issue loader, the CSV reader, the transports, the CLI) can name a
file in its messages.
"""

from __future__ import annotations

import os
from pathlib import Path


def display_path(path: Path) -> str:
    """Return ``path`` relative to the current folder when it lies below it."""
    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd()) else str(path)
    except ValueError:  # pragma: no cover - another drive on Windows
        return str(path)
