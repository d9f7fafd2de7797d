"""Scaffold a workspace (``mailout init``) and start an issue (``mailout issue new``).

Neither ever overwrites a file that exists: the team's work is never lost to a
second ``init``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from .config import CONFIG_FILE
from .errors import WorkspaceError
from .issues import ISSUE_FILE

SCAFFOLD = Path(__file__).parent / "scaffold"
STARTER_ISSUE = "first-issue"


@dataclass(frozen=True)
class Created:
    """What a scaffolding step did with each path: created it or left it alone."""

    created: list[Path]
    kept: list[Path]


def issue_skeleton(slug: str, today: dt.date) -> str:
    """Return the text of a new issue file dated ``today``."""
    template = (SCAFFOLD / ISSUE_FILE).read_text(encoding="utf-8")
    return (
        template.replace("{slug}", slug)
        .replace("{month}", f"{today:%B %Y}")
        .replace("{date}", today.isoformat())
    )


def init_workspace(root: Path, today: dt.date | None = None) -> Created:
    """Create a workspace in ``root``: settings, templates, subscribers and a starter issue."""
    today = today or dt.date.today()
    files = {
        root / CONFIG_FILE: (SCAFFOLD / "mailout.toml").read_text(encoding="utf-8"),
        root / "templates" / "email" / "README.md": (SCAFFOLD / "templates-README.md").read_text(
            encoding="utf-8"
        ),
        root / "subscribers" / "members.csv": (SCAFFOLD / "members.csv").read_text(encoding="utf-8"),
        root / "subscribers" / "public.csv": (SCAFFOLD / "members.csv").read_text(encoding="utf-8"),
        root / "issues" / STARTER_ISSUE / ISSUE_FILE: issue_skeleton(STARTER_ISSUE, today),
        root / ".gitignore": "build/\noutbox/\n*.db\n*.db-wal\n*.db-shm\n",
    }
    result = Created([], [])
    for path, text in files.items():
        if _write_new(path, text):
            result.created.append(path)
        else:
            result.kept.append(path)
    return result


def new_issue(issues_dir: Path, slug: str, today: dt.date | None = None) -> Path:
    """Write the skeleton of issue ``slug``; refuse if it exists."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", slug):
        raise WorkspaceError(
            f"'{slug}' is not a usable issue name: use lower-case letters, digits, '-', '_' or '.',"
            " e.g. 2019-01"
        )
    path = issues_dir / slug / ISSUE_FILE
    if not _write_new(path, issue_skeleton(slug, today or dt.date.today())):
        raise WorkspaceError(f"{path} exists already; pick another name or edit that file")
    (issues_dir / slug / "images").mkdir(exist_ok=True)
    return path


def _write_new(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it exists; return whether it wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        return False
    return True
