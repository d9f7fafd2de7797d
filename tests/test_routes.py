"""Routes: their settings, quotas across a kill -9, failover, and 421s, on SQLite and PostgreSQL.

The SMTP servers are real (tests/smtpserver.py, one per route); the clock is the tests'
own (tests/fakeclock.py), so a day's quota goes by in a moment.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from mailout import dispatching, transports
from mailout import subscribers as people
from mailout.config import Settings, load_settings
from mailout.db import transaction
from mailout.dispatching import Ending
from mailout.errors import ConfigError
from mailout.models import Delivery, DeliveryStatus, Dispatch
from mailout.tokens import Signer
from tests.conftest import REPO
from tests.fakeclock import FakeClock
from tests.smtpserver import SMTPServer, free_port
from tests.test_quota import most_in_any_window

T0 = dt.datetime(2019, 2, 12, 8, 0, tzinfo=dt.UTC)


# --- settings ------------------------------------------------------------------------


def settings_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    (tmp_path / "mailout.toml").write_text(text, encoding="utf-8")
    return load_settings(tmp_path, env=env or {})


ROUTES = """\
[sending]
route = "m365"

[smtp.routes.m365]
host = "smtp.office365.com"
username = "news@example.org"
concurrency = 3
per_minute = 30
per_day = 10000
failover = "ses-eu"

[smtp.routes.ses-eu]
host = "email-smtp.eu-west-1.amazonaws.com"
port = 465
security = "tls"
per_second = 14
per_day = 50000

[lists.members]
route = "ses-eu"
"""


def test_routes_are_read_with_their_passwords_from_the_environment(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, ROUTES, {"MAILOUT_SMTP_ROUTES_SES_EU_PASSWORD": "s3cret"})
    m365, ses = settings.routes["m365"], settings.routes["ses-eu"]
    assert list(settings.routes) == ["m365", "ses-eu"]
    assert (m365.smtp.host, m365.smtp.port, m365.smtp.security, m365.smtp.username) == (
        "smtp.office365.com", 587, "starttls", "news@example.org",
    )  # fmt: skip
    assert (m365.concurrency, m365.per_minute, m365.per_day, m365.per_second, m365.failover) == (
        3, 30, 10_000, 0, "ses-eu",
    )  # fmt: skip
    assert m365.smtp.password == "" and ses.smtp.password == "s3cret" and "s3cret" not in repr(ses)
    assert (ses.smtp.port, ses.smtp.security, ses.per_second) == (465, "tls", 14)
    assert settings.sending.route == "m365" and settings.mailing_list("members").route == "ses-eu"
    assert isinstance(transports.make_transport(settings, "ses-eu"), transports.SmtpTransport)
    assert transports.make_transport(settings, "ses-eu").description == (
        "SMTP email-smtp.eu-west-1.amazonaws.com:465 (tls)"
    )
    with pytest.raises(ConfigError, match=r"^no route 'ses' in the settings \(routes: m365, ses-eu\)"):
        transports.make_transport(settings, "ses")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('per_minute = 30', 'per_minute = -1'), r"^mailout.toml:8: smtp.routes.m365.per_minute: must be from 0 to"),
        (('per_minute = 30', 'per_minute = "thirty"'), r"^mailout.toml:8: smtp.routes.m365.per_minute: expected a number"),
        (('concurrency = 3', 'concurrency = 500'), r"^mailout.toml:7: smtp.routes.m365.concurrency: must be from 0 to 100"),
        (('port = 465', 'port = 0'), r"^mailout.toml:14: smtp.routes.ses-eu.port: must be from 1 to 65535"),
        (('concurrency = 3', 'concurency = 3'), r"^mailout.toml:7: smtp.routes.m365.concurency: unknown setting \(did you mean 'concurrency'\?\)"),
        (('concurrency = 3', 'password = "x"'), r"^mailout.toml:7: smtp.routes.m365.password is a secret .* MAILOUT_SMTP_ROUTES_M365_PASSWORD instead"),
        (('failover = "ses-eu"', 'failover = "ses"'), r"^mailout.toml:10: smtp.routes.m365.failover: no route 'ses' \(did you mean 'ses-eu'\?\)"),
        (('failover = "ses-eu"', 'failover = "m365"'), r"^mailout.toml:10: smtp.routes.m365.failover: a route cannot fail over to itself"),
        (('route = "ses-eu"', 'route = "sse-eu"'), r"^mailout.toml:20: lists.members.route: no route 'sse-eu' \(did you mean 'ses-eu'\?\)"),
        (('route = "m365"', 'route = "m356"'), r"^mailout.toml:2: sending.route: no route 'm356' \(did you mean 'm365'\?\)"),
        (('security = "tls"', 'security = "ssl"'), r"^mailout.toml:15: smtp.routes.ses-eu.security: must be 'starttls', 'tls' or 'plain'"),
        (('host = "smtp.office365.com"\n', ''), r"^mailout.toml:4: smtp.routes.m365: give the route's SMTP server"),
        (('[smtp.routes.ses-eu]', '[smtp.routes.Ses]'), r"^mailout.toml:12: smtp.routes.Ses: a route name is up to 64 lower-case"),
    ],
)  # fmt: skip
def test_wrong_route_settings_are_refused_with_their_line(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in ROUTES
    with pytest.raises(ConfigError, match=message):
        settings_of(tmp_path, ROUTES.replace(old, new, 1))


def test_route_settings_without_any_route_and_unknown_password_variables(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^mailout.toml:2: lists.members.route: no route 'm365' \(no \[smtp.routes"
    ):
        settings_of(tmp_path, '[lists.members]\nroute = "m365"\n')
    with pytest.raises(
        ConfigError,
        match=r"^environment variable MAILOUT_SENDING_ROUTE \(sending.route\): no route .m365. \(no \[smtp",
    ):
        settings_of(tmp_path, "", {"MAILOUT_SENDING_ROUTE": "m365"})
    with pytest.raises(
        ConfigError, match=r"^environment variable MAILOUT_SMTP_ROUTES_SES_PASSWORD: unknown setting"
    ):
        settings_of(tmp_path, ROUTES, {"MAILOUT_SMTP_ROUTES_SES_PASSWORD": "x"})
    with pytest.raises(
        ConfigError,
        match="'a-b' and 'a_b' would share the password variable MAILOUT_SMTP_ROUTES_A_B_PASSWORD",
    ):
        settings_of(tmp_path, '[smtp.routes.a-b]\nhost = "a"\n[smtp.routes.a_b]\nhost = "b"\n')


# --- sending through routes --------------------------------------------------------------


@pytest.fixture
def second_server() -> Iterator[SMTPServer]:
    with SMTPServer() as server:
        yield server


def route_table(name: str, port: int, extra: str = "") -> str:
    return (
        f'\n[smtp.routes.{name}]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "plain"\ntimeout = 5\n{extra}'
    )


def workspace_with_routes(workspace: Path, engine: Engine, n: int, routes: str) -> tuple[Settings, object]:
    """Add the route tables and p0..p{n-1} on members; return the settings and the issue."""
    from mailout.issues import load_issue

    with (workspace / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write(routes)
    settings = load_settings(workspace)
    with transaction(engine) as session:
        members = people.ensure_list(session, settings.mailing_list("members"))
        for i in range(n):
            people.add(session, members, f"p{i}@example.org", name=f"Person {i}")
    return settings, load_issue(workspace / "issues" / "2019-01" / "issue.yaml")


def start(engine: Engine, settings: Settings, issue: object, route: str | None = None) -> int:
    plan = dispatching.plan(engine, settings, issue, "members", route=route)  # type: ignore[arg-type]
    return dispatching.start(engine, settings, plan).dispatch_id


def run(
    engine: Engine, settings: Settings, dispatch: int, clock: FakeClock, notices: list[str] | None = None
) -> dispatching.Result:
    return dispatching.run(
        engine, settings, dispatch, Signer.from_secret(settings.secret_key), clock=clock,
        on_notice=notices.append if notices is not None else None,
    )  # fmt: skip


def deliveries(engine: Engine) -> dict[str, tuple[str, str | None, int, str]]:
    """Return each delivery's (status, route, attempts, reply), by address."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Delivery.email, Delivery.status, Delivery.route, Delivery.attempts, Delivery.reply)
        )
        return {
            email: (str(status), route, attempts, reply) for email, status, route, attempts, reply in rows
        }


def log_lines(path: Path) -> list[tuple[dt.datetime, str]]:
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        at, recipient = line.split(" ")
        found.append((dt.datetime.fromisoformat(at), recipient))
    return found


@pytest.mark.slow
def test_a_quota_holds_across_a_kill_9_and_the_rest_goes_out_the_next_day(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    limits = "concurrency = 1\nper_minute = 30\nper_day = 100\n"
    settings, issue = workspace_with_routes(
        sending_workspace, engine, 250, route_table("m365", smtp_server.port, limits)
    )
    dispatch = start(engine, settings, issue, route="m365")
    log = tmp_path / "wire.log"
    # A sending process, killed with SIGKILL as its 61st message is about to go on the wire.
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.routesend", str(sending_workspace), str(dispatch), T0.isoformat(), str(log), "60"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not log.exists() or len(log.read_text(encoding="utf-8").splitlines()) < 61:
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the child sent 61 messages in a minute"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=10)
    before = log_lines(log)
    assert len(before) == 61 and len(smtp_server.messages) == 60
    # The rest, from the instant it died (its clock, as if restarted at once).
    monkeypatch.setattr(
        transports.SmtpConnection, "start", logging_start(log, clock := FakeClock(before[-1][0]))
    )
    notices: list[str] = []
    result = run(engine, settings, dispatch, clock, notices)
    assert result.ending is Ending.FINISHED, result
    wire = log_lines(log)
    times = [at for at, _ in wire]
    # Every message that went on the wire, the killed process's included, within the limits.
    assert most_in_any_window(times, dt.timedelta(minutes=1)) <= 30
    assert most_in_any_window(times, dt.timedelta(days=1)) <= 100
    # 100 on the first day; the next ones once the oldest of them left the rolling day.
    assert times[99] - T0 < dt.timedelta(minutes=5)
    assert times[100] - T0 >= dt.timedelta(days=1) and times[200] - T0 >= dt.timedelta(days=2)
    # Nobody got two; the two the killed process had in flight are unknown, never resent.
    got = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert set(got.values()) == {1}
    found = deliveries(engine)
    unknown = {address for address, (status, *_) in found.items() if status == DeliveryStatus.UNKNOWN}
    # The one marked (its mark is committed before it goes out) and, unless a quota wait
    # recorded its answer first, the one answered before it.
    assert before[-1][1] in unknown <= {before[-2][1], before[-1][1]}, unknown
    assert set(got) == set(found) - {before[-1][1]} and len(found) == 250
    assert {route for _, route, _, _ in found.values()} == {"m365"}
    assert any(
        n.startswith("waiting for quota: 100 of 100 in the last 24 hours on route m365; resumes 2019-02-13")
        for n in notices
    ), notices
    assert any(
        n.startswith("waiting for quota: 30 of 30 in the last minute on route m365; resumes") for n in notices
    )


def logging_start(log: Path, clock: FakeClock) -> object:
    original = transports.SmtpConnection.start

    def start(self: transports.SmtpConnection, sender: str, recipient: str, data: bytes) -> None:
        with log.open("a", encoding="utf-8") as out:
            out.write(f"{clock.now().isoformat()} {recipient}\n")
        original(self, sender, recipient, data)

    return start


@pytest.mark.slow
def test_policy_refusals_move_the_rest_to_the_failover_route(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer, second_server: SMTPServer
) -> None:
    routes = route_table("m365", smtp_server.port, 'concurrency = 1\nfailover = "ses"\n') + route_table(
        "ses", second_server.port, "per_minute = 1000\n"
    )
    edit_config(
        sending_workspace, ("policy_failures_pause = 3\n", 'policy_failures_pause = 3\nroute = "m365"\n')
    )
    settings, issue = workspace_with_routes(sending_workspace, engine, 20, routes)
    for i in range(20):
        smtp_server.answer(f"p{i}@example.org", 550, "5.7.1 Service unavailable, client host blocked")
    dispatch = start(engine, settings, issue)
    notices: list[str] = []
    result = run(engine, settings, dispatch, FakeClock(T0), notices)
    assert result.ending is Ending.FINISHED, result
    assert smtp_server.messages == [] and len(second_server.messages) == 20
    assert collections.Counter(r.rcpt_tos[0] for r in second_server.messages) == {
        f"p{i}@example.org": 1 for i in range(20)
    }
    found = deliveries(engine)
    assert {(status, route) for status, route, _, _ in found.values()} == {("sent", "ses")}, found
    assert result.report.counts["failed"] == 0
    with engine.connect() as conn:
        route, changes = conn.execute(select(Dispatch.route, Dispatch.route_changes)).one()
    assert route == "ses"
    assert changes.endswith(
        " UTC: route m365 -> ses after 3 refusals in a row with 5.7.1 (5.7.1 Service unavailable, client host blocked)"
    )
    assert (
        "route m365 -> ses after 3 refusals in a row with 5.7.1 (5.7.1 Service unavailable, client host blocked);"
        " 3 refused meanwhile queued again"
    ) in notices


@pytest.mark.slow
def test_without_a_failover_policy_refusals_pause_as_before(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, issue = workspace_with_routes(
        sending_workspace, engine, 10, route_table("m365", smtp_server.port, "concurrency = 1\n")
    )
    for i in range(10):
        smtp_server.answer(f"p{i}@example.org", 550, "5.7.1 blocked")
    result = run(engine, settings, start(engine, settings, issue, route="m365"), FakeClock(T0))
    assert (
        result.ending is Ending.PAUSED
        and "3 messages in a row refused with 5.7.1" in result.report.paused_reason
    )
    assert collections.Counter(s for s, *_ in deliveries(engine).values()) == {"failed": 3, "queued": 7}


@pytest.mark.slow
def test_connection_failures_move_the_rest_to_the_failover_route(
    sending_workspace: Path, engine: Engine, second_server: SMTPServer
) -> None:
    # Four threads fail on "down" at once; a failure recorded after the move must not count
    # against "up", which has no failover of its own and would pause the dispatch.
    routes = route_table("down", free_port(), 'concurrency = 4\nfailover = "up"\n') + route_table(
        "up", second_server.port
    )
    settings, issue = workspace_with_routes(sending_workspace, engine, 12, routes)
    clock = FakeClock(T0)
    notices: list[str] = []
    result = run(engine, settings, start(engine, settings, issue, route="down"), clock, notices)
    assert result.ending is Ending.FINISHED, result
    assert len(second_server.messages) == 12 and result.report.counts["sent"] == 12
    assert {(s, r, a) for s, r, a, _ in deliveries(engine).values()} == {("sent", "up", 1)}, "no attempt lost"
    assert any(
        n.startswith("route down -> up after 3 connection failures in a row (SMTP 127.0.0.1:")
        for n in notices
    ), notices
    assert 5.0 in clock.waits, "waited before trying again"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["mail", "data-end"])
def test_a_421_reconnects_and_sends_the_message_again_as_no_failure(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer, where: str
) -> None:
    settings, issue = workspace_with_routes(
        sending_workspace, engine, 20, route_table("ses", smtp_server.port, "concurrency = 1\n")
    )
    if where == "mail":
        smtp_server.limit_per_connection(3)  # SES: "421 Maximum message count per session reached"
    else:
        smtp_server.answer(
            "p5@example.org", 421, "4.4.2 service closing transmission channel", at="data", times=2
        )
    result = run(engine, settings, start(engine, settings, issue, route="ses"), FakeClock(T0))
    assert result.ending is Ending.FINISHED
    assert collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages) == {
        f"p{i}@example.org": 1 for i in range(20)
    }
    assert {(s, a) for s, _, a, _ in deliveries(engine).values()} == {("sent", 1)}, (
        "neither deferred nor failed"
    )
    assert smtp_server.connections >= (7 if where == "mail" else 3)


def edit_config(workspace: Path, *changes: tuple[str, str]) -> None:
    from tests.conftest import edit_config as edit

    edit(workspace, *changes)


def test_every_route_key_is_documented() -> None:
    from mailout.config import ROUTE_KEYS, route_password_variable

    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = text[text.index("## `[smtp.routes.NAME]`") : text.index("## `[sending]`")]
    for key in ROUTE_KEYS:
        assert f"`{key}`" in section, f"smtp.routes.NAME.{key} is not documented"
    assert route_password_variable("ses-eu") == "MAILOUT_SMTP_ROUTES_SES_EU_PASSWORD"
    assert "`MAILOUT_SMTP_ROUTES_<NAME>_PASSWORD`" in text
    assert "## Routes and quotas\n\nA relay limits" in (REPO / "docs" / "sending.md").read_text(
        encoding="utf-8"
    )
