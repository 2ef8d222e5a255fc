"""Process plumbing for ``cityanchor ingest``: signals, the operator key, and ``--workers N``
(N ingestor processes on one shared subscription, supervised and restarted if they die).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time

from anchor.errors import UsageError
from anchor.host.config import Settings
from anchor.host.files import load_operator_signer
from anchor.host.lifetime import RestartBackoff
from anchor.ingest.ingestor import Ingestor
from anchor.ingest.metrics import MetricsServer, ingest_registry, parse_listen
from anchor.store import Store

__all__ = ["load_operator_signer", "run_ingest"]

log = logging.getLogger("anchor.ingest.ingestor")


async def _run_one(
    settings: Settings, client_id: str, metrics_at: tuple[str, int] | None = None
) -> None:
    signer = load_operator_signer(settings.operator_key_file)
    store = await Store.connect(settings.database_url, max_size=2)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await store.ensure_partitions()
        ingestor = Ingestor(settings=settings, store=store, signer=signer, client_id=client_id)
        log.info("ingestor %s starting: %s", client_id, json.dumps(settings.masked()))
        server = None
        if metrics_at is not None:
            registry = ingest_registry(ingestor.stats, lambda: ingestor.mqtt_connected)
            server = MetricsServer(registry, *metrics_at)
            log.info("ingestor %s metrics on %s:%d", client_id, metrics_at[0], server.port)
        try:
            await ingestor.run(stop)
        finally:
            if server is not None:
                server.close()
    finally:
        await store.close()


def _supervise(workers: int) -> int:
    """Run ``workers`` copies of this command, each with its index; restart any that die."""
    argv = [sys.executable, "-m", "anchor", *sys.argv[1:]]
    children: dict[int, subprocess.Popen[bytes]] = {}
    # up's restart policy: doubling from 1 s to 30 s, back to 1 s after a healthy minute.
    backoff = {i: RestartBackoff(initial_s=1.0, cap_s=30.0) for i in range(workers)}
    stopping = False

    def spawn(i: int) -> None:
        children[i] = subprocess.Popen([*argv, "--worker-index", str(i)])
        backoff[i].started(time.monotonic())

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(workers):
        spawn(i)
    while True:
        time.sleep(0.2)
        if stopping:
            for child in children.values():
                child.wait()
            return 0
        for i, child in list(children.items()):
            code = child.poll()
            if code is not None:
                delay = backoff[i].failed(time.monotonic())
                log.error("ingestor worker %d exited with %s; restarting in %.0fs", i, code, delay)
                time.sleep(delay)
                if not stopping:
                    spawn(i)


def run_ingest(
    settings: Settings,
    *,
    workers: int = 1,
    worker_index: int | None = None,
    metrics_listen: str | None = None,
) -> int:
    """Run the ingestor in this process, or supervise ``workers`` of them; returns an exit code.

    ``metrics_listen`` (``HOST:PORT``) serves the process's Prometheus metrics
    (:mod:`anchor.ingest.metrics`); worker ``i`` of several listens on ``PORT + i``.
    """
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if metrics_listen:  # checked before anything starts, for every worker's port
        parse_listen(metrics_listen, offset=workers - 1)
    logging.getLogger("anchor").setLevel(min(logging.getLogger("anchor").level or 20, logging.INFO))
    if workers > 1 and worker_index is None:
        return _supervise(workers)
    index = worker_index or 0
    if workers > 1 and not settings.verify_processes:
        # Share the cores between the worker processes instead of oversubscribing them.
        cores = os.cpu_count() or 1
        settings = dataclasses.replace(settings, verify_processes=max(1, cores // workers))
    metrics_at = parse_listen(metrics_listen, offset=index) if metrics_listen else None
    asyncio.run(_run_one(settings, f"cityanchor-{settings.ingestor_name}-{index}", metrics_at))
    return 0
