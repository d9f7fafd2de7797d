"""The README and docs describe what exists: commands, settings, the issue format."""

from __future__ import annotations

import dataclasses
import re
import shlex

import click

from mailout.cli import cli
from mailout.config import SECTIONS
from mailout.issues import ISSUE_FIELDS, ITEM_FIELDS, SECTION_FIELDS, SectionKind
from tests.conftest import REPO
from tests.test_cli import all_commands

README = (REPO / "README.md").read_text(encoding="utf-8")
DOCS = README + "".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "docs").glob("*.md")))


def test_readme_opens_with_the_two_setup_commands() -> None:
    first_block = re.search(r"```(?:sh|bash|console)?\n(.*?)```", README, re.S)
    assert first_block, "the README starts with a code block"
    commands = [
        line for line in first_block.group(1).splitlines() if line.strip() and not line.startswith("#")
    ]
    assert commands == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test$", ci, re.M), ".ci/run runs exactly the README's test command"


def test_every_command_is_documented() -> None:
    for path, _ in all_commands(cli):
        assert path in DOCS, f"'{path}' is not mentioned in README.md or docs/"


def test_every_setting_is_documented() -> None:
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            if field.name == "password":
                assert "MAILOUT_SMTP_PASSWORD" in DOCS
                continue
            assert f"`{section}.{field.name}`" in DOCS, f"setting {section}.{field.name} is not documented"


def test_issue_format_is_documented() -> None:
    for name in (*ISSUE_FIELDS, *SECTION_FIELDS, *ITEM_FIELDS):
        assert f"`{name}`" in DOCS, f"issue field '{name}' is not documented"
    for kind in SectionKind:
        assert f"`{kind.value}`" in DOCS


def test_readme_commands_exist() -> None:
    shown = re.findall(r"^\$ mailout (.*)$", DOCS, re.M)
    assert len(shown) >= 5
    for line in shown:
        words = [w for w in shlex.split(line.split(">")[0]) if not w.startswith("-")]
        command: click.Command = cli
        while isinstance(command, click.Group) and words and words[0] in command.commands:
            command = command.commands[words.pop(0)]
        assert not isinstance(command, click.Group), f"'mailout {line}' does not name a command"


def test_every_test_named_in_the_reliability_table_exists() -> None:
    table = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", table)
    assert len(named) >= 10
    for module, test in named:
        source = (REPO / "tests" / module).read_text(encoding="utf-8")
        assert re.search(rf"^def {test}\(", source, re.M), f"docs/reliability.md names {module}::{test}"
    assert "[docs/reliability.md](docs/reliability.md)" in README
