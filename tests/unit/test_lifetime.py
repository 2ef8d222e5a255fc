"""anchor.host.lifetime: the restart back-off policy, and processes that die with their parent
(issue 11 items 5 and 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from anchor.host.lifetime import RestartBackoff, pid_alive, processes_with_arg, stop_pids


def test_backoff_doubles_while_failing_fast_and_starts_over_after_a_healthy_minute() -> None:
    b = RestartBackoff(initial_s=1.0, cap_s=30.0, healthy_s=60.0)
    t = 1000.0
    b.started(t)
    delays = []
    for _ in range(7):  # dies 2 s after every start
        t += 2
        delay = b.failed(t)
        delays.append(delay)
        t += delay
        b.started(t)
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    # Ran for a healthy minute, then died: back to the first delay (it used to stay at 30 s).
    t += 60
    assert b.failed(t) == 1
    b.started(t + 1)
    assert b.failed(t + 3) == 2  # and doubles again from there
    # A failure to start at all (failed() with no started() between) keeps doubling.
    assert b.failed(t + 10) == 4


def test_backoff_at_the_boundary() -> None:
    b = RestartBackoff(initial_s=0.5, cap_s=30.0, healthy_s=60.0)
    b.started(0.0)
    assert b.failed(10.0) == 0.5
    b.started(10.5)
    assert b.failed(70.4) == 1.0  # 59.9 s: not yet healthy
    b.started(71.0)
    assert b.failed(131.0) == 0.5  # 60 s: healthy


_GRANDCHILD = """
import os, signal, sys, time
from anchor.host.lifetime import die_with_parent
die_with_parent(signal.SIGTERM, int(sys.argv[1]))
print(os.getpid(), flush=True)
time.sleep(120)
"""

_CHILD = """
import subprocess, sys, time, os
g = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]],
                     stdout=subprocess.PIPE)
print(g.stdout.readline().decode().strip(), flush=True)
time.sleep(120)
"""


def test_a_process_that_asked_dies_with_its_parent_killed_by_sigkill(tmp_path: Path) -> None:
    """What the verify pool's workers do (item 6): before, they outlived a killed ingestor."""
    marker = str(tmp_path / "marker")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, _GRANDCHILD, marker], stdout=subprocess.PIPE, env=env
    )
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline().decode().strip())
        assert pid_alive(grandchild)
        assert processes_with_arg(marker) == sorted([child.pid, grandchild])
        child.kill()
        child.wait()
        deadline = time.monotonic() + 10
        while pid_alive(grandchild):
            assert time.monotonic() < deadline, "the grandchild outlived its parent"
            time.sleep(0.05)
        assert processes_with_arg(marker) == []
    finally:
        stop_pids(processes_with_arg(marker), grace_s=1)
        if child.poll() is None:
            child.kill()
            child.wait()
        assert child.stdout is not None
        child.stdout.close()


def test_stop_pids_escalates_to_sigkill(tmp_path: Path) -> None:
    marker = str(tmp_path / "stubborn")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)",
            marker,
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert stop_pids([proc.pid], grace_s=0.5) == [proc.pid]
    assert proc.wait(5) == -signal.SIGKILL
    proc.stdout.close()
    assert time.monotonic() - started < 10
