"""The batch-log leaf of receipt v2 (DESIGN.md "Batch log") and the attack it closes.

Issue 10, item 6: a genuine receipt with ``batch.size`` 8 -> 7 and ``batch.id`` 999999 verified
as VALID everywhere. An RFC 9162 inclusion proof does not bind the tree size for every index
(leaf 0 of 8 and leaf 0 of 7 have audit paths of the same length and the same hashing order),
and the v1 log leaf, ``H(0x00 || batch.root)``, did not carry the size either. The v2 log leaf
is ``H(0x00 || uint64_be(batch.size) || batch.root)``.

The oracle here is ``tests/reference_merkle.py`` and ``tests/vectors/log-leaf`` (both written
from the RFC and DESIGN text with hashlib/struct, never with ``anchor.merkle``): it shows that
the attack passed with the v1 leaf and fails with the v2 one; then the production code is held
to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import reference_merkle as ref  # tests/ is not a package

from anchor import merkle
from anchor.checkpoint import generate_note_key
from anchor.cli.commands import main
from anchor.envelope import FORMAT_COSE, Reading, parse_envelope, sign_reading
from anchor.errors import ProofError, ReceiptError
from anchor.keys import PrivateKey
from anchor.receipt import Receipt, dumps_receipt, loads_receipt, receipt_to_dict
from anchor.sealing import BatchLog, seal_batch
from anchor.verify import verify_receipt

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "log-leaf"
ORIGIN = "unit.cityanchor.example/log"


def _h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


# ------------------------------------------------------------------------ the leaf encoding


def test_known_answers_match_the_generator_and_the_core() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("log_leaf_generate", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    text = (VECTORS / "known.json").read_text()
    assert text == generator.document(), "run tests/vectors/log-leaf/generate.py"
    cases = json.loads(text)["cases"]
    assert [c["size"] for c in cases][:4] == [1, 2, 7, 8]
    for c in cases:
        root = bytes.fromhex(c["root"])
        assert merkle.log_leaf_data(c["size"], root).hex() == c["leaf_data"]
        assert merkle.log_leaf_hash(c["size"], root).hex() == c["leaf_hash"]
        assert ref.leaf(ref.log_leaf_input(c["size"], root)).hex() == c["leaf_hash"]


def test_leaf_data_is_40_bytes_big_endian_size_then_root() -> None:
    root = _h("root")
    data = merkle.log_leaf_data(2**64 - 1, root)
    assert len(data) == merkle.LOG_LEAF_DATA_SIZE == 40
    assert data == b"\xff" * 8 + root
    assert merkle.log_leaf_data(8, root) == bytes(7) + b"\x08" + root
    # Not the v1 leaf, whatever the size.
    assert merkle.log_leaf_hash(1, root) != merkle.leaf_hash(root)
    # The SM3 scheme hashes the same 40 bytes.
    assert merkle.log_leaf_hash(8, root, hasher=merkle.SM3) == merkle.SM3.hash_leaf(
        bytes(7) + b"\x08" + root
    )


@pytest.mark.parametrize(
    ("size", "root"),
    [
        (0, _h("r")),
        (-1, _h("r")),
        (2**64, _h("r")),
        (True, _h("r")),
        (8.0, _h("r")),
        (8, _h("r")[:31]),
        (8, _h("r") + b"\x00"),
        (8, _h("r").hex()),
    ],
)
def test_bad_sizes_and_roots_are_refused(size: object, root: object) -> None:
    with pytest.raises(ProofError) as exc:
        merkle.log_leaf_data(size, root)  # type: ignore[arg-type]
    assert exc.value.reason == "proof_malformed"


# --------------------------------------------------------- the attack, on the reference code

ENVELOPES = [b"reading %d" % i for i in range(8)]  # leaf inputs of one batch of 8
OTHER_BATCHES = [(5, _h("batch a")), (3, _h("batch b")), (12, _h("batch c"))]


def _log_v1(batch_root: bytes) -> list[bytes]:
    """The log's leaf inputs as v1 built them: the bare batch roots."""
    return [root for _, root in OTHER_BATCHES] + [batch_root]


def _log_v2(batch_size: int, batch_root: bytes) -> list[bytes]:
    """The log's leaf inputs as v2 builds them: uint64_be(size) || root."""
    entries = [*OTHER_BATCHES, (batch_size, batch_root)]
    return [ref.log_leaf_input(n, root) for n, root in entries]


def _receipt_checks(index: int, claimed_size: int, log_inputs: list[bytes], v2: bool) -> bool:
    """Every proof check of a receipt for ENVELOPES[index] that claims ``claimed_size``, done
    with the reference code: the batch path, then the log path from the claimed values."""
    batch_root = ref.mth(ENVELOPES)
    leaf = ref.leaf(ENVELOPES[index])
    batch_path = ref.path(index, ENVELOPES)  # the genuine path, from the batch of 8
    if ref.root_from_path(index, claimed_size, leaf, batch_path) != batch_root:
        return False
    log_index = len(log_inputs) - 1
    log_leaf_input = ref.log_leaf_input(claimed_size, batch_root) if v2 else batch_root
    log_root = ref.mth(log_inputs)
    log_path = ref.path(log_index, log_inputs)
    found = ref.root_from_path(log_index, len(log_inputs), ref.leaf(log_leaf_input), log_path)
    return found == log_root


@pytest.mark.parametrize("index", range(8))
def test_size_8_to_7_passed_rfc9162_with_the_v1_leaf_and_fails_with_v2(index: int) -> None:
    batch_root = ref.mth(ENVELOPES)
    v1_log, v2_log = _log_v1(batch_root), _log_v2(8, batch_root)
    # The genuine receipt verifies under both leaf kinds.
    assert _receipt_checks(index, 8, v1_log, v2=False)
    assert _receipt_checks(index, 8, v2_log, v2=True)
    # Lowered to 7: for every index below 6 the RFC 9162 batch path alone still checks out
    # (index 6 is the 7th leaf, whose path in a tree of 7 hashes in another order; 7 is out of
    # range), and the v1 log leaf does not carry the size: the attack.
    assert _receipt_checks(index, 7, v1_log, v2=False) is (index < 6)
    # The v2 leaf carries the size: the log path no longer leads to the log root.
    assert not _receipt_checks(index, 7, v2_log, v2=True)


def test_production_rfc9162_verifier_alone_accepts_the_lowered_size() -> None:
    # The same fact through anchor.merkle: verify_inclusion is correct RFC 9162, and RFC 9162
    # simply does not bind the size here. Only the log leaf can.
    leaves = [ref.leaf(e) for e in ENVELOPES]
    root = ref.mth(ENVELOPES)
    for index in range(6):
        path = ref.path(index, ENVELOPES)
        merkle.verify_inclusion(leaves[index], index, 8, path, root)
        merkle.verify_inclusion(leaves[index], index, 7, path, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(leaves[6], 6, 7, ref.path(6, ENVELOPES), root)


# ------------------------------------------------------- the attack, on the production code


@dataclasses.dataclass
class World:
    receipts: list[Receipt]
    key: PrivateKey
    operator_vkey: object
    log_root: bytes
    entries: list[tuple[int, bytes]]


@pytest.fixture(scope="module")
def world() -> World:
    key = PrivateKey.generate("Ed25519")
    operator = generate_note_key(ORIGIN)
    prev = bytes(32)
    envelopes = []
    for seq in range(1, 9):
        reading = Reading("dev-8", seq, 1_764_000_000_000 + seq, "iot.noise", {"v": seq}, prev)
        raw = sign_reading(reading, key, format=FORMAT_COSE)
        prev = merkle.leaf_hash(raw)
        envelopes.append(parse_envelope(raw))
    log = BatchLog(ORIGIN, OTHER_BATCHES)
    batch = seal_batch(1, envelopes)
    index = log.append(batch.size, batch.root)
    receipts = log.receipts(batch, index, log.checkpoint(operator), log.size)
    entries = [*OTHER_BATCHES, (batch.size, batch.root)]
    return World(receipts, key, operator.verifier, log.root(), entries)


def _checks(w: World, receipt: Receipt) -> dict[str, tuple[str, str | None]]:
    report = verify_receipt(
        receipt,
        device_keys=[w.key.public_key],
        log_verifiers=[w.operator_vkey],  # type: ignore[list-item]
    )
    return {c.name: (c.status, c.reason) for c in report.checks}


def test_production_log_matches_the_reference_log(world: World) -> None:
    inputs = [ref.log_leaf_input(n, root) for n, root in world.entries]
    assert world.log_root == ref.mth(inputs)
    r = world.receipts[0]
    assert (r.batch.size, r.log.index, r.log.size) == (8, 3, 4)
    assert list(r.log.path) == ref.path(3, inputs)


def test_lowered_batch_size_fails_log_path(world: World) -> None:
    genuine = world.receipts[0]
    assert set(_checks(world, genuine).values()) <= {("pass", None), ("skip", None)}
    tampered = dataclasses.replace(genuine, batch=dataclasses.replace(genuine.batch, size=7))
    checks = _checks(world, tampered)
    assert checks["batch_path"] == ("pass", None)  # RFC 9162 alone: still fine
    assert checks["log_path"] == ("fail", "root_mismatch")  # the v2 leaf binds the size
    failed = {name for name, (status, _) in checks.items() if status == "fail"}
    assert failed == {"log_path"}


def test_batch_id_is_gone_and_refused(world: World) -> None:
    doc = receipt_to_dict(world.receipts[0])
    assert "id" not in doc["batch"]
    doc["batch"]["id"] = 999999
    with pytest.raises(ReceiptError) as exc:
        loads_receipt(json.dumps(doc))
    assert exc.value.reason == "receipt_malformed"
    assert exc.value.detail.startswith("batch.id:")


def _as_v1(receipt: Receipt) -> str:
    doc = receipt_to_dict(receipt)
    doc["version"] = "cityanchor/receipt/v1"
    doc["batch"] = {"id": 1, **doc["batch"]}
    return json.dumps(doc)


def test_v1_receipt_is_refused_with_a_message_that_says_so(world: World) -> None:
    with pytest.raises(ReceiptError) as exc:
        loads_receipt(_as_v1(world.receipts[0]))
    assert exc.value.reason == "receipt_version_retired"
    assert exc.value.detail.startswith("version: cityanchor/receipt/v1 receipts are refused")
    assert "batch.size" in exc.value.detail and "cityanchor/receipt/v2" in exc.value.detail


def test_cli_names_the_failing_check(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    genuine = world.receipts[2]
    tampered = dataclasses.replace(genuine, batch=dataclasses.replace(genuine.batch, size=7))
    (tmp_path / "genuine.json").write_text(dumps_receipt(genuine))
    (tmp_path / "tampered.json").write_text(dumps_receipt(tampered))
    (tmp_path / "v1.json").write_text(_as_v1(genuine))
    (tmp_path / "dev.jwk").write_text(json.dumps(world.key.public_key.to_jwk()))
    keys = ["--device-key", str(tmp_path / "dev.jwk")]
    assert main(["verify", str(tmp_path / "genuine.json"), *keys]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "tampered.json"), *keys]) == 1
    out = capsys.readouterr().out
    assert "FAIL log_path" in out and "[root_mismatch]" in out
    assert "FAIL batch_path" not in out
    assert main(["verify", str(tmp_path / "v1.json"), *keys]) == 1
    out = capsys.readouterr().out
    assert "[receipt_version_retired]" in out and "cityanchor/receipt/v1 receipts are" in out
