"""What machine a benchmark ran on, for the line above its table."""

from __future__ import annotations

import os
import platform
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
