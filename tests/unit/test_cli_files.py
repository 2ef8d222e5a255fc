"""Every file a `cityanchor` command reads is read bounded, and only if it is a regular file
(issue 10, item 8).

The attack: ``cityanchor verify /dev/zero`` grew to 11.6 GB RSS, and a named pipe with no writer
blocked forever. Now each command refuses /dev/zero, a FIFO with no writer, a directory and an
oversize file with exit status 2 and a message naming the file, reading at most the cap + 1
bytes. Memory is checked by the bytes the process read (``rchar`` of /proc/self/io), not by time.
Commands that could block run in a subprocess with a timeout and an address-space cap, so that a
regression fails the test instead of hanging or swapping the machine.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from anchor.cli.commands import RECEIPT_FILE_LIMIT, main
from anchor.errors import UsageError
from anchor.host.files import read_user_file
from anchor.keys import PrivateKey
from devices.signer import load_state

ROOT = Path(__file__).resolve().parents[2]
BAD_KINDS = ("dev_zero", "fifo", "directory", "oversize")
SUBPROCESS_TIMEOUT_S = 120  # a guard against a hang, not a measurement
ADDRESS_SPACE_CAP = 2 << 30


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.fixture
def bad(tmp_path: Path) -> Iterator[dict[str, Path]]:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # nobody ever opens it for writing
    directory = tmp_path / "dir"
    directory.mkdir()
    oversize = tmp_path / "big.json"
    with oversize.open("wb") as f:  # sparse: 512 MiB claimed, nothing written
        f.truncate(512 << 20)
    oversize.chmod(0o600)  # so that `sign --key` judges its size, not its mode
    yield {
        "dev_zero": Path("/dev/zero"),
        "fifo": fifo,
        "directory": directory,
        "oversize": oversize,
    }


def _expected_message(kind: str) -> str:
    return {
        "dev_zero": "it is a character device, not a regular file",
        "fifo": "it is a named pipe, not a regular file",
        "directory": "it is a directory, not a regular file",
        "oversize": "is larger than",
    }[kind]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Valid inputs, so that each command gets as far as the file under test."""
    out = tmp_path_factory.mktemp("good")
    assert (
        main(["demo", "--offline", "--out", str(out), "--readings", "4", "--batch-size", "4"]) == 0
    )
    receipt = sorted((out / "receipts").glob("*.json"))[0]
    jwk = sorted((out / "devices").glob("*.jwk"))[0]
    key = out / "device.pem"
    key.write_bytes(PrivateKey.generate().to_pem())
    key.chmod(0o600)
    note = out / "checkpoint.note"
    note.write_text(json.loads(receipt.read_text())["checkpoint"])
    assert main(["keygen", "--witness", "--name", "w.example/1", "--out", str(out)]) == 0
    return {
        "receipt": receipt, "jwk": jwk, "note": note, "key": key,
        "witness_key": out / "witness.skey", "log_vkey": out / "operator.vkey",
    }  # fmt: skip


def _commands(good: dict[str, Path]) -> dict[str, Callable[[Path], list[str]]]:
    """Every command that reads a file the user names, with the file under test in one slot."""
    r = str(good["receipt"])
    nodb = ["--database-url", "postgresql://127.0.0.1:1/none"]
    return {
        "verify receipt": lambda f: ["verify", str(f)],
        "verify --device-key": lambda f: ["verify", r, "--device-key", str(f)],
        "verify --log-key": lambda f: ["verify", r, "--log-key", str(f)],
        "verify-consistency old": lambda f: ["verify-consistency", str(f), str(f)],
        "verify-consistency --proof": lambda f: [
            "verify-consistency", str(good["note"]), str(good["note"]), "--proof", str(f),
        ],
        "verify-completeness": lambda f: ["verify-completeness", str(f)],
        "verify-completeness --device-key": lambda f: [
            "verify-completeness", r, "--device-key", str(f),
        ],
        "export --chainpoint": lambda f: ["export", "--chainpoint", "--out", "/tmp", str(f)],
        "device register --jwk": lambda f: ["device", "register", *nodb, "d-1", "--jwk", str(f)],
        "device rotate --jwk": lambda f: ["device", "rotate", *nodb, "d-1", "--jwk", str(f)],
        "device import": lambda f: ["device", "import", *nodb, str(f), "--format", "json"],
        "config show --config": lambda f: ["config", "show", "--config", str(f)],
        "sign --key": lambda f: ["sign", "--device-id", "d-1", "--key", str(f), "--kind", "k",
                                 "--values", "{}"],
        "sign --state": lambda f: ["sign", "--device-id", "d-1", "--key", str(good["key"]),
                                   "--state", str(f), "--kind", "k", "--values", "{}", "--out",
                                   "/dev/null"],
        "audit --log-key": lambda f: ["audit", "--log-key", str(f)],
        "ingest --operator-key": lambda f: ["ingest", "--operator-key", str(f)],
        "witness serve --key": lambda f: ["witness", "serve", "--key", str(f), "--log-key",
                                          str(good["log_vkey"]), "--state", "/nonexistent/s.db"],
        "witness serve --log-key": lambda f: ["witness", "serve", "--key",
                                              str(good["witness_key"]), "--log-key", str(f),
                                              "--state", "/nonexistent/s.db"],
    }  # fmt: skip


def _cases() -> list[str]:
    return [
        "verify receipt", "verify --device-key", "verify --log-key", "verify-consistency old",
        "verify-consistency --proof", "verify-completeness", "verify-completeness --device-key",
        "export --chainpoint", "device register --jwk", "device rotate --jwk", "device import",
        "config show --config", "sign --key", "sign --state", "audit --log-key",
        "ingest --operator-key", "witness serve --key", "witness serve --log-key",
    ]  # fmt: skip


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))

    env = dict(os.environ, PYTHONPATH=str(ROOT), CITYANCHOR_DATABASE_URL="")
    return subprocess.run(
        [sys.executable, "-m", "anchor", *argv],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        preexec_fn=cap,
        env=env,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("command", _cases())
def test_every_command_refuses_what_is_not_a_bounded_regular_file(
    command: str, kind: str, bad: dict[str, Path], good: dict[str, Path]
) -> None:
    argv = _commands(good)[command](bad[kind])
    done = _run(argv)
    assert done.returncode == 2, (argv, done.stdout[-500:], done.stderr[-2000:])
    assert _expected_message(kind) in done.stderr, done.stderr[-2000:]
    assert str(bad[kind]) in done.stderr
    assert "Traceback" not in done.stderr


def _bytes_read_by(call: Callable[[], object]) -> int:
    before = _rchar()
    call()
    return _rchar() - before


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_verify_in_process_reads_almost_nothing_of_a_bad_file(
    kind: str, bad: dict[str, Path], good: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(good["receipt"])]) == 0  # imports done: they read files too
    capsys.readouterr()
    read = _bytes_read_by(lambda: main(["verify", str(bad[kind])]))
    # Refused from the file's type or size, before any read: only /proc/self/io itself counts.
    assert read < 4096, read
    err = capsys.readouterr().err
    assert _expected_message(kind) in err


def test_a_file_that_lies_about_its_size_is_read_to_the_cap_plus_one_byte() -> None:
    # /proc files are regular files of size 0 holding more: the size check passes, the read
    # must still stop at the cap + 1 byte.
    maps = Path("/proc/self/maps")
    assert maps.stat().st_size == 0 and len(maps.read_bytes()) > 300
    read_user_file(maps, what="probe", limit=1 << 20)  # warm up
    for limit in (1, 100, 200):
        got: list[BaseException] = []
        read = _bytes_read_by(functools.partial(_refused, maps, limit, got))
        assert len(got) == 1 and "larger than" in str(got[0])
        assert limit + 1 <= read < limit + 1 + 512, (limit, read)  # 512: /proc/self/io itself


def _refused(path: Path, limit: int, into: list[BaseException]) -> None:
    try:
        read_user_file(path, what="maps", limit=limit)
    except UsageError as exc:
        into.append(exc)


def test_a_regular_file_at_the_cap_is_read_whole(tmp_path: Path) -> None:
    exact = tmp_path / "exact"
    exact.write_bytes(b"x" * RECEIPT_FILE_LIMIT)
    assert (
        len(read_user_file(exact, what="receipt", limit=RECEIPT_FILE_LIMIT)) == RECEIPT_FILE_LIMIT
    )
    with pytest.raises(UsageError, match="larger than"):
        read_user_file(exact, what="receipt", limit=RECEIPT_FILE_LIMIT - 1)


def test_a_symlink_to_a_regular_file_is_fine_to_a_fifo_is_not(tmp_path: Path) -> None:
    target = tmp_path / "key.jwk"
    target.write_text("{}")
    link = tmp_path / "link.jwk"
    link.symlink_to(target)
    assert read_user_file(link, what="JWK file", limit=100) == b"{}"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link.unlink()
    link.symlink_to(fifo)
    with pytest.raises(UsageError, match="named pipe"):
        read_user_file(link, what="JWK file", limit=100)


def test_the_device_state_file_is_never_a_fifo(tmp_path: Path) -> None:
    from devices.signer import DeviceStateError

    fifo = tmp_path / "state.json"
    os.mkfifo(fifo)
    with pytest.raises(DeviceStateError) as exc:
        load_state(fifo)
    assert exc.value.reason == "state_unreadable"


def test_deep_json_files_are_usage_errors_not_tracebacks(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" * 20_000 + b"]" * 20_000)  # under every cap: refused for its depth
    # A proof or receipt document that nests too deep is an invalid document (exit 1, with the
    # reason), as any other malformed one; a key or import file is the caller's mistake (exit 2).
    for argv in (["verify-completeness", str(deep)], ["verify", str(deep)]):
        done = _run(argv)
        assert done.returncode == 1, (argv, done.stdout[-1000:], done.stderr[-1000:])
        assert "nests deeper" in done.stdout and "Traceback" not in done.stderr
        assert "_malformed" in done.stdout
    for argv in (
        ["verify", str(deep), "--device-key", str(deep)],
        ["device", "import", "--database-url", "postgresql://127.0.0.1:1/none", str(deep)],
        ["device", "register", "--database-url", "postgresql://127.0.0.1:1/none", "d", "--jwk",
         str(deep)],
    ):  # fmt: skip
        done = _run(argv)
        assert done.returncode == 2, (argv, done.stderr[-1000:])
        assert "nests deeper" in done.stderr and "Traceback" not in done.stderr
