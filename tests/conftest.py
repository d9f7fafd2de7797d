"""Shared fixtures: a clean environment, real workspaces on disk, the example issue."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailout.config import Settings, load_settings
from mailout.issues import Issue, load_issue
from mailout.workspace import init_workspace

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
EXAMPLE_ISSUE = REPO / "issues" / "2019-01" / "issue.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MAILOUT_* variable of the developer's shell may change a test's outcome."""
    for name in list(os.environ):
        if name.startswith("MAILOUT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace made by `mailout init`, as the current folder."""
    root = tmp_path / "ws"
    init_workspace(root)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def repo_settings() -> Settings:
    """The settings of the repository's own workspace (the team's mailout.toml)."""
    return load_settings(REPO, env={})


@pytest.fixture
def example_issue() -> Issue:
    """The example issue the README's main job builds."""
    return load_issue(EXAMPLE_ISSUE)


@pytest.fixture
def copy_example(tmp_path: Path) -> Iterator[Path]:
    """A copy of the repository workspace's example issue folder, free to edit."""
    target = tmp_path / "issues" / "2019-01"
    shutil.copytree(EXAMPLE_ISSUE.parent, target)
    yield target


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's headless Chromium driven by Playwright; skipped only outside CI when absent."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run must install Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()
