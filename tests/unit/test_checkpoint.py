"""Tests for anchor.checkpoint: C2SP signed notes and tlog-checkpoints.

Known answers come from tests/vectors/note/ (golang/mod, C2SP, transparency-dev/formats; see
SOURCE.md there). Every negative case asserts the stable ``reason``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor.checkpoint import (
    MAX_NOTE_SIZE,
    MAX_SIGNATURES,
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    generate_note_key,
    open_checkpoint,
    open_note,
    parse_checkpoint_unverified,
    parse_note_unverified,
    sign_checkpoint,
    sign_note,
)
from anchor.errors import AnchorError, CheckpointError, KeyMaterialError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "note"
EM = "\u2014"


def _load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


GO = _load("golang-mod-note.json")
C2SP = _load("c2sp-signed-note-example.json")
SUMDB = _load("formats-sumdb-checkpoint.json")
FOREIGN = _load("formats-foreign-checkpoints.json")

# A fixed key from the transparency-dev/formats vectors, so failures reproduce exactly.
LOG_SIGNER = NoteSigner.from_skey(SUMDB["key_pairs"][0]["skey"])
LOG_VERIFIER = LOG_SIGNER.verifier
OTHER_SIGNER = NoteSigner.from_skey(SUMDB["key_pairs"][1]["skey"])
ROOT = hashlib.sha256(b"cityanchor").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()


def _reason(exc: pytest.ExceptionInfo[AnchorError]) -> str:
    return exc.value.reason


# --- golang/mod vectors -------------------------------------------------------------------------


def test_go_vkey_parses_and_round_trips() -> None:
    v = NoteVerifier.from_vkey(GO["peter_vkey"])
    assert v.name == "PeterNeumann"
    assert v.key_hash == bytes.fromhex("c74f20a3")
    assert v.vkey() == GO["peter_vkey"]


def test_go_skey_round_trips_and_derives_vkey() -> None:
    s = NoteSigner.from_skey(GO["peter_skey"])
    assert s.skey() == GO["peter_skey"]
    assert s.verifier.vkey() == GO["peter_vkey"]


def test_go_sign_gives_exact_note() -> None:
    # Ed25519 (RFC 8032) is deterministic, so our signature must equal Go's byte for byte.
    signer = NoteSigner.from_skey(GO["peter_skey"])
    assert sign_note(GO["text"], signer) == GO["peter_signed_note"]


def test_go_open_signed_note() -> None:
    v = NoteVerifier.from_vkey(GO["peter_vkey"])
    assert open_note(GO["peter_signed_note"], [v]) == GO["text"]
    assert open_note(GO["peter_signed_note"].encode("utf-8"), [v]) == GO["text"]


def test_go_doubly_signed_note_either_or_both_keys() -> None:
    peter = NoteVerifier.from_vkey(GO["peter_vkey"])
    enoch = NoteVerifier.from_vkey(GO["enoch_vkey"])
    note = GO["doubly_signed_note"]
    for verifiers in ([peter], [enoch], [peter, enoch], [enoch, peter, enoch]):
        assert open_note(note, verifiers) == GO["text"]
    with pytest.raises(CheckpointError) as exc:
        open_note(note, [])
    assert _reason(exc) == "checkpoint_unknown_key"


@pytest.mark.parametrize("desc", sorted(GO["bad_vkeys"]))
def test_go_bad_vkeys(desc: str) -> None:
    with pytest.raises(KeyMaterialError):
        NoteVerifier.from_vkey(GO["bad_vkeys"][desc])


def test_go_unknown_algorithm_reason() -> None:
    with pytest.raises(KeyMaterialError) as exc:
        NoteVerifier.from_vkey(GO["bad_vkeys"]["unknown algorithm, with adjusted key hash"])
    assert _reason(exc) == "key_unsupported"


def test_go_every_vkey_substring_and_byte_bump_is_rejected() -> None:
    # After golang/mod TestNewVerifier: no proper substring and no one-byte change parses.
    vkey = GO["peter_vkey"]
    for i in range(len(vkey) + 1):
        for j in range(i + 1, len(vkey) + 1):
            if (i, j) != (0, len(vkey)):
                with pytest.raises(KeyMaterialError):
                    NoteVerifier.from_vkey(vkey[i:j])
    for i in range(len(vkey)):
        bumped = vkey[:i] + chr(ord(vkey[i]) + 1) + vkey[i + 1 :]
        with pytest.raises(KeyMaterialError):
            NoteVerifier.from_vkey(bumped)


def test_go_every_skey_substring_and_byte_bump_is_rejected() -> None:
    skey = GO["peter_skey"]
    for i in range(len(skey) + 1):
        for j in range(i + 1, len(skey) + 1):
            if (i, j) != (0, len(skey)):
                with pytest.raises(KeyMaterialError):
                    NoteSigner.from_skey(skey[i:j])
    for i in range(len(skey)):
        bumped = skey[:i] + chr(ord(skey[i]) + 1) + skey[i + 1 :]
        with pytest.raises(KeyMaterialError):
            NoteSigner.from_skey(bumped)


# --- C2SP spec example --------------------------------------------------------------------------


def test_c2sp_spec_example() -> None:
    v = NoteVerifier.from_vkey(C2SP["vkey"])
    assert v.vkey() == C2SP["vkey"]
    assert open_note(C2SP["note"], [v]) == C2SP["text"]


# --- transparency-dev/formats checkpoints -------------------------------------------------------


def test_sumdb_checkpoint_opens() -> None:
    v = NoteVerifier.from_vkey(SUMDB["log_vkey"])
    cp = open_checkpoint(SUMDB["note"], v)
    assert cp.origin == SUMDB["origin"]
    assert cp.size == SUMDB["size"]
    assert cp.root == base64.b64decode(SUMDB["root_base64"])
    assert cp.extensions == ()
    # The key name (sum.golang.org) differs from the origin: allowed, it is only a SHOULD.
    assert open_checkpoint(SUMDB["note"], v, origin=SUMDB["origin"]) == cp
    assert parse_checkpoint_unverified(SUMDB["note"]) == cp
    # Re-serialising gives back the signed text exactly.
    assert cp.body().decode() + "\n" == SUMDB["note"].split(EM)[0]


def test_sumdb_checkpoint_origin_mismatch() -> None:
    v = NoteVerifier.from_vkey(SUMDB["log_vkey"])
    with pytest.raises(CheckpointError) as exc:
        open_checkpoint(SUMDB["note"], v, origin="sum.golang.org")
    assert _reason(exc) == "checkpoint_origin_mismatch"


def test_sumdb_cosigned_and_unknown_lines() -> None:
    lines = "".join(line + "\n" for line in SUMDB["cosignature_lines"])
    unknown = "".join(line + "\n" for line in SUMDB["unknown_signature_lines"])
    note = SUMDB["note"] + lines + unknown
    log_v = NoteVerifier.from_vkey(SUMDB["log_vkey"])
    cosigners = [NoteVerifier.from_vkey(k) for k in SUMDB["cosigner_vkeys"]]
    text = SUMDB["note"].split("\n\n")[0] + "\n"
    # Each cosigner alone suffices, the log key ignores the cosignatures, and "random1" (which
    # reuses witness's key ID under another name) is ignored rather than failing.
    for v in [log_v, *cosigners]:
        assert open_note(note, [v]) == text
    assert open_note(note, [log_v, *cosigners]) == text
    assert open_checkpoint(note, log_v).size == SUMDB["size"]
    # A cosigner's line paired with the wrong text no longer verifies.
    forged = SUMDB["note"].replace("6476701", "6476702", 1) + lines
    with pytest.raises(CheckpointError) as exc:
        open_note(forged, [cosigners[0]])
    assert _reason(exc) == "checkpoint_signature_invalid"


@pytest.mark.parametrize("pair", SUMDB["key_pairs"], ids=lambda p: p["vkey"].split("+")[0])
def test_formats_key_pairs(pair: dict[str, str]) -> None:
    signer = NoteSigner.from_skey(pair["skey"])
    assert signer.verifier == NoteVerifier.from_vkey(pair["vkey"])
    assert signer.verifier.vkey() == pair["vkey"]
    assert signer.skey() == pair["skey"]


@pytest.mark.parametrize("case", FOREIGN["cases"], ids=lambda c: c["origin"])
def test_foreign_signature_types_parse_but_never_verify(case: dict[str, Any]) -> None:
    cp = parse_checkpoint_unverified(case["note"])
    assert (cp.origin, cp.size) == (case["origin"], case["size"])
    assert cp.root == base64.b64decode(case["root_base64"])
    # An Ed25519 key of the same name is still a different key: the line is unknown, ignored.
    name = parse_note_unverified(case["note"]).signatures[0].name
    same_name = generate_note_key(name).verifier
    with pytest.raises(CheckpointError) as exc:
        open_checkpoint(case["note"], same_name)
    assert _reason(exc) == "checkpoint_unknown_key"


# --- keys ---------------------------------------------------------------------------------------


def test_generate_round_trip() -> None:
    signer = generate_note_key("cityanchor.example/log")
    assert NoteSigner.from_skey(signer.skey()).verifier == signer.verifier
    assert NoteVerifier.from_vkey(signer.verifier.vkey()) == signer.verifier
    vk = signer.verifier
    assert (
        vk.key_hash == hashlib.sha256(b"cityanchor.example/log\n\x01" + vk.public_key).digest()[:4]
    )


def test_seed_never_in_repr() -> None:
    signer = generate_note_key("cityanchor.example/log")
    seed_b64 = base64.b64encode(signer.seed).decode()
    shown = repr(signer) + str(signer)
    assert "seed" not in shown
    assert signer.seed.hex() not in shown
    assert seed_b64 not in shown
    assert repr(signer.seed) not in shown


@pytest.mark.parametrize(
    "name",
    ["", "a+b", "has space", "tab\there", "nl\nhere", "nbsp\u00a0x", "em\u2003space", "ctl\x01"],
)
def test_bad_key_names(name: str) -> None:
    with pytest.raises(KeyMaterialError) as exc:
        generate_note_key(name)
    assert _reason(exc) == "key_invalid"


def test_vkey_with_wrong_key_id() -> None:
    name, _, key = GO["peter_vkey"].split("+", 2)
    with pytest.raises(KeyMaterialError) as exc:
        NoteVerifier.from_vkey(f"{name}+c74f20a4+{key}")
    assert _reason(exc) == "key_invalid"
    with pytest.raises(KeyMaterialError):
        NoteVerifier.from_vkey(f"{name}+C74F20A3+{key}")  # hex is lowercase (signed-note)


def test_verifier_fields_are_checked() -> None:
    v = NoteVerifier.from_vkey(GO["peter_vkey"])
    with pytest.raises(KeyMaterialError):
        NoteVerifier(v.name, b"\x00\x00\x00\x00", v.public_key)
    with pytest.raises(KeyMaterialError):
        NoteVerifier(v.name, v.key_hash, v.public_key[:31])
    with pytest.raises(KeyMaterialError):
        NoteVerifier("OtherName", v.key_hash, v.public_key)


def test_conflicting_verifiers_refused() -> None:
    v = NoteVerifier.from_vkey(GO["peter_vkey"])
    # Build a colliding verifier by bypassing __post_init__ (only an attacker could find one).
    fake = object.__new__(NoteVerifier)
    for attr, value in (("name", v.name), ("key_hash", v.key_hash), ("public_key", b"\x01" * 32)):
        object.__setattr__(fake, attr, value)
    with pytest.raises(KeyMaterialError):
        open_note(GO["peter_signed_note"], [v, fake])


# --- generic notes ------------------------------------------------------------------------------


def test_sign_open_round_trip_multiline_text_with_blank_lines() -> None:
    text = "first\n\nafter a blank line\n\u2014 looks like a signature but is text\n"
    note = sign_note(text, LOG_SIGNER)
    assert open_note(note, [LOG_VERIFIER]) == text


@pytest.mark.parametrize("text", ["", "no newline", "ctl\x00\n", "cr\r\n", "tab\t\n", "\ud800\n"])
def test_sign_note_rejects_bad_text(text: str) -> None:
    with pytest.raises(CheckpointError) as exc:
        sign_note(text, LOG_SIGNER)
    assert _reason(exc) == "checkpoint_malformed"


GOOD = sign_note("hello\n", LOG_SIGNER)
GOOD_LINE = GOOD.split("\n\n")[1]


@pytest.mark.parametrize(
    ("desc", "note"),
    [
        ("text only", "hello\n"),
        ("text and blank line", "hello\n\n"),
        ("missing final newline", GOOD[:-1]),
        ("control character", "\x01" + GOOD),
        ("carriage return", GOOD.replace("\n", "\r\n")),
        ("trailing junk line", GOOD + "Unexpected line.\n"),
        ("hyphen instead of em dash", GOOD.replace(EM, "-")),
        ("en dash instead of em dash", GOOD.replace(EM, "\u2013")),
        ("no space after dash", GOOD.replace(EM + " ", EM)),
        ("name with space", GOOD.replace("Log ", "Bad Log ")),
        ("name with plus", GOOD.replace("Log ", "Lo+g ")),
        ("empty name", GOOD.replace(EM + " Log ", EM + "  ")),
        ("no signature after name", "hello\n\n" + EM + " Log\n"),
        ("signature not base64", GOOD.replace(GOOD_LINE.split()[-1], "not*base64")),
        ("signature missing padding", GOOD.replace("=\n", "\n")),
        ("signature too short", "hello\n\n" + EM + " Log AAAAAA==\n"),
        ("two spaces before signature", GOOD.replace("Log ", "Log  ")),
        ("too many signatures", "hello\n\n" + GOOD_LINE * (MAX_SIGNATURES + 1)),
        ("too large", "x" * MAX_NOTE_SIZE + GOOD),
    ],
)
def test_malformed_notes(desc: str, note: str) -> None:
    with pytest.raises(CheckpointError) as exc:
        open_note(note, [LOG_VERIFIER])
    assert _reason(exc) == "checkpoint_malformed", desc


def test_malformed_bytes() -> None:
    with pytest.raises(CheckpointError) as exc:
        open_note(b"\xff" + GOOD.encode(), [LOG_VERIFIER])
    assert _reason(exc) == "checkpoint_malformed"


def test_max_signatures_accepted() -> None:
    assert open_note("hello\n\n" + GOOD_LINE * MAX_SIGNATURES, [LOG_VERIFIER]) == "hello\n"


def test_altered_text() -> None:
    with pytest.raises(CheckpointError) as exc:
        open_note(GOOD.replace("hello", "hellO"), [LOG_VERIFIER])
    assert _reason(exc) == "checkpoint_signature_invalid"


def test_altered_signature() -> None:
    raw = bytearray(base64.b64decode(GOOD_LINE.split()[-1]))
    raw[10] ^= 1
    bad = "hello\n\n" + EM + " Log " + base64.b64encode(bytes(raw)).decode() + "\n"
    with pytest.raises(CheckpointError) as exc:
        open_note(bad, [LOG_VERIFIER])
    assert _reason(exc) == "checkpoint_signature_invalid"


def test_truncated_signature_from_known_key() -> None:
    raw = base64.b64decode(GOOD_LINE.split()[-1])[:-1]
    bad = "hello\n\n" + EM + " Log " + base64.b64encode(raw).decode() + "\n"
    with pytest.raises(CheckpointError) as exc:
        open_note(bad, [LOG_VERIFIER])
    assert _reason(exc) == "checkpoint_signature_invalid"


def test_one_bad_signature_from_trusted_key_rejects_note() -> None:
    # Unlike Go (which skips repeats), every line from a trusted key must verify.
    raw = bytearray(base64.b64decode(GOOD_LINE.split()[-1]))
    raw[-1] ^= 1
    bad_line = EM + " Log " + base64.b64encode(bytes(raw)).decode() + "\n"
    with pytest.raises(CheckpointError) as exc:
        open_note(GOOD + bad_line, [LOG_VERIFIER])
    assert _reason(exc) == "checkpoint_signature_invalid"


def test_wrong_key() -> None:
    with pytest.raises(CheckpointError) as exc:
        open_note(GOOD, [OTHER_SIGNER.verifier])
    assert _reason(exc) == "checkpoint_unknown_key"


def test_same_name_other_key_is_ignored_not_invalid() -> None:
    impostor = generate_note_key("Log")
    with pytest.raises(CheckpointError) as exc:
        open_note(GOOD, [impostor.verifier])
    assert _reason(exc) == "checkpoint_unknown_key"
    # ... and a note carrying both signatures verifies under either key.
    both = GOOD + sign_note("hello\n", impostor).split("\n\n")[1]
    assert open_note(both, [impostor.verifier]) == "hello\n"
    assert open_note(both, [LOG_VERIFIER]) == "hello\n"


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_body_layout() -> None:
    cp = Checkpoint("cityanchor.example/log", 42, ROOT, ("ext one", "ext two"))
    assert cp.body() == f"cityanchor.example/log\n42\n{ROOT_B64}\next one\next two\n".encode()


def test_checkpoint_sign_open_round_trip() -> None:
    for cp in (
        Checkpoint("cityanchor.example/log", 0, hashlib.sha256(b"").digest()),
        Checkpoint("Log", 2**64 - 1, ROOT, ("extension",)),
        Checkpoint("origin with spaces and + plus", 7, ROOT),
    ):
        note = sign_checkpoint(cp, LOG_SIGNER)
        assert open_checkpoint(note, LOG_VERIFIER) == cp
        assert parse_checkpoint_unverified(note) == cp


@settings(max_examples=50, deadline=None)
@given(
    origin=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40),
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20),
        max_size=3,
    ),
)
def test_checkpoint_round_trip_property(
    origin: str, size: int, root: bytes, extensions: list[str]
) -> None:
    cp = Checkpoint(origin, size, root, tuple(extensions))
    assert open_checkpoint(sign_checkpoint(cp, LOG_SIGNER), LOG_VERIFIER) == cp


@pytest.mark.parametrize(
    ("desc", "body"),
    [
        ("leading zero", f"Log\n01\n{ROOT_B64}\n"),
        ("negative", f"Log\n-1\n{ROOT_B64}\n"),
        ("plus sign", f"Log\n+1\n{ROOT_B64}\n"),
        ("space", f"Log\n 1\n{ROOT_B64}\n"),
        ("underscore", f"Log\n1_0\n{ROOT_B64}\n"),
        ("unicode digit", f"Log\n\u0661\n{ROOT_B64}\n"),
        ("hex", f"Log\n0x10\n{ROOT_B64}\n"),
        ("empty size", f"Log\n\n{ROOT_B64}\n"),
        ("too large size", f"Log\n{2**64}\n{ROOT_B64}\n"),
        ("root 31 bytes", f"Log\n1\n{base64.b64encode(ROOT[:31]).decode()}\n"),
        ("root 33 bytes", f"Log\n1\n{base64.b64encode(ROOT + b'x').decode()}\n"),
        ("root unpadded", f"Log\n1\n{ROOT_B64.rstrip('=')}\n"),
        ("root urlsafe", "Log\n1\n" + base64.urlsafe_b64encode(b"\xfb" * 32).decode() + "\n"),
        ("root hex", f"Log\n1\n{ROOT.hex()}\n"),
        ("root stray bits", f"Log\n1\n{ROOT_B64[:-2]}{chr(ord(ROOT_B64[-2]) ^ 1)}=\n"),
        ("empty origin", f"\n1\n{ROOT_B64}\n"),
        ("two lines", "Log\n1\n"),
        ("empty extension line", f"Log\n1\n{ROOT_B64}\next\n\nmore\n"),
        ("too many extension lines", f"Log\n1\n{ROOT_B64}\n" + "e\n" * 65),
    ],
)
def test_malformed_checkpoint_bodies(desc: str, body: str) -> None:
    # Validly signed, so only the checkpoint parser can object. A blank line inside the body
    # is fine for the note: its text ends at the *last* blank line, which is the signer's.
    note = sign_note(body, LOG_SIGNER)
    with pytest.raises(CheckpointError) as exc:
        open_checkpoint(note, LOG_VERIFIER)
    assert _reason(exc) == "checkpoint_malformed", desc
    with pytest.raises(CheckpointError) as exc:
        parse_checkpoint_unverified(note)
    assert _reason(exc) == "checkpoint_malformed", desc


def test_checkpoint_altered_body() -> None:
    note = sign_checkpoint(Checkpoint("Log", 5, ROOT), LOG_SIGNER)
    with pytest.raises(CheckpointError) as exc:
        open_checkpoint(note.replace("\n5\n", "\n6\n"), LOG_VERIFIER)
    assert _reason(exc) == "checkpoint_signature_invalid"
    # Parsing for display does not notice: that is why it is called unverified.
    assert parse_checkpoint_unverified(note.replace("\n5\n", "\n6\n")).size == 6


def test_checkpoint_wrong_key() -> None:
    note = sign_checkpoint(Checkpoint("Log", 5, ROOT), LOG_SIGNER)
    with pytest.raises(CheckpointError) as exc:
        open_checkpoint(note, OTHER_SIGNER.verifier)
    assert _reason(exc) == "checkpoint_unknown_key"


def test_checkpoint_with_witness_cosignature() -> None:
    note = sign_checkpoint(Checkpoint("Log", 5, ROOT), LOG_SIGNER)
    cosigned = note + sign_note(note.split("\n\n")[0] + "\n", OTHER_SIGNER).split("\n\n")[1]
    assert open_checkpoint(cosigned, LOG_VERIFIER).size == 5
    assert open_checkpoint(cosigned, OTHER_SIGNER.verifier).size == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"origin": "", "size": 1, "root": ROOT},
        {"origin": "a\nb", "size": 1, "root": ROOT},
        {"origin": "Log", "size": -1, "root": ROOT},
        {"origin": "Log", "size": 2**64, "root": ROOT},
        {"origin": "Log", "size": True, "root": ROOT},
        {"origin": "Log", "size": 1, "root": ROOT[:31]},
        {"origin": "Log", "size": 1, "root": ROOT.hex()},
        {"origin": "Log", "size": 1, "root": ROOT, "extensions": ("",)},
        {"origin": "Log", "size": 1, "root": ROOT, "extensions": ("a\nb",)},
        {"origin": "Log", "size": 1, "root": ROOT, "extensions": "abc"},
    ],
)
def test_checkpoint_constructor_validates(kwargs: dict[str, Any]) -> None:
    with pytest.raises(CheckpointError) as exc:
        Checkpoint(**kwargs)
    assert _reason(exc) == "checkpoint_malformed"


def test_checkpoint_is_hashable_and_frozen() -> None:
    cp = Checkpoint("Log", 1, ROOT, ["ext"])  # type: ignore[arg-type]
    assert cp.extensions == ("ext",)
    assert hash(cp) == hash(Checkpoint("Log", 1, ROOT, ("ext",)))
    with pytest.raises(AttributeError):
        cp.size = 2  # type: ignore[misc]
