"""Settings layering and error messages, on real files."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailout.cli import cli
from mailout.config import NUMBER_RANGES, SECTIONS, load_settings
from mailout.errors import ConfigError


def write(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mailout.toml").write_text(text, encoding="utf-8")
    return root


def test_defaults_then_file_then_env_then_flags(tmp_path: Path) -> None:
    root = write(
        tmp_path, '[sender]\nname = "From file"\naddress = "file@example.org"\n[smtp]\nport = 2525\n'
    )
    defaults = load_settings(write(tmp_path / "empty", ""), env={})
    assert defaults.sender.name == "Newsletter" and defaults.smtp.port == 587

    from_file = load_settings(root, env={})
    assert (from_file.sender.name, from_file.sender.address, from_file.smtp.port) == (
        "From file",
        "file@example.org",
        2525,
    )

    env = {
        "MAILOUT_SENDER_NAME": "From env",
        "MAILOUT_SMTP_PORT": "465",
        "MAILOUT_PREVIEW_TEST_RECIPIENTS": "a@x.org, b@x.org",
    }
    from_env = load_settings(root, env=env)
    assert (from_env.sender.name, from_env.sender.address, from_env.smtp.port) == (
        "From env",
        "file@example.org",
        465,
    )
    assert from_env.preview.test_recipients == ("a@x.org", "b@x.org")

    from_flags = load_settings(root, env=env, overrides={"sender.name": "From flag", "smtp.port": None})
    assert from_flags.sender.name == "From flag" and from_flags.smtp.port == 465


def test_paths_resolve_against_the_workspace(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[paths]\nbuild = "out"\n'), env={})
    assert settings.path("build") == tmp_path / "out"
    assert settings.path("issues") == tmp_path / "issues"


def test_secrets_come_only_from_the_environment(tmp_path: Path) -> None:
    root = write(tmp_path, '[smtp]\nhost = "smtp.example.org"\nusername = "me"\npassword = "hunter2"\n')
    with pytest.raises(
        ConfigError, match=r"mailout.toml:4: smtp.password is a secret .* MAILOUT_SMTP_PASSWORD"
    ):
        load_settings(root, env={})
    root = write(tmp_path / "k", 'secret_key = "abc"\n')
    with pytest.raises(ConfigError, match=r"mailout.toml:1: secret_key is a secret .* MAILOUT_SECRET_KEY"):
        load_settings(root, env={})
    settings = load_settings(
        write(tmp_path / "ok", ""), env={"MAILOUT_SMTP_PASSWORD": "pw", "MAILOUT_SECRET_KEY": "k"}
    )
    assert settings.smtp.password == "pw" and settings.secret_key == "k"
    assert "pw" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[sender]\nadress = "a@b.org"\n',
            r"mailout.toml:2: sender.adress: unknown setting \(did you mean 'address'\?\)",
        ),
        ('[smtp]\nport = "twenty"\n', r"mailout.toml:2: smtp.port: expected a number"),
        ("[newsleter]\n", r"mailout.toml:1: unknown section \[newsleter\]"),
        ("[sender]\naddress = 3\n", r"mailout.toml:2: sender.address: expected a string"),
        (
            '[newsletter]\npublic_base_url = "example.org"\n',
            r"newsletter.public_base_url: must be an absolute http\(s\) URL",
        ),
        (
            '[newsletter]\npublic_base_url = "https://ville-été.example/news"\n',
            r"mailout.toml:2: newsletter.public_base_url: must be ASCII without spaces.*xn-- form",
        ),
        (
            '[newsletter]\npublic_base_url = "https://news.example/a b"\n',
            r"newsletter.public_base_url: must be ASCII without spaces",
        ),
        (
            '[newsletter]\npublic_base_url = "https://news.example/>x"\n',
            r"newsletter.public_base_url: must be ASCII without spaces",
        ),
        (
            f'[newsletter]\npublic_base_url = "https://news.example/{"x" * 480}"\n',
            r"newsletter.public_base_url: is 501 characters long; at most 500",
        ),
        ('[sender]\naddress = "not-an-address"\n', r"sender.address: not an email address"),
        ('[sender]\nreturn_path = "bounces@"\n', r"mailout.toml:2: sender.return_path: not an email address"),
        ('[sender]\nreturn_path = ".b@efus.example"\n', r"sender.return_path: not an address a mail server"),
        ('[sender]\nreturn_path = "b@efus..example"\n', r"sender.return_path: not an address a mail server"),
        ('[sender]\nreturn_path = "b\\u000bx@efus.example"\n', r"sender.return_path: not an address"),
        ('[sender]\nreturn_path = "b@localhost"\n', r"sender.return_path: not an address a mail server"),
        (
            '[sender]\nreturn_path = "rebonds@été.example"\n',
            r"mailout.toml:2: sender.return_path: .* outside ASCII; the envelope sender must be ASCII",
        ),
        (
            '[sender]\nreturn_path = "a@b.example>\\r\\nRCPT TO:<x@y>"\n',
            r"sender.return_path: not an email address",
        ),
        ('[smtp]\nsecurity = "ssl"\n', r"smtp.security: must be 'starttls', 'tls' or 'plain'"),
        (
            '[database]\nsqlite_synchronous = "extra"\n',
            r"mailout.toml:2: database.sqlite_synchronous: must be 'full' or 'normal', got 'extra'",
        ),
        (
            '[newsletter]\nmembers_teaser = "{n} more"\n',
            r"newsletter.members_teaser: only \{count\} and \{s\}",
        ),
        ("[sender\n", r"mailout.toml: not valid TOML: .*line 1"),
    ],
)
def test_wrong_settings_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(write(tmp_path, text), env={})
    assert "\n" not in str(caught.value), "a config error is one line"


def test_sqlite_synchronous_is_full_unless_set_in_the_file_or_the_environment(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path / "a", ""), env={}).database.sqlite_synchronous == "full"
    root = write(tmp_path / "b", '[database]\nsqlite_synchronous = "normal"\n')
    assert load_settings(root, env={}).database.sqlite_synchronous == "normal"
    env = {"MAILOUT_DATABASE_SQLITE_SYNCHRONOUS": "full"}
    assert load_settings(root, env=env).database.sqlite_synchronous == "full"
    with pytest.raises(
        ConfigError,
        match=r"^environment variable MAILOUT_DATABASE_SQLITE_SYNCHRONOUS \(database.sqlite_synchronous\):"
        r" must be 'full' or 'normal', got 'NORMAL'$",
    ):
        load_settings(root, env={"MAILOUT_DATABASE_SQLITE_SYNCHRONOUS": "NORMAL"})


def test_wrong_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"environment variable MAILOUT_SMTP_TIMEOUT \(smtp.timeout\): expected a number"
    ):
        load_settings(write(tmp_path, ""), env={"MAILOUT_SMTP_TIMEOUT": "soon"})


def test_missing_config_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no mailout.toml in .*run `mailout init`"):
        load_settings(tmp_path, env={})


def test_settings_are_frozen(tmp_path: Path) -> None:
    import dataclasses

    settings = load_settings(write(tmp_path, ""), env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.sender.name = "changed"  # type: ignore[misc]


def test_a_misspelt_environment_variable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"MAILOUT_SENDER_ADRESS: unknown setting \(did you mean MAILOUT_SENDER_ADDRESS\?\)"
    ):
        load_settings(write(tmp_path, ""), env={"MAILOUT_SENDER_ADRESS": "x@example.org"})


def test_errors_name_the_layer_the_value_came_from(tmp_path: Path) -> None:
    root = write(tmp_path, "")
    with pytest.raises(
        ConfigError,
        match=r"^environment variable MAILOUT_NEWSLETTER_PUBLIC_BASE_URL \(newsletter.public_base_url\): must be",
    ):
        load_settings(root, env={"MAILOUT_NEWSLETTER_PUBLIC_BASE_URL": "example.org"})
    with pytest.raises(ConfigError, match=r"^command-line option --set newsletter.public_base_url: must be"):
        load_settings(root, env={}, overrides={"newsletter.public_base_url": "nope"})
    with pytest.raises(ConfigError, match=r"--set smtp.password: a secret is read only from the environment"):
        load_settings(root, env={}, overrides={"smtp.password": "hunter2"})
    with pytest.raises(ConfigError, match=r"--set nosuch.key: unknown section"):
        load_settings(root, env={}, overrides={"nosuch.key": "1"})


@pytest.mark.parametrize("teaser", ["{count[0]} more", "{count.real} more", "{} more", "{count"])
def test_teaser_accepts_only_count_and_s(tmp_path: Path, teaser: str) -> None:
    with pytest.raises(ConfigError, match=r"members_teaser: only \{count\} and \{s\}"):
        load_settings(
            write(tmp_path, f"[newsletter]\nmembers_teaser = {teaser!r}\n".replace("'", '"')), env={}
        )


def test_unreadable_config_is_a_clean_error(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "mailout.toml").write_bytes('[sender]\nname = "Caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"mailout.toml: not UTF-8 text"):
        load_settings(tmp_path, env={})


def test_database_password_belongs_in_the_environment(tmp_path: Path) -> None:
    root = write(tmp_path, '[database]\nurl = "postgresql+psycopg://mailout:s3cret@db.example/news"\n')
    with pytest.raises(
        ConfigError, match=r"mailout.toml:2: database.url holds a password.* MAILOUT_DATABASE_URL"
    ):
        load_settings(root, env={})
    settings = load_settings(
        write(tmp_path / "ok", ""),
        env={"MAILOUT_DATABASE_URL": "postgresql+psycopg://mailout:s3cret@db.example/news"},
    )
    assert settings.database_url().endswith("@db.example/news")
    assert (
        load_settings(write(tmp_path / "rel", ""), env={}).database_url()
        == f"sqlite:///{(tmp_path / 'rel').resolve()}/mailout.db"
    )


def test_lists_come_from_the_settings(tmp_path: Path) -> None:
    root = write(tmp_path, '[lists.partners]\nsegment = "member"\ndescription = "Project partners"\n')
    settings = load_settings(root, env={})
    assert [(lst.name, lst.segment) for lst in settings.lists] == [("partners", "member")]
    with pytest.raises(ConfigError, match=r"no list 'members'.*\[lists.members\]"):
        settings.mailing_list("members")
    with pytest.raises(ConfigError, match=r"lists.partners.segment: must be 'member' or 'public'"):
        load_settings(write(tmp_path / "bad", '[lists.partners]\nsegment = "vip"\n'), env={})


def numeric_settings() -> list[tuple[str, type]]:
    """Every int or float setting of every section, found from the dataclasses themselves."""
    return [
        (f"{section}.{f.name}", hint)
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        if (hint := typing.get_type_hints(cls)[f.name]) in (int, float)
    ]


def test_the_numeric_settings_are_found() -> None:
    found = dict(numeric_settings())
    assert {"smtp.port", "smtp.timeout", "sending.batch_size", "preview.html_warn_bytes"} <= set(found)
    assert found["sending.batch_size"] is int and found["smtp.timeout"] is float


@pytest.mark.parametrize(("dotted", "hint"), numeric_settings())
def test_every_number_is_range_checked(tmp_path: Path, dotted: str, hint: type) -> None:
    assert dotted in NUMBER_RANGES, f"{dotted}: give it a range in config.NUMBER_RANGES"
    bounds = NUMBER_RANGES[dotted]
    section, _, key = dotted.partition(".")
    assert bounds.refuse(getattr(SECTIONS[section](), key)) is None, "the default is in range"
    variable = f"MAILOUT_{section}_{key}".upper()

    refused = [bounds.low - 1, -1, bounds.low - 0.5 if hint is float else bounds.low - 1]
    if bounds.above:
        refused.append(bounds.low)
    if bounds.high != math.inf:
        refused += [bounds.high + 1, bounds.high * 1000]
    for value in refused:
        number = hint(value)
        root = write(tmp_path / "file", f"[newsletter]\nname = 'N'\n[{section}]\n{key} = {number}\n")
        with pytest.raises(ConfigError, match=rf"^mailout.toml:4: {dotted}: must be .*, got ") as caught:
            load_settings(root, env={})
        assert "\n" not in str(caught.value)
        with pytest.raises(
            ConfigError, match=rf"^environment variable {variable} \({dotted}\): must be .*, got "
        ):
            load_settings(write(tmp_path / "env", ""), env={variable: str(number)})

    accepted = [bounds.high] if bounds.high != math.inf else [bounds.low + 1000]
    if not bounds.above:
        accepted.append(bounds.low)
    for value in accepted:
        settings = load_settings(write(tmp_path / "env", ""), env={variable: str(hint(value))})
        assert getattr(getattr(settings, section), key) == hint(value)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MAILOUT_SMTP_TIMEOUT", "nan", "expected a finite number, got 'nan'"),
        ("MAILOUT_SENDING_RATE_LIMIT", "inf", "expected a finite number, got 'inf'"),
        ("MAILOUT_SENDING_BATCH_SIZE", "2.5", "expected a whole number, got '2.5'"),
    ],
)
def test_numbers_must_be_finite_and_whole_where_counted(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^environment variable {variable} \(.*\): {message}$"):
        load_settings(write(tmp_path, ""), env={variable: value})
    with pytest.raises(ConfigError, match=r"^mailout.toml:2: sending.concurrency: expected a whole number"):
        load_settings(write(tmp_path, "[sending]\nconcurrency = 2.5\n"), env={})


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("smtp.timeout=-1", "smtp.timeout: must be more than 0 and at most 3600 seconds, got -1"),
        ("sending.batch_size=0", "sending.batch_size: must be from 1 to 1000, got 0"),
        ("smtp.port=99999", "smtp.port: must be from 1 to 65535, got 99999"),
        ("preview.html_warn_bytes=-5", "preview.html_warn_bytes: must be at least 0 bytes, got -5"),
    ],
)
def test_a_number_out_of_range_is_one_line_on_the_command_line(
    workspace: Path, setting: str, message: str
) -> None:
    result = CliRunner().invoke(cli, ["--set", setting, "preview", "first-issue"])
    assert result.exit_code == 1
    assert result.output == f"error: command-line option --set {message}\n"


def test_the_envelope_sender_is_the_return_path_else_the_from_address(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[sender]\naddress = "news@city.example"\n'), env={})
    assert settings.sender.envelope == "news@city.example"
    text = '[sender]\naddress = "news@city.example"\nreturn_path = "bounces@mail.city.example"\n'
    settings = load_settings(write(tmp_path, text), env={})
    assert settings.sender.envelope == "bounces@mail.city.example"
    assert settings.sender.address == "news@city.example"


def test_the_newsletter_language_is_read_in_its_canonical_form(tmp_path: Path) -> None:
    # Written as people do; every part of mailout then sees one spelling (the HTML's lang=,
    # the catalogs, the dispatch's default variant).
    settings = load_settings(write(tmp_path, '[newsletter]\nlanguage = "en-gb"\n'), env={})
    assert settings.newsletter.language == "en-GB"
    assert (
        load_settings(write(tmp_path / "fr", '[newsletter]\nlanguage = "fr"\n'), env={}).newsletter.language
        == "fr"
    )


def test_public_signup_opens_a_public_list_only(tmp_path: Path) -> None:
    defaults = load_settings(write(tmp_path / "empty", ""), env={})
    assert [(lst.name, lst.public_signup) for lst in defaults.lists] == [("members", False), ("public", True)]

    opened = load_settings(
        write(tmp_path / "own", '[lists.news]\nsegment = "public"\npublic_signup = true\n[lists.team]\n'),
        env={},
    )
    assert [(lst.name, lst.public_signup) for lst in opened.lists] == [("news", True), ("team", False)]

    with pytest.raises(
        ConfigError, match=r"mailout.toml:1: lists.board.public_signup: a members' list is never open"
    ):
        load_settings(
            write(tmp_path / "m", '[lists.board]\npublic_signup = true\nsegment = "member"\n'), env={}
        )
    with pytest.raises(ConfigError, match=r"lists.news.public_signup: expected true or false, got 'yes'"):
        load_settings(write(tmp_path / "s", '[lists.news]\npublic_signup = "yes"\n'), env={})
