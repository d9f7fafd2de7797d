"""Time, for what waits on it: the send loop's quotas and the worker's schedule.

``SystemClock`` is the real one. The tests give the send loop and the worker a clock
of their own that moves forward only when someone waits, so a day's quota is tested
without waiting a day. Nothing else in mailout reads the time for those decisions.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Where the send loop and the worker get the time, and how they wait."""

    def now(self) -> dt.datetime:
        """Return the time now, aware, in UTC."""
        ...

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` or until ``stop`` is set; return whether it was set."""
        ...


class SystemClock:
    """The computer's clock."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(max(0.0, seconds))

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM = SystemClock()
