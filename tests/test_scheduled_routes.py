"""Issue 16 end to end: a scheduled, approved dispatch of the example issue, through two routes.

The commands run as the team runs them (`send --at`, `approve`, `worker --once` from a
timer), on the tests' clock in place of ``clock.SYSTEM``: the Tuesday 09:00 instant and
the next day's quota come without waiting. The two routes are two real SMTP servers on
loopback; when each message arrived is read from the same clock, so the limits are
checked over every rolling window, from what the servers received.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailout import clock
from tests.conftest import edit_config
from tests.fakeclock import FakeClock
from tests.smtpserver import SMTPServer
from tests.test_quota import most_in_any_window
from tests.test_schedule import run
from tests.test_sending import add_subscribers, people

#: Tuesday 12 February 2019, 09:00 in Brussels (CET, UTC+1).
INSTANT = dt.datetime(2019, 2, 12, 8, 0, tzinfo=dt.UTC)
WRITER = "Zoë Dupont <zoe@efus.example>"
APPROVER = "Ana Costa <ana@efus.example>"


@pytest.fixture
def second_server() -> Iterator[SMTPServer]:
    with SMTPServer() as server:
        yield server


def routes(first: int, second: int) -> str:
    return f"""
[smtp.routes.relay-a]
host = "127.0.0.1"
port = {first}
security = "plain"
timeout = 5
concurrency = 1
per_minute = 5
per_day = 8

[smtp.routes.relay-b]
host = "127.0.0.1"
port = {second}
security = "plain"
timeout = 5
concurrency = 1
per_minute = 4
"""


def test_a_scheduled_approved_dispatch_goes_out_at_its_instant_through_two_routes_within_their_quotas(
    sending_workspace: Path,
    smtp_server: SMTPServer,
    second_server: SMTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    edit_config(
        sending_workspace,
        ("[sending]\n", '[sending]\ntimezone = "Europe/Brussels"\nrequire_approval = true\n'),
        ('description = "Members"\n', 'description = "Members"\nroute = "relay-a"\n'),
        ('description = "Public"\n', 'description = "Public"\nroute = "relay-b"\n'),
    )
    with (sending_workspace / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write(routes(smtp_server.port, second_server.port))
    add_subscribers(sending_workspace, people(12, "m"), "members")
    add_subscribers(sending_workspace, people(9, "q"), "public")

    # When each message reached its server, on the test's clock.
    fake = FakeClock(dt.datetime(2019, 2, 8, 16, 0, tzinfo=dt.UTC))  # the Friday before
    monkeypatch.setattr(clock, "SYSTEM", fake)
    arrivals: dict[int, list[dt.datetime]] = {smtp_server.port: [], second_server.port: []}
    for server in (smtp_server, second_server):
        record = server._record

        def stamped(received: object, server: SMTPServer = server, record: object = record) -> None:
            arrivals[server.port].append(fake.now())
            record(received)  # type: ignore[operator]

        monkeypatch.setattr(server, "_record", stamped)

    # Friday: Zoë schedules both lists for Tuesday 09:00; Ana approves what was frozen.
    for list_name in ("members", "public"):
        code, out = run(
            "send", "2019-01", "--list", list_name, "--at", "2019-02-12 09:00", "--by", WRITER, "--yes"
        )
        assert code == 0, out
        assert "scheduled for 2019-02-12 09:00 CET (08:00 UTC)" in out
    code, out = run("approve", "2019-01", "--list", "members", "--by", "Zoë Dupont <ZOE@efus.example>")
    assert code == 1 and "its approval must come from someone else" in out, out
    for list_name in ("members", "public"):
        code, out = run("approve", "2019-01", "--list", list_name, "--by", APPROVER)
        assert code == 0, out
    code, out = run("schedule", "list")
    assert out.count("2019-02-12 09:00 CET (08:00 UTC)") == 2, out

    # The timer's rounds: nothing a second before the instant.
    fake.advance((INSTANT - fake.now()).total_seconds() - 1)
    code, out = run("worker", "--once")
    assert code == 0 and smtp_server.messages == [] and second_server.messages == [], out

    # From the instant, a round a minute (a quota wait ends a round; the next goes on), and
    # every two hours once nothing more can go today.
    fake.advance(1)
    rounds, outputs = 0, []
    while len(smtp_server.messages) + len(second_server.messages) < 21 and rounds < 200:
        before = len(smtp_server.messages) + len(second_server.messages)
        code, out = run("worker", "--once")
        assert code == 0, out
        outputs.append(out)
        rounds += 1
        moved = len(smtp_server.messages) + len(second_server.messages) > before
        fake.advance(60 if moved else 7200)
    everything = "\n".join(outputs)
    assert "started (scheduled for 2019-02-12 09:00 CET (08:00 UTC))" in outputs[0]
    assert "waiting for quota" in everything and "on route relay-a" in everything

    # Each list through its route, each reader once.
    members = Counter(r for m in smtp_server.messages for r in m.rcpt_tos)
    public = Counter(r for m in second_server.messages for r in m.rcpt_tos)
    assert members == Counter(f"m{i}@example.org" for i in range(12))
    assert public == Counter(f"q{i}@example.org" for i in range(9))

    # At the instant, not before; within every limit over every rolling window.
    a, b = arrivals[smtp_server.port], arrivals[second_server.port]
    assert min(a) == INSTANT and min(b) == INSTANT
    assert most_in_any_window(a, dt.timedelta(minutes=1)) <= 5
    assert most_in_any_window(a, dt.timedelta(days=1)) <= 8
    assert most_in_any_window(b, dt.timedelta(minutes=1)) <= 4
    # relay-a's day quota held the last four members until the next day.
    assert sum(t < INSTANT + dt.timedelta(days=1) for t in a) == 8
    assert max(b) < INSTANT + dt.timedelta(minutes=3), "relay-b's public list was not held up by relay-a"

    code, out = run("status", "1")
    assert "approved by Ana Costa" in out and "12 through relay-a" in out, out
    code, out = run("status", "2")
    assert "9 through relay-b" in out, out


def test_a_workspace_that_sends_through_routes_only_gets_the_checks_for_real_mail(
    sending_workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No [smtp] host, one route: the published demo key is refused, and a test goes through the route."""
    from mailout.tokens import PUBLIC_KEYS

    edit_config(
        sending_workspace,
        ('[smtp]\nhost = "127.0.0.1"\n', "[smtp]\n"),
        ("[sending]\n", '[sending]\nroute = "relay-a"\n'),
    )
    with (sending_workspace / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write(routes(smtp_server.port, smtp_server.port))
    add_subscribers(sending_workspace, people(3), "members")
    monkeypatch.setenv("MAILOUT_SECRET_KEY", next(iter(PUBLIC_KEYS)))
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 1 and "published in mailout's own files" in out, out
    assert smtp_server.messages == [] and not (sending_workspace / "outbox").exists()
    code, out = run("test", "2019-01", "--to", "me@example.org")
    assert code == 1 and "published in mailout's own files" in out, out
    monkeypatch.setenv("MAILOUT_SECRET_KEY", "k" * 40)
    code, out = run("test", "2019-01", "--to", "me@example.org")
    assert code == 0, out
    assert {r for m in smtp_server.messages for r in m.rcpt_tos} == {"me@example.org"}
    assert len(smtp_server.messages) == 4, "each segment × language through relay-a, none to the outbox"


def test_status_says_approved_only_for_an_approval_that_lets_the_dispatch_start(
    sending_workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's own approval, given before she wrote the dispatch, is not an approval (review)."""
    edit_config(sending_workspace, ("[sending]\n", "[sending]\nrequire_approval = true\n"))
    add_subscribers(sending_workspace, people(2), "members")
    monkeypatch.setattr(clock, "SYSTEM", FakeClock(dt.datetime(2019, 2, 8, 16, 0, tzinfo=dt.UTC)))
    code, out = run("approve", "2019-01", "--list", "members", "--by", "zoe")
    assert code == 0, out
    code, out = run(
        "send", "2019-01", "--list", "members", "--at", "2019-02-12 09:00", "--by", WRITER, "--yes"
    )
    assert code == 0, out
    code, out = run("status", "1")
    assert "approved by zoe" not in out
    assert "not approved: dispatch 1 of 2019-01 to 'members' is approved by its own writer (zoe) only" in out
    code, out = run("approve", "2019-01", "--list", "members", "--by", APPROVER)
    assert code == 0, out
    code, out = run("status", "1")
    assert f"approved by {APPROVER} on " in out and "not approved" not in out, out


def test_a_route_that_cannot_send_holds_up_only_its_own_dispatches_in_a_worker_round(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    """Second look: the worker checked [smtp] alone, then one route's error stopped every dispatch."""
    from tests.smtpserver import free_port

    edit_config(
        sending_workspace, ('description = "Public"\n', 'description = "Public"\nroute = "relay-b"\n')
    )
    with (sending_workspace / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write(routes(smtp_server.port, smtp_server.port))
    add_subscribers(sending_workspace, people(3, "m"), "members")
    add_subscribers(sending_workspace, people(2, "q"), "public")
    assert run("send", "2019-01", "--list", "public", "--at", "2099-01-01 09:00", "--yes")[0] == 0
    assert run("send", "2019-01", "--list", "members", "--at", "2099-01-01 09:00", "--yes")[0] == 0
    # By Tuesday, relay-b's server is gone.
    relay_b = f'[smtp.routes.relay-b]\nhost = "127.0.0.1"\nport = {smtp_server.port}\n'
    edit_config(sending_workspace, (relay_b, relay_b.replace(str(smtp_server.port), str(free_port()))))
    fake = FakeClock(dt.datetime(2099, 1, 1, 9, 0, tzinfo=dt.UTC))
    import mailout.clock

    old, mailout.clock.SYSTEM = mailout.clock.SYSTEM, fake
    try:
        code, out = run("worker", "--once")
    finally:
        mailout.clock.SYSTEM = old
    assert code == 1, out
    assert "relay-b" in out and "cannot connect" in out
    assert "dispatch 1: 2019-01 to 'public' not sent: its route (relay-b) cannot send now" in out
    assert {r for m in smtp_server.messages for r in m.rcpt_tos} == {f"m{i}@example.org" for i in range(3)}
