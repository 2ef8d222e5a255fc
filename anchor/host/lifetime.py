"""Process lifetimes: no process outlives its parent, restarts back off and recover.

* :func:`die_with_parent` asks the kernel (``prctl(PR_SET_PDEATHSIG)``) to send this process
  SIGTERM when its parent dies, however the parent dies (SIGKILL included). Used in the verify
  pool's workers, in every ``cityanchor`` child of ``up`` (through :data:`PARENT_ENV`) and, via
  :func:`preexec_die_with_parent`, in the servers ``up`` starts. SIGTERM rather than SIGKILL:
  Mosquitto saves its persistence database, anvil dumps its state, an ingestor drains.
* :class:`RestartBackoff` is the pure restart policy of ``up``'s supervisor.
* :func:`processes_with_arg` and :func:`stop_pids` find and stop what an ``up`` killed with
  SIGKILL left running on its data dir (each server is recognised by a path in its argv that
  only this data dir uses, so a recycled pid is never mistaken for it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from anchor.backoff import Backoff

__all__ = [
    "PARENT_ENV",
    "RestartBackoff",
    "die_with_parent",
    "inherit_die_with_parent",
    "pid_alive",
    "preexec_die_with_parent",
    "processes_with_arg",
    "stop_pids",
]

#: Set by a supervising parent (:class:`anchor.host.supervisor.ChildProcess`) to its own pid: the
#: ``cityanchor`` child then dies with it (see :func:`inherit_die_with_parent`).
PARENT_ENV = "CITYANCHOR_PARENT_PID"

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    fn: Callable[..., int] = libc.prctl
    return fn


# Resolved once, before any fork: a preexec function must not load libraries.
_PRCTL = _load_prctl()


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies; if ``parent`` (the
    pid expected as parent) is already gone, exit now (the signal would never come).

    Also usable as a ``ProcessPoolExecutor`` initializer. A no-op where prctl is missing.
    """
    if _PRCTL is None:
        return
    _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(0)


def preexec_die_with_parent() -> Callable[[], None] | None:
    """A ``Popen(preexec_fn=...)`` for non-Python servers (Mosquitto, anvil): SIGTERM when the
    thread that started them dies. Only for servers started from a long-lived thread (``up``'s
    main thread). None where prctl is missing."""
    prctl = _PRCTL
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return preexec


def inherit_die_with_parent() -> None:
    """At the start of ``python -m anchor``: when started by a supervisor that asked for it
    (:data:`PARENT_ENV`), die with it; and pass the request on to our own children (the
    ``ingest --workers N`` processes), naming ourselves as their parent."""
    value = os.environ.get(PARENT_ENV)
    if not value:
        return
    with contextlib.suppress(ValueError):
        die_with_parent(signal.SIGTERM, int(value))
    os.environ[PARENT_ENV] = str(os.getpid())


@dataclass(slots=True)
class RestartBackoff:
    """Delays between restarts of one supervised process (pure: the caller passes the time).

    Each failure within ``healthy_s`` of the last start doubles the delay, from ``initial_s`` up
    to ``cap_s``; a process that ran for ``healthy_s`` or longer before it died starts over at
    ``initial_s`` (before issue 11 the delay only ever grew, so a broker that crashed once a day
    waited 30 s on every crash after the sixth). The delays are an :class:`anchor.backoff.Backoff`
    without jitter: one supervisor restarting its own child has no crowd to spread, and the
    delay it logs is the one it waits.
    """

    initial_s: float = 1.0
    cap_s: float = 30.0
    healthy_s: float = 60.0
    _backoff: Backoff = field(init=False, repr=False)
    _started_at: float | None = None

    def __post_init__(self) -> None:
        self._backoff = Backoff(initial_s=self.initial_s, cap_s=self.cap_s, jitter=0.0)

    def started(self, now: float) -> None:
        self._started_at = now

    def failed(self, now: float) -> float:
        """The delay before the next start, for a process found dead at ``now``."""
        if self._started_at is not None and now - self._started_at >= self.healthy_s:
            self._backoff.reset()
        self._started_at = None
        return self._backoff.next_delay()


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def processes_with_arg(arg: str) -> list[int]:
    """Pids of live processes with ``arg`` as one whole argument of their command line."""
    wanted = arg.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in argv and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def stop_pids(pids: Iterable[int], *, grace_s: float = 10.0) -> list[int]:
    """SIGTERM each pid, wait up to ``grace_s`` for all, SIGKILL the rest; return the pids
    that were alive."""
    alive = [p for p in pids if pid_alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(pid_alive(p) for p in alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in alive:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive
