"""Instants a person types and reads: a local time in the team's time zone, to UTC and back.

``send --at "2019-02-12 09:00"`` means 09:00 on a wall clock in Brussels (``sending.timezone``
or ``--tz``). Twice a year a wall clock skips an hour (spring: 02:30 does not happen) or
shows one twice (autumn: 02:30 happens at +02:00, then again at +01:00). Neither is
guessed: a time in the gap is refused and the gap named; a time in the fold is refused
unless its UTC offset is written with it (``2019-10-27 02:30+01:00``). Pure: no database.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from .errors import MailoutError


class BadInstant(MailoutError):
    """A time to send at that is unreadable, in the past, or not one instant on the wall clock."""


def zone(name: str) -> zoneinfo.ZoneInfo:
    """Return the time zone ``name`` (an IANA name); raise ``BadInstant`` for an unknown one."""
    try:
        if not name or name != name.strip():
            raise ValueError(name)
        return zoneinfo.ZoneInfo(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise BadInstant(
            f"not a time zone: {name!r} (an IANA name such as 'Europe/Brussels' or 'UTC')"
        ) from None


def parse(text: str, zone_name: str, now: dt.datetime) -> dt.datetime:
    """Return the UTC instant of ``text``, a wall-clock time in ``zone_name`` or one with its offset.

    ``text`` is ``YYYY-MM-DD HH:MM`` (seconds and a ``T`` allowed), optionally with an
    offset (``+01:00``, ``Z``). Raises ``BadInstant`` when it cannot be read, does not
    exist or exists twice on the wall clock, or is not after ``now``.
    """
    where = zone(zone_name)
    value = text.strip()
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or len(value) < len("YYYY-MM-DD HH:MM"):
        raise BadInstant(
            f"--at {text!r}: give a date and a time, such as '2019-02-12 09:00' (in {zone_name}),"
            " or with its UTC offset, '2019-02-12 09:00+01:00'"
        )
    if parsed.tzinfo is not None:
        instant = parsed.astimezone(dt.UTC)
    else:
        instant = _wall_clock(parsed, where, zone_name)
    if instant <= now:
        raise BadInstant(
            f"--at {text!r} is {show(instant, zone_name)}: that is in the past (now: {show(now, zone_name)});"
            " `mailout send` without --at sends now"
        )
    return instant


def _wall_clock(local: dt.datetime, where: zoneinfo.ZoneInfo, zone_name: str) -> dt.datetime:
    """Return the one UTC instant at which a wall clock in ``where`` shows ``local``."""
    first, second = local.replace(tzinfo=where, fold=0), local.replace(tzinfo=where, fold=1)
    shown = f"{local:%Y-%m-%d %H:%M}"

    def exists(candidate: dt.datetime) -> bool:
        return candidate.astimezone(dt.UTC).astimezone(where).replace(tzinfo=None) == local

    if first.utcoffset() == second.utcoffset():
        return first.astimezone(dt.UTC)
    if not exists(first) and not exists(second):
        change = _change(first, second, where)
        jumped_from = (change + (first.utcoffset() or dt.timedelta(0))).replace(tzinfo=None)
        jumped_to = change.astimezone(where)
        raise BadInstant(
            f"{shown} does not exist in {zone_name}: that night clocks jump from {jumped_from:%H:%M}"
            f" {first.tzname()} ({_offset(first)}) to {jumped_to:%H:%M} {jumped_to.tzname()}"
            f" ({_offset(jumped_to)}); choose a time outside that gap, such as {jumped_to:%Y-%m-%d %H:%M}"
        )
    early, late = _offset(first), _offset(second)
    raise BadInstant(
        f"{shown} happens twice in {zone_name}: clocks go back that night, so it is first"
        f" {shown}{early}, then {shown}{late}; write the one you mean with its offset"
        f" ('--at \"{shown}{early}\"' or '--at \"{shown}{late}\"'), or choose another time"
    )


def _change(first: dt.datetime, second: dt.datetime, where: zoneinfo.ZoneInfo) -> dt.datetime:
    """Return the UTC instant the clocks changed at, around a wall-clock time that never was."""
    # fold=0 reads the time with the offset before the change, fold=1 with the one after:
    # the change happened at some UTC instant between the two readings.
    low, high = second.astimezone(dt.UTC), first.astimezone(dt.UTC)
    after = second.utcoffset()
    while high - low > dt.timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(where).utcoffset() == after:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def _offset(value: dt.datetime) -> str:
    """Return ``+01:00``: the UTC offset of an aware time."""
    offset = value.utcoffset() or dt.timedelta(0)
    sign = "-" if offset < dt.timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def show(instant: dt.datetime, zone_name: str) -> str:
    """Return ``2019-02-12 09:00 CET (08:00 UTC)``: an instant on the team's wall clock, and in UTC."""
    utc = instant.astimezone(dt.UTC)
    if zone_name == "UTC":
        return f"{utc:%Y-%m-%d %H:%M} UTC"
    local = utc.astimezone(zone(zone_name))
    same_day = local.date() == utc.date()
    in_utc = f"{utc:%H:%M} UTC" if same_day else f"{utc:%Y-%m-%d %H:%M} UTC"
    return f"{local:%Y-%m-%d %H:%M} {local:%Z} ({in_utc})"
