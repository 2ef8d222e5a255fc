"""The log-side witness client (anchor.cosigning.client) against a witness that applies the real
tlog-witness rules (tests/witness_toy.py), with an in-memory store: the 409 retry, refusals,
alarms and answers that must not be stored."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
from witness_toy import ToyWitness

from anchor.checkpoint import generate_note_key
from anchor.cosignature import generate_cosigner_key, verified_cosignatures
from anchor.cosigning.client import CosignResult, Witness, WitnessClient, WitnessUnavailable
from anchor.errors import Reason
from anchor.sealing import BatchLog
from anchor.store import StoredCosignature, StoreError
from anchor.witness_protocol import WitnessedCheckpoint

ORIGIN = "test.cityanchor.example/log"
URL = "http://witness.invalid"


@dataclass
class MemoryStore:
    """The store methods the client uses, over an in-memory batch log."""

    log: BatchLog = field(default_factory=lambda: BatchLog(ORIGIN))
    operator: object = field(default_factory=lambda: generate_note_key(ORIGIN))
    notes: dict[int, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    cosigs: dict[tuple[int, str], StoredCosignature] = field(default_factory=dict)
    outcomes: list[tuple[str, str]] = field(default_factory=list)

    def grow(self, batches: int) -> tuple[int, str]:
        for _ in range(batches):
            self.log.append(1, hashlib.sha256(str(self.log.size).encode()).digest())
        note = self.log.checkpoint(self.operator)  # type: ignore[arg-type]
        self.notes[self.log.size] = note
        return self.log.size, note

    async def witness_size(self, witness: str) -> int:
        return self.sizes.get(witness, 0)

    async def log_size(self) -> int:
        return self.log.size

    async def checkpoint_at(self, log_size: int) -> str:
        if log_size not in self.notes:
            raise StoreError(f"no checkpoint at {log_size}", reason=Reason.NOT_FOUND)
        return self.notes[log_size]

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return self.log.consistency_proof(old_size, new_size)

    async def cosignatures_at(self, log_size: int) -> list[StoredCosignature]:
        return [c for (size, _), c in self.cosigs.items() if size == log_size]

    async def note_witness_outcome(
        self, *, witness: str, url: str, outcome: str, reason: str = "", size: int | None = None
    ) -> None:
        self.outcomes.append((outcome, reason))
        if size is not None:
            self.sizes[witness] = size

    async def record_cosignature(
        self, *, witness: str, url: str, log_size: int, line: str, timestamp: int
    ) -> None:
        self.cosigs[(log_size, witness)] = StoredCosignature(log_size, witness, line, timestamp)
        self.sizes[witness] = log_size
        self.outcomes.append(("cosigned", ""))


def _setup() -> tuple[MemoryStore, ToyWitness, Witness, WitnessClient]:
    store = MemoryStore()
    toy = ToyWitness("witness-1.example", [store.operator.verifier])  # type: ignore[attr-defined]
    witness = Witness(URL, toy.signer.verifier)
    return store, toy, witness, WitnessClient(store=store, post=toy.post)


def _run(coro: Coroutine[Any, Any, CosignResult]) -> CosignResult:
    return asyncio.run(coro)


def test_first_request_then_consistency_proofs_and_verified_storage() -> None:
    store, toy, w, client = _setup()
    size, note = store.grow(3)
    r = _run(client.cosign(w, size, note))
    assert (r.outcome, r.log_size) == ("cosigned", 3)
    (stored,) = store.cosigs.values()
    (cosig,) = verified_cosignatures(note + stored.line, [w.verifier])
    assert cosig.timestamp == stored.timestamp
    # Same size again: no request at all.
    assert _run(client.cosign(w, size, note)).outcome == "up_to_date"
    size, note = store.grow(4)
    assert _run(client.cosign(w, size, note)).outcome == "cosigned"
    assert toy.requests == [(0, 200), (3, 200)]  # old = the witness's last size, with a proof


def test_409_retries_once_from_the_size_the_witness_reports() -> None:
    store, toy, w, client = _setup()
    size, note = store.grow(3)
    _run(client.cosign(w, size, note))
    store.sizes.clear()  # our record of the witness is lost (a restored database, say)
    size, note = store.grow(2)
    r = _run(client.cosign(w, size, note))
    assert r.outcome == "cosigned"
    assert toy.requests[1:] == [(0, 409), (3, 200)]
    assert ("conflict", Reason.WITNESS_SIZE_CONFLICT) in store.outcomes


def test_409_with_a_size_we_never_had_is_a_conflict_without_retry() -> None:
    store, toy, w, client = _setup()
    size, note = store.grow(3)
    toy.state[ORIGIN] = WitnessedCheckpoint(ORIGIN, 99, bytes(32), "")
    r = _run(client.cosign(w, size, note))
    assert (r.outcome, r.reason) == ("conflict", "witness_size_conflict")
    assert "99" in r.detail and toy.requests == [(0, 409)]
    assert not store.cosigs
    # A size between two of our checkpoints (we have 3 and 5, the witness says 4) neither.
    store2, toy2, w2, client2 = _setup()
    store2.grow(3)
    store2.log.append(1, bytes(32))  # size 4: never a checkpoint
    size, note = store2.grow(1)
    toy2.state[ORIGIN] = WitnessedCheckpoint(ORIGIN, 4, store2.log.root(4), "")
    assert _run(client2.cosign(w2, size, note)).outcome == "conflict"


def test_witness_ahead_of_an_older_checkpoint_is_behind() -> None:
    store, toy, w, client = _setup()
    old_size, old_note = store.grow(2)
    size, note = store.grow(2)
    assert _run(client.cosign(w, size, note)).outcome == "cosigned"
    # Mode "anchor" may ask for an older checkpoint: no request, nothing to do.
    assert _run(client.cosign(w, old_size, old_note)).outcome == "behind"
    assert len(toy.requests) == 1


def test_422_is_an_alarm_and_stores_nothing() -> None:
    store, toy, w, client = _setup()
    size, note = store.grow(3)
    toy.state[ORIGIN] = WitnessedCheckpoint(ORIGIN, 3, bytes(32), "")  # size 3, another root
    store.sizes[w.key] = 3
    r = _run(client.cosign(w, size, note))
    assert (r.outcome, r.reason) == ("inconsistent", "witness_inconsistent")
    assert not store.cosigs


@pytest.mark.parametrize(
    ("answer", "outcome", "reason"),
    [
        ((403, b"no key"), "refused", "witness_log_signature_invalid"),
        ((404, b"unknown log"), "refused", "witness_unknown_log"),
        ((400, b"bad"), "refused", "witness_request_malformed"),
        ((503, b"\x1b[31mdown\n"), "unavailable", "witness_unavailable"),
        ((200, b"not a signature line\n"), "invalid", "witness_cosignature_invalid"),
        ((409, b"three\n"), "invalid", "witness_request_malformed"),
    ],
)
def test_refusals_and_garbage(answer: tuple[int, bytes], outcome: str, reason: str) -> None:
    store, toy, w, client = _setup()
    size, note = store.grow(1)
    toy.answer = answer
    r = _run(client.cosign(w, size, note))
    assert (r.outcome, r.reason) == (outcome, reason)
    assert "\x1b" not in r.detail  # the witness's text is sanitised
    assert not store.cosigs and store.sizes.get(w.key, 0) == 0


def test_a_cosignature_by_another_key_is_not_stored() -> None:
    store, toy, w, client = _setup()
    size, note = store.grow(1)
    toy.wrong_signer = generate_cosigner_key(toy.name)  # same name, another key
    r = _run(client.cosign(w, size, note))
    assert (r.outcome, r.reason) == ("invalid", "witness_cosignature_invalid")
    assert not store.cosigs


def test_an_unreachable_witness_is_unavailable() -> None:
    store, _, w, _ = _setup()

    async def down(url: str, body: bytes) -> tuple[int, bytes]:
        raise WitnessUnavailable(f"{url}: connection refused")

    size, note = store.grow(1)
    r = _run(WitnessClient(store=store, post=down).cosign(w, size, note))
    assert (r.outcome, r.reason) == ("unavailable", "witness_unavailable")


def test_a_password_in_the_witness_url_stays_out_of_logs_and_the_database() -> None:
    store, toy, w, _ = _setup()
    seen: list[str] = []

    async def post(url: str, body: bytes) -> tuple[int, bytes]:
        seen.append(url)
        return await toy.post(url, body)

    secret = Witness("http://user:s3cret@witness.invalid/w", w.verifier)
    toy.answer = (403, b"no key")
    size, note = store.grow(1)
    r = _run(WitnessClient(store=store, post=post).cosign(secret, size, note))
    assert seen == ["http://user:s3cret@witness.invalid/w/add-checkpoint"]  # sent as given
    assert "s3cret" not in r.detail and "s3cret" not in r.to_log()
