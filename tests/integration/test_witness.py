"""``cityanchor witness serve`` as a real process, spoken to by a client written from the spec.

The witness runs as a subprocess on a free loopback port with its state in ``tmp_path``; the
client (tests/witness_spec.py) uses only ``http.client`` and checks status lines, content types
and bodies to the letter of c2sp.org/tlog-witness, and cosignatures with a verifier written from
c2sp.org/tlog-cosignature. Checkpoints come from ``anchor.sealing.BatchLog`` (our batch log) and
from the transparency-dev/witness test vectors. No other service is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from witness_spec import (
    Answer,
    SpecClient,
    conflict_size,
    cosignature_lines,
    note_text,
    spec_verify,
    vkey_public_key,
)

from anchor.checkpoint import NoteSigner, open_checkpoint
from anchor.cli.commands import main
from anchor.cosignature import CosignerVerifier, verified_cosignatures
from anchor.sealing import BatchLog
from anchor.witness import WitnessState

ROOT = Path(__file__).resolve().parents[2]
TD = json.loads(
    (ROOT / "tests" / "vectors" / "witness" / "transparency-dev-witness.json").read_text("utf-8")
)
ORIGIN = "cityanchor.example/log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WitnessProcess:
    """``cityanchor witness serve`` in a subprocess; ``start`` waits for its listening line."""

    def __init__(self, argv: list[str], port: int, log_file: Path) -> None:
        self.argv = argv
        self.port = port
        self.log_file = log_file  # stderr, appended across restarts (a pipe could fill up)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_file.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "anchor", *self.argv, "--listen", f"127.0.0.1:{self.port}"],
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode() if ready else ""
        if line != f"listening on http://127.0.0.1:{self.port}\n":
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail(f"witness did not start: {line!r} {self.stderr()[-2000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close_pipes()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(15)
        self._close_pipes()
        return code

    def stderr(self) -> str:
        return self.log_file.read_text(errors="replace")

    def _close_pipes(self) -> None:
        assert self.proc is not None
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def client(self) -> SpecClient:
        return SpecClient("127.0.0.1", self.port)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A witness key pair made by ``keygen --witness``, our log's key, the vectors' log key."""
    out = tmp_path / "keys"
    assert main(["keygen", "--witness", "--name", "witness.example/w1", "--out", str(out)]) == 0
    assert main(["keygen", "--operator", "--name", ORIGIN, "--out", str(out)]) == 0
    (out / "monkeys.vkey").write_text(TD["log_vkey"] + "\n")
    return {
        "skey": out / "witness.skey",
        "vkey": out / "witness.vkey",
        "log_skey": out / "operator.skey",
        "log_vkey": out / "operator.vkey",
        "monkeys": out / "monkeys.vkey",
    }


@pytest.fixture
def witness(tmp_path: Path, keys: dict[str, Path]) -> Iterator[WitnessProcess]:
    argv = [
        "witness", "serve", "--key", str(keys["skey"]),
        "--log-key", str(keys["log_vkey"]), str(keys["monkeys"]),
        "--state", str(tmp_path / "witness.db"),
    ]  # fmt: skip
    w = WitnessProcess(argv, free_port(), tmp_path / "witness.log")
    w.start()
    yield w
    if w.proc is not None and w.proc.poll() is None:
        w.kill9()


@pytest.fixture
def log_signer(keys: dict[str, Path]) -> NoteSigner:
    return NoteSigner.from_skey(keys["log_skey"].read_text().strip())


@pytest.fixture
def witness_key(keys: dict[str, Path]) -> tuple[str, bytes]:
    return vkey_public_key(keys["vkey"].read_text(), 0x04)


def grow(log: BatchLog, n: int, rng: random.Random) -> list[tuple[int, bytes]]:
    """Append ``n`` batches of random size and root; return them as (size, root) pairs."""
    batches = [(rng.randint(1, 1000), rng.randbytes(32)) for _ in range(n)]
    for size, root in batches:
        log.append(size, root)
    return batches


def assert_cosigned(answer: Answer, note: str, witness_key: tuple[str, bytes]) -> int:
    assert (answer.version, answer.reason) == (11, "OK")
    assert answer.content_type == "text/plain; charset=utf-8"
    (line,) = cosignature_lines(answer)
    return spec_verify(line, note_text(note), *witness_key)


def assert_refused(answer: Answer, status: int, reason: str) -> None:
    assert answer.status == status, answer
    assert answer.content_type == "text/plain; charset=utf-8"
    assert answer.body.decode().startswith(reason + ": "), answer.body


# ------------------------------------------------------------------------------------------ tests
def test_transparency_dev_vectors_and_every_status(
    witness: WitnessProcess, witness_key: tuple[str, bytes], log_signer: NoteSigner
) -> None:
    c = witness.client()
    # A monitor may first ask with old 0 to learn the size: nothing cosigned yet, so 200.
    now = int(time.time())
    ts = assert_cosigned(c.add_checkpoint(0, [], TD["init_note"]), TD["init_note"], witness_key)
    assert now - 5 <= ts <= int(time.time()) + 5
    proof = [bytes.fromhex(h) for h in TD["consistency_proof_5_8_hex"]]
    # 409 with the witness's size, to the letter: a stale old size.
    assert conflict_size(c.add_checkpoint(0, [], TD["next_note"])) == 5
    assert conflict_size(c.add_checkpoint(3, proof, TD["next_note"])) == 5
    assert_cosigned(c.add_checkpoint(5, proof, TD["next_note"]), TD["next_note"], witness_key)
    assert conflict_size(c.add_checkpoint(5, proof, TD["next_note"])) == 8
    # 400: old above the checkpoint size, and format errors.
    assert_refused(c.add_checkpoint(8, [], TD["init_note"]), 400, "witness_request_malformed")
    body = b"old 08\n\n" + TD["next_note"].encode()
    assert_refused(c.post_raw(body), 400, "witness_request_malformed")
    assert_refused(
        c.post_raw(b"old 8\n" + TD["next_note"].encode()), 400, "witness_request_malformed"
    )
    # 404: a log the witness does not know (validly signed by its own key).
    stranger = NoteSigner.from_seed("stranger.example/log", bytes(32))
    other = BatchLog("stranger.example/log")
    grow(other, 3, random.Random(1))
    assert_refused(c.add_checkpoint(0, [], other.checkpoint(stranger)), 404, "witness_unknown_log")
    # 403: the monkeys origin signed by another key; a trusted line that does not verify.
    impostor = NoteSigner.from_seed("monkeys", bytes(range(32)))
    fake = BatchLog("monkeys")
    grow(fake, 9, random.Random(2))
    assert_refused(
        c.add_checkpoint(8, [], fake.checkpoint(impostor)), 403, "witness_log_signature_invalid"
    )
    tampered = TD["next_note"].replace("monkeys\n8\n", "monkeys\n9\n")
    assert_refused(c.add_checkpoint(8, [], tampered), 403, "witness_log_signature_invalid")
    # The monitoring endpoint: the checkpoint with the log's signature and the cosignature.
    got = c.checkpoint("monkeys")
    assert got.status == 200 and got.content_type == "text/plain; charset=utf-8"
    served = got.body.decode()
    assert open_checkpoint(served, NoteSigner.from_skey(TD["log_skey"]).verifier).size == 8
    witness_vkey = CosignerVerifier.from_public_key(*witness_key)
    (cos,) = verified_cosignatures(served, [witness_vkey])
    assert served.startswith(TD["next_note"])
    assert (
        spec_verify(served[len(TD["next_note"]) :], note_text(served), *witness_key)
        == cos.timestamp
    )
    # 404 for a log it never cosigned; a GET on the POST route is not allowed.
    assert c.checkpoint(ORIGIN).status == 404
    assert c.get("/add-checkpoint").status == 405
    # Health and metrics.
    health = c.get("/healthz")
    assert (health.status, health.body) == (200, b"ok\n")
    metrics = c.get("/metrics").body.decode()
    assert 'cityanchor_witness_checkpoint_size{origin="monkeys"} 8.0' in metrics
    assert (
        'cityanchor_witness_requests_total{reason="witness_size_conflict",status="409"} 3.0'
        in metrics
    )
    c.close()
    assert witness.stop() == 0
    err = witness.stderr()
    assert "[witness_log_signature_invalid]" in err and "[witness_size_conflict]" in err


def test_restart_between_checkpoints_keeps_the_state(
    witness: WitnessProcess, witness_key: tuple[str, bytes], log_signer: NoteSigner
) -> None:
    rng = random.Random(7)
    log = BatchLog(ORIGIN)
    grow(log, 3, rng)
    c = witness.client()
    assert_cosigned(
        c.add_checkpoint(0, [], log.checkpoint(log_signer)), log.checkpoint(log_signer), witness_key
    )
    c.close()
    witness.kill9()  # no clean shutdown: what was answered must already be on disk
    witness.start()
    c = witness.client()
    grow(log, 4, rng)
    seven = log.checkpoint(log_signer)
    assert conflict_size(c.add_checkpoint(0, [], seven)) == 3
    # A smaller checkpoint after a larger one: refused (400 with old = the witness's size,
    # 409 with the smaller one's own history).
    two = log.checkpoint(log_signer, 2)
    assert_refused(c.add_checkpoint(3, [], two), 400, "witness_request_malformed")
    assert conflict_size(c.add_checkpoint(0, [], two)) == 3
    assert_cosigned(c.add_checkpoint(3, log.consistency_proof(3, 7), seven), seven, witness_key)
    c.close()
    witness.kill9()
    witness.start()
    c = witness.client()
    assert conflict_size(c.add_checkpoint(3, log.consistency_proof(3, 7), seven)) == 7
    served = c.checkpoint(ORIGIN).body.decode()
    assert open_checkpoint(served, log_signer.verifier).size == 7
    c.close()


def test_a_forked_log_is_refused_and_the_honest_view_goes_on(
    tmp_path: Path,
    witness: WitnessProcess,
    witness_key: tuple[str, bytes],
    log_signer: NoteSigner,
) -> None:
    rng = random.Random(11)
    honest = BatchLog(ORIGIN)
    first_batches = grow(honest, 8, rng)
    c = witness.client()
    assert_cosigned(
        c.add_checkpoint(0, [], honest.checkpoint(log_signer)),
        honest.checkpoint(log_signer),
        witness_key,
    )
    # The log (its key) signs a second history from leaf 5 on.
    fork = BatchLog(ORIGIN, first_batches[:5])
    grow(fork, 7, random.Random(99))  # size 12
    # Same size, another root.
    assert_refused(
        c.add_checkpoint(8, [], fork.checkpoint(log_signer, 8)), 422, "witness_inconsistent"
    )
    # A non-extension with its own proof, with the honest proof, with no proof.
    fork12 = fork.checkpoint(log_signer, 12)
    grow(honest, 4, rng)
    for proof in (fork.consistency_proof(8, 12), honest.consistency_proof(8, 12), []):
        assert_refused(c.add_checkpoint(8, proof, fork12), 422, "witness_inconsistent")
    # The witness goes on with the honest log.
    twelve = honest.checkpoint(log_signer)
    assert_cosigned(
        c.add_checkpoint(8, honest.consistency_proof(8, 12), twelve), twelve, witness_key
    )
    served = c.checkpoint(ORIGIN).body.decode()
    assert served.startswith(twelve)
    c.close()
    # The forks are kept, with what the witness held then, as evidence.
    state = WitnessState(tmp_path / "witness.db")
    kept = state.refused(ORIGIN)
    state.close()
    assert {(k.size, k.root) for k in kept} == {(8, fork.root(8)), (12, fork.root(12))}
    assert all(k.witnessed is not None and k.witnessed.root == honest.root(8) for k in kept)
    assert witness.stop() == 0
    assert "(kept as possible fork evidence)" in witness.stderr()


def test_concurrent_requests_never_get_conflicting_cosignatures(
    witness: WitnessProcess, witness_key: tuple[str, bytes], log_signer: NoteSigner
) -> None:
    rng = random.Random(3)
    honest = BatchLog(ORIGIN)
    grow(honest, 40, rng)
    fork = BatchLog(ORIGIN)
    grow(fork, 40, random.Random(4))
    notes = {n: honest.checkpoint(log_signer, n) for n in range(1, 41)}
    fork_notes = {n: fork.checkpoint(log_signer, n) for n in range(1, 41)}
    cosigned: list[tuple[int, bytes]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    statuses: dict[int, int] = {}

    def worker(seed: int) -> None:
        r = random.Random(seed)
        c = witness.client()
        old = 0
        try:
            for _ in range(12):
                size = r.randint(max(old, 1), 40)
                evil = r.random() < 0.25
                source = fork if evil else honest
                note = (fork_notes if evil else notes)[size]
                proof = [] if old in (0, size) else source.consistency_proof(old, size)
                answer = c.add_checkpoint(old, proof, note)
                with lock:
                    statuses[answer.status] = statuses.get(answer.status, 0) + 1
                if answer.status == 200:
                    (line,) = cosignature_lines(answer)
                    spec_verify(line, note_text(note), *witness_key)
                    with lock:
                        cosigned.append((size, source.root(size)))
                    old = size
                elif answer.status == 409:
                    old = conflict_size(answer)
                else:
                    assert answer.status in (400, 422), answer
        except (AssertionError, InvalidSignature, OSError) as exc:
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    # The run did race: several cosignatures, conflicts, and refused forks.
    assert len(cosigned) >= 3 and statuses.get(409, 0) >= 3 and statuses.get(422, 0) >= 1, statuses
    # Never two roots for one size; every cosigned checkpoint lies on one history; the state
    # is the largest checkpoint cosigned (nothing rolled back).
    by_size: dict[int, set[bytes]] = {}
    for size, root in cosigned:
        by_size.setdefault(size, set()).add(root)
    assert all(len(roots) == 1 for roots in by_size.values()), by_size
    first = min(by_size)
    line = honest if next(iter(by_size[first])) == honest.root(first) else fork
    assert all(roots == {line.root(size)} for size, roots in by_size.items())
    c = witness.client()
    served = c.checkpoint(ORIGIN).body.decode()
    c.close()
    assert open_checkpoint(served, log_signer.verifier).size == max(by_size)


# ------------------------------------------------------------------------------------------- CLI
def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "anchor", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_usage_errors_exit_2(tmp_path: Path, keys: dict[str, Path]) -> None:
    state = str(tmp_path / "s.db")
    base = ["witness", "serve", "--state", state, "--listen", "127.0.0.1:0"]
    r = _run(*base, "--key", str(tmp_path / "missing.skey"), "--log-key", str(keys["log_vkey"]))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = _run(*base, "--key", str(keys["skey"]), "--log-key", str(keys["vkey"]))  # a 0x04 vkey
    assert r.returncode == 2 and "log key" in r.stderr
    r = _run(*base, "--key", str(keys["log_skey"]), "--log-key", str(keys["log_vkey"]))
    assert r.returncode == 2 and "witness key" in r.stderr
    r = _run(*base, "--key", str(keys["skey"]), "--log-key", f"{ORIGIN}={tmp_path}/nope.vkey")
    assert r.returncode == 2 and "nope.vkey" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _run(
            "witness", "serve", "--state", state, "--key", str(keys["skey"]),
            "--log-key", str(keys["log_vkey"]), "--listen", f"127.0.0.1:{port}",
        )  # fmt: skip
    assert r.returncode == 2 and "in use" in r.stderr
    r = _run(*base[:-1], "nohost", "--key", str(keys["skey"]), "--log-key", str(keys["log_vkey"]))
    assert r.returncode == 2 and "HOST:PORT" in r.stderr


def test_log_key_with_an_explicit_origin(tmp_path: Path, keys: dict[str, Path]) -> None:
    # sum.golang.org-style: the key is named "monkeys", the log's origin is another string.
    signer = NoteSigner.from_seed("log-key-name", bytes(range(9, 41)))
    (tmp_path / "k.vkey").write_text(signer.verifier.vkey() + "\n")
    w = WitnessProcess(
        ["witness", "serve", "--key", str(keys["skey"]),
         "--log-key", f"the origin={tmp_path}/k.vkey", "--state", str(tmp_path / "s.db")],
        free_port(),
        tmp_path / "witness.log",
    )  # fmt: skip
    w.start()
    try:
        log = BatchLog("the origin")
        grow(log, 2, random.Random(5))
        c = w.client()
        assert c.add_checkpoint(0, [], log.checkpoint(signer)).status == 200
        c.close()
    finally:
        assert w.stop() == 0


def test_keygen_witness_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k"
    assert main(["keygen", "--witness", "--name", "w.example/1", "--out", str(out)]) == 0
    skey, vkey = out / "witness.skey", out / "witness.vkey"
    assert os.stat(skey).st_mode & 0o777 == 0o600
    name, public = vkey_public_key(vkey.read_text(), 0x04)
    assert name == "w.example/1"
    assert (
        vkey.read_text().split("+")[1]
        == hashlib.sha256(b"w.example/1\n\x04" + public).digest()[:4].hex()
    )
    before = skey.read_bytes()
    assert main(["keygen", "--witness", "--name", "w.example/1", "--out", str(out)]) == 2
    assert skey.read_bytes() == before and "--force" in capsys.readouterr().err
    assert main(["keygen", "--witness", "--name", "w.example/1", "--out", str(out), "--force"]) == 0
    assert skey.read_bytes() != before
    assert main(["keygen", "--witness", "--out", str(tmp_path / "x")]) == 2
    assert (
        main(["keygen", "--witness", "--operator", "--name", "a", "--out", str(tmp_path / "y")])
        == 2
    )
