"""Whether a sending process still runs: known at once on this machine, by its silence elsewhere.

Each sending process records its identity: the boot of its machine (Linux's
``/proc/sys/kernel/random/boot_id``), its PID namespace, and its start time in
clock ticks since that boot (``/proc/<pid>/stat``, field 22). Another process
with the same boot and PID namespace shares its PID numbers, so it can look:
no such PID, a zombie, or a PID now held by a process started at another tick
(the number was reused), and the recorded process is gone. Exact ticks are
compared, not wall-clock times, which a clock change would shift. Where
``/proc`` is missing (not Linux) the identity is "" and only the heartbeat
tells; so it does for a process on another machine or in another container.
"""

from __future__ import annotations

import os
from enum import StrEnum
from functools import cache
from pathlib import Path

PROC = Path("/proc")


class Liveness(StrEnum):
    """What this machine can tell about a recorded process."""

    ALIVE = "alive"  # it runs here
    GONE = "gone"  # it ran here and does no more
    UNKNOWN = "unknown"  # another machine's, or no identity: ask its heartbeat


@cache
def _machine() -> str:
    """Return this boot and PID namespace ("" where they cannot be read): equal means same PIDs."""
    try:
        boot = (PROC / "sys" / "kernel" / "random" / "boot_id").read_text(encoding="ascii").strip()
        namespace = os.readlink(PROC / "self" / "ns" / "pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    digits = "".join(c for c in namespace if c.isdigit())
    return f"{boot}/{digits}" if boot and digits else ""


def _stat(pid: int) -> tuple[str, str] | None:
    """Return (state, start ticks) of ``pid`` from /proc, or None when there is no such process."""
    try:
        text = (PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid ...": the name may hold spaces and parentheses; the fields
    # after its last ")" are plain. State is field 3, start time field 22.
    fields = text[text.rfind(")") + 1 :].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]


def _exists(pid: int) -> bool:
    """Return whether a process ``pid`` exists, whoever owns it (signal 0 sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def identity(pid: int | None = None) -> str:
    """Return the identity of process ``pid`` (this one by default); "" where it cannot be known."""
    machine = _machine()
    if not machine:
        return ""
    try:
        found = _stat(os.getpid() if pid is None else pid)
    except OSError:
        return ""
    return f"{machine}/{found[1]}" if found else ""


def liveness(recorded: str, pid: int) -> Liveness:
    """Say whether the process recorded with identity ``recorded`` and ``pid`` still runs."""
    machine = _machine()
    here, _, ticks = recorded.rpartition("/")
    if not machine or here != machine or pid <= 0:
        return Liveness.UNKNOWN
    try:
        found = _stat(pid)
    except OSError:
        return Liveness.UNKNOWN
    if found is None:
        # /proc may hide other users' processes (mount option hidepid): ask the kernel.
        return Liveness.UNKNOWN if _exists(pid) else Liveness.GONE
    state, started = found
    # A zombie has exited (its parent has not collected it yet): it sends nothing more.
    if state in ("Z", "X", "x") or started != ticks:
        return Liveness.GONE
    return Liveness.ALIVE
