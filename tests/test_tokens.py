"""Keys for a real send: none that mailout's own files publish, and a warning for a short one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailout.errors import ConfigError
from mailout.tokens import GOOD_KEY_LENGTH, MIN_KEY_LENGTH, PUBLIC_KEYS, check_real_key
from tests.conftest import REPO

#: Where a user finds a key to copy: the task runner, the docs, the scaffold, the team's
#: workspace, the tests' fixtures and the benchmarks.
PLACES = (
    "Makefile",
    "README.md",
    "mailout.toml",
    "docs/*.md",
    "src/mailout/scaffold/*",
    "tests/*.py",
    "bench/*.py",
)

#: A key given to MAILOUT_SECRET_KEY: `MAILOUT_SECRET_KEY ?= key` (make), `MAILOUT_SECRET_KEY=key`
#: (shell), `"MAILOUT_SECRET_KEY": "key"` or `setenv("MAILOUT_SECRET_KEY", "key")` (Python), and a
#: module's `SECRET_KEY = "key"` that a fixture hands to it.
ASSIGNMENTS = (
    re.compile(r"""MAILOUT_SECRET_KEY\s*(?:\?=|:=|=)\s*(?P<q>["']?)(?P<key>[^"'\s]+)(?P=q)"""),
    re.compile(r"""["']MAILOUT_SECRET_KEY["']\s*[:,]\s*(?P<q>["'])(?P<key>[^"']+)(?P=q)"""),
    re.compile(r"""^\s*\w*SECRET_KEY\s*(?::\s*\w+\s*)?=\s*(?P<q>["'])(?P<key>[^"']+)(?P=q)""", re.M),
)


def published_keys() -> dict[str, list[str]]:
    """Return every key assigned in the files a user could copy from, with where each is."""
    found: dict[str, list[str]] = {}
    for pattern in PLACES:
        for path in sorted(REPO.glob(pattern)):
            if path.name == Path(__file__).name:
                continue  # this file's patterns and examples are not keys
            text = path.read_text(encoding="utf-8")
            for assignment in ASSIGNMENTS:
                for match in assignment.finditer(text):
                    line = text.count("\n", 0, match.start()) + 1
                    for key in re.split(r"[,\s]+", match["key"]):
                        found.setdefault(key, []).append(f"{path.relative_to(REPO)}:{line}")
    return found


def placeholder(key: str) -> bool:
    """Return whether ``key`` stands for the reader's own key (`...`, `$KEY`, `<key>`) or a name."""
    return not key.strip(".") or key.startswith(("$", "<")) or (key.isidentifier() and key.isupper())


def test_every_key_published_in_the_repository_is_refused_for_a_real_send() -> None:
    found = published_keys()
    assert "demo-key-for-the-local-outbox-only" in found, f"the scan finds the Makefile's key: {found}"
    for key, where in found.items():
        if placeholder(key) or len(key) < MIN_KEY_LENGTH:
            continue  # no key, or one every signer refuses
        assert key in PUBLIC_KEYS, f"{key!r} ({', '.join(where)}) is public: add it to tokens.PUBLIC_KEYS"
        with pytest.raises(ConfigError, match="published in mailout's own files"):
            check_real_key(key)


def test_a_real_send_refuses_a_public_key_among_several_and_warns_about_short_ones() -> None:
    own = "k" * GOOD_KEY_LENGTH
    assert check_real_key(own) == []
    for demo in PUBLIC_KEYS:
        with pytest.raises(ConfigError, match=r"MAILOUT_SECRET_KEY \(key 2\) is a key published"):
            check_real_key(f"{own},{demo}")
    short = "s" * (GOOD_KEY_LENGTH - 1)
    [warning] = check_real_key(f"{own}, {short}")
    assert warning.startswith(f"MAILOUT_SECRET_KEY (key 2) has {GOOD_KEY_LENGTH - 1} characters")
    assert "secrets.token_urlsafe(32)" in warning
