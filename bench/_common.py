"""Helpers shared by every ``bench/*.py``: timing, a human table, and the closing JSON line.

The contract (DESIGN.md, "Interfaces"): each bench accepts ``--quick`` (whole script within
60 s) and prints, as its LAST line, one JSON object with its figures, including every ratio
against the baseline it measured in the same run. Everything before that line is for humans.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Figures = dict[str, Any]


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What every section is handed: the mode and how many timed repeats to take the best of."""

    quick: bool
    repeat: int


Section = Callable[[BenchConfig], Figures]
"""One part of a bench: measures something and returns its figures (merged into the JSON)."""


def best_of(
    fn: Callable[[], object], repeat: int = 3, clock: Callable[[], float] = time.perf_counter
) -> float:
    """The shortest of ``repeat`` wall-clock runs of ``fn()``, in seconds (``perf_counter``;
    ``clock=time.process_time`` for the CPU time of this process instead).

    The garbage collector is off while ``fn`` runs (as ``timeit`` does), so a collection
    triggered by the setup of one run is not billed to the next; it is collected in between.
    The minimum, not the mean, is the figure least disturbed by other work on the machine.
    """
    best = float("inf")
    for _ in range(max(1, repeat)):
        gc.collect()
        gc.disable()
        try:
            start = clock()
            fn()
            elapsed = clock() - start
        finally:
            gc.enable()
        best = min(best, elapsed)
    return best


def best_of_interleaved(
    fns: Sequence[Callable[[], object]],
    repeat: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """:func:`best_of` for several functions at once, their runs taken in turn (round 1: each
    function once, round 2: each once, ...): for a ratio of two figures, so that a spell of
    load from other work on a shared machine falls on both sides of it, not on one."""
    best = [float("inf")] * len(fns)
    for _ in range(max(1, repeat)):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], best_of(fn, 1, clock))
    return best


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick", action="store_true", help="small sizes; the whole script ends within 60 s"
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="timed runs per figure, best kept (default 3)"
    )
    return p


def _fmt(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value == 0 or 0.01 <= abs(value) < 1e6:
        return f"{value:,.3f}"
    return f"{value:.3e}"


def print_table(figures: Mapping[str, object], *, file: Any = None) -> None:
    """Print ``figures`` as an aligned two-column table, for humans."""
    out = file or sys.stdout
    width = max((len(k) for k in figures), default=0)
    for key, value in figures.items():
        print(f"  {key:<{width}}  {_fmt(value)}", file=out)


def emit(figures: Mapping[str, object]) -> None:
    """Print the table, then the one machine-readable JSON line, which must come last."""
    print_table(figures)
    sys.stdout.flush()
    print(json.dumps(figures, sort_keys=False))


def run_sections(
    bench: str, sections: Sequence[Section], argv: Iterable[str] | None = None
) -> Figures:
    """Parse the common flags, run each section in order, merge and emit their figures.

    A section returning a key another already returned is an error: figures must not be
    silently overwritten.
    """
    args = parser(f"cityanchor benchmark: {bench}").parse_args(None if argv is None else list(argv))
    cfg = BenchConfig(quick=args.quick, repeat=args.repeat)
    figures: Figures = {"bench": bench, "quick": cfg.quick, "python": platform.python_version()}
    for section in sections:
        name = getattr(section, "__name__", repr(section))
        print(f"[{bench}] {name} ...", flush=True)
        started = time.perf_counter()
        part = section(cfg)
        clash = figures.keys() & part.keys()
        if clash:
            raise RuntimeError(f"section {name} repeats figures {sorted(clash)}")
        figures.update(part)
        print(f"[{bench}] {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    emit(figures)
    return figures
