"""c2sp.org/tlog-witness add-checkpoint: every status path of the pure decision and the formats.

400 for each format error, 404 unknown log, 403 bad or missing log signature, 409 with the
witness's size, 422 for each inconsistency, 200 otherwise; checks in the spec's order.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from anchor import merkle
from anchor.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from anchor.errors import Reason
from anchor.witness_protocol import (
    MAX_PROOF_LINES,
    MAX_REQUEST_BYTES,
    Accepted,
    AddCheckpointRequest,
    Refused,
    WitnessedCheckpoint,
    WitnessRequestError,
    decide_add_checkpoint,
    format_add_checkpoint,
    format_size_body,
    origin_hash,
    parse_add_checkpoint,
    parse_cosignature_response,
    parse_size_body,
)

ORIGIN = "example.com/log"
LOG = NoteSigner.from_seed(ORIGIN, bytes(range(32)))
ROTATED = NoteSigner.from_seed(ORIGIN, bytes(range(1, 33)))
STRANGER = NoteSigner.from_seed("stranger", bytes(range(2, 34)))
KEYS = {ORIGIN: [LOG.verifier]}
LEAVES = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(40)]
EMPTY_ROOT = hashlib.sha256(b"").digest()


def note(size: int, *, signer: NoteSigner = LOG, origin: str = ORIGIN, root: bytes | None = None):
    cp = Checkpoint(origin, size, merkle.root(LEAVES[:size]) if root is None else root)
    return sign_checkpoint(cp, signer)


def witnessed(size: int, root: bytes | None = None) -> dict[str, WitnessedCheckpoint]:
    r = merkle.root(LEAVES[:size]) if root is None else root
    return {ORIGIN: WitnessedCheckpoint(ORIGIN, size, r, note(size, root=r))}


def decide(
    old: int,
    proof: list[bytes] | tuple[bytes, ...],
    text: str,
    state: dict[str, WitnessedCheckpoint] | None = None,
    keys: dict[str, list] | None = None,
) -> Accepted | Refused:
    request = AddCheckpointRequest(old, tuple(proof), text)
    return decide_add_checkpoint(request, KEYS if keys is None else keys, (state or {}).get)


def refused(outcome: Accepted | Refused, status: int, reason: Reason) -> Refused:
    assert isinstance(outcome, Refused), outcome
    assert (outcome.status, outcome.reason) == (status, reason), outcome
    return outcome


# ------------------------------------------------------------------------------------- formats
def test_request_round_trip() -> None:
    proof = merkle.consistency_proof(LEAVES[:9], 5)
    body = format_add_checkpoint(5, proof, note(9))
    assert body.startswith(b"old 5\n" + base64.b64encode(proof[0]) + b"\n")
    assert b"\n\n" + note(9).encode() == body[body.index(b"\n\n") :]
    request = parse_add_checkpoint(body)
    assert request == AddCheckpointRequest(5, tuple(proof), note(9))


def test_the_spec_example_request_parses() -> None:
    body = (
        "old 20852014\n"
        "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n"
        "jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n"
        "5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n"
        "/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n"
        "\n"
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
        "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN"
        "7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    ).encode()
    request = parse_add_checkpoint(body)
    assert request.old_size == 20852014 and len(request.proof) == 4
    assert request.note.startswith("example.com/behind-the-sofa\n")
    # A witness that does not know this log answers 404 (its origin is checked first).
    refused(decide_add_checkpoint(request, KEYS, {}.get), 404, Reason.WITNESS_UNKNOWN_LOG)


def test_size_body_and_cosignature_response() -> None:
    assert format_size_body(12) == b"12\n"
    assert parse_size_body(b"12\n") == 12
    for bad in (b"12", b"012\n", b"-1\n", b"1 \n", b"\n", b"1\n\n"):
        with pytest.raises(WitnessRequestError):
            parse_size_body(bad)
    line = "\u2014 w AAAAAAAAAAAAAAAAAAAAAAAA\n"
    assert parse_cosignature_response((line + line).encode()) == (line, line)
    for bad in (b"", line.rstrip("\n").encode(), b"hello\n", (line + "\n").encode()):
        with pytest.raises(WitnessRequestError):
            parse_cosignature_response(bad)


def test_origin_hash_is_lowercase_hex_sha256() -> None:
    assert origin_hash(ORIGIN) == hashlib.sha256(ORIGIN.encode()).hexdigest()
    assert origin_hash(ORIGIN) == origin_hash(ORIGIN).lower()


# ----------------------------------------------------------------------------------------- 400
GOOD_PROOF_LINE = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    "head",
    [
        "",  # no old line at all
        "new 0\n",
        "old\n",
        "old  0\n",
        "old 01\n",
        "old -1\n",
        "old +1\n",
        "old 1.0\n",
        "old 0x1\n",
        f"old {2**64}\n",
        "OLD 0\n",
        "old 0 \n",
        f"old 1\n{GOOD_PROOF_LINE[:-1]}\n",  # not base64
        f"old 1\n{base64.b64encode(bytes(31)).decode()}\n",  # 31 bytes
        f"old 1\n{base64.b64encode(bytes(33)).decode()}\n",  # 33 bytes
        f"old 1\n{GOOD_PROOF_LINE.rstrip('=')}\n",  # no padding
        f"old 1\n{GOOD_PROOF_LINE[:-2]}B=\n",  # stray bits: not canonical
        f"old 1\n{GOOD_PROOF_LINE} \n",
        f"old 1\n{base64.urlsafe_b64encode(bytes([0xFB] * 32)).decode()}\n",  # base64url
        "old 1\n" + f"{GOOD_PROOF_LINE}\n" * (MAX_PROOF_LINES + 1),
    ],
)
def test_format_errors_are_400(head: str) -> None:
    body = (head + "\n" + note(5)).encode()
    with pytest.raises(WitnessRequestError) as exc:
        parse_add_checkpoint(body)
    assert exc.value.reason == Reason.WITNESS_REQUEST_MALFORMED


def test_sixty_three_proof_lines_are_fine() -> None:
    body = ("old 1\n" + f"{GOOD_PROOF_LINE}\n" * MAX_PROOF_LINES + "\n" + note(5)).encode()
    assert len(parse_add_checkpoint(body).proof) == MAX_PROOF_LINES


@pytest.mark.parametrize(
    "body",
    [
        b"old 0\n" + note(5).encode(),  # no empty line before the checkpoint
        b"old 0",
        b"\xff\xfeold 0\n\n" + note(5).encode(),  # not UTF-8
        b"old 0\n\n" + b"x" * MAX_REQUEST_BYTES,  # too large
    ],
)
def test_body_level_errors_are_400(body: bytes) -> None:
    with pytest.raises(WitnessRequestError):
        parse_add_checkpoint(body)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a note\n",
        "example.com/log\n5\nroot\n\n",  # no signature line
        "example.com/log\n05\n" + base64.b64encode(bytes(32)).decode() + "\n\n\u2014 x AAAAAQ==\n",
    ],
)
def test_a_note_that_is_not_a_checkpoint_is_400(text: str) -> None:
    refused(decide(0, [], text), 400, Reason.WITNESS_REQUEST_MALFORMED)


def test_old_above_the_checkpoint_size_is_400() -> None:
    refused(decide(6, [], note(5)), 400, Reason.WITNESS_REQUEST_MALFORMED)
    # Even when the witness's own size is that old size (a smaller checkpoint after a larger).
    refused(decide(8, [], note(5), witnessed(8)), 400, Reason.WITNESS_REQUEST_MALFORMED)


# --------------------------------------------------------------------------------- 404 and 403
def test_unknown_origin_is_404() -> None:
    refused(
        decide(0, [], note(5, signer=STRANGER, origin="stranger")), 404, Reason.WITNESS_UNKNOWN_LOG
    )


def test_no_trusted_signature_is_403() -> None:
    # The right origin, signed by a key the witness does not trust for it.
    impostor = NoteSigner.from_seed(ORIGIN, bytes(range(5, 37)))
    refused(decide(0, [], note(5, signer=impostor)), 403, Reason.WITNESS_LOG_SIGNATURE_INVALID)


def test_a_trusted_signature_that_fails_is_403() -> None:
    good = note(5)
    raw = bytearray(base64.b64decode(good.rsplit(" ", 1)[1]))
    raw[-1] ^= 1
    bad = good.rsplit(" ", 1)[0] + " " + base64.b64encode(bytes(raw)).decode() + "\n"
    refused(decide(0, [], bad), 403, Reason.WITNESS_LOG_SIGNATURE_INVALID)


def test_one_bad_line_from_any_trusted_key_is_403_even_beside_a_good_one() -> None:
    keys = {ORIGIN: [LOG.verifier, ROTATED.verifier]}
    good = note(5)
    forged_line = note(6, signer=ROTATED).split("\n\n")[1]  # ROTATED's line over other text
    refused(decide(0, [], good + forged_line, keys=keys), 403, Reason.WITNESS_LOG_SIGNATURE_INVALID)
    # Either key alone is enough (a rotation), and both good lines are fine.
    both = good + note(5, signer=ROTATED).split("\n\n")[1]
    assert isinstance(decide(0, [], both, keys=keys), Accepted)
    assert isinstance(decide(0, [], note(5, signer=ROTATED), keys=keys), Accepted)


def test_authentication_comes_before_409() -> None:
    # A stranger learns nothing about the witness's state: 403, not 409 with the size.
    impostor = NoteSigner.from_seed(ORIGIN, bytes(range(5, 37)))
    refused(
        decide(3, [], note(5, signer=impostor), witnessed(8)),
        403,
        Reason.WITNESS_LOG_SIGNATURE_INVALID,
    )


# ----------------------------------------------------------------------------------------- 409
def test_old_other_than_the_witnessed_size_is_409_with_that_size() -> None:
    out = refused(decide(3, [], note(9), witnessed(5)), 409, Reason.WITNESS_SIZE_CONFLICT)
    assert out.size == 5
    out = refused(decide(5, [], note(9)), 409, Reason.WITNESS_SIZE_CONFLICT)
    assert out.size == 0  # never cosigned: zero
    out = refused(decide(0, [], note(9), witnessed(5)), 409, Reason.WITNESS_SIZE_CONFLICT)
    assert out.size == 5
    # A smaller checkpoint after a larger one, sent with its own history: 409 too.
    out = refused(decide(3, [], note(4), witnessed(8)), 409, Reason.WITNESS_SIZE_CONFLICT)
    assert out.size == 8


# ----------------------------------------------------------------------------------------- 422
def test_size_zero_with_another_root_is_422() -> None:
    out = refused(decide(0, [], note(0, root=bytes(32))), 422, Reason.WITNESS_INCONSISTENT)
    assert out.evidence


def test_old_zero_with_a_proof_is_422() -> None:
    proof = merkle.consistency_proof(LEAVES[:9], 5)
    refused(decide(0, proof, note(9)), 422, Reason.WITNESS_INCONSISTENT)


def test_a_proof_that_does_not_verify_is_422() -> None:
    proof = merkle.consistency_proof(LEAVES[:9], 5)
    bad = [proof[0], bytes(32), *proof[2:]]
    out = refused(decide(5, bad, note(9), witnessed(5)), 422, Reason.WITNESS_INCONSISTENT)
    assert out.evidence and out.checkpoint is not None and out.checkpoint.size == 9
    refused(decide(5, proof[:-1], note(9), witnessed(5)), 422, Reason.WITNESS_INCONSISTENT)
    refused(decide(5, [], note(9), witnessed(5)), 422, Reason.WITNESS_INCONSISTENT)


def test_a_fork_is_422() -> None:
    # Same size, another root.
    forked = note(8, root=hashlib.sha256(b"fork").digest())
    refused(decide(8, [], forked, witnessed(8)), 422, Reason.WITNESS_INCONSISTENT)
    # A larger tree that does not extend the witnessed one, with the proof of its own history.
    other_leaves = [merkle.leaf_hash(b"x" + i.to_bytes(4, "big")) for i in range(12)]
    fork_note = note(12, root=merkle.root(other_leaves))
    own_proof = merkle.consistency_proof(other_leaves, 8)
    refused(decide(8, own_proof, fork_note, witnessed(8)), 422, Reason.WITNESS_INCONSISTENT)
    # ...and with the honest proof: still 422.
    honest = merkle.consistency_proof(LEAVES[:12], 8)
    refused(decide(8, honest, fork_note, witnessed(8)), 422, Reason.WITNESS_INCONSISTENT)


def test_equal_sizes_take_no_proof() -> None:
    proof = merkle.consistency_proof(LEAVES[:9], 5)
    refused(decide(8, proof[:1], note(8), witnessed(8)), 422, Reason.WITNESS_INCONSISTENT)


# ----------------------------------------------------------------------------------------- 200
def test_the_happy_paths_are_200() -> None:
    first = decide(0, [], note(5))
    assert isinstance(first, Accepted) and first.status == 200
    assert first.note_text == Checkpoint(ORIGIN, 5, merkle.root(LEAVES[:5])).body().decode()
    proof = merkle.consistency_proof(LEAVES[:9], 5)
    nxt = decide(5, proof, note(9), witnessed(5))
    assert isinstance(nxt, Accepted) and nxt.checkpoint.size == 9
    # The same checkpoint again: cosigned again (a fresher timestamp).
    assert isinstance(decide(9, [], note(9), witnessed(9)), Accepted)
    # The empty tree, then anything (no proof from 0).
    assert isinstance(decide(0, [], note(0, root=EMPTY_ROOT)), Accepted)
    assert isinstance(decide(0, [], note(7), witnessed(0, EMPTY_ROOT)), Accepted)


def test_signatures_from_unknown_keys_are_ignored() -> None:
    extra = note(5, signer=STRANGER).split("\n\n")[1]
    assert isinstance(decide(0, [], note(5) + extra), Accepted)


def test_extension_lines_are_part_of_the_cosigned_text() -> None:
    cp = Checkpoint(ORIGIN, 5, merkle.root(LEAVES[:5]), ("ext line",))
    out = decide(0, [], sign_checkpoint(cp, LOG))
    assert isinstance(out, Accepted)
    assert out.note_text.endswith("ext line\n")
