"""``cityanchor`` subcommands run as child processes: the demo, ``cityanchor up`` and the
benchmarks start the ingestor, the anchoring job and the API this way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from anchor.errors import AnchorError, Reason
from anchor.host.lifetime import PARENT_ENV

__all__ = ["ChildProcess"]


class ChildProcess:
    """``python -m anchor -v ARGS`` with its output appended to ``log_path``.

    ``start(ready=...)`` waits until the log shows ``ready`` (``count`` times, e.g. once per
    ingestor worker) written after the start; ``stop()`` sends SIGTERM (every cityanchor service
    drains on it: nothing acknowledged is lost) and kills only after ``grace_s``.

    The child dies with this process (SIGTERM from the kernel, see :mod:`anchor.host.lifetime`),
    however this process ends: a supervisor killed with SIGKILL leaves no child behind.
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = list(args)
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(
        self, *, ready: bytes | None = None, count: int = 1, timeout_s: float = 60.0
    ) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "anchor", "-v", *self.args],
                env={**self.env, PARENT_ENV: str(os.getpid())},
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout_s
        while ready is not None and self._log_since(offset).count(ready) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self._log_since(offset).decode("utf-8", "replace")[-3000:]
                raise AnchorError(
                    f"cityanchor {' '.join(self.args)} did not start; its log ends:\n{tail}",
                    reason=Reason.START_FAILED,
                )
            time.sleep(0.05)
        return self

    def _log_since(self, offset: int) -> bytes:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def terminate(self) -> None:
        """SIGTERM without waiting: a supervisor asks every child at once, then waits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        """Wait until the monotonic ``deadline`` for the child to exit, then SIGKILL it."""
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stop(self, *, grace_s: float = 30.0) -> None:
        self.terminate()
        self.wait_or_kill(time.monotonic() + grace_s)
