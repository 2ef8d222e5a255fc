"""anchor.host.files.write_file_atomic: the one atomic, durable file write of the tree."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from anchor.host.files import write_file_atomic, write_private_file, write_public_file


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


def test_modes_parents_and_replace(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "secret"
    write_private_file(target, b"one")
    assert (target.read_bytes(), _mode(target)) == (b"one", 0o600)
    write_public_file(target, b"two")  # replaces, and takes the new mode
    assert (target.read_bytes(), _mode(target)) == (b"two", 0o644)
    write_file_atomic(target, b"three", mode=0o640, owner=(os.getuid(), os.getgid()))
    assert (target.read_bytes(), _mode(target)) == (b"three", 0o640)
    assert _leftovers(target.parent) == []


def test_no_replace_keeps_the_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "key"
    write_private_file(target, b"first", replace=False)
    with pytest.raises(FileExistsError):
        write_private_file(target, b"second", replace=False)
    assert target.read_bytes() == b"first"
    assert _leftovers(tmp_path) == []


def test_no_replace_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    target = tmp_path / "key"
    write_file_atomic(target, b"k", replace=False)
    assert (target.read_bytes(), _mode(target)) == (b"k", 0o600)
    with pytest.raises(FileExistsError):
        write_file_atomic(target, b"other", replace=False)
    assert target.read_bytes() == b"k"
    assert _leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    write_public_file(target, b"old")

    def full_disk(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        write_public_file(target, b"new")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []
