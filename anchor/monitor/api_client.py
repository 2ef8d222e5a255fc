"""The monitor's client of the log's public HTTP API (urllib; every answer bounded and parsed
strictly). Only public routes: ``/v1/log/checkpoint``, ``/v1/log/consistency``, ``/v1/anchors``,
``/v1/receipts/{device_id}/{seq}``. Nothing it returns is trusted: the caller opens every note
with the log key and checks every proof."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from anchor.errors import AnchorError, Reason
from anchor.wire import JsonRejected, strict_loads

__all__ = ["ApiClient", "MonitorError"]

MAX_ANSWER = 4 << 20
"""Largest answer read from the API (a receipt or an anchors page is a few KiB)."""
_MAX_DEPTH = 16


class MonitorError(AnchorError):
    """The API or a chain endpoint cannot be reached or answered garbage (``monitor_unavailable``);
    nothing inconsistent was seen, the round is retried."""

    reason = Reason.MONITOR_UNAVAILABLE


class ApiClient:
    """GETs against one API base URL; ``timeout_s`` per request."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"API URL must be http(s)://host[:port], got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, *, accept: str) -> tuple[int, bytes]:
        url = self.base_url + path
        request = urllib.request.Request(url, headers={"Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                body: bytes = resp.read(MAX_ANSWER + 1)
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(MAX_ANSWER + 1)
        except (OSError, ValueError) as exc:
            raise MonitorError(f"GET {path}: {exc}") from exc
        if len(body) > MAX_ANSWER:
            raise MonitorError(f"GET {path}: answer larger than {MAX_ANSWER} bytes")
        return status, body

    def _text(self, path: str, *, missing_ok: bool = False) -> str | None:
        status, body = self._get(path, accept="text/plain")
        if status == 404 and missing_ok:
            return None
        if status != 200:
            raise MonitorError(f"GET {path}: HTTP {status}: {body[:200]!r}")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MonitorError(f"GET {path}: answer is not UTF-8") from exc

    def _json(self, path: str, *, missing_ok: bool = False) -> Any:
        status, body = self._get(path, accept="application/json")
        if status == 404 and missing_ok:
            return None
        if status != 200:
            raise MonitorError(f"GET {path}: HTTP {status}: {body[:200]!r}")
        try:
            return strict_loads(body, max_depth=_MAX_DEPTH)
        except JsonRejected as exc:
            raise MonitorError(f"GET {path}: answer is not JSON: {exc}") from exc

    def latest_checkpoint(self) -> str | None:
        """The latest signed note, or None while the log is empty (404)."""
        return self._text("/v1/log/checkpoint", missing_ok=True)

    def checkpoint_at(self, size: int) -> str | None:
        """The signed note of log size ``size``, or None when the log has none (404)."""
        return self._text(f"/v1/log/checkpoint?size={int(size)}", missing_ok=True)

    def consistency(self, old: int, new: int) -> list[bytes]:
        """The consistency proof hashes between the two sizes (not checked here)."""
        doc = self._json(f"/v1/log/consistency?old={int(old)}&new={int(new)}")
        proof = doc.get("proof") if isinstance(doc, dict) else None
        if not isinstance(proof, list) or not all(isinstance(h, str) for h in proof):
            raise MonitorError("consistency answer has no list of hex hashes 'proof'")
        try:
            return [bytes.fromhex(h) for h in proof]
        except ValueError as exc:
            raise MonitorError(f"consistency proof is not hex: {exc}") from exc

    def anchors(self, since: int = 0) -> Iterator[dict[str, Any]]:
        """Every anchor the API lists above log size ``since``, oldest first, page by page."""
        cursor: int | None = since
        pages = 0
        while cursor is not None:
            doc = self._json(f"/v1/anchors?since={int(cursor)}&limit=100")
            if not isinstance(doc, dict) or not isinstance(doc.get("anchors"), list):
                raise MonitorError("anchors answer has no list 'anchors'")
            for item in doc["anchors"]:
                if isinstance(item, dict):
                    yield item
            nxt = doc.get("next_since")
            if nxt is not None and (not isinstance(nxt, int) or nxt <= cursor):
                raise MonitorError(f"anchors cursor does not advance ({cursor} -> {nxt!r})")
            cursor = nxt
            pages += 1
            if pages > 10_000:
                raise MonitorError("more than 10000 anchor pages")

    def receipt(self, device_id: str, seq: int) -> bytes | None:
        """The raw receipt JSON of (device, seq), or None when there is none (404, 410)."""
        path = f"/v1/receipts/{urllib.parse.quote(device_id, safe='')}/{int(seq)}"
        status, body = self._get(path, accept="application/json")
        if status in (404, 410):
            return None
        if status != 200:
            raise MonitorError(f"GET {path}: HTTP {status}: {body[:200]!r}")
        return body
