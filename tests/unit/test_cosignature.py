"""c2sp.org/tlog-cosignature v1 (Ed25519): anchor.cosignature against the specification.

The verifier and signer (tests/witness_spec.py) are written from the spec text alone, with nothing
but ``cryptography`` and the standard library (no anchor.cosignature, no anchor.checkpoint), so the
lines we produce are checked by an independent reading of the spec, and lines that reading
produces are checked by ours. The transparency-dev/witness vectors (tests/vectors/witness) tie
the witness's decision and key IDs to another implementation.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_spec import EM_DASH, spec_key_id, spec_message, spec_sign, spec_verify

from anchor.checkpoint import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    open_checkpoint,
    parse_note_unverified,
    sign_checkpoint,
)
from anchor.cosignature import (
    MAX_TIMESTAMP,
    CosignerSigner,
    CosignerVerifier,
    add_cosignatures,
    cosignature_message,
    generate_cosigner_key,
    verified_cosignatures,
)
from anchor.errors import CheckpointError, KeyMaterialError, Reason
from anchor.witness_protocol import (
    Accepted,
    AddCheckpointRequest,
    WitnessedCheckpoint,
    decide_add_checkpoint,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "witness"
TD = json.loads((VECTORS / "transparency-dev-witness.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------- helpers
LOG = NoteSigner.from_seed("example.com/log", bytes(range(32)))
TEXT = Checkpoint("example.com/log", 7, hashlib.sha256(b"root").digest()).body().decode()
NOTE = sign_checkpoint(Checkpoint("example.com/log", 7, hashlib.sha256(b"root").digest()), LOG)
SEED = bytes(range(100, 132))
W = CosignerSigner.from_seed("witness.example/w1", SEED)


def test_our_line_verifies_with_the_spec_reading() -> None:
    line = W.cosign(TEXT, 1_679_315_147)
    ts = spec_verify(line, TEXT, W.name, W.public_key)
    assert ts == 1_679_315_147


def test_a_line_from_the_spec_reading_verifies_with_ours() -> None:
    private = Ed25519PrivateKey.from_private_bytes(SEED)
    line = spec_sign(TEXT, W.name, private, 1_700_000_000)
    assert line == W.cosign(TEXT, 1_700_000_000)  # Ed25519 is deterministic
    found = verified_cosignatures(add_cosignatures(NOTE, [line]), [W.verifier])
    assert [(c.witness.name, c.timestamp) for c in found] == [(W.name, 1_700_000_000)]


def test_the_signed_message_is_the_specs() -> None:
    assert cosignature_message(TEXT, 42) == spec_message(TEXT, 42)
    assert cosignature_message(TEXT, 42).startswith(b"cosignature/v1\ntime 42\nexample.com/log\n")


def test_key_id_uses_type_byte_0x04() -> None:
    assert W.key_hash == spec_key_id(W.name, W.public_key)
    note_key = NoteVerifier.from_public_key(W.name, W.public_key)
    assert note_key.key_hash != W.key_hash  # 0x01 would give another ID
    vkey = W.verifier.vkey()
    name, hex_id, b64 = vkey.split("+", 2)
    assert (name, hex_id) == (W.name, W.key_hash.hex())
    assert base64.b64decode(b64) == b"\x04" + W.public_key


def test_vkey_and_skey_round_trip() -> None:
    verifier = CosignerVerifier.from_vkey(W.verifier.vkey())
    assert verifier == W.verifier
    assert verifier.vkey() == W.verifier.vkey()
    again = CosignerSigner.from_skey(W.skey())
    assert again.skey() == W.skey()
    assert again.cosign(TEXT, 5) == W.cosign(TEXT, 5)
    fresh = generate_cosigner_key("witness.example/w2")
    assert CosignerVerifier.from_vkey(fresh.verifier.vkey()) == fresh.verifier


def test_a_note_key_is_not_a_cosigner_key_nor_the_other_way_round() -> None:
    with pytest.raises(KeyMaterialError):
        CosignerVerifier.from_vkey(LOG.verifier.vkey())
    with pytest.raises(KeyMaterialError):
        NoteVerifier.from_vkey(W.verifier.vkey())
    with pytest.raises(KeyMaterialError):
        CosignerSigner.from_skey(LOG.skey())


def test_a_vkey_whose_id_does_not_match_is_refused() -> None:
    name, _, b64 = W.verifier.vkey().split("+", 2)
    with pytest.raises(KeyMaterialError):
        CosignerVerifier.from_vkey(f"{name}+00000000+{b64}")


@pytest.mark.parametrize("timestamp", [0, 2**63, 2**64 - 1, -1])
def test_timestamps_out_of_range_are_refused_when_signing(timestamp: int) -> None:
    with pytest.raises(CheckpointError) as exc:
        W.cosign(TEXT, timestamp)
    assert exc.value.reason == Reason.WITNESS_COSIGNATURE_INVALID


def test_the_largest_timestamp_is_fine() -> None:
    assert spec_verify(W.cosign(TEXT, MAX_TIMESTAMP), TEXT, W.name, W.public_key) == MAX_TIMESTAMP


@pytest.mark.parametrize("timestamp", [0, 2**63])
def test_lines_with_timestamps_out_of_range_are_refused_when_verifying(timestamp: int) -> None:
    # Made by hand (our signer refuses to): a valid Ed25519 signature over the spec's message.
    private = Ed25519PrivateKey.from_private_bytes(SEED)
    signature = private.sign(spec_message(TEXT, timestamp))
    payload = W.key_hash + timestamp.to_bytes(8, "big") + signature
    line = f"{EM_DASH} {W.name} {base64.b64encode(payload).decode()}\n"
    with pytest.raises(CheckpointError) as exc:
        verified_cosignatures(NOTE + line, [W.verifier])
    assert exc.value.reason == Reason.WITNESS_COSIGNATURE_INVALID


def test_tampered_text_fails() -> None:
    line = W.cosign(TEXT, 1000)
    other = sign_checkpoint(Checkpoint("example.com/log", 8, bytes(32)), LOG)
    with pytest.raises(CheckpointError) as exc:
        verified_cosignatures(other + line, [W.verifier])
    assert exc.value.reason == Reason.WITNESS_COSIGNATURE_INVALID
    with pytest.raises(InvalidSignature):
        spec_verify(line, other.split("\n\n")[0] + "\n", W.name, W.public_key)


def test_tampered_timestamp_fails() -> None:
    raw = bytearray(base64.b64decode(W.cosign(TEXT, 1000).rsplit(" ", 1)[1]))
    raw[11] ^= 1  # the timestamp's last byte: 1000 -> 1001
    line = f"{EM_DASH} {W.name} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(CheckpointError) as exc:
        verified_cosignatures(NOTE + line, [W.verifier])
    assert exc.value.reason == Reason.WITNESS_COSIGNATURE_INVALID


def test_lines_from_unknown_keys_are_ignored() -> None:
    other = generate_cosigner_key("witness.example/other")
    note = add_cosignatures(NOTE, [other.cosign(TEXT, 9), W.cosign(TEXT, 10)])
    assert [c.witness.name for c in verified_cosignatures(note, [W.verifier])] == [W.name]
    # Same name as W, another key (so another key ID): ignored, not a failure.
    impostor = CosignerSigner.from_seed(W.name, bytes(32))
    note = add_cosignatures(NOTE, [impostor.cosign(TEXT, 11)])
    assert verified_cosignatures(note, [W.verifier]) == ()
    # The log's own signature is never taken for a cosignature.
    assert verified_cosignatures(NOTE, [W.verifier]) == ()


def test_a_cosigned_note_still_opens_with_the_log_key() -> None:
    note = add_cosignatures(NOTE, [W.cosign(TEXT, 12)])
    assert open_checkpoint(note, LOG.verifier).size == 7


def test_the_spec_example_line_has_the_specs_layout() -> None:
    # tlog-cosignature, first example: the cosignature's timestamp is the "time" line shown
    # under "Ed25519 signed message" (1679315147).
    example = (
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
        "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URY"
        "N7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
        "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dl"
        "rDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
    )
    sig = parse_note_unverified(example).signatures[1]
    assert sig.name == "witness.example.com/w1"
    assert len(sig.signature) == 8 + 64
    assert int.from_bytes(sig.signature[:8], "big") == 1_679_315_147


# ---------------------------------------------------------------- transparency-dev/witness vectors
def test_transparency_dev_vectors_are_accepted_in_order() -> None:
    log_key = NoteVerifier.from_vkey(TD["log_vkey"])
    keys = {TD["log_origin"]: [log_key]}
    state: dict[str, WitnessedCheckpoint] = {}

    first = decide_add_checkpoint(AddCheckpointRequest(0, (), TD["init_note"]), keys, state.get)
    assert isinstance(first, Accepted)
    assert (first.checkpoint.origin, first.checkpoint.size) == ("monkeys", 5)
    state["monkeys"] = WitnessedCheckpoint("monkeys", 5, first.checkpoint.root, TD["init_note"])

    proof = tuple(bytes.fromhex(h) for h in TD["consistency_proof_5_8_hex"])
    second = decide_add_checkpoint(AddCheckpointRequest(5, proof, TD["next_note"]), keys, state.get)
    assert isinstance(second, Accepted)
    assert second.checkpoint.size == 8
    assert second.note_text == TD["next_note"].split("\n\n")[0] + "\n"


def test_a_cosigner_from_the_transparency_dev_witness_seed_has_the_spec_key_id() -> None:
    # Upstream keeps its witness key as a type-0x01 note skey and cosigns with its seed.
    name, hex_id, b64 = TD["witness_note_skey"].removeprefix("PRIVATE+KEY+").split("+", 2)
    raw = base64.b64decode(b64)
    assert raw[0] == 0x01 and (name, hex_id) == ("witness", "f13a86db")
    cosigner = CosignerSigner.from_seed(name, raw[1:])
    note_vkey = NoteVerifier.from_vkey(TD["witness_note_vkey"])
    assert cosigner.public_key == note_vkey.public_key
    assert cosigner.key_hash == spec_key_id("witness", note_vkey.public_key)
    assert cosigner.key_hash != bytes.fromhex("f13a86db")
    text = TD["next_note"].split("\n\n")[0] + "\n"
    line = cosigner.cosign(text, 1_700_000_000)
    assert spec_verify(line, text, "witness", note_vkey.public_key) == 1_700_000_000
