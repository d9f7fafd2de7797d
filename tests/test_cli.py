"""The command line through click's CliRunner, on the real command group and real files."""

from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner

from mailout.cli import cli
from tests.conftest import EXAMPLE_ISSUE, REPO


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def all_commands(group: click.Group = cli, prefix: str = "mailout") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found += all_commands(command, path)
    return found


def test_init_scaffolds_and_never_overwrites(tmp_path: Path) -> None:
    root = tmp_path / "news"
    code, out = run("init", str(root))
    assert code == 0
    for name in (
        "mailout.toml",
        "templates/email/README.md",
        "subscribers/members.csv",
        "issues/first-issue/issue.yaml",
    ):
        assert (root / name).is_file(), name
    (root / "mailout.toml").write_text('[sender]\nname = "Ours"\n', encoding="utf-8")
    code, out = run("init", str(root))
    assert code == 0
    assert (root / "mailout.toml").read_text(encoding="utf-8") == '[sender]\nname = "Ours"\n'
    assert "kept" in out and "mailout.toml (exists)" in out


def test_new_workspace_checks_and_previews(workspace: Path) -> None:
    code, out = run("issue", "check", "first-issue")
    assert code == 0, out
    assert "3 items in 3 sections" in out
    code, out = run("issue", "new", "2019-02")
    assert code == 0 and (workspace / "issues/2019-02/issue.yaml").is_file()
    code, out = run("issue", "check", "2019-02")
    assert code == 0, out
    code, out = run("issue", "new", "2019-02")
    assert code == 1 and "exists already" in out and "Traceback" not in out
    code, out = run("issue", "new", "Bad Name!")
    assert code == 1 and "not a usable issue name" in out


def test_preview_writes_every_variant_and_reports_sizes(tmp_path: Path) -> None:
    out_dir = tmp_path / "preview"
    code, out = run("-C", str(REPO), "preview", "2019-01", "--out", str(out_dir))
    assert code == 0, out
    # The example issue is written in English (the default) and French.
    variants = ("member", "public", "member-fr", "public-fr")
    for variant in variants:
        for suffix in (".html", ".txt"):
            assert (out_dir / f"{variant}{suffix}").stat().st_size > 1000, variant
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(variants)}
    assert set(lines) == set(variants)
    for variant, cols in lines.items():
        size_kb = float(cols[1])
        assert (
            abs(size_kb * 1000 - len((out_dir / f"{variant}.html").read_bytes()))
            < 0.05 * size_kb * 1000 + 2000
        )
        assert size_kb < 90
    for suffix in ("", "-fr"):
        member, public = lines[f"member{suffix}"], lines[f"public{suffix}"]
        assert int(member[6]) == 0 and int(public[6]) == 3, "the public variant hides 3 items"
        assert int(member[5]) == int(public[5]) + 3
        assert member[7] == "0", "the example issue has no warnings"
    assert 'lang="fr"' in (out_dir / "public-fr.html").read_text(encoding="utf-8")
    member_html = (out_dir / "member.html").read_text(encoding="utf-8")
    # images are copied beside the preview and referenced relatively, so they show before publication
    assert 'src="images/logo.png"' in member_html and (out_dir / "images" / "logo.png").is_file()
    written = ", ".join(f"{v}.html, {v}.txt" for v in variants)
    assert f"Wrote {written} to {out_dir}/" in out


def test_set_overrides_a_setting_for_one_run(tmp_path: Path) -> None:
    code, out = run(
        "-C",
        str(REPO),
        "--set",
        "newsletter.name=Overridden Name",
        "preview",
        "2019-01",
        "--out",
        str(tmp_path),
    )
    assert code == 0, out
    assert "Overridden Name" in (tmp_path / "public.txt").read_text(encoding="utf-8")
    code, out = run("-C", str(REPO), "--set", "nonsense", "preview", "2019-01")
    assert code == 2 and "TABLE.KEY=VALUE" in out


def test_missing_workspace_and_issue_are_clean_errors(tmp_path: Path) -> None:
    code, out = run("-C", str(tmp_path), "preview", "2019-01")
    assert code == 1 and "run `mailout init`" in out and "Traceback" not in out
    code, out = run("-C", str(REPO), "issue", "check", "no-such-issue")
    assert code == 1 and "no issue 'no-such-issue'" in out and "2019-01" in out


def test_check_accepts_a_path_to_the_file(tmp_path: Path) -> None:
    code, out = run("-C", str(REPO), "issue", "check", str(EXAMPLE_ISSUE))
    assert code == 0, out
    assert "5 sections" in out


def test_templates_list_shows_the_workspace_override() -> None:
    code, out = run("-C", str(REPO), "templates", "list")
    assert code == 0
    rows = dict(line.split() for line in out.splitlines())
    assert rows["theme.mjml.j2"] == "workspace"
    assert rows["layout.mjml.j2"] == "built-in"
    assert rows["sections/agenda.mjml.j2"] == "built-in"
    code, out = run("templates", "show", "footer.mjml.j2")
    assert code == 0 and "placeholder.unsubscribe_url" in out
    code, out = run("templates", "show", "../cli.py")
    assert code == 1 and "no built-in template" in out


def test_every_command_has_help_with_an_example() -> None:
    commands = all_commands()
    assert len(commands) >= 7
    for path, command in commands:
        code, out = run(*path.split()[1:], "--help")
        assert code == 0, path
        if not isinstance(command, click.Group):
            assert "Example:" in out and path in out, f"{path} --help has no example"


def test_safe_shows_what_a_terminal_would_obey() -> None:
    from mailout.cli.terminal import safe

    assert safe("Zoë Ångström 李 👩‍👩‍👧") == "Zoë Ångström 李 👩‍👩‍👧"
    assert (
        safe("a\tb\nc\x1b[2Jd\x07\x9b\u202e\u2028\ud800")
        == "a\\x09b\\x0ac\\x1b[2Jd\\x07\\x9b\\u202e\\u2028\\ud800"
    )
    assert safe(42) == "42"
