"""Telling a dead sending process on this machine at once: real processes, started and killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailout.processes import Liveness, identity, liveness

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_running_process_is_alive_and_its_identity_is_its_own() -> None:
    child = sleeper()
    try:
        recorded = identity(child.pid)
        assert recorded and recorded != identity(), "two processes, two identities"
        assert liveness(recorded, child.pid) is Liveness.ALIVE
        assert liveness(identity(), os.getpid()) is Liveness.ALIVE
    finally:
        child.kill()
        child.wait()


def test_a_killed_process_is_gone_at_once_even_as_a_zombie() -> None:
    child = sleeper()
    recorded = identity(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    try:
        # Not collected yet: the PID still shows in /proc, as a zombie.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert liveness(recorded, child.pid) is Liveness.GONE
    finally:
        child.wait()
    assert liveness(recorded, child.pid) is Liveness.GONE, "collected: no such PID"


def test_a_reused_pid_is_another_process() -> None:
    # This process's PID, recorded with another start time: it once belonged to another process.
    machine, _, ticks = identity().rpartition("/")
    assert liveness(f"{machine}/{int(ticks) - 1}", os.getpid()) is Liveness.GONE


def test_another_machine_or_no_identity_leaves_it_to_the_heartbeat() -> None:
    _, _, ticks = identity().rpartition("/")
    other = f"00000000-0000-0000-0000-000000000000/4026531836/{ticks}"
    assert liveness(other, os.getpid()) is Liveness.UNKNOWN
    assert liveness("", os.getpid()) is Liveness.UNKNOWN
    assert liveness(identity(), 0) is Liveness.UNKNOWN, "PID 0 is no process to ask about"
