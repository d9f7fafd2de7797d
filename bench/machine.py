"""What machine a benchmark ran on, for the line above its table."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path


def describe() -> str:
    """Return the CPU model, core count, Python version and system, on one line."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}; {platform.system()}"


def flush_latency(folder: Path, writes: int = 200) -> str:
    """Return how long this disk takes to make a small append durable, as SQLite's FULL waits at each commit.

    Appends 4 KB and calls ``fdatasync``, ``writes`` times, in a file in ``folder``
    (put it on the disk the database is on); returns the median and the 90th percentile.
    """
    path = folder / "flush-latency.bin"
    block = b"\0" * 4096
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(writes):
            start = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    median, p90 = statistics.median(times) * 1000, times[len(times) * 9 // 10] * 1000
    return f"4 KB append + fdatasync: median {median:.2f} ms, 90th percentile {p90:.2f} ms"
