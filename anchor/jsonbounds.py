"""Kept for importers that predate :mod:`anchor.wire`, the one home of strict JSON parsing."""

from __future__ import annotations

from anchor.wire import JsonRejected, nesting_depth, strict_loads

__all__ = ["JsonRejected", "nesting_depth", "strict_loads"]
