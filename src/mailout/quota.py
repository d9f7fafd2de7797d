"""Routes' quotas: how many messages each route may take per second, minute, hour and day.

Kept in the database (``routes``, ``route_usage``), so the limits hold across
restarts, kill -9 and several sending processes. Owns those two tables.

Relays count over rolling windows (Google Workspace: any 24 hours; Microsoft 365:
any minute), so a limit must hold over every window of its length, not only over
calendar minutes and days. Each unit's time is cut into buckets of 1/60 of its
length (a second for a minute, 24 minutes for a day), and ``route_usage`` counts
the messages taken per route, unit and bucket. A message may go when the sum over
the 61 buckets that overlap the last window [now - length, now] is under the
limit. Those buckets cover more than the window, so the count is never below the
true one: no window of the length ever holds more than the limit, and the price
is at most one bucket (1/60) of the unit's capacity left unused.

Takers of one route are serialized across processes: on PostgreSQL by locking the
route's row in ``routes`` (``SELECT ... FOR UPDATE``), on SQLite by the write lock
every transaction takes first (``BEGIN IMMEDIATE``, see ``db``). A slot is committed
before the message's ``sending`` mark: a crash between the two leaves a slot used
and no message sent, so a crash can only under-use a quota, never exceed it.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, TextClause, text

from .config import Route

#: Each unit a limit is given in, its length in seconds, and how a message names its window.
UNITS: tuple[tuple[str, int, str], ...] = (
    ("second", 1, "in the last second"),
    ("minute", 60, "in the last minute"),
    ("hour", 3600, "in the last hour"),
    ("day", 86_400, "in the last 24 hours"),
)
#: Buckets per unit's length; the window is summed over one more (see the module's docstring).
PARTS = 60
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class Wait:
    """No slot now: how long to wait, until when, and what to tell the team."""

    seconds: float
    until: dt.datetime
    message: str

    def __str__(self) -> str:
        return self.message


def limits(route: Route) -> list[tuple[str, int, int, str]]:
    """Return the route's limits: (unit, length in seconds, limit, window's words), 0s left out."""
    given = {
        "second": route.per_second,
        "minute": route.per_minute,
        "hour": route.per_hour,
        "day": route.per_day,
    }
    return [(unit, length, given[unit], words) for unit, length, words in UNITS if given[unit] > 0]


def bucket(now: dt.datetime, length: int) -> int:
    """Return the bucket of ``now`` for a unit of ``length`` seconds (1/60 of it each)."""
    micros = (now - EPOCH) // _MICROSECOND
    return micros * PARTS // (length * 1_000_000)


def bucket_start(number: int, length: int) -> dt.datetime:
    """Return the instant bucket ``number`` of a unit of ``length`` seconds begins."""
    return EPOCH + dt.timedelta(microseconds=-(-number * length * 1_000_000 // PARTS))


_BUCKETS = text(
    "SELECT bucket, used FROM route_usage WHERE route = :route AND unit = :unit AND bucket >= :oldest"
    " ORDER BY bucket"
)
_LOCK = text("SELECT name FROM routes WHERE name = :route FOR UPDATE")
_ADD = text("INSERT INTO routes (name, created_at) VALUES (:route, :now) ON CONFLICT (name) DO NOTHING")


@functools.cache
def _statements(units: tuple[str, ...]) -> tuple[TextClause, TextClause, TextClause]:
    """Return, for a set of units, one statement each: sum the windows, count a message, purge.

    One statement for all of a route's units, not one per unit: a take costs three or four
    statements whatever the number of limits. The units are our own names (``UNITS``).
    """
    within = " OR ".join(f"(unit = '{unit}' AND bucket >= :oldest_{unit})" for unit in units)
    before = " OR ".join(f"(unit = '{unit}' AND bucket < :purge_{unit})" for unit in units)
    rows = ", ".join(f"(:route, '{unit}', :bucket_{unit}, 1)" for unit in units)
    return (
        text(f"SELECT unit, SUM(used) FROM route_usage WHERE route = :route AND ({within}) GROUP BY unit"),  # noqa: S608
        text(
            f"INSERT INTO route_usage (route, unit, bucket, used) VALUES {rows}"  # noqa: S608
            " ON CONFLICT (route, unit, bucket) DO UPDATE SET used = route_usage.used + 1"
        ),
        text(f"DELETE FROM route_usage WHERE route = :route AND ({before})"),  # noqa: S608
    )


#: The current buckets of the last purge this process made per route: old rows go once per
#: bucket, not at each message. Only the table's size depends on it, never a count.
_purged: dict[str, tuple[int, ...]] = {}


def take(db: Engine | Connection, route: Route, now: dt.datetime) -> Wait | None:
    """Take one slot of ``route``'s quotas at ``now``; return None, or how long to wait (nothing taken).

    Given an engine, it runs in a transaction of its own, committed when it returns. Given
    a connection, it runs in the caller's transaction, which must be open and be committed
    before the message goes on the wire: with the message's ``sending`` mark (one commit
    for both; the send loop does so), or before it. A route without limits takes nothing.
    """
    if isinstance(db, Engine):
        with db.begin() as conn:
            return take(conn, route, now)
    given = limits(route)
    if not given:
        return None
    name = route.name
    # PostgreSQL: the row lock queues the takers of this route, whatever process they are in
    # (the row is added the first time). SQLite: the transaction holds the database's write
    # lock from its BEGIN IMMEDIATE.
    if db.dialect.name == "postgresql" and db.execute(_LOCK, {"route": name}).first() is None:
        db.execute(_ADD, {"route": name, "now": now})
        db.execute(_LOCK, {"route": name})
    units = tuple(unit for unit, _, _, _ in given)
    summing, counting, purging = _statements(units)
    current = {unit: bucket(now, length) for unit, length, _, _ in given}
    params: dict[str, object] = {"route": name}
    for unit in units:
        params[f"oldest_{unit}"] = current[unit] - PARTS
        params[f"bucket_{unit}"] = current[unit]
        # A whole window more than the sums read: a sending process on a machine whose clock
        # is ahead must not delete rows still inside the window of one whose clock is behind.
        params[f"purge_{unit}"] = current[unit] - 2 * PARTS
    used: dict[str, int] = {unit: int(n or 0) for unit, n in db.execute(summing, params)}
    waits = [
        _wait(db, route, now, unit, length, limit, words, used[unit])
        for unit, length, limit, words in given
        if used.get(unit, 0) >= limit
    ]
    if waits:
        return max(waits, key=lambda wait: wait.seconds)
    db.execute(counting, params)
    buckets = tuple(current.values())
    if _purged.get(name) != buckets:
        # Rows older than every window: the sums skip them anyway; this keeps the table small.
        db.execute(purging, params)
        _purged[name] = buckets
    return None


def _wait(
    db: Connection, route: Route, now: dt.datetime, unit: str, length: int, limit: int, words: str, used: int
) -> Wait:
    """Say when enough of the oldest buckets leave the window for one more message."""
    current = bucket(now, length)
    rows = db.execute(_BUCKETS, {"route": route.name, "unit": unit, "oldest": current - PARTS}).all()
    excess, gone, leaving = used - limit + 1, 0, current
    for number, count in rows:
        gone += count
        leaving = number
        if gone >= excess:
            break
    # Bucket ``leaving`` is out of the sum once the current bucket is PARTS + 1 after it.
    until = max(bucket_start(leaving + PARTS + 1, length), now + dt.timedelta(milliseconds=1))
    seconds = (until - now).total_seconds()
    if seconds >= 60:  # to the minute, rounded up: never a time before it resumes
        shown = (until + dt.timedelta(seconds=59, microseconds=999_999)).strftime("%Y-%m-%d %H:%M")
    else:
        shown = until.strftime("%Y-%m-%d %H:%M:%S")
    return Wait(
        seconds,
        until,
        f"waiting for quota: {used:,} of {limit:,} {words} on route {route.name}; resumes {shown} UTC",
    )


def usage(db: Engine | Connection, route: Route, now: dt.datetime) -> dict[str, tuple[int, int]]:
    """Return, per unit the route limits, the messages counted in its window at ``now`` and the limit."""
    if isinstance(db, Engine):
        with db.connect() as conn:
            return usage(conn, route, now)
    given = limits(route)
    if not given:
        return {}
    params: dict[str, object] = {"route": route.name}
    for unit, length, _, _ in given:
        params[f"oldest_{unit}"] = bucket(now, length) - PARTS
    summing, _, _ = _statements(tuple(unit for unit, _, _, _ in given))
    used: dict[str, int] = {unit: int(n or 0) for unit, n in db.execute(summing, params)}
    return {unit: (used.get(unit, 0), limit) for unit, _, limit, _ in given}
