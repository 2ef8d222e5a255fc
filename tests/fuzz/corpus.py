"""Valid inputs to mutate: envelopes, receipts, completeness proofs and checkpoints.

Built in-process with the project's own pure core from fixed keys, so every run (and every
``make test``) starts from the same documents. The only randomness is ES256's signature nonce.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anchor import merkle
from anchor.checkpoint import NoteSigner, NoteVerifier
from anchor.completeness import (
    StoredBatch,
    StoredReading,
    build_completeness,
    completeness_to_dict,
)
from anchor.envelope import FORMAT_COSE, FORMAT_JWS, Reading, parse_envelope, sign_reading
from anchor.keys import PrivateKey, PublicKey
from anchor.receipt import dumps_receipt
from anchor.sealing import BatchLog, seal_batch

ORIGIN = "fuzz.cityanchor.example/log"


def _pem_key(private: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> PrivateKey:
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return PrivateKey.from_pem(pem)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The seed inputs and the keys that make them verify."""

    device_keys: tuple[PrivateKey, ...]
    operator: NoteSigner
    cose: tuple[bytes, ...]
    jws: tuple[bytes, ...]
    receipts: tuple[str, ...]
    completeness: tuple[str, ...]
    checkpoints: tuple[str, ...]

    @property
    def public_keys(self) -> tuple[PublicKey, ...]:
        return tuple(k.public_key for k in self.device_keys)

    @property
    def log_verifier(self) -> NoteVerifier:
        return self.operator.verifier


def _reading(device_id: str, seq: int, prev: bytes) -> Reading:
    return Reading(
        device_id=device_id,
        seq=seq,
        ts=1_764_000_000_000 + seq * 1000,
        kind="iot.air_quality",
        values={"pm25": 12.5 + seq, "ok": True, "site": "riverside"},
        prev=prev,
    )


def _completeness(key: PrivateKey, operator: NoteSigner) -> str:
    """A completeness proof over seqs 1..6 of one device (seq 4 missing), as the store builds."""
    device = "cp-0001"
    envelopes: dict[int, bytes] = {}
    prev = bytes(32)
    for seq in range(1, 7):
        raw = sign_reading(
            _reading(device, seq, prev), key, format=FORMAT_JWS if seq % 2 else FORMAT_COSE
        )
        envelopes[seq] = raw
        prev = merkle.leaf_hash(raw)
    del envelopes[4]
    log = BatchLog(ORIGIN)
    stored: list[StoredReading] = []
    batches: dict[int, StoredBatch] = {}
    for batch_id, group in enumerate(([1, 2, 3], [5, 6]), start=1):
        others = [parse_envelope(sign_reading(_reading(f"o-{batch_id}", 1, bytes(32)), key))]
        members = [parse_envelope(envelopes[s]) for s in group]
        sealed = seal_batch(batch_id, [*others, *members])
        for offset, env in enumerate(members, start=len(others)):
            stored.append(
                StoredReading(
                    env.reading.seq,
                    env.format,
                    env.raw,
                    sealed.leaf_hashes[offset],
                    batch_id,
                    offset,
                )
            )
        index = log.append(sealed.size, sealed.root)
        batches[batch_id] = StoredBatch(batch_id, sealed.root, index, sealed.leaf_hashes, ())
    batches = {
        b.id: dataclasses.replace(b, log_path=tuple(log.inclusion_proof(b.log_index)))
        for b in batches.values()
    }
    proof = build_completeness(
        device_id=device,
        from_seq=1,
        to_seq=6,
        latest_seq=6,
        readings=stored,
        batches=batches,
        log_size=log.size,
        log_root=log.root(),
        checkpoint=log.checkpoint(operator),
    )
    return json.dumps(completeness_to_dict(proof), indent=1)


@cache
def corpus() -> Corpus:
    """The seed corpus (built once per process)."""
    ed = _pem_key(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    p256 = _pem_key(ec.derive_private_key(0xC17A_4C40_0001, ec.SECP256R1()))
    operator = NoteSigner.from_seed(ORIGIN, bytes(range(32, 64)))
    keys = (ed, p256)

    cose: list[bytes] = []
    jws: list[bytes] = []
    envelopes = []
    prev = {0: bytes(32), 1: bytes(32)}
    for i in range(12):
        k = i % 2
        fmt = FORMAT_COSE if i % 3 else FORMAT_JWS
        raw = sign_reading(_reading(f"dev-{k}", i // 2 + 1, prev[k]), keys[k], format=fmt)
        prev[k] = merkle.leaf_hash(raw)
        (cose if fmt == FORMAT_COSE else jws).append(raw)
        envelopes.append(parse_envelope(raw))

    log = BatchLog(ORIGIN, [(3, merkle.leaf_hash(b"an earlier batch"))])
    batches = [seal_batch(1, envelopes[:5]), seal_batch(2, envelopes[5:])]
    indexes = [log.append(b.size, b.root) for b in batches]
    note = log.checkpoint(operator)
    receipts = [
        dumps_receipt(r)
        for b, i in zip(batches, indexes, strict=True)
        for r in log.receipts(b, i, note, log.size)
    ]
    checkpoints = (note, log.checkpoint(operator, 1), log.checkpoint(operator, 2))
    return Corpus(
        device_keys=keys,
        operator=operator,
        cose=tuple(cose),
        jws=tuple(jws),
        receipts=tuple(receipts),
        completeness=(_completeness(ed, operator),),
        checkpoints=checkpoints,
    )


def json_doc(text: str) -> Any:
    return json.loads(text)
