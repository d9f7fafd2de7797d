"""A clock for the tests that moves forward only when someone waits on it (a helper, not a fixture).

``FakeClock(start)`` says ``start`` until a thread waits: ``wait(stop, seconds)``
moves it ``seconds`` forward at once and returns (True if ``stop`` is set), so a
day's quota is tested in a moment. Thread-safe: each wait moves it under a lock,
from the time it says then. ``waits`` lists every wait asked for.
"""

from __future__ import annotations

import datetime as dt
import threading


class FakeClock:
    """A ``mailout.clock.Clock`` whose time moves only when waited on."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("give an aware start time (UTC)")
        self._now = start.astimezone(dt.UTC)
        self._lock = threading.Lock()
        self.waits: list[float] = []

    def now(self) -> dt.datetime:
        with self._lock:
            return self._now

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        if stop.is_set():
            return True
        with self._lock:
            self.waits.append(seconds)
            self._now += dt.timedelta(seconds=max(0.0, seconds))
        return stop.is_set()

    def advance(self, seconds: float) -> None:
        """Move the time forward, as a wait would, without being a wait."""
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)

    @property
    def current(self) -> dt.datetime:
        """The time now; a test sets it to jump to an instant."""
        return self.now()

    @current.setter
    def current(self, moment: dt.datetime) -> None:
        with self._lock:
            self._now = moment.astimezone(dt.UTC)
