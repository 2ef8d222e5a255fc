"""The ingestor: MQTT v5 -> checks -> signature verification on all cores -> batch -> one
PostgreSQL transaction -> PUBACK.

Nothing is acknowledged before it is durable. The MQTT client (:mod:`anchor.ingest.link`: our
own asyncio one by default, paho with ``--mqtt-client paho``) never acknowledges by itself: a
PUBACK for a message is sent only after the transaction that stores it (or its quarantine row)
has committed.
A crash before that means the broker redelivers, and the store's (device_id, seq) uniqueness
makes the redelivery harmless, so the effect is exactly-once.

Back-pressure comes from MQTT v5 itself: the CONNECT packet's Receive Maximum caps how many
unacknowledged QoS 1 messages the broker may hand us. When PostgreSQL is slow or down nothing is
acknowledged, the window fills, and the broker keeps the rest; nothing is ever dropped here.

Pipeline (one asyncio loop; with paho, its network thread only converts packets into values):

1. the client's reads -> :class:`Incoming` -> an inbox (bounded by the window);
2. cheap checks in order (:mod:`anchor.admission`, pure): size cap, topic, envelope parse,
   topic/device match, registry lookup, topic/district match, key status, clock skew; a
   failure becomes a quarantine
   :class:`~anchor.store.Rejection`. The registry here is a cache refreshed every
   ``registry_refresh_ms``: it only pre-screens. ``Store.seal`` re-checks key status
   (revocation, rotation) under the device row locks, so a revoke or rotate takes effect for
   every reading received after it, whatever the cache;
3. signatures verified in a process pool, in chunks, so the event loop never blocks on crypto;
4. a batch closes at ``batch_size`` readings or when its oldest is ``batch_age_ms`` old, and is
   handed to the sealing task; ``Store.seal`` decides duplicates, seq conflicts and prev links
   under the log lock and commits readings, batch, log append, checkpoint and quarantine at once;
5. after the commit, each device is told which of its readings are durable (one QoS 1 message
   per device per seal on ``city/{district}/{device_id}/ack``, :mod:`anchor.device_ack`), and
   then every message of the batch is acknowledged to the broker. The device acknowledgement is
   what lets a device delete a reading: a broker's PUBACK (0x10 *No matching subscribers*
   included) proves nothing about durability.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from anchor import admission, merkle
from anchor.admission import parse_topic  # re-exported; its home is anchor.admission
from anchor.backoff import Backoff
from anchor.broker.client import parse_mqtt_url
from anchor.checkpoint import NoteSigner
from anchor.device_ack import (
    DURABLE,
    FINAL_REASONS,
    REFUSED,
    AckEntry,
    ack_topic_for,
    encode_acks,
)
from anchor.envelope import Envelope
from anchor.errors import AnchorError, Reason
from anchor.host.config import Settings
from anchor.host.lifetime import die_with_parent
from anchor.ingest.link import Incoming, Link
from anchor.ingest.mqtt_native import NativeMqtt
from anchor.ingest.paho_io import PahoLink
from anchor.ingest.verify import verify_chunk as _verify_chunk
from anchor.keys import PublicKey
from anchor.sealing import candidate_leaf
from anchor.store import Candidate, DeviceRecord, Rejection, SealResult, Store, StoreError

__all__ = ["Incoming", "IngestStats", "Ingestor", "parse_topic"]

log = logging.getLogger("anchor.ingest.ingestor")

VERIFY_CHUNK = 128
STATS_EVERY_S = 10.0
# How long a failed seal waits before trying again, doubling up to the cap (anchor.backoff;
# a failure that is not retryable waits up to 30 s).
RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 5.0
# received_at is stamped by this process's clock, revocations and rotations by PostgreSQL's
# (anchor.store, "Which clock decides"); beyond this offset the revocation rule is loose by it.
CLOCK_OFFSET_WARN_S = 0.1
# Upper bounds of the seal latency histogram of /metrics (anchor.ingest.metrics), in seconds.
SEAL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(slots=True)
class _Pending:
    """A batch being filled: verified candidates and rejections, with the deliveries to ack."""

    candidates: list[Candidate] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    deliveries: list[Incoming] = field(default_factory=list)
    opened: float = 0.0

    def __len__(self) -> int:
        return len(self.deliveries)


class IngestStats:
    """Counters for logs and metrics: outcomes by reason, seal latency."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.seal_latency_s: deque[float] = deque(maxlen=10_000)
        self.batches = 0
        self.seal_failures = 0
        self.received = 0
        self.device_acks = 0
        # Cumulative (never a window), for /metrics: counts per SEAL_BUCKETS bound and +Inf.
        self.seal_buckets = [0] * (len(SEAL_BUCKETS) + 1)
        self.seal_sum_s = 0.0

    def record_seal(self, result: SealResult, latency_s: float) -> None:
        self.outcomes["accepted"] += result.accepted
        self.outcomes["duplicate"] += result.duplicates
        for reason, n in result.quarantined.items():
            self.outcomes[f"quarantined:{reason}"] += n
        if result.batch_id is not None:
            self.batches += 1
        self.seal_latency_s.append(latency_s)
        self.seal_sum_s += latency_s
        for i, bound in enumerate((*SEAL_BUCKETS, float("inf"))):
            self.seal_buckets[i] += latency_s <= bound

    def snapshot(self) -> dict[str, Any]:
        lat = sorted(self.seal_latency_s)

        def q(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 4) if lat else None

        return {
            "received": self.received,
            "batches": self.batches,
            "seal_failures": self.seal_failures,
            "device_acks": self.device_acks,
            "outcomes": dict(self.outcomes),
            "seal_latency_p50_s": q(0.50),
            "seal_latency_p99_s": q(0.99),
        }


class _Registry:
    """The ingestor's cache of the device registry, refreshed in the background and on a miss."""

    def __init__(self, store: Store, refresh_s: float) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._devices: dict[str, DeviceRecord] = {}
        self._missed: dict[str, float] = {}

    async def refresh(self) -> None:
        self._devices = await self._store.device_keys_snapshot()
        self._missed.clear()
        await self._check_clock()

    async def _check_clock(self) -> None:
        before = _now()
        db = await self._store.clock()
        after = _now()
        # The database read its clock somewhere between our two readings.
        slack = (after - before).total_seconds() / 2
        offset = (db - (before + (after - before) / 2)).total_seconds()
        if abs(offset) > CLOCK_OFFSET_WARN_S + slack:
            log.warning(
                "this host's clock is %.3fs %s the database's: revocations and rotations "
                "(stamped by the database) are judged against received times (stamped here) "
                "with that error; synchronise both clocks (NTP)",
                abs(offset),
                "behind" if offset > 0 else "ahead of",
            )

    async def lookup(self, device_id: str) -> DeviceRecord | None:
        record = self._devices.get(device_id)
        if record is not None:
            return record
        # A device registered since the last refresh is found at once; an unknown one costs at
        # most one query per refresh interval, however fast it floods us.
        now = time.monotonic()
        if now - self._missed.get(device_id, -1e9) < self._refresh_s:
            return None
        self._missed[device_id] = now
        try:
            record = await self._store.get_device(device_id)
        except AnchorError as exc:
            if exc.reason != Reason.NOT_FOUND:
                raise
            return None
        self._devices[device_id] = record
        return record


def _now() -> datetime:
    return datetime.now(UTC)


class Ingestor:
    """One ingestor process. ``run(stop)`` returns after a clean drain once ``stop`` is set."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        signer: NoteSigner,
        client_id: str,
    ) -> None:
        self.settings = settings
        self.store = store
        self.signer = signer
        self.client_id = client_id
        self.hasher = merkle.get_hasher(settings.hash_scheme)
        self.stats = IngestStats()
        self._registry = _Registry(store, settings.registry_refresh_ms / 1000)
        self._limits = admission.Limits(
            max_envelope_bytes=settings.max_envelope_bytes,
            clock_skew_future_ms=settings.clock_skew_future_ms,
            clock_skew_past_ms=settings.clock_skew_past_ms,
        )
        # The MQTT client appends here, on the event loop, a read's or a burst's deliveries at
        # a time: one wake-up per read, not per message.
        self._inbox: deque[Incoming] = deque()
        self._inbox_ready = asyncio.Event()
        self._seal_queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=2)
        self._link: Link | None = None
        self._pool: ProcessPoolExecutor | None = None

    # ------------------------------------------------------------------------------ MQTT side
    @property
    def mqtt_connected(self) -> bool:
        """Connected to the broker now (read by the metrics thread; a bool read is atomic)."""
        return self._link is not None and self._link.connected

    def _deliver(self, items: list[Incoming]) -> None:
        # On the event loop (both clients): no lock, one Event.set per read or burst.
        self._inbox.extend(items)
        self._inbox_ready.set()

    def _start_mqtt(self) -> Link:
        s = self.settings
        options: dict[str, Any] = {
            "client_id": self.client_id,
            "topic": s.mqtt_topic,
            "deliver": self._deliver,
            "username": s.mqtt_username or None,
            "password": s.mqtt_password or None,
            "session_expiry_s": s.mqtt_session_expiry_s,
            "receive_maximum": s.inflight_window,
        }
        link: Link
        if s.ingest_mqtt_client == "paho":
            link = PahoLink(parse_mqtt_url(s.mqtt_url), **options)
        else:
            link = NativeMqtt(parse_mqtt_url(s.mqtt_url), **options)
        link.start()
        return link

    def _ack(self, deliveries: Sequence[Incoming]) -> None:
        link = self._link
        if link is None:
            return
        # A mid names a message only on the connection that delivered it; after a reconnect
        # the broker redelivers those messages and the store de-duplicates them.
        generation = link.generation
        mids = [d.mid for d in deliveries if d.generation == generation]
        stale = len(deliveries) - len(mids)
        link.ack(mids)
        if stale:
            log.info("%d deliveries from an earlier connection left to redelivery", stale)

    # --------------------------------------------------------------------------- checks
    def _reject(
        self,
        item: Incoming,
        reason: Reason,
        detail: str,
        *,
        device_id: str | None = None,
        seq: int | None = None,
    ) -> Rejection:
        return Rejection(
            received_at=item.received_at,
            topic=item.topic,
            reason=reason,
            detail=detail,
            raw=item.payload,
            device_id=device_id,
            seq=seq,
        )

    async def _precheck(self, item: Incoming) -> Rejection | tuple[Envelope, PublicKey]:
        # The rules are anchor.admission's (pure); the registry lookup is the only I/O here.
        parsed = admission.parse_message(item.payload, item.topic, limits=self._limits)
        if isinstance(parsed, admission.Refusal):
            return self._refused(item, parsed)
        record = await self._registry.lookup(parsed.envelope.reading.device_id)
        outcome = admission.admit(parsed, record, item.received_at, limits=self._limits)
        if isinstance(outcome, admission.Refusal):
            return self._refused(item, outcome)
        return outcome.envelope, outcome.key.public_key

    def _refused(self, item: Incoming, refusal: admission.Refusal) -> Rejection:
        return self._reject(
            item, refusal.reason, refusal.detail, device_id=refusal.device_id, seq=refusal.seq
        )

    async def _verify(
        self, checked: Sequence[tuple[Incoming, Envelope, PublicKey]]
    ) -> list[Reason | None]:
        if not checked:
            return []
        loop = asyncio.get_running_loop()
        jobs = [(e.signed_bytes, e.signature, k.key_type, k.raw) for _, e, k in checked]
        if self._pool is None:  # verify_processes -1: here, between reads (--workers N)
            return _verify_chunk(jobs)
        chunks = [jobs[i : i + VERIFY_CHUNK] for i in range(0, len(jobs), VERIFY_CHUNK)]
        results = await asyncio.gather(
            *(loop.run_in_executor(self._pool, _verify_chunk, c) for c in chunks)
        )
        return [r for chunk in results for r in chunk]

    async def _process(self, items: Sequence[Incoming], pending: _Pending) -> None:
        checked: list[tuple[Incoming, Envelope, PublicKey]] = []
        for item in items:
            outcome = await self._precheck(item)
            if isinstance(outcome, Rejection):
                pending.rejections.append(outcome)
            else:
                checked.append((item, *outcome))
        for (item, envelope, _key), failure in zip(
            checked, await self._verify(checked), strict=True
        ):
            if failure is None:
                pending.candidates.append(
                    Candidate.hashed(envelope, item.received_at, item.topic, hasher=self.hasher)
                )
            else:
                r = envelope.reading
                pending.rejections.append(
                    self._reject(
                        item,
                        failure,
                        "signature does not verify with the registered key",
                        device_id=r.device_id,
                        seq=r.seq,
                    )
                )
        pending.deliveries.extend(items)

    # --------------------------------------------------------------------------- sealing
    async def _seal_forever(self) -> None:
        while True:
            batch = await self._seal_queue.get()
            try:
                await self._seal_with_retry(batch)
            finally:
                self._seal_queue.task_done()

    async def _seal_with_retry(self, batch: _Pending) -> None:
        backoff = Backoff(initial_s=RETRY_INITIAL_S, cap_s=RETRY_MAX_S)
        while True:
            try:
                result = await self.store.seal(
                    batch.candidates,
                    batch.rejections,
                    signer=self.signer,
                    origin=self.settings.log_origin,
                    ingestor=self.client_id,
                    hasher=self.hasher,
                )
                break
            except AnchorError as exc:
                # Durable first: nothing of this batch is acknowledged until a seal commits, so
                # the broker holds our window and redelivers if we die meanwhile. A failure that
                # is not retryable (a bug, a schema mismatch) is retried too, but loudly: holding
                # the batch unacknowledged is the only choice that loses nothing.
                self.stats.seal_failures += 1
                retryable = isinstance(exc, StoreError) and exc.retryable
                # Full jitter: the ingestors that lost the database together come back apart.
                backoff.cap_s = RETRY_MAX_S if retryable else 30.0
                delay = backoff.next_delay()
                log.log(
                    logging.WARNING if retryable else logging.ERROR,
                    "seal of %d deliveries failed (%s%s); retrying in %.1fs",
                    len(batch),
                    exc,
                    "" if retryable else ", not retryable: needs an operator",
                    delay,
                )
                await asyncio.sleep(delay)
        # Seal latency as a device would feel it: from the oldest delivery's arrival to commit.
        latency = (_now() - batch.deliveries[0].received_at).total_seconds()
        self.stats.record_seal(result, latency)
        for r in (*batch.rejections, *result.key_rejections):
            log.info(
                json.dumps(
                    {
                        "event": "quarantined",
                        "reason": r.reason,
                        "device_id": r.device_id,
                        "seq": r.seq,
                        "topic": r.topic[:200],
                        "detail": r.detail[:200],
                    }
                )
            )
        self._send_device_acks(result)
        self._ack(batch.deliveries)
        if result.batch_id is not None:
            log.debug(
                "sealed batch %s: %d readings, log index %s, %.3fs",
                result.batch_id,
                result.size,
                result.log_index,
                latency,
            )

    def device_ack_entries(self, result: SealResult) -> dict[str, list[AckEntry]]:
        """What this committed seal settled, per device ack topic, in batch order.

        Sealed readings and ``replayed_seq`` (the exact envelope is already stored) are
        durable; a reason in :data:`~anchor.device_ack.FINAL_REASONS` is refused for good; any
        other reason (the registry cache's ``unknown_device`` / ``unknown_kid``) and anything
        whose topic names no device (``bad_topic``) is left out, so the device resends it.
        The ack goes to the topic the reading came in on, which the broker lets only that
        device publish to: a device is told about what it published, never about another's.
        """
        out: dict[str, list[AckEntry]] = {}
        targets: dict[str, str | None] = {}  # a batch has ~1000 readings from a few devices

        def add(topic: str, seq: int | None, leaf: bytes, status: int, reason: str) -> None:
            target = targets.get(topic, "")
            if target == "":
                target = targets[topic] = ack_topic_for(topic)
            if target is None:
                return
            out.setdefault(target, []).append(AckEntry(seq or 0, leaf, status, reason))

        for c in result.sealed:
            add(c.topic, c.envelope.reading.seq, candidate_leaf(c, self.hasher), DURABLE, "")
        for r in result.rejected:
            if r.reason == Reason.REPLAYED_SEQ or r.reason in FINAL_REASONS:
                status = DURABLE if r.reason == Reason.REPLAYED_SEQ else REFUSED
                add(r.topic, r.seq, merkle.leaf_hash(r.raw, hasher=self.hasher), status, r.reason)
        return out

    def _send_device_acks(self, result: SealResult) -> None:
        # After the commit, before the broker's PUBACKs: a crash in between only means the
        # device resends and is acknowledged again (replayed_seq). QoS 1 into the device's
        # persistent session, so a device that is offline now gets it when it reconnects.
        link = self._link
        if link is None:
            return
        for topic, entries in self.device_ack_entries(result).items():
            for payload in encode_acks(entries):
                link.publish(topic, payload)
                self.stats.device_acks += 1

    # --------------------------------------------------------------------------- main loop
    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until ``stop`` is set, then seal and acknowledge what was verified, and return."""
        s = self.settings
        await self._registry.refresh()
        workers = s.verify_processes or max(1, multiprocessing.cpu_count())
        if workers > 0:
            # spawn, not fork: no thread of this process (paho's, asyncpg's) may be duplicated.
            # die_with_parent: a killed ingestor's workers go with it (issue 11: they were left
            # running, 56 MB, half an hour later).
            self._pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=die_with_parent,
                initargs=(signal.SIGTERM, os.getpid()),
            )
            pool, loop = self._pool, asyncio.get_running_loop()  # all now, not on first use
            await asyncio.gather(
                *(loop.run_in_executor(pool, _verify_chunk, []) for _ in [0] * workers)
            )
        self._link = self._start_mqtt()
        sealer = asyncio.create_task(self._seal_forever(), name="sealer")
        refresher = asyncio.create_task(self._refresh_registry(stop), name="registry")
        pending = _Pending()
        try:
            while not stop.is_set():
                items = await self._take(pending, stop)
                if items:
                    if not pending.deliveries:
                        pending.opened = time.monotonic()
                    self.stats.received += len(items)
                    await self._process(items, pending)
                age_ms = (time.monotonic() - pending.opened) * 1000 if pending.deliveries else 0
                if len(pending) >= s.batch_size or (
                    pending.deliveries and age_ms >= s.batch_age_ms
                ):
                    await self._seal_queue.put(pending)
                    pending = _Pending()
            # Drain: seal what we hold; the queue's unverified rest is left to redelivery.
            if pending.deliveries:
                await self._seal_queue.put(pending)
            await self._seal_queue.join()
        finally:
            sealer.cancel()
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sealer
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            if self._link is not None:
                await self._link.close()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
            log.info("ingestor stopped: %s", json.dumps(self.stats.snapshot()))

    async def _take(self, pending: _Pending, stop: asyncio.Event) -> list[Incoming]:
        """Up to the rest of a batch's worth of deliveries, waiting at most until its deadline."""
        s = self.settings
        room = max(1, s.batch_size - len(pending))
        if pending.deliveries:
            timeout = max(0.0, s.batch_age_ms / 1000 - (time.monotonic() - pending.opened))
        else:
            timeout = 0.25  # wake up now and then to notice `stop`
        items: list[Incoming] = []
        if not self._inbox:
            try:
                await asyncio.wait_for(self._inbox_ready.wait(), timeout)
            except TimeoutError:
                return items
        self._inbox_ready.clear()  # the client's next delivery sets it again
        inbox = self._inbox
        while inbox and len(items) < room:
            items.append(inbox.popleft())
        if inbox:
            self._inbox_ready.set()  # more than a batch's room is waiting: come straight back
        return items

    async def _refresh_registry(self, stop: asyncio.Event) -> None:
        last_stats = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(self.settings.registry_refresh_ms / 1000)
            try:
                await self._registry.refresh()
            except AnchorError as exc:
                log.warning("registry refresh failed: %s", exc)
            if time.monotonic() - last_stats >= STATS_EVERY_S:
                last_stats = time.monotonic()
                log.info("ingest stats: %s", json.dumps(self.stats.snapshot()))
