"""A `cityanchor up` process for the integration tests that talk to it as an operator would, and
the JSON-over-HTTP call they make to its API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def running_up(data_dir: Path, log: Path, *flags: str) -> Iterator[dict[str, Any]]:
    """`cityanchor up --data-dir DATA_DIR FLAGS...` (no CITYANCHOR_* from the test's environment),
    its output appended to ``log``; yields up.json once it is written, SIGTERMs it (as an operator
    would: `up` stops what it started) and waits for it on the way out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYANCHOR_")}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "anchor", "up", "--data-dir", str(data_dir), *flags],
            env=env, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (data_dir / "up.json").exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield json.loads((data_dir / "up.json").read_text())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def http_json(
    method: str, url: str, body: Any = None, token: str | None = None, *, timeout: float = 30
) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request; an HTTP error status is returned, not raised."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
