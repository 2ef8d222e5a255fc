"""The monitor's rounds (anchor.monitor.runner) against an in-memory log and chain: state kept
across restarts, evidence files that verify-consistency confirms, anchors by the operator only,
witness quorum reported but not an alarm, and a corrupt state file refused (exit 2)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anchor import merkle
from anchor.checkpoint import Checkpoint, generate_note_key, sign_checkpoint
from anchor.cli.commands import main
from anchor.cosignature import add_cosignatures, generate_cosigner_key
from anchor.log_view import AnchoredEvent
from anchor.monitor import Monitor, MonitorConfig, MonitorError
from anchor.monitor.output import MonitorMetrics

ORIGIN = "monitor-runner.cityanchor.example/log"
OPERATOR = generate_note_key(ORIGIN)
ACCOUNT = "0x" + "aa" * 20
STRANGER = "0x" + "bb" * 20


class FakeLog:
    """The public API of a log whose leaves (and so history) the test controls."""

    def __init__(self, n: int) -> None:
        self.leaves = [self.leaf(i, b"") for i in range(n)]
        self.notes: dict[int, str] = {}
        self.listed: list[dict[str, Any]] = []
        self.cosign: Any = None
        self.sign_all()

    @staticmethod
    def leaf(i: int, salt: bytes) -> bytes:
        return merkle.log_leaf_hash(1, hashlib.sha256(salt + i.to_bytes(4, "big")).digest())

    def sign_all(self) -> None:
        self.notes = {
            k: sign_checkpoint(Checkpoint(ORIGIN, k, merkle.root(self.leaves[:k])), OPERATOR)
            for k in range(1, len(self.leaves) + 1)
        }

    def grow(self, k: int, salt: bytes = b"") -> None:
        start = len(self.leaves)
        self.leaves += [self.leaf(start + i, salt) for i in range(k)]
        self.sign_all()

    # ApiClient's interface
    def latest_checkpoint(self) -> str | None:
        note = self.notes.get(len(self.leaves))
        if note is not None and self.cosign is not None:
            note = add_cosignatures(note, [self.cosign.cosign(note.split("\n\n")[0] + "\n", 1)])
        return note

    def checkpoint_at(self, size: int) -> str | None:
        return self.notes.get(size)

    def consistency(self, old: int, new: int) -> list[bytes]:
        if new > len(self.leaves):  # as the API: 404 beyond the log
            raise MonitorError(f"GET consistency: HTTP 404 ({new} > {len(self.leaves)})")
        return merkle.consistency_proof(self.leaves[:new], old)

    def anchors(self, since: int = 0) -> Iterator[dict[str, Any]]:
        yield from self.listed

    def receipt(self, device_id: str, seq: int) -> bytes | None:
        return None


class FakeChain:
    def __init__(self) -> None:
        self.events: list[AnchoredEvent] = []
        self.block = 1

    def chain_id(self) -> int:
        return 31337

    def latest_block(self) -> int:
        return self.block

    def tx_sender(self, tx_hash: str) -> str | None:
        return ACCOUNT if tx_hash == "0x01" else None

    def anchored_events(self, contract: str, start: int, end: int) -> list[AnchoredEvent]:
        return [e for e in self.events if start <= e.block_number <= end]

    def anchor(self, root: bytes, size: int, sender: str, tx: str) -> None:
        self.block += 1
        self.events.append(
            AnchoredEvent(31337, "0x" + "cc" * 20, tx, self.block, 0, root, size, sender)
        )


def make(tmp_path: Path, log: FakeLog, chain: FakeChain | None = None, **kw: Any) -> Monitor:
    config = MonitorConfig(
        api_url="http://127.0.0.1:9",
        log_key=OPERATOR.verifier,
        state_path=tmp_path / "state.json",
        rpc_urls=("fake",) if chain else (),
        **kw,
    )
    return Monitor(
        config,
        api=log,  # type: ignore[arg-type]
        chain_factory=(lambda _url: chain) if chain else None,
        metrics=MonitorMetrics(),
    )


def test_honest_rounds_keep_their_view_across_restarts(tmp_path: Path) -> None:
    log = FakeLog(3)
    first = make(tmp_path, log).run_round()
    assert first.ok and first.status["size"] == 3 and first.status["round"] == 1
    log.grow(4)
    again = make(tmp_path, log)  # a restart between checkpoints
    assert again.state.view.head is not None and again.state.view.head.size == 3
    second = again.run_round()
    assert second.ok and second.status["size"] == 7 and second.status["round"] == 2
    saved = json.loads((tmp_path / "state.json").read_text())
    assert [s["size"] for s in saved["view"]["seen"]] == [3, 7]


def test_a_fork_while_stopped_is_caught_with_evidence_verify_consistency_confirms(
    tmp_path: Path,
) -> None:
    log = FakeLog(4)
    assert make(tmp_path, log).run_round().ok
    # The operator rewrites leaf 3 and beyond, then grows: re-signs every size.
    log.leaves = log.leaves[:2]
    log.grow(5, b"fork")
    result = make(tmp_path, log).run_round()
    assert not result.ok and result.evidence is not None
    doc = result.evidence
    assert doc["kind"] == "log_fork"
    # The size-4 note the log signs now differs from the one seen: two roots for one size.
    assert (
        doc["old"]["size"] == doc["new"]["size"] == 4 and doc["old"]["root"] != doc["new"]["root"]
    )
    files = doc["files"]
    code = main(
        ["verify-consistency", files["old"], files["new"], "--log-key", files["log_key"],
         "--proof", files["proof"]]
    )  # fmt: skip
    assert code == 1
    assert Path(doc["file"]).is_file() and doc["how_to_check"].startswith(
        f"cityanchor verify-consistency {files['old']}"
    )
    # The alarm stands across a restart, even if the log "heals".
    log.leaves = []
    assert not make(tmp_path, log).run_round().ok


def test_a_proof_failure_without_a_same_size_note_still_gives_evidence(tmp_path: Path) -> None:
    log = FakeLog(4)
    assert make(tmp_path, log).run_round().ok
    original = log.notes[4]
    log.leaves = log.leaves[:2]
    log.grow(5, b"fork")
    log.notes[4] = original  # the log hides the rewritten size-4 checkpoint
    result = make(tmp_path, log).run_round()
    assert result.evidence is not None and result.evidence["kind"] == "log_fork"
    assert (result.evidence["old"]["size"], result.evidence["new"]["size"]) == (4, 7)
    f = result.evidence["files"]
    assert main(["verify-consistency", f["old"], f["new"], "--log-key", f["log_key"],
                 "--proof", f["proof"]]) == 1  # fmt: skip


def test_a_rollback_of_the_latest_checkpoint_is_an_alarm(tmp_path: Path) -> None:
    log = FakeLog(6)
    assert make(tmp_path, log).run_round().ok
    log.leaves = log.leaves[:4]
    log.sign_all()
    result = make(tmp_path, log).run_round()
    assert result.evidence is not None and result.evidence["kind"] == "log_rollback"
    assert (result.evidence["old"]["size"], result.evidence["new"]["size"]) == (4, 6)
    assert "no consistency proof" in result.evidence["how_to_check"]


def test_anchors_by_the_operator_are_checked_and_others_ignored(tmp_path: Path) -> None:
    log = FakeLog(5)
    chain = FakeChain()
    chain.anchor(merkle.root(log.leaves[:5]), 5, ACCOUNT, "0x01")
    log.listed = [{"chain_id": 31337, "contract": "0x" + "cc" * 20, "tx_hash": "0x01"}]
    chain.anchor(b"\x09" * 32, 5, STRANGER, "0x02")  # anyone can call anchor()
    result = make(tmp_path, log, chain).run_round()
    assert result.ok, result.evidence
    assert result.status["anchors"]["31337"] == {"next_block": 4, "checked": 1, "ignored": 1}
    chain.anchor(b"\x07" * 32, 3, ACCOUNT, "0x03")  # the operator anchors a root it never signed
    result = make(tmp_path, log, chain).run_round()
    assert result.evidence is not None and result.evidence["kind"] == "anchor_inconsistent"
    assert result.evidence["anchor"]["tx_hash"] == "0x03"
    assert result.evidence["old"]["root"] == merkle.root(log.leaves[:3]).hex()


def test_an_anchored_checkpoint_that_forks_the_view_names_its_transaction(tmp_path: Path) -> None:
    log = FakeLog(5)
    chain = FakeChain()
    extra = {"contract": "0x" + "cc" * 20, "submitters": (ACCOUNT,)}
    assert make(tmp_path, log, chain, **extra).run_round().ok
    # The operator signs and anchors another size-3 history; its latest stays the honest one.
    forked_root = merkle.root([FakeLog.leaf(i, b"fork") for i in range(3)])
    log.notes[3] = sign_checkpoint(Checkpoint(ORIGIN, 3, forked_root), OPERATOR)
    chain.anchor(forked_root, 3, ACCOUNT, "0x04")
    result = make(tmp_path, log, chain, **extra).run_round()
    doc = result.evidence
    assert doc is not None and doc["kind"] == "log_fork"
    assert (doc["old"]["size"], doc["new"]["size"]) == (3, 5) and doc["proof"]
    assert doc["anchor"]["tx_hash"] == "0x04" and doc["anchor"]["root"] == forked_root.hex()
    f = doc["files"]
    assert main(["verify-consistency", f["old"], f["new"], "--log-key", f["log_key"],
                 "--proof", f["proof"]]) == 1  # fmt: skip


def test_anchors_wait_until_the_operator_account_is_known(tmp_path: Path) -> None:
    log = FakeLog(2)
    chain = FakeChain()
    chain.anchor(b"\x07" * 32, 2, ACCOUNT, "0x01")
    result = make(tmp_path, log, chain).run_round()
    assert result.ok and "skipped" in result.status["anchors"]["31337"]
    result = make(tmp_path, log, chain, contract="0x" + "cc" * 20, submitters=(ACCOUNT,))
    found = result.run_round()
    assert found.evidence is not None and found.evidence["kind"] == "anchor_inconsistent"


def test_witness_quorum_missing_is_reported_not_an_alarm(tmp_path: Path) -> None:
    witness = generate_cosigner_key("witness.example/w1")
    log = FakeLog(3)
    mon = make(tmp_path, log, witnesses=(witness.verifier,), witness_quorum=1)
    result = mon.run_round()
    assert result.ok and result.status["witnesses"]["quorum_missing"] is True
    assert mon.metrics is not None and mon.metrics.quorum_missing._value.get() == 1
    log.cosign = witness
    result = make(tmp_path, log, witnesses=(witness.verifier,), witness_quorum=1).run_round()
    assert result.ok and result.status["witnesses"]["cosigned_by"] == ["witness.example/w1"]


def test_an_unreachable_api_is_not_an_alarm(tmp_path: Path) -> None:
    class Down(FakeLog):
        def latest_checkpoint(self) -> str | None:
            raise MonitorError("connection refused")

    with pytest.raises(MonitorError):
        make(tmp_path, Down(1)).run_round()


def test_a_corrupt_state_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vkey = tmp_path / "log.vkey"
    vkey.write_text(OPERATOR.verifier.vkey() + "\n")
    state = tmp_path / "state.json"
    state.write_text('{"format": "cityanchor/monitor-state/v1", "log_key": ')
    argv = [
        "monitor",
        "--api",
        "http://127.0.0.1:9",
        "--log-key",
        str(vkey),
        "--state",
        str(state),
        "--once",
    ]
    assert main(argv) == 2
    assert "never reset" in capsys.readouterr().err
    assert state.read_text().endswith('"log_key": ')  # left as it was
    other = generate_note_key(ORIGIN)
    state.write_text(FakeLogState.fresh(other))
    assert main(argv) == 2


class FakeLogState:
    @staticmethod
    def fresh(signer: Any) -> str:
        from anchor.monitor.state import MonitorState

        return MonitorState(signer.verifier.vkey()).to_json().decode()


def test_the_witness_admission_follows_the_monitors_view() -> None:
    from anchor.checkpoint import Checkpoint
    from anchor.errors import Reason
    from anchor.log_view import LogView, SignedHead
    from anchor.monitor.cosigner import MonitorAdmission

    log = FakeLog(3)
    view = LogView().record(SignedHead.open(log.notes[3], OPERATOR.verifier))
    alarm = False
    admit = MonitorAdmission(lambda: view, lambda: alarm)
    root3 = merkle.root(log.leaves[:3])
    assert admit(Checkpoint(ORIGIN, 3, root3)) is None
    later = admit(Checkpoint(ORIGIN, 4, root3))
    assert later is not None and (later.status, later.reason) == (503, Reason.WITNESS_NOT_VERIFIED)
    other = admit(Checkpoint(ORIGIN, 3, b"\x01" * 32))
    assert other is not None and (other.status, other.reason) == (422, Reason.WITNESS_INCONSISTENT)
    alarm = True
    refused = admit(Checkpoint(ORIGIN, 3, root3))
    assert refused is not None and refused.status == 503


@pytest.mark.parametrize(
    "extra",
    [
        ["--witness-quorum", "1"],  # no --witness-key to meet it
        ["--listen", "127.0.0.1:0"],  # without --cosign-key
        ["--cosign-key", "witness.skey"],  # a witness must follow: --interval
        ["--sample", "-1"],
        ["--api", "ftp://example.org"],
        ["--once", "--interval", "5s"],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, extra: list[str]) -> None:
    (tmp_path / "log.vkey").write_text(OPERATOR.verifier.vkey() + "\n")
    (tmp_path / "witness.skey").write_text(generate_cosigner_key("w.example/w").skey() + "\n")
    argv = ["monitor", "--api", "http://127.0.0.1:9", "--log-key", str(tmp_path / "log.vkey"),
            "--state", str(tmp_path / "state.json"), *extra]  # fmt: skip
    extra_paths = [str(tmp_path / e) if e == "witness.skey" else e for e in argv]
    try:
        code = main(extra_paths)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    assert code == 2
    assert not (tmp_path / "state.json").exists()
