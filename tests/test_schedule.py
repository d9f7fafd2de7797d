"""Scheduled dispatches: the instant on the team's wall clock, starting once, missed, cancelled, restored.

On SQLite and PostgreSQL, with the real SMTP server on loopback. Time is given to the
domain functions (``now``) or, for the commands, through a clock of the test's own in
place of ``clock.SYSTEM``: nothing here waits for an instant to come.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select, update

from mailout import archive, clock, dispatching, instants, outbox
from mailout import subscribers as people_module
from mailout.approvals import NotApproved
from mailout.cli import cli
from mailout.config import Settings, load_settings
from mailout.db import make_engine, transaction, upgrade
from mailout.dispatching import CannotCancel, DispatchState, DispatchWaiting, Ending, NotStarted
from mailout.instants import BadInstant
from mailout.issues import Issue
from mailout.models import Delivery, DeliveryStatus, Dispatch
from mailout.tokens import Signer
from tests.conftest import edit_config
from tests.fakeclock import FakeClock
from tests.smtpserver import SMTPServer
from tests.test_dispatching import setup
from tests.test_migrations import fill, rows
from tests.test_sending import add_subscribers, people

BRUSSELS = "Europe/Brussels"
UTC = dt.UTC


def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def schedule(engine: Engine, settings: Settings, issue: Issue, at: dt.datetime, now: dt.datetime) -> int:
    """Write a dispatch of the issue to members scheduled for ``at``, as `send --at` does at ``now``."""
    plan = dispatching.plan(engine, settings, issue, "members", at=at, by="Zoë <zoe@efus.example>")
    started = dispatching.start(engine, settings, plan, now=now)
    assert started.created and not started.started and started.scheduled_at == at
    return started.dispatch_id


def send_it(engine: Engine, settings: Settings, dispatch_id: int) -> dispatching.Result:
    return dispatching.run(engine, settings, dispatch_id, Signer.from_secret(settings.secret_key))


def claimable(engine: Engine, dispatch_id: int) -> int:
    """Claim what a sending process could claim now (then give it back); return how many."""
    with engine.begin() as conn:
        claimed = outbox.claim(conn, dispatch_id, "probe", 100)
        conn.execute(
            update(Delivery)
            .where(Delivery.worker == "probe", Delivery.status == DeliveryStatus.CLAIMED)
            .values(status=DeliveryStatus.QUEUED, worker="")
        )
    return len(claimed)


# --- the instant on the wall clock ----------------------------------------------------


def test_a_wall_clock_time_is_read_in_the_zone_across_both_daylight_saving_changes() -> None:
    friday = utc(2019, 2, 8, 16)
    assert instants.parse("2019-02-12 09:00", BRUSSELS, friday) == utc(2019, 2, 12, 8)
    # The day after each change, 09:00 in Brussels is 07:00 UTC in summer, 08:00 UTC in winter.
    assert instants.parse("2019-04-01 09:00", BRUSSELS, friday) == utc(2019, 4, 1, 7)
    assert instants.parse("2019-10-28T09:00", BRUSSELS, friday) == utc(2019, 10, 28, 8)
    assert instants.parse("2019-02-12 09:00", "UTC", friday) == utc(2019, 2, 12, 9)
    assert instants.parse("2019-02-12 09:00:30Z", BRUSSELS, friday) == utc(2019, 2, 12, 9, 0, 30)
    assert instants.show(utc(2019, 4, 1, 7), BRUSSELS) == "2019-04-01 09:00 CEST (07:00 UTC)"
    assert instants.show(utc(2019, 10, 27, 23, 30), BRUSSELS) == "2019-10-28 00:30 CET (2019-10-27 23:30 UTC)"


def test_a_time_the_spring_change_skips_is_refused_and_the_gap_named() -> None:
    with pytest.raises(BadInstant) as refused:
        instants.parse("2019-03-31 02:30", BRUSSELS, utc(2019, 2, 8))
    assert str(refused.value) == (
        "2019-03-31 02:30 does not exist in Europe/Brussels: that night clocks jump from 02:00 CET"
        " (+01:00) to 03:00 CEST (+02:00); choose a time outside that gap, such as 2019-03-31 03:00"
    )
    # Just outside the gap, on either side, is one instant each.
    assert instants.parse("2019-03-31 01:59", BRUSSELS, utc(2019, 2, 8)) == utc(2019, 3, 31, 0, 59)
    assert instants.parse("2019-03-31 03:00", BRUSSELS, utc(2019, 2, 8)) == utc(2019, 3, 31, 1)
    with pytest.raises(BadInstant, match="clocks jump from 02:00 EST"):
        instants.parse("2019-03-10 02:30", "America/New_York", utc(2019, 2, 8))


def test_a_time_the_autumn_change_repeats_needs_its_offset() -> None:
    with pytest.raises(BadInstant) as refused:
        instants.parse("2019-10-27 02:30", BRUSSELS, utc(2019, 2, 8))
    message = str(refused.value)
    assert "2019-10-27 02:30 happens twice in Europe/Brussels" in message
    assert '--at "2019-10-27 02:30+02:00"' in message and '--at "2019-10-27 02:30+01:00"' in message
    assert instants.parse("2019-10-27 02:30+02:00", BRUSSELS, utc(2019, 2, 8)) == utc(2019, 10, 27, 0, 30)
    assert instants.parse("2019-10-27 02:30+01:00", BRUSSELS, utc(2019, 2, 8)) == utc(2019, 10, 27, 1, 30)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2019-02-12", "give a date and a time"),
        ("next tuesday", "give a date and a time"),
        ("2019-02-08 16:00", "that is in the past"),
        ("2019-02-08 17:00", "that is in the past"),  # 16:00 UTC is 17:00 in Brussels: now, not after
    ],
)
def test_an_unreadable_or_past_time_is_refused(text: str, message: str) -> None:
    with pytest.raises(BadInstant, match=message):
        instants.parse(text, BRUSSELS, utc(2019, 2, 8, 16))


def test_an_unknown_zone_is_refused() -> None:
    with pytest.raises(BadInstant, match="not a time zone: 'Europe/Bruxelles'"):
        instants.parse("2019-02-12 09:00", "Europe/Bruxelles", utc(2019, 2, 8))


# --- starting at the instant, once ------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "instant"),
    [("2019-04-01 09:00", utc(2019, 4, 1, 7)), ("2019-10-28 09:00", utc(2019, 10, 28, 8))],
    ids=["after-march-change", "after-october-change"],
)
def test_a_scheduled_dispatch_starts_at_its_instant_not_an_hour_off(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer, local: str, instant: dt.datetime
) -> None:
    settings, issue = setup(sending_workspace, engine, 3)
    friday = utc(2019, 3, 29, 15)
    at = instants.parse(local, BRUSSELS, friday)
    assert at == instant
    dispatch_id = schedule(engine, settings, issue, at, friday)
    assert dispatching.report(engine, dispatch_id).state is DispatchState.SCHEDULED
    # Not started: no path sends it, the claim itself refuses.
    assert claimable(engine, dispatch_id) == 0
    with pytest.raises(NotStarted, match="is scheduled for"):
        send_it(engine, settings, dispatch_id)
    # An hour early on either side of the change (the wrong offset) and a second early: nothing.
    for early in (instant - dt.timedelta(hours=1), instant - dt.timedelta(seconds=1)):
        assert dispatching.start_due(engine, settings, early).started == []
    assert smtp_server.messages == []
    due = dispatching.start_due(engine, settings, instant)
    assert [s.id for s in due.started] == [dispatch_id]
    report = dispatching.report(engine, dispatch_id)
    assert report.state is DispatchState.UNFINISHED and report.started == instant
    result = send_it(engine, settings, dispatch_id)
    assert result.ending is Ending.FINISHED and len(smtp_server.messages) == 3
    # The next round starts nothing again, and nothing is left to send.
    assert dispatching.start_due(engine, settings, instant + dt.timedelta(minutes=5)) == dispatching.Due()
    assert dispatching.report(engine, dispatch_id).started == instant


def test_workers_at_the_same_instant_start_it_once(sending_workspace: Path, engine: Engine) -> None:
    settings, issue = setup(sending_workspace, engine, 2)
    at = utc(2019, 2, 12, 8)
    dispatch_id = schedule(engine, settings, issue, at, utc(2019, 2, 8))
    barrier = threading.Barrier(4)
    results: list[dispatching.Due] = []
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            barrier.wait()
            results.append(dispatching.start_due(engine, settings, at + dt.timedelta(microseconds=offset)))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    starts = [s.id for due in results for s in due.started]
    assert starts == [dispatch_id], "one worker started it; the others found it started"
    with transaction(engine) as session:
        started_at = session.scalar(select(Dispatch.started_at).where(Dispatch.id == dispatch_id))
    assert started_at is not None and outbox.as_utc(started_at) - at < dt.timedelta(milliseconds=1)


def test_a_missed_dispatch_is_not_started_late_and_send_now_sends_it(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, issue = setup(sending_workspace, engine, 2)
    at = utc(2019, 2, 12, 8)
    dispatch_id = schedule(engine, settings, issue, at, utc(2019, 2, 8))
    lateness = dt.timedelta(seconds=settings.sending.max_lateness)
    # Exactly max_lateness late: still started. A second more: missed, never started by a worker.
    assert dispatching.mark_missed(engine, settings, at + lateness) == []
    late = at + lateness + dt.timedelta(seconds=1)
    due = dispatching.start_due(engine, settings, late)
    assert [s.id for s in due.missed] == [dispatch_id] and due.started == []
    report = dispatching.report(engine, dispatch_id)
    assert report.state is DispatchState.MISSED and report.missed == late
    assert dispatching.start_due(engine, settings, late + dt.timedelta(days=1)) == dispatching.Due()
    assert claimable(engine, dispatch_id) == 0
    with pytest.raises(DispatchWaiting, match=r"missed its instant, 2019-02-12 08:00 UTC.*--now` sends it"):
        dispatching.plan(engine, settings, issue, "members")
    plan = dispatching.plan(engine, settings, issue, "members", now=True)
    assert plan.resume is not None and plan.resume.start_now and plan.resume.waiting is DispatchState.MISSED
    started = dispatching.start(engine, settings, plan, now=late + dt.timedelta(hours=1))
    assert started.started and started.dispatch_id == dispatch_id
    assert send_it(engine, settings, dispatch_id).ending is Ending.FINISHED
    assert len(smtp_server.messages) == 2


def test_send_at_again_moves_a_waiting_dispatch_and_a_started_one_is_not_rescheduled(
    sending_workspace: Path, engine: Engine
) -> None:
    settings, issue = setup(sending_workspace, engine, 2)
    dispatch_id = schedule(engine, settings, issue, utc(2019, 2, 12, 8), utc(2019, 2, 8))
    later = utc(2019, 2, 13, 8)
    plan = dispatching.plan(engine, settings, issue, "members", at=later)
    assert plan.resume is not None and plan.resume.reschedule == later
    moved = dispatching.start(engine, settings, plan, now=utc(2019, 2, 9))
    assert (moved.dispatch_id, moved.started, moved.scheduled_at) == (dispatch_id, False, later)
    assert dispatching.start_due(engine, settings, utc(2019, 2, 12, 8)).started == []
    assert [s.id for s in dispatching.start_due(engine, settings, later).started] == [dispatch_id]
    with pytest.raises(Exception, match="--at schedules a new dispatch only"):
        dispatching.plan(engine, settings, issue, "members", at=utc(2019, 2, 14))


def test_cancel_skips_the_deliveries_once_and_never_a_started_dispatch(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, issue = setup(sending_workspace, engine, 3)
    dispatch_id = schedule(engine, settings, issue, utc(2019, 2, 12, 8), utc(2019, 2, 8))
    cancelled = dispatching.cancel(engine, settings, dispatch_id, utc(2019, 2, 9))
    assert cancelled.skipped == 3 and cancelled.summary.state is DispatchState.CANCELLED
    with transaction(engine) as session:
        left = session.execute(
            select(Delivery.status, Delivery.reply).where(Delivery.dispatch_id == dispatch_id)
        )
        assert set(left) == {(DeliveryStatus.SKIPPED, "cancelled")}
    report = dispatching.report(engine, dispatch_id)
    assert report.finished == utc(2019, 2, 9) and report.cancelled == utc(2019, 2, 9)
    with pytest.raises(CannotCancel, match="was cancelled already, on 2019-02-09 00:00 UTC"):
        dispatching.cancel(engine, settings, dispatch_id, utc(2019, 2, 10))
    # Its instant comes: nothing starts, nothing is sent.
    assert dispatching.start_due(engine, settings, utc(2019, 2, 12, 8)) == dispatching.Due()
    with pytest.raises(NotStarted, match="was cancelled"):
        send_it(engine, settings, dispatch_id)
    # A cancelled dispatch was never sent: the next send writes a new one, without --again.
    plan = dispatching.plan(engine, settings, issue, "members")
    assert plan.resume is None and plan.previous == dispatch_id
    started = dispatching.start(engine, settings, plan)
    assert started.created and started.started
    with pytest.raises(CannotCancel, match=r"started on .*only a dispatch not started can be cancelled"):
        dispatching.cancel(engine, settings, started.dispatch_id, utc(2030, 1, 1))
    assert send_it(engine, settings, started.dispatch_id).ending is Ending.FINISHED
    assert len(smtp_server.messages) == 3


def race_cancel_and_start(
    engine: Engine, settings: Settings, dispatch_id: int, at: dt.datetime
) -> dict[str, object]:
    """Run a worker's start and a cancel of the dispatch at the same instant; return what each got."""
    barrier = threading.Barrier(2)
    found: dict[str, object] = {}

    def start() -> None:
        barrier.wait()
        found["due"] = dispatching.start_due(engine, settings, at)

    def cancel() -> None:
        barrier.wait()
        try:
            found["cancelled"] = dispatching.cancel(engine, settings, dispatch_id, at)
        except CannotCancel as refused:
            found["refused"] = refused

    threads = [threading.Thread(target=start), threading.Thread(target=cancel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found


def test_a_cancel_racing_the_start_wins_or_loses_whole(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, issue = setup(sending_workspace, engine, 2)
    at = utc(2019, 2, 12, 8)
    outcomes = collections.Counter()
    for _ in range(4):
        dispatch_id = schedule(engine, settings, issue, at, utc(2019, 2, 8))
        found = race_cancel_and_start(engine, settings, dispatch_id, at)
        due = found["due"]
        assert isinstance(due, dispatching.Due)
        report = dispatching.report(engine, dispatch_id)
        if "cancelled" in found:
            assert due.started == [] and report.state is DispatchState.CANCELLED and report.started is None
            assert report.counts["skipped"] == 2 and claimable(engine, dispatch_id) == 0
            outcomes["cancel"] += 1
        else:
            assert "started on" in str(found["refused"])
            assert [s.id for s in due.started] == [dispatch_id] and report.cancelled is None
            assert report.counts["queued"] == 2
            assert send_it(engine, settings, dispatch_id).ending is Ending.FINISHED
            outcomes["start"] += 1
            with engine.begin() as conn:  # the next round's send needs --again otherwise
                conn.execute(update(Dispatch).where(Dispatch.id == dispatch_id).values(cancelled_at=at))
    assert sum(outcomes.values()) == 4
    assert len(smtp_server.messages) == 2 * outcomes["start"]


def test_with_require_approval_send_writes_the_dispatch_waiting_until_approved(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, issue = setup(sending_workspace, engine, 2)
    settings = load_settings(sending_workspace, overrides={"sending.require_approval": "true"})
    approved = threading.Event()

    def require(session: object, settings: Settings, dispatch: Dispatch) -> None:
        if not approved.is_set():
            raise NotApproved(f"dispatch {dispatch.id} has no approval")

    monkeypatch.setattr("mailout.approvals.require", require)
    started = dispatching.start(engine, settings, dispatching.plan(engine, settings, issue, "members"))
    assert started.created and not started.started and started.waiting == "dispatch 1 has no approval"
    assert dispatching.report(engine, 1).state is DispatchState.AWAITING_APPROVAL
    assert claimable(engine, 1) == 0
    # A worker finds it due but not approved; hours later it is not missed (no instant to miss).
    due = dispatching.start_due(engine, settings, dt.datetime.now(UTC) + dt.timedelta(days=1))
    assert due.started == [] and [(s.id, why) for s, why in due.unapproved] == [
        (1, "dispatch 1 has no approval")
    ]
    assert due.missed == []
    approved.set()
    due = dispatching.start_due(engine, settings, dt.datetime.now(UTC))
    assert [s.id for s in due.started] == [1]
    assert send_it(engine, settings, 1).ending is Ending.FINISHED and len(smtp_server.messages) == 2


# --- the commands -------------------------------------------------------------------------


def test_send_at_schedule_list_status_and_worker_once_on_the_teams_clock(
    sending_workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit_config(sending_workspace, ("[sending]\n", '[sending]\ntimezone = "Europe/Brussels"\n'))
    add_subscribers(sending_workspace, people(3))
    now = FakeClock(utc(2019, 2, 8, 16))
    monkeypatch.setattr(clock, "SYSTEM", now)
    code, out = run("send", "2019-01", "--list", "members", "--at", "2019-03-31 02:30", "--yes")
    assert code == 1 and "2019-03-31 02:30 does not exist in Europe/Brussels" in out
    code, out = run(
        "send", "2019-01", "--list", "members", "--at", "2019-02-12 09:00", "--yes", "--by", "Zoë"
    )
    assert code == 0, out
    assert "dispatch 1: scheduled for 2019-02-12 09:00 CET (08:00 UTC); `mailout worker` starts it" in out
    code, out = run("schedule", "list")
    assert (
        code == 0 and "scheduled         2019-02-12 09:00 CET (08:00 UTC)" in out and "written by Zoë" in out
    )
    code, out = run("status")
    assert "scheduled 2019-02-12 09:00 CET (08:00 UTC)" in out
    code, out = run("status", "1")
    assert "(scheduled)" in out and "scheduled for: 2019-02-12 09:00 CET (08:00 UTC)" in out
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 1 and "dispatch 1 of 2019-01 to 'members' is scheduled for 2019-02-12 09:00 CET" in out
    assert "--now` sends it now" in out
    code, out = run("worker", "--once", "--watch")
    assert code == 2 and "--once runs one round and exits" in out
    now.current = utc(2019, 2, 12, 7, 59, 59)
    code, out = run("worker", "--once")
    assert code == 0 and "nothing to send" in out and smtp_server.messages == []
    now.current = utc(2019, 2, 12, 8)
    code, out = run("worker", "--once")
    assert code == 0, out
    assert "dispatch 1: 2019-01 to 'members' started (scheduled for 2019-02-12 09:00 CET (08:00 UTC))" in out
    assert "finished" in out and len(smtp_server.messages) == 3
    code, out = run("schedule", "list")
    assert out.strip() == "nothing scheduled"
    code, out = run("schedule", "cancel", "1", "--yes")
    assert code == 1 and "started on 2019-02-12 09:00 CET (08:00 UTC)" in out


def test_the_worker_says_a_missed_dispatch_once_and_send_now_sends_it(
    sending_workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_subscribers(sending_workspace, people(2))
    now = FakeClock(utc(2019, 2, 8, 16))
    monkeypatch.setattr(clock, "SYSTEM", now)
    assert run("send", "2019-01", "--list", "members", "--at", "2019-02-12 09:00", "--yes")[0] == 0
    now.current = utc(2019, 2, 12, 11, 0, 1)  # two hours and a second late (UTC team)
    code, out = run("worker", "--once")
    assert code == 0 and "missed its instant, 2019-02-12 09:00 UTC" in out and smtp_server.messages == []
    code, out = run("worker", "--once")
    assert "missed" not in out, "said once, when it was found"
    code, out = run("status", "1")
    assert "(missed)" in out and "--now` sends it now" in out
    code, out = run("schedule", "list")
    assert "missed" in out
    code, out = run("send", "2019-01", "--list", "members", "--now", "--yes")
    assert code == 0, out
    assert "starting dispatch 1 of 2019-01 to 'members' (missed, for 2019-02-12 09:00 UTC) now" in out
    assert len(smtp_server.messages) == 2


# --- restored backups, kill -9, an upgraded database ----------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_restored_backup_never_sends_a_sent_dispatch_again_nor_a_missed_one(
    sending_workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_subscribers(sending_workspace, people(3))
    database = Path(load_settings(sending_workspace).database_url().removeprefix("sqlite:///"))
    now = FakeClock(utc(2019, 2, 8, 16))
    monkeypatch.setattr(clock, "SYSTEM", now)
    assert run("send", "2019-01", "--list", "members", "--at", "2019-02-12 08:00", "--yes")[0] == 0
    before = database.with_name("before.db")
    shutil.copyfile(database, before)  # taken on Sunday, before the instant
    now.current = utc(2019, 2, 12, 8)
    assert run("worker", "--once")[0] == 0 and len(smtp_server.messages) == 3
    after = database.with_name("after.db")
    shutil.copyfile(database, after)  # taken once it was sent

    def restore(backup: Path) -> None:
        for extra in ("-wal", "-shm"):
            database.with_name(database.name + extra).unlink(missing_ok=True)
        shutil.copyfile(backup, database)

    # The server is restored from the backup taken after the send, at 13:00: nothing again.
    restore(after)
    now.current = utc(2019, 2, 12, 13)
    code, out = run("worker", "--once")
    assert code == 0 and "nothing to send" in out and len(smtp_server.messages) == 3
    # From the backup taken before the instant, restored past max_lateness: missed, not sent.
    restore(before)
    code, out = run("worker", "--once")
    assert code == 0 and "missed its instant" in out and len(smtp_server.messages) == 3
    assert json.loads(run("status", "1", "--json")[1])["state"] == "missed"
    # The limit docs/sending.md states: the same backup restored within max_lateness of the
    # instant would start it (nothing in the file says it went out); cancel it first.
    restore(before)
    now.current = utc(2019, 2, 12, 9)
    assert run("schedule", "cancel", "1", "--yes")[0] == 0
    code, out = run("worker", "--once")
    assert code == 0 and len(smtp_server.messages) == 3


def test_a_worker_killed_right_after_the_start_is_resumed_not_started_again(
    sending_workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit_config(sending_workspace, ("concurrency = 2", "concurrency = 3\nrate_limit = 100"))
    edit_config(sending_workspace, ("worker_timeout = 2", "worker_timeout = 60"))
    add_subscribers(sending_workspace, people(120))
    friday = dt.datetime.now(UTC)
    monkeypatch.setattr(clock, "SYSTEM", FakeClock(friday))
    code, out = run("send", "2019-01", "--list", "members", "--at", "2099-01-01 09:00", "--yes")
    assert code == 0, out
    engine = make_engine(load_settings(sending_workspace).database_url())
    try:
        # Its instant has come (a minute ago, on the real clock the worker process reads).
        with engine.begin() as conn:
            due = dt.datetime.now(UTC) - dt.timedelta(minutes=1)
            conn.execute(update(Dispatch).where(Dispatch.id == 1).values(scheduled_at=due))
        process = subprocess.Popen(
            [sys.executable, "-m", "mailout", "worker", "--once"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            smtp_server.wait_for(20, timeout=30)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            process.stdout.close()  # type: ignore[union-attr]
        with transaction(engine) as session:
            started_at = session.scalar(select(Dispatch.started_at).where(Dispatch.id == 1))
        assert started_at is not None
        # The next worker comes a day later, far past max_lateness: it resumes, it does not
        # take the dispatch for a missed (or scheduled) one.
        monkeypatch.setattr(clock, "SYSTEM", FakeClock(dt.datetime.now(UTC) + dt.timedelta(days=1)))
        code, out = run("worker", "--once")
        assert code == 0 and "missed" not in out and "started (scheduled" not in out
        assert "finished" in out
        with transaction(engine) as session:
            assert session.scalar(select(Dispatch.started_at).where(Dispatch.id == 1)) == started_at
            assert session.scalar(select(Dispatch.missed_at).where(Dispatch.id == 1)) is None
    finally:
        engine.dispose()
    report = json.loads(run("status", "1", "--json")[1])
    unknown = set(report["unknown"])
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert set(received) | unknown == {e for e, _ in people(120)}
    assert all(n == 1 for e, n in received.items() if e not in unknown)
    assert report["state"] == "finished"


def test_dispatches_from_before_the_upgrade_are_started_and_send_as_before(
    empty_database_url: str, workspace: Path
) -> None:
    upgrade(empty_database_url, "0011")
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            fill(connection, rows())
        upgrade(empty_database_url)
        states = {s.id: s.state for s in dispatching.overview(engine)}
        assert states == {3: DispatchState.FINISHED, 2: DispatchState.PAUSED, 1: DispatchState.FINISHED}
        settings = load_settings(workspace)
        # No worker takes them for scheduled or missed ones, however late it comes.
        assert dispatching.start_due(engine, settings, utc(2099, 1, 1)) == dispatching.Due()
        with pytest.raises(CannotCancel, match="started on"):
            dispatching.cancel(engine, settings, 2, utc(2099, 1, 1))
        # The unfinished one's queued deliveries can be claimed, as before 0012.
        queued = dispatching.report(engine, 2).counts["queued"]
        assert queued > 0 and claimable(engine, 2) >= queued  # and the deferred ones due
    finally:
        engine.dispose()


def test_the_public_archive_shows_an_issue_only_once_its_dispatch_started(
    sending_workspace: Path, engine: Engine
) -> None:
    settings, issue = setup(sending_workspace, engine, 1)
    with transaction(engine) as session:
        public = people_module.ensure_list(session, settings.mailing_list("public"))
        people_module.add(session, public, "reader@example.org")
    plan = dispatching.plan(engine, settings, issue, "public", at=utc(2019, 2, 12, 8))
    dispatch_id = dispatching.start(engine, settings, plan, now=utc(2019, 2, 8)).dispatch_id

    def published() -> tuple[list[str], bool]:
        with transaction(engine) as session:
            listed = [entry.slug for entry in archive.archived_issues(session)]
            return listed, archive.public_dispatch(session, "2019-01") is not None

    assert published() == ([], False), "not on the public pages before its instant"
    dispatching.start_due(engine, settings, utc(2019, 2, 12, 8))
    assert published() == (["2019-01"], True)
    with transaction(engine) as session:
        assert archive.archived_issues(session)[0].sent_at == utc(2019, 2, 12, 8)
    assert send_it(engine, settings, dispatch_id).ending is Ending.FINISHED
    # Sent once more, scheduled, then cancelled: the page stays the one that went out.
    again = dispatching.plan(engine, settings, issue, "public", again=True, at=utc(2019, 3, 1))
    second = dispatching.start(engine, settings, again, now=utc(2019, 2, 20)).dispatch_id
    dispatching.cancel(engine, settings, second, utc(2019, 2, 21))
    key = key_of(engine, dispatch_id)
    with transaction(engine) as session:
        assert archive.public_dispatch_key(session, "2019-01") == (dispatch_id, key)


def key_of(engine: Engine, dispatch_id: int) -> str:
    with transaction(engine) as session:
        return str(session.scalar(select(Dispatch.key).where(Dispatch.id == dispatch_id)))
