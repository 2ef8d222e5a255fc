"""`cityanchor up` with two real witnesses (`cityanchor witness serve`, issue 13), end to end
through the stable interfaces: receipts carry both cosignatures and `cityanchor verify
--witness-key w1.vkey --witness-key w2.vkey --witness-quorum 2` passes (quorum 3 of 2 fails);
one witness killed: anchoring continues; restarted with `--witness-anchor-quorum`, new
checkpoints wait for the quorum until the witness is back.

One test, because every `up` start costs seconds: the assertions are combined.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from anchor.cli.commands import main as cli_main
from anchor.cosignature import CosignerVerifier, verified_cosignatures
from anchor.keys import PrivateKey
from devices.signer import DeviceSigner
from integration.test_up import _publish, _request, _stop, _wait_up

ORIGIN = "local.cityanchor.example/log"  # anchor.cli.up.ORIGIN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CITYANCHOR_")}


class WitnessProcess:
    """One `cityanchor witness serve` with its key pair and state file."""

    def __init__(self, root: Path, name: str, log_vkey: Path) -> None:
        self.dir = root / name
        self.dir.mkdir()
        assert cli_main(["keygen", "--witness", "--name", name, "--out", str(self.dir)]) == 0
        self.vkey_file = self.dir / "witness.vkey"
        self.verifier = CosignerVerifier.from_vkey(self.vkey_file.read_text())
        self.log_vkey = log_vkey
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.dir / "serve.log").open("ab") as log:
            self.proc = self._spawn(log)
        deadline = time.monotonic() + 30
        while b"listening on" not in (self.dir / "serve.log").read_bytes():
            assert self.proc.poll() is None, (self.dir / "serve.log").read_text()
            assert time.monotonic() < deadline, "witness serve did not start"
            time.sleep(0.1)

    def _spawn(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "anchor",
                "witness",
                "serve",
                "--key",
                str(self.dir / "witness.skey"),
                "--log-key",
                str(self.log_vkey),
                "--state",
                str(self.dir / "state.db"),
                "--listen",
                f"127.0.0.1:{self.port}",
            ],
            env=_env(),
            stdout=log,
            stderr=log,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(30) == 0
        self.proc = None


def _start_up(data_dir: Path, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "anchor", "up", "--data-dir", str(data_dir)),
                *("--anchor-period", "1s", *flags),
            ],
            env=_env(),
            stdout=out,
            stderr=out,
        )


def _receipt(http: str, device_id: str, seq: int) -> dict[str, Any]:
    status, doc = _request("GET", f"{http}/v1/receipts/{device_id}/{seq}")
    assert status == 200, doc
    return dict(doc)


def _cosigners(doc: dict[str, Any], keys: list[CosignerVerifier]) -> set[str]:
    return {c.witness.name for c in verified_cosignatures(doc["checkpoint"], keys)}


def _wait_receipt(
    http: str, device_id: str, seq: int, keys: list[CosignerVerifier], want: set[str]
) -> dict[str, Any]:
    """The reading's receipt once it is anchored with exactly ``want`` cosigning."""
    deadline = time.monotonic() + 90
    while True:
        status, doc = _request("GET", f"{http}/v1/receipts/{device_id}/{seq}")  # 404 until sealed
        if status == 200 and doc["status"] == "anchored" and _cosigners(doc, keys) == want:
            return dict(doc)
        assert time.monotonic() < deadline, (status, doc)
        time.sleep(0.3)


def _verify(*args: str) -> int:
    return cli_main(["verify", *args])


def _metrics(http: str, token: str) -> str:
    request = urllib.request.Request(
        f"{http}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        text: str = resp.read().decode()
    return text


def test_up_with_two_witnesses(tmp_path: Path, services_dir: Path) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="upw-", dir=services_dir))
    log = tmp_path / "up.log"
    # The witnesses must know the operator's key before `up` asks them: make it first, where
    # `up` keeps it (it uses an existing D/keys/operator.skey).
    (data_dir / "keys").mkdir(mode=0o700)
    assert (
        cli_main(["keygen", "--operator", "--name", ORIGIN, "--out", str(data_dir / "keys")]) == 0
    )
    operator_vkey = data_dir / "keys" / "operator.vkey"
    w1 = WitnessProcess(tmp_path, "w1.witness.example", operator_vkey)
    w2 = WitnessProcess(tmp_path, "w2.witness.example", operator_vkey)
    keys = [w1.verifier, w2.verifier]
    both = {"w1.witness.example", "w2.witness.example"}
    witness_flags = [f"--witness={w.url}={w.vkey_file}" for w in (w1, w2)]
    signer = DeviceSigner("wl-witness-0001", PrivateKey.generate())
    jwk = tmp_path / "device.jwk"
    jwk.write_text(json.dumps(signer.key.public_key.to_jwk()))
    proc: subprocess.Popen[bytes] | None = None
    try:
        w1.start()
        w2.start()
        proc = _start_up(data_dir, log, *witness_flags, "--witness-quorum", "2")
        up = _wait_up(proc, data_dir, log)
        assert (
            up["witnesses"] == [{"url": w.url, "vkey": w.verifier.vkey()} for w in (w1, w2)]
            and up["witness_quorum"] == 2
        )
        token = Path(up["token_file"]).read_text().strip()
        status, device = _request(
            "POST",
            up["http"] + "/v1/devices",
            {
                "device_id": signer.device_id,
                "public_key_jwk": signer.key.public_key.to_jwk(),
                "district": "harbour",
                "kind": "iot.water_level",
            },
            token,
        )
        assert status == 201, device
        login = {k: device[k] for k in ("mqtt_username", "mqtt_password")}

        # 1. Both witnesses up: the anchored receipt carries both cosignatures.
        seqs, _ = _publish(up["mqtt"], signer, 5, login)
        doc = _wait_receipt(up["http"], signer.device_id, seqs[-1], keys, both)
        r1 = tmp_path / "r1.json"
        r1.write_text(json.dumps(doc))
        common = ["--device-key", str(jwk), "--log-key", str(operator_vkey), "--rpc", up["rpc"]]
        w_keys = ["--witness-key", str(w1.vkey_file), "--witness-key", str(w2.vkey_file)]
        assert _verify(str(r1), *common, *w_keys, "--witness-quorum", "2", "--json") == 0
        assert _verify(str(r1), *common, *w_keys, "--witness-quorum", "3") == 1
        # The checkpoint route and POST /v1/verify show the cosigners too.
        status, cp = _request("GET", f"{up['http']}/v1/log/checkpoint?format=json")
        assert status == 200 and len(verified_cosignatures(cp["note"], keys)) == 2
        status, result = _request("POST", f"{up['http']}/v1/verify", {"receipt": doc})
        assert status == 200 and result["fully_verified"], result
        assert {c["witness"] for c in result["cosigners"]} == both
        assert {c["name"]: c["status"] for c in result["checks"]}["witnesses"] == "pass"

        # 2. Witness 2 killed: anchoring goes on (the quorum option is off); the new receipt
        # carries witness 1's cosignature only, and fails a verifier who asks for two.
        w2.stop()
        more, _ = _publish(up["mqtt"], signer, 3, login)
        doc = _wait_receipt(up["http"], signer.device_id, more[-1], keys, {"w1.witness.example"})
        assert doc["log"]["size"] > json.loads(r1.read_text())["log"]["size"]
        r2 = tmp_path / "r2.json"
        r2.write_text(json.dumps(doc))
        assert _verify(str(r2), *common, *w_keys, "--witness-quorum", "2") == 1
        assert _verify(str(r2), *common, *w_keys, "--witness-quorum", "1") == 0
        label = w2.verifier.key_label
        assert f'outcome="unavailable",witness="{label}"' in _metrics(up["http"], token)
        _stop(proc, data_dir)
        proc = None

        # 3. Again with --witness-anchor-quorum, witness 2 still down: new checkpoints are not
        # anchored until it is back; then they are, with both cosignatures.
        proc = _start_up(
            data_dir, log, *witness_flags, "--witness-quorum", "2", "--witness-anchor-quorum"
        )
        up = _wait_up(proc, data_dir, log)
        held, _ = _publish(up["mqtt"], signer, 3, login)
        deadline = time.monotonic() + 60
        while "cityanchor_witness_quorum_waiting 1.0" not in _metrics(up["http"], token):
            assert time.monotonic() < deadline, _metrics(up["http"], token)
            time.sleep(0.5)
        time.sleep(3)  # several anchoring periods
        waiting = _receipt(up["http"], signer.device_id, held[-1])
        assert waiting["status"] == "sealed", waiting
        assert _cosigners(waiting, keys) == {"w1.witness.example"}
        w2.start()
        doc = _wait_receipt(up["http"], signer.device_id, held[-1], keys, both)
        r3 = tmp_path / "r3.json"
        r3.write_text(json.dumps(doc))
        assert _verify(str(r3), *common, *w_keys, "--witness-quorum", "2") == 0
        _stop(proc, data_dir)
        proc = None
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(90)
        w1.stop()
        w2.stop()
