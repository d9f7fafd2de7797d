"""Routes' quotas, counted in the database over rolling windows, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from mailout import quota
from mailout.config import Route
from mailout.db import make_engine
from mailout.models import RouteUsage
from tests.fakeclock import FakeClock

T0 = dt.datetime(2019, 2, 12, 8, 0, tzinfo=dt.UTC)


def taken_at(engine: Engine, route: Route, times: list[dt.datetime]) -> list[dt.datetime]:
    """Take a slot at each of ``times``, skipping the ones told to wait; return the times taken."""
    return [at for at in times if quota.take(engine, route, at) is None]


def most_in_any_window(times: list[dt.datetime], length: dt.timedelta) -> int:
    """Return the most of ``times`` in any window [t - length, t] (closed: the strictest reading)."""
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while times[first] < at - length:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_a_limit_holds_over_every_rolling_window(engine: Engine) -> None:
    route = Route("m365", per_minute=30, per_day=100)
    # A message asked for every 0.7 s for two days: the quota lets some through.
    asked = [T0 + dt.timedelta(seconds=0.7 * n) for n in range(int(2 * 86_400 / 0.7))]
    taken: list[dt.datetime] = []
    clock = FakeClock(T0)
    stop = threading.Event()
    for at in asked:
        if at < clock.now():
            continue  # still waiting
        clock.advance((at - clock.now()).total_seconds())
        wait = quota.take(engine, route, clock.now())
        if wait is None:
            taken.append(clock.now())
        else:
            clock.wait(stop, wait.seconds)
            assert quota.take(engine, route, clock.now()) is None, "a slot when the wait is over"
            taken.append(clock.now())
    assert most_in_any_window(taken, dt.timedelta(minutes=1)) <= 30
    assert most_in_any_window(taken, dt.timedelta(days=1)) <= 100
    # Conservative by one bucket (24 minutes of a day): the second hundred goes 24 h 24 min
    # after the first, and the third would be after the two days.
    assert len([at for at in taken if at <= asked[-1]]) == 200
    assert taken[100] == T0 + dt.timedelta(hours=24, minutes=24)
    # The first 30 go at once; the next wait for the first bucket to leave the minute.
    assert taken[29] - taken[0] < dt.timedelta(seconds=21) and taken[30] - taken[0] >= dt.timedelta(minutes=1)


def test_the_wait_says_how_many_of_how_many_and_until_when(engine: Engine) -> None:
    route = Route("m365", per_day=10_000)
    with engine.begin() as conn:
        # 9,812 messages 23 hours ago, and 188 an hour ago: the day is full.
        start = quota.bucket(T0 - dt.timedelta(hours=23), 86_400)
        conn.execute(RouteUsage.__table__.insert(), [
            {"route": "m365", "unit": "day", "bucket": start, "used": 9812},
            {"route": "m365", "unit": "day", "bucket": start + 55, "used": 188},
        ])  # fmt: skip
    wait = quota.take(engine, route, T0)
    assert wait is not None
    # The oldest bucket leaves the window 61 buckets (of 24 minutes) after it began.
    assert wait.until == quota.bucket_start(start + 61, 86_400)
    assert dt.timedelta(hours=1) < wait.until - T0 <= dt.timedelta(hours=1, minutes=24)
    assert wait.seconds == (wait.until - T0).total_seconds()
    resume = (wait.until + dt.timedelta(seconds=59)).strftime("%Y-%m-%d %H:%M")
    assert str(wait) == (
        f"waiting for quota: 10,000 of 10,000 in the last 24 hours on route m365; resumes {resume} UTC"
    )
    assert quota.take(engine, route, wait.until - dt.timedelta(seconds=1)) is not None, "not a second early"
    assert quota.take(engine, route, wait.until) is None
    assert quota.usage(engine, route, wait.until) == {"day": (188 + 1, 10_000)}


def test_the_longest_wait_of_several_limits_wins_and_nothing_is_taken_meanwhile(engine: Engine) -> None:
    route = Route("ses", per_second=2, per_hour=3)
    assert taken_at(engine, route, [T0, T0, T0]) == [T0, T0]
    wait = quota.take(engine, route, T0)
    assert wait is not None and wait.seconds <= 1.1 and "in the last second" in wait.message
    later = T0 + dt.timedelta(seconds=5)
    assert quota.take(engine, route, later) is None
    wait = quota.take(engine, route, later + dt.timedelta(seconds=5))
    assert wait is not None and "3 of 3 in the last hour on route ses" in wait.message
    assert 3540 < wait.seconds <= 3661
    assert quota.usage(engine, route, later) == {"second": (1, 2), "hour": (3, 3)}, "waits take nothing"


def test_routes_count_apart_and_a_route_without_limits_takes_nothing(engine: Engine) -> None:
    one, two, free = Route("one", per_minute=1), Route("two", per_minute=1), Route("free")
    assert quota.take(engine, one, T0) is None and quota.take(engine, two, T0) is None
    assert quota.take(engine, one, T0) is not None
    assert quota.take(engine, free, T0) is None and quota.limits(free) == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(RouteUsage)).scalar_one() == 2
    # Renamed, a route counts from nothing (the counts are kept per name).
    assert quota.take(engine, Route("one-renamed", per_minute=1), T0) is None


def test_old_buckets_are_purged(engine: Engine) -> None:
    route = Route("m365", per_minute=1000)
    for n in range(300):
        assert quota.take(engine, route, T0 + dt.timedelta(seconds=n)) is None
    with engine.connect() as conn:
        buckets = conn.execute(select(RouteUsage.bucket).where(RouteUsage.unit == "minute")).scalars().all()
    now = quota.bucket(T0 + dt.timedelta(seconds=299), 60)
    # Kept a whole window more than the sums read (a machine whose clock is behind still
    # counts them), and no older.
    assert min(buckets) >= now - 2 * quota.PARTS - 1 and len(buckets) <= 2 * quota.PARTS + 2
    assert min(buckets) < now - quota.PARTS, "the purge keeps the margin"


HAMMER = """
import datetime as dt, sys
from mailout import quota
from mailout.config import Route
from mailout.db import make_engine

engine = make_engine(sys.argv[1])
route = Route("shared", per_minute=int(sys.argv[2]), per_day=int(sys.argv[3]))
at = dt.datetime.fromisoformat(sys.argv[4])
print("ready", flush=True)
sys.stdin.readline()
got = 0
for n in range(int(sys.argv[5])):
    got += quota.take(engine, route, at + dt.timedelta(milliseconds=n)) is None
print(got, flush=True)
"""


def test_two_processes_sharing_a_route_never_exceed_its_quota_together(
    database_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "hammer.py"
    script.write_text(HAMMER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), database_url, "40", "70", T0.isoformat(), "60"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:  # both at once
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    got = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        got.append(int(out))
    # 120 asked within 0.12 s: exactly the minute's 40 taken between the two (on a busy
    # machine one may take them all before the other starts: never more than 40 together).
    assert sum(got) == 40, got
    engine = make_engine(database_url)
    assert quota.usage(engine, Route("shared", per_minute=40, per_day=70), T0) == {
        "minute": (40, 40),
        "day": (40, 70),
    }
    engine.dispose()


def test_take_is_serialized_by_the_route_row_on_postgresql(postgres: object, engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL locks the route's row; SQLite's write lock is the whole database")
    route = Route("locked", per_minute=5)
    assert quota.take(engine, route, T0) is None  # the row exists from now on
    with engine.begin() as conn:
        conn.exec_driver_sql("SELECT name FROM routes WHERE name = 'locked' FOR UPDATE")
        done = threading.Event()

        def other() -> None:
            quota.take(engine, route, T0)
            done.set()

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.3)
        assert not done.is_set(), "the other taker waits for the row"
    thread.join(5)
    assert done.is_set()
