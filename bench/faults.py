"""Fault campaign: does anything a device was told is delivered get lost, duplicated or altered
when parts of ``cityanchor up`` die?

    python bench/faults.py [--quick] [--device sdk|paho] [--faults a,b,...] [--doc PATH --label L]

It starts ``cityanchor up --anchor-period 5s`` on a temporary data dir (real PostgreSQL,
Mosquitto and anvil, as ``up`` starts them), registers devices through ``POST /v1/devices``
(each with its own MQTT login; client id = device id), runs a steady load on loopback and
injects one fault at a time:

========================  ================================================================
``none``                  nothing (the steady state the others are compared with)
``kill9-ingest``          SIGKILL of the ingestor (its pool workers are left alone)
``kill9-postgres``        SIGKILL of the postmaster
``kill9-mosquitto``       SIGKILL of the broker
``kill9-anchor-inflight`` SIGKILL of the anchoring job while its transaction is in the mempool
                          (anvil's automine is off until the job is dead, then a block is mined)
``sigstop-chain``         SIGSTOP of anvil for 60 s (10 s with ``--quick``), then SIGCONT
``reorg``                 ``evm_snapshot``, wait until an anchor is confirmed, ``evm_revert``
``restart-up``            SIGTERM of ``up``, wait until it exited, start it again
``kill9-up-group``        SIGKILL of ``up``'s whole process group, then start ``up`` again
========================  ================================================================

Devices (``--device``): ``paho`` is a plain paho v5 client per device (QoS 1, persistent
session, auto-reconnect; paho keeps unacknowledged messages and resends them; a PUBACK with a
success code, 0x10 *no matching subscribers* included, means delivered). ``sdk`` is the project's
``devices.publisher.Publisher`` with an on-disk outbox per device; a reading counts as delivered
once the SDK deleted it from its outbox. The SDK's end-to-end acknowledgement mode (issue 11) is
looked for at run time and used when present (``sdk_ack_protocol`` in the output says which).

For every reading the device counted as delivered: **lost** = not stored when the settle
timeout ends, **duplicated** = stored more than once, **corrupted** = stored bytes (or the
receipt's envelope) differ from the bytes published; each receipt is fetched from the API and
verified with the project's verifier (device key, checkpoint signature, both proofs, and
``anchoredAt`` on the chain): all of them, or ``--verify-sample`` per row. Recovery: from the
fault to the first sealed reading signed after it (``first_seal_s``), to the moment every
reading signed before that was sealed (``backlog_s``), and to the first confirmed anchor that
covers the log as it was at the fault (``anchored_s``).

Readings are attributed to the row whose window they were signed in. Rows run one after the
other on the same system. Each row's receipts are verified when its fault is over (once the log
as sealed then is anchored), before the next fault; what is not checked by then is checked after
the final settling, when a sample of the earlier ones is checked again (``valid_at_end``: a
receipt that verified once must keep verifying).
The last line is a JSON object (every bench's contract, DESIGN.md "Interfaces"; ``--quick``
here takes about 2 minutes, not 60 s: it runs nine faults against the whole system).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _system import Db, Fleet, Rec, Up, http_json, machine, register_devices, rpc, sdk_features

from anchor.store import packed

FAULTS = (
    "none",
    "kill9-ingest",
    "kill9-postgres",
    "kill9-mosquitto",
    "kill9-anchor-inflight",
    "sigstop-chain",
    "reorg",
    "restart-up",
    "kill9-up-group",
)


@dataclass(frozen=True, slots=True)
class Plan:
    quick: bool
    devices: int
    rate: float
    pre_s: float
    post_s: float
    stop_chain_s: float
    recover_timeout_s: float
    drain_s: float
    settle_s: float
    anchor_period_s: float = 5.0


def plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        p = Plan(True, 5, 25.0, 2.0, 1.0, 10.0, 20.0, 10.0, 15.0)
    else:
        p = Plan(False, 25, 200.0, 15.0, 10.0, 60.0, 120.0, 60.0, 120.0)
    return Plan(
        p.quick,
        args.devices or p.devices,
        args.rate or p.rate,
        p.pre_s,
        p.post_s,
        args.stop_chain_s or p.stop_chain_s,
        p.recover_timeout_s,
        p.drain_s,
        args.settle_s or p.settle_s,
    )


@dataclass(slots=True)
class Row:
    fault: str
    started: float = 0.0  # window start (time.time())
    fault_at: float = 0.0  # the injection
    fault_end: float = 0.0  # the fault is over (SIGCONT sent, revert done, up restarted ...)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


def _log(text: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {text}", flush=True)


class Campaign:
    def __init__(self, plan: Plan, device_mode: str, faults: list[str],
                 verify_sample: int, sdk_kwargs: dict[str, Any]) -> None:  # fmt: skip
        self.plan = plan
        self.device_mode = device_mode
        self.faults = faults
        self.verify_sample = verify_sample
        self.sdk_kwargs = sdk_kwargs
        self.up = Up.fresh("flt-", anchor_period=f"{plan.anchor_period_s:g}s")
        self.db = Db(lambda: self.up.dsn)
        self.rows: list[Row] = []
        self.fleet: Fleet | None = None
        self.killed_at_end: list[int] = []
        self.extra: dict[str, Any] = {}
        # (device, seq) -> (verdict, envelope in the receipt); end_verdicts: re-checked at end.
        self.verdicts: dict[tuple[str, int], tuple[str, bytes | None]] = {}
        self.end_verdicts: dict[tuple[str, int], tuple[str, bytes | None]] = {}
        self.end_sample = 30 if plan.quick else 200
        self.late: set[tuple[str, int]] = set()  # checked only at the end, not in their row

    # -- waiting -----------------------------------------------------------------------------

    def _scalar(self, sql: str, *args: Any) -> Any:
        rows = self.db.fetch(sql, *args)
        return rows[0][0] if rows else None

    def wait_recovered(self, since: float, timeout: float) -> bool:
        """Until a reading signed after ``since`` is sealed and sealing is current again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # By arrival time: since 009 a reading's own ts lives only inside its envelope.
            first = self._scalar(
                "SELECT count(*) FROM reading_seqs WHERE received_at > to_timestamp($1)", since
            )
            newest = self._scalar("SELECT extract(epoch FROM max(received_at)) FROM reading_seqs")
            if first and newest and float(newest) >= time.time() - 5:
                return True
            time.sleep(0.5)
        return False

    def wait_anchor_after(self, since: float, timeout: float, *, above_block: int = 0) -> bool:
        """Wait for an anchor confirmed after ``since`` (and mined above ``above_block``: an
        anchor mined before a snapshot but recorded after it would survive the revert)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self._scalar(
                "SELECT count(*) FROM anchors WHERE confirmed_at > to_timestamp($1)"
                " AND block_number > $2",
                since,
                above_block,
            )
            if n:
                return True
            time.sleep(0.5)
        return False

    # -- faults ------------------------------------------------------------------------------

    def _kill(self, pid: int | None, what: str, row: Row, sig: int = signal.SIGKILL) -> None:
        if pid is None:
            row.notes.append(f"{what} not found")
            return
        os.kill(pid, sig)
        row.notes.append(f"{what} pid {pid} killed")

    def _restart_up(self, row: Row) -> None:
        t0 = time.monotonic()
        for attempt in (1, 2):
            try:
                self.up.start(timeout=90)
                row.figures["up_ready_s"] = round(time.monotonic() - t0, 1)
                return
            except RuntimeError as exc:
                # Keep the whole log of a failed start: the cause is rarely in its last line.
                kept = Path(tempfile.gettempdir()) / f"faults-up-failed-{int(time.time())}.log"
                with contextlib.suppress(OSError):
                    shutil.copyfile(self.up.log_path, kept)
                lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                cause = next((ln for ln in reversed(lines) if "rror" in ln or "ailed" in ln),
                             lines[-1] if lines else "")  # fmt: skip
                row.notes.append(f"up start {attempt} failed: {cause.strip()[:200]} (log {kept})")
                if self.up.proc is not None and self.up.proc.poll() is None:
                    self.up.kill_group()
        # Give up on this row; clear the orphans so that the rest of the campaign can run.
        killed = self.up.cleanup(remove=False)
        row.notes.append(f"killed {len(killed)} leftover processes, started up again")
        self.up.start(timeout=120)
        row.figures["up_ready_s"] = round(time.monotonic() - t0, 1)

    def inject(self, row: Row) -> None:
        up, fault = self.up, row.fault
        row.fault_at = time.time()
        if fault == "none":
            pass
        elif fault == "kill9-ingest":
            self._kill(up.child("ingest"), "ingestor", row)
        elif fault == "kill9-postgres":
            self._kill(up.postmaster(), "postmaster", row)
        elif fault == "kill9-mosquitto":
            self._kill(up.server_pid("mosquitto"), "mosquitto", row)
        elif fault == "kill9-anchor-inflight":
            self._anchor_inflight(row)
        elif fault == "sigstop-chain":
            pid = up.server_pid("anvil")
            self._kill(pid, "anvil", row, signal.SIGSTOP)
            row.notes[-1] = row.notes[-1].replace("killed", f"stopped {self.plan.stop_chain_s:g} s")
            time.sleep(self.plan.stop_chain_s)
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
        elif fault == "reorg":
            self._reorg(row)
        elif fault == "restart-up":
            row.figures["up_stop_s"] = round(up.stop(timeout=90), 1)
            self._restart_up(row)
        elif fault == "kill9-up-group":
            up.kill_group()
            row.notes.append("up's process group killed")
            orphans = [p for p in (up.postmaster(), up.server_pid("mosquitto"),
                                   up.server_pid("anvil")) if p]  # fmt: skip
            row.notes.append(f"{len(orphans)} servers outlived it")
            self._restart_up(row)
            self._check_ports(row)
        else:
            raise ValueError(fault)
        row.fault_end = time.time()

    def _check_ports(self, row: Row) -> None:
        before = self.extra.get("addresses")
        now = {k: self.up.doc.get(k) for k in ("mqtt", "rpc", "contract")}
        if before and before != now:
            row.notes.append(f"addresses changed: {before} -> {now}")

    def _anchor_inflight(self, row: Row) -> None:
        url = self.up.doc["rpc"]
        rpc(url, "evm_setAutomine", [False])
        try:
            deadline = time.monotonic() + 3 * self.plan.anchor_period_s + 10
            while time.monotonic() < deadline:
                status = rpc(url, "txpool_status")
                if int(str(status.get("pending", "0x0")), 16):
                    break
                time.sleep(0.1)
            else:
                row.notes.append("no anchoring transaction reached the mempool")
            row.fault_at = time.time()
            self._kill(self.up.child("anchor"), "anchoring job", row)
            time.sleep(0.5)
        finally:
            rpc(url, "evm_setAutomine", [True])
            rpc(url, "evm_mine")

    def _reorg(self, row: Row) -> None:
        url = self.up.doc["rpc"]
        snap = rpc(url, "evm_snapshot")
        snap_block = int(rpc(url, "eth_blockNumber"), 16)
        t0 = time.time()
        if not self.wait_anchor_after(
            t0, 3 * self.plan.anchor_period_s + 15, above_block=snap_block
        ):
            row.notes.append("no anchor confirmed after the snapshot")
        block = int(rpc(url, "eth_blockNumber"), 16)
        row.fault_at = time.time()
        ok = rpc(url, "evm_revert", [snap])
        after = int(rpc(url, "eth_blockNumber"), 16)
        row.notes.append(f"reverted blocks {after + 1}..{block} ({ok})")

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        p = self.plan
        started = time.monotonic()
        try:
            _log(f"starting up in {self.up.data_dir}")
            self.up.start()
            self.extra["addresses"] = {k: self.up.doc.get(k) for k in ("mqtt", "rpc", "contract")}
            devices = register_devices(self.up, p.devices)
            workdir = Path(tempfile.mkdtemp(prefix="flt-dev-"))
            self.fleet = Fleet(self.up.doc["mqtt"], devices, mode=self.device_mode,
                               rate=p.rate, workdir=workdir,
                               sdk_kwargs=self.sdk_kwargs)  # fmt: skip
            self.fleet.connect()
            self.fleet.start()
            if not self.wait_recovered(time.time(), 60):
                raise RuntimeError("no reading sealed within 60 s of the load starting")
            previous: Row | None = None
            for fault in self.faults:
                row = Row(fault, started=time.time())
                self.rows.append(row)
                # The previous row's window ends here; its receipts are checked while this
                # row's load runs, before this row's fault.
                self.fleet.row = fault
                _log(f"{fault}: load {p.rate:g}/s")
                if previous is not None:
                    self.check_row(previous)
                time.sleep(max(0.0, row.started + p.pre_s - time.time()))
                self.inject(row)
                ok = self.wait_recovered(row.fault_end, p.recover_timeout_s)
                if not ok:
                    row.notes.append(f"sealing not current {p.recover_timeout_s:g}s after")
                _log(f"{fault}: {'recovered' if ok else 'NOT recovered'}; {row.notes}")
                time.sleep(p.post_s)
                previous = row
            self.fleet.row = "end"
            self.fleet.stop_load()
            _log("load stopped; draining the devices")
            self.fleet.drain(p.drain_s)
            self.fleet.refresh_acks()
            self.settle()
            self.check_rest()
            result = self.account()
        finally:
            if self.fleet is not None:
                self.fleet.close()
            self.killed_at_end = self.up.cleanup(remove=True)
        result["seconds"] = round(time.monotonic() - started, 1)
        result["leftover_processes_killed"] = len(self.killed_at_end)
        return result

    def settle(self) -> None:
        """Until every reading a device counted as delivered is stored, then anchored."""
        assert self.fleet is not None
        want = {k for k, r in self.fleet.recs.items() if r.acked}
        deadline = time.monotonic() + self.plan.settle_s
        stored: set[tuple[str, int]] = set()
        while time.monotonic() < deadline:
            rows = self.db.fetch(f"SELECT d.device_id, s.seq FROM {packed.SEQS}")
            if rows is not None:
                stored = {(r[0], int(r[1])) for r in rows}
                if want <= stored:
                    break
            time.sleep(1)
        _log(f"settled: {len(want & stored)} of {len(want)} delivered readings stored")
        size = self._scalar("SELECT count(*) FROM batches") or 0
        deadline = time.monotonic() + 2 * self.plan.anchor_period_s + 5
        while time.monotonic() < deadline:
            top = self._scalar("SELECT max(log_size) FROM anchors") or 0
            if top >= size:
                break
            time.sleep(1)

    # -- receipts ----------------------------------------------------------------------------

    def check_row(self, row: Row) -> None:
        """Verify the row's receipts before the next fault can change anything: wait until the
        log as sealed now is anchored (at most two periods), then check every delivered reading
        of the row (or ``verify_sample`` of them). Readings not stored or not anchored by then
        (the fault delayed them) are checked at the end."""
        assert self.fleet is not None
        time.sleep(1.5)  # the row's last readings are being sealed
        size = self._scalar("SELECT count(*) FROM batches") or 0
        deadline = time.monotonic() + 2 * self.plan.anchor_period_s + 5
        while time.monotonic() < deadline:
            if (self._scalar("SELECT max(log_size) FROM anchors") or 0) >= size:
                break
            time.sleep(0.5)
        self.fleet.refresh_acks()
        recs = [r for r in list(self.fleet.recs.values()) if r.row == row.fault and r.acked]
        got = self.verify_receipts(self._sample(recs, self.verify_sample or -1))
        self.verdicts.update(
            {k: v for k, v in got.items() if v[0] not in ("missing", "unanchored")}
        )

    def check_rest(self) -> None:
        """At the end: every delivered reading not checked yet (or a sample of them per row),
        and again a sample of those checked during their row ("valid at end")."""
        assert self.fleet is not None
        todo: list[Rec] = []
        again: list[Rec] = []
        for fault in self.faults:
            recs = [r for r in self.fleet.recs.values() if r.row == fault and r.acked]
            fresh = [r for r in recs if (r.device_id, r.seq) not in self.verdicts]
            old = [r for r in recs if (r.device_id, r.seq) in self.verdicts]
            checked = len(recs) - len(fresh)
            room = -1 if not self.verify_sample else max(0, self.verify_sample - checked)
            todo.extend(self._sample(fresh, room))
            again.extend(self._sample(old, self.end_sample))
        late = self.verify_receipts(todo)
        self.late = set(late)
        self.verdicts.update(late)
        self.end_verdicts = self.verify_receipts(again)

    @staticmethod
    def _sample(recs: list[Rec], n: int) -> list[Rec]:
        """At most ``n`` of ``recs``, evenly spread; all of them when ``n`` < 0."""
        if n < 0 or len(recs) <= n:
            return list(recs)
        if n == 0:
            return []
        step = len(recs) / n
        return [recs[int(i * step)] for i in range(n)]

    # -- accounting --------------------------------------------------------------------------

    def account(self) -> dict[str, Any]:
        assert self.fleet is not None
        fleet = self.fleet
        fleet.refresh_acks()
        stored_rows = self.db.fetch(
            f"SELECT d.device_id, s.seq, {packed.ENVELOPE_SQL}, "
            f"extract(epoch FROM bt.sealed_at)::float8 "
            f"FROM {packed.SEQS} {packed.PACKED_JOIN} {packed.OFFSETS_SQL}"
        )
        if stored_rows is None:
            raise RuntimeError("cannot read the readings back from PostgreSQL")
        stored: dict[tuple[str, int], list[tuple[bytes | None, float]]] = {}
        for r in stored_rows:
            env = bytes(r[2]) if r[2] is not None else None
            stored.setdefault((r[0], int(r[1])), []).append((env, float(r[3])))
        batches = (
            self.db.fetch("SELECT log_index, extract(epoch FROM sealed_at)::float8 FROM batches")
            or []
        )
        anchors = (
            self.db.fetch("SELECT log_size, extract(epoch FROM confirmed_at)::float8 FROM anchors")
            or []
        )
        receipts = self.verdicts
        out_rows = []
        for row in self.rows:
            recs = [r for r in fleet.recs.values() if r.row == row.fault]
            out_rows.append(
                self._row_figures(
                    row, recs, stored=stored, batches=batches, anchors=anchors, receipts=receipts
                )
            )
        features = sdk_features() if self.device_mode == "sdk" else {}
        totals = {k: sum(r[k] for r in out_rows) for k in
                  ("published", "acked", "puback_0x10", "lost", "duplicated", "corrupted",
                   "receipts_checked", "verified", "verify_failed", "held")}  # fmt: skip
        return {
            "bench": "faults",
            "quick": self.plan.quick,
            "device": self.device_mode,
            "sdk_ack_protocol": bool(features.get("ack_protocol")),
            "devices": self.plan.devices,
            "rate_per_s": self.plan.rate,
            "anchor_period_s": self.plan.anchor_period_s,
            "rows": out_rows,
            "totals": totals,
            "publish_errors": dict(fleet.errors),
        }

    def verify_receipts(self, chosen: list[Rec]) -> dict[tuple[str, int], tuple[str, bytes | None]]:
        """(device, seq) -> ("verified" | "failed:<checks>" | "unanchored" | "missing", envelope).

        Each receipt fetched from the API and verified with the project's verifier: device
        key, checkpoint signature, both proofs, and ``anchoredAt`` on the chain."""
        from anchor.anchoring.backend import rpc_anchor_checker
        from anchor.checkpoint import NoteVerifier
        from anchor.keys import PublicKey
        from anchor.receipt import loads_receipt
        from anchor.verify import verify_receipt

        assert self.fleet is not None
        keys = {d.device_id: PublicKey.from_jwk(d.jwk) for d in self.fleet.devices}
        vkey = NoteVerifier.from_vkey(self.up.doc["operator_vkey"])
        checker = rpc_anchor_checker([self.up.doc["rpc"]])
        cache: dict[Any, Any] = {}

        def cached(receipt: Any) -> Any:
            # Receipts citing the same anchors of the same root get the same on-chain answer.
            key = (receipt.log.root, receipt.anchors)
            if key not in cache:
                cache[key] = checker(receipt)
            return cache[key]

        http = self.up.doc["http"]

        def fetch(rec: Rec) -> tuple[tuple[str, int], int, Any]:
            status, doc = 0, None
            for _ in range(3):
                status, doc = http_json("GET", f"{http}/v1/receipts/{rec.device_id}/{rec.seq}")
                if status in (200, 404):
                    break
                time.sleep(0.5)
            return (rec.device_id, rec.seq), status, doc

        if chosen:
            _log(f"fetching and verifying {len(chosen)} receipts")
        out: dict[tuple[str, int], tuple[str, bytes | None]] = {}
        with ThreadPoolExecutor(8) as pool:
            for key, status, doc in pool.map(fetch, chosen):
                if status != 200:
                    out[key] = ("missing", None)
                    continue
                try:
                    receipt = loads_receipt(json.dumps(doc))
                except Exception as exc:
                    out[key] = (f"failed:receipt {getattr(exc, 'reason', exc)}", None)
                    continue
                report = verify_receipt(receipt, device_keys=[keys[key[0]]],
                                        log_verifiers=[vkey], anchor_checker=cached)  # fmt: skip
                if not report.valid:
                    bad = ",".join(f"{c.name}:{c.reason}" for c in report.checks
                                   if c.status == "fail")  # fmt: skip
                    out[key] = (f"failed:{bad}", receipt.envelope)
                elif not report.fully_verified:
                    out[key] = ("unanchored", receipt.envelope)
                else:
                    out[key] = ("verified", receipt.envelope)
        return out

    def _row_figures(
        self,
        row: Row,
        recs: list[Rec],
        *,
        stored: dict[tuple[str, int], list[tuple[bytes | None, float]]],
        batches: list[Any],
        anchors: list[Any],
        receipts: dict[tuple[str, int], tuple[str, bytes | None]],
    ) -> dict[str, Any]:
        acked = [r for r in recs if r.acked]
        codes = Counter(self.fleet.codes.get(row.fault, Counter()) if self.fleet else Counter())
        lost = dup = corrupt = 0
        checked = verified = failed = unanchored = missing = 0
        failures: Counter[str] = Counter()
        for r in acked:
            key = (r.device_id, r.seq)
            copies = stored.get(key, [])
            if not copies:
                lost += 1
            if len(copies) > 1:
                dup += 1
            if any(env is not None and env != r.envelope for env, _ in copies):
                corrupt += 1
            if key in receipts and (copies or receipts[key][0] != "missing"):
                # (A lost reading has no receipt either: counted once, as lost.)
                checked += 1
                verdict, env = receipts[key]
                if env is not None and env != r.envelope and copies:
                    corrupt += 1
                if verdict == "verified":
                    verified += 1
                elif verdict == "unanchored":
                    unanchored += 1
                elif verdict == "missing":
                    missing += 1
                else:
                    failed += 1
                    failures[verdict + (" (checked at end)" if key in self.late else "")] += 1
        # Recovery, from the database's seal times and the devices' signing times.
        t = row.fault_at
        sealed = [(r.signed_at, stored[(r.device_id, r.seq)][0][1]) for r in recs
                  if (r.device_id, r.seq) in stored]  # fmt: skip
        after = [s for signed, s in sealed if signed > row.fault_end]
        first = min(after) if after else None
        backlog = None
        if first is not None:
            backlog = max((s for signed, s in sealed if signed <= first and s > t), default=first)
        size_at = 1 + max((int(b[0]) for b in batches if float(b[1]) <= t), default=-1)
        covering = [float(a[1]) for a in anchors if int(a[0]) >= size_at and float(a[1]) > t]
        anchored = min(covering) if covering else None

        def since(x: float | None) -> float | None:
            return None if x is None else round(max(0.0, x - t), 1)

        notes = list(row.notes)
        if failures:
            notes.append("verify: " + "; ".join(f"{n}x {v}" for v, n in failures.most_common(3)))
        if missing:
            notes.append(f"{missing} stored but no receipt served")
        if unanchored:
            notes.append(f"{unanchored} receipts not anchored yet")
        held = sum(1 for r in recs if not r.acked)
        again = [self.end_verdicts[(r.device_id, r.seq)] for r in acked
                 if (r.device_id, r.seq) in self.end_verdicts]  # fmt: skip
        still = sum(1 for v, _ in again if v == "verified")
        if again and still < len(again):
            bad = Counter(v for v, _ in again if v != "verified")
            notes.append("at end: " + "; ".join(f"{n}x {v}" for v, n in bad.most_common(2)))
        return {
            "fault": row.fault,
            "published": len(recs),
            "acked": len(acked),
            "puback_0x10": int(codes.get(0x10, 0)),
            "puback_codes": {f"0x{c:02x}": n for c, n in sorted(codes.items())},
            "lost": lost,
            "duplicated": dup,
            "corrupted": corrupt,
            "receipts_checked": checked,
            "verified": verified,
            "verify_failed": failed + missing,
            "held": held,
            "valid_at_end": f"{still}/{len(again)}",
            "first_seal_s": since(first),
            "backlog_s": since(backlog),
            "anchored_s": since(anchored),
            **row.figures,
            "notes": notes,
        }


# ---------------------------------------------------------------------------------- output


def table(result: dict[str, Any]) -> str:
    head = ("| fault | published | acked | PUBACK 0x10 | lost | dup | corrupt | receipts "
            "verified | verify failed | held by device | first seal s | backlog sealed s | "
            "anchored s | valid at end | notes |")  # fmt: skip
    lines = [head, "|" + "---|" * 15]

    def f(x: Any) -> str:
        return "-" if x is None else str(x)

    for r in result["rows"]:
        notes = "; ".join(r["notes"]).replace("|", "/")
        if "up_ready_s" in r:
            notes = f"up ready again in {r['up_ready_s']} s; " + notes
        lines.append(
            f"| {r['fault']} | {r['published']} | {r['acked']} | {r['puback_0x10']} | "
            f"**{r['lost']}** | **{r['duplicated']}** | **{r['corrupted']}** | "
            f"{r['verified']}/{r['receipts_checked']} | {r['verify_failed']} | {r['held']} | "
            f"{f(r['first_seal_s'])} | {f(r['backlog_s'])} | {f(r['anchored_s'])} | "
            f"{r['valid_at_end']} | {notes} |"
        )
    t = result["totals"]
    lines.append(
        f"| **all** | {t['published']} | {t['acked']} | {t['puback_0x10']} | **{t['lost']}** | "
        f"**{t['duplicated']}** | **{t['corrupted']}** | {t['verified']}/{t['receipts_checked']}"
        f" | {t['verify_failed']} | {t['held']} | | | | | |"
    )
    return "\n".join(lines)


def write_doc(path: Path, label: str, result: dict[str, Any], command: str) -> None:
    """Replace (or append) the section between ``<!-- faults:LABEL -->`` markers."""
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False).stdout.strip()  # fmt: skip
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join([
        f"<!-- faults:{label}:begin (generated by bench/faults.py; do not edit) -->",
        f"**{label}** — command: `{command}`; commit {git}; {when}.",
        f"Machine: {machine()}.",
        f"Device side: `{result['device']}`"
        + (f" (SDK end-to-end ack protocol present: {result['sdk_ack_protocol']})"
           if result["device"] == "sdk" else "")
        + f"; {result['devices']} devices, {result['rate_per_s']:g} readings/s in all, "
        f"anchor period {result['anchor_period_s']:g} s; run took {result['seconds']} s; "
        f"{result['leftover_processes_killed']} processes were still running at the end and "
        "were killed.",
        "",
        table(result),
        f"<!-- faults:{label}:end -->",
    ])  # fmt: skip
    text = path.read_text() if path.exists() else "# Reliability\n"
    pattern = re.compile(
        rf"<!-- faults:{re.escape(label)}:begin.*?<!-- faults:{re.escape(label)}:end -->", re.S
    )
    if pattern.search(text):
        text = pattern.sub(lambda _: body, text)
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="cityanchor fault campaign")
    p.add_argument("--quick", action="store_true", help="small load, short faults (~2 min)")
    p.add_argument("--device", choices=("sdk", "paho"), default="sdk")
    p.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, in order")
    p.add_argument("--devices", type=int, default=0)
    p.add_argument("--rate", type=float, default=0, help="readings/s, all devices together")
    p.add_argument("--stop-chain-s", type=float, default=0)
    p.add_argument("--settle-s", type=float, default=0)
    p.add_argument("--verify-sample", type=int, default=None,
                   help="receipts verified per row (0: all; default all, quick 100)")  # fmt: skip
    p.add_argument("--sdk-option", action="append", default=[], metavar="NAME=JSON",
                   help="extra keyword argument for devices.publisher.Publisher")  # fmt: skip
    p.add_argument("--doc", type=Path, help="write the table into this markdown file")
    p.add_argument("--label", default="", help="the section of --doc to (re)write")
    p.add_argument("--json-out", type=Path, help="also write the result JSON here")
    args = p.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        p.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
    sdk_kwargs: dict[str, Any] = {}
    if args.device == "sdk":
        sdk_kwargs = dict(sdk_features()["kwargs"])
        for opt in args.sdk_option:
            name, _, value = opt.partition("=")
            sdk_kwargs[name] = json.loads(value)
    sample = args.verify_sample if args.verify_sample is not None else (100 if args.quick else 0)
    campaign = Campaign(plan(args), args.device, faults, sample, sdk_kwargs)
    result = campaign.run()
    print(table(result), flush=True)
    if args.doc:
        command = "python bench/faults.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_doc(args.doc, args.label or ("quick-" if args.quick else "") + args.device,
                  result, command)  # fmt: skip
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
