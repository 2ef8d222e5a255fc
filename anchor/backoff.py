"""Exponential back-off with jitter: the one retry-delay policy of cityanchor.

Pure: no clock, no sleep; the caller asks for the next delay and waits however it waits
(``time.sleep``, ``asyncio.sleep``, a deadline in a map). Used by the ingestor's seal retries,
the anchoring job's per-backend retries, the ingestor-worker and ``up`` supervisors
(:class:`anchor.host.lifetime.RestartBackoff`) and the device SDK's resends
(:mod:`devices.publisher`).

Jitter spreads clients that failed together (a fleet after a broker restart, N ingestors after
a PostgreSQL failover) so they do not retry together: ``jitter`` is the share of each delay that
is random. 1.0 is "full jitter" (uniform in [0, d)), 0.5 "equal jitter" (uniform in
(d/2, d]), 0.0 none (exactly d: a lone supervisor restarting its own child has no crowd to
spread, and its log promises the delay it prints).

Example::

    backoff = Backoff(initial_s=0.2, cap_s=5.0)
    while True:
        try:
            return do()
        except TransientError:
            time.sleep(backoff.next_delay())
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Delays ``initial_s``, ``initial_s * factor``, ... capped at ``cap_s``, each jittered.

    ``rand`` returns a float in [0, 1) (``random.random`` by default; inject a seeded
    ``Random().random`` or a constant in tests). Raises ``ValueError`` for a non-positive or
    unordered ``initial_s``/``cap_s``, a ``factor`` below 1 or a ``jitter`` outside [0, 1].
    """

    initial_s: float = 1.0
    cap_s: float = 30.0
    factor: float = 2.0
    jitter: float = 1.0
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)
    _base_s: float = field(init=False, default=0.0)
    _attempts: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.cap_s:
            raise ValueError(
                f"back-off needs 0 < initial <= cap, got {self.initial_s}, {self.cap_s}"
            )
        if self.factor < 1:
            raise ValueError(f"back-off factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"back-off jitter must be within [0, 1], got {self.jitter}")
        self._base_s = self.initial_s

    @property
    def attempts(self) -> int:
        """Delays handed out since the last :meth:`reset`."""
        return self._attempts

    @property
    def base_s(self) -> float:
        """The next delay before jitter (``cap_s`` applies)."""
        return min(self._base_s, self.cap_s)

    def next_delay(self) -> float:
        """The delay to wait now; the following one grows by ``factor`` up to ``cap_s``.

        Within ``[base * (1 - jitter), base]``: never more than the un-jittered delay.
        """
        base = self.base_s
        self._base_s = min(base * self.factor, self.cap_s)
        self._attempts += 1
        return base * (1.0 - self.jitter * self.rand())

    def reset(self) -> None:
        """Start over at ``initial_s`` (after a success, or a run that proved healthy)."""
        self._base_s = self.initial_s
        self._attempts = 0
