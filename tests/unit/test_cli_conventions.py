"""Issue 14 items 4 and 12: the conventions every ``cityanchor`` command follows.

Defaults shown in every ``--help``; key flags that take one value each and never swallow the
receipts; quoted globs expanded; ``-v`` after the subcommand; one name for the RPC flag; one
error prefix; ``audit --help`` lists only what applies; a closed pipe ends ``verify`` quietly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anchor.checkpoint import generate_note_key
from anchor.cli.commands import _build_parser, main
from anchor.cli.parsing import ERROR_PREFIX, iter_parsers, shows_default
from anchor.cosignature import generate_cosigner_key
from anchor.keys import PrivateKey

REPO = Path(__file__).resolve().parents[2]


def _leaf_parsers() -> list[argparse.ArgumentParser]:
    return list(iter_parsers(_build_parser()))


def _choices() -> dict[str, argparse.ArgumentParser]:
    parser = _build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_with_a_default_says_it_in_help() -> None:
    missing = []
    checked = 0
    for parser in _leaf_parsers():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not shows_default(action):
                continue
            checked += 1
            text = formatter._expand_help(action) if action.help else ""
            if "default" not in text:
                missing.append(f"{parser.prog} {action.option_strings[0]}")
    assert checked > 40  # the walk reached every command (up, api, demo, token, ...)
    assert not missing, missing


def test_up_help_shows_the_anchor_period_default_and_what_up_is_for() -> None:
    text = _choices()["up"].format_help()
    assert "anchoring period, e.g. 60s (default: 60s)" in " ".join(text.split())
    assert "single-machine evaluation mode" in " ".join(text.split()) and "docker/" in text
    assert "--rpc URL" in text and "--rpc-url" not in text  # the old spelling is hidden


def test_rpc_url_is_a_hidden_alias_of_rpc() -> None:
    parser = _build_parser()
    old = parser.parse_args(["up", "--data-dir", "d", "--rpc-url", "http://x:1"])
    new = parser.parse_args(["up", "--data-dir", "d", "--rpc", "http://x:1"])
    assert old.rpc_url == new.rpc_url == "http://x:1"
    deploy = parser.parse_args(["chain", "deploy", "--rpc", "http://x:1"])
    assert deploy.rpc_url == "http://x:1"


def test_audit_help_lists_only_what_applies() -> None:
    p = _choices()["audit"]
    text = p.format_help()
    for flag in ("--config", "--database-url", "--operator-key", "--log-key", "--no-chain"):
        assert flag in text
    for flag in ("--mqtt", "--origin"):
        assert flag not in text


def test_key_flags_take_one_value_and_never_swallow_the_receipts() -> None:
    parser = _build_parser()
    args = parser.parse_args(["verify", "--device-key", "k.jwk", "r.json"])
    assert args.device_key == ["k.jwk"] and args.receipts == ["r.json"]
    args = parser.parse_args(
        ["verify", "--log-key", "a.vkey", "--log-key", "b.vkey", "--witness-key", "w", "r.json"]
    )
    assert args.log_key == ["a.vkey", "b.vkey"] and args.witness_key == ["w"]
    scopes = parser.parse_args(
        ["token", "create", "--name", "n", "--scope", "metrics:read", "--scope", "devices:write"]
    )
    assert scopes.scope == ["metrics:read", "devices:write"]
    both = parser.parse_args(
        ["token", "create", "--name", "n", "--scope", "metrics:read", "devices:write"]
    )
    assert both.scope == ["metrics:read", "devices:write"]  # no positionals: both forms work
    for parser_ in _leaf_parsers():  # the convention holds for every command with positionals
        if not any(not a.option_strings for a in parser_._actions):
            continue
        for action in parser_._actions:
            if action.option_strings:
                assert action.nargs not in ("+", "*"), (parser_.prog, action.option_strings)


def _receipt_and_key(tmp_path: Path) -> tuple[Path, Path]:
    receipt = tmp_path / "r.json"
    receipt.write_text("{}")  # not a valid receipt: verify reports it, exit 1
    keys = tmp_path / "keys"
    keys.mkdir()
    for i in range(2):
        jwk = PrivateKey.generate().public_key.to_jwk()
        (keys / f"d{i}.jwk").write_text(json.dumps(jwk))
    return receipt, keys


def test_receipts_may_follow_the_key_flags_and_quoted_globs_expand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    receipt, keys = _receipt_and_key(tmp_path)
    # Before the fix: "the following arguments are required: RECEIPT".
    assert main(["verify", "--device-key", str(keys / "d0.jwk"), str(receipt), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["file"] == str(receipt)
    assert main(["verify", str(receipt), "--device-key", str(keys / "*.jwk"), "--json"]) == 1
    capsys.readouterr()
    # Receipts on both sides of the flags.
    assert main(["verify", str(receipt), "--device-key", str(keys / "d1.jwk"), str(receipt)]) == 1
    assert "0 of 2 receipts valid" in capsys.readouterr().out
    assert main(["verify", str(receipt), "--device-key", str(tmp_path / "none" / "*.jwk")]) == 2
    assert "matches no file" in capsys.readouterr().err
    # An unquoted glob (the shell's key files after one flag): each file is a key by its content,
    # so none is taken for a receipt, whichever key flag it followed.
    assert main(["verify", str(receipt), "--device-key", *map(str, sorted(keys.iterdir()))]) == 1
    out = capsys.readouterr().out
    assert "0 of 1 receipts valid" in out and "d1.jwk" not in out
    # Only keys: nothing to verify is a usage error.
    assert main(["verify", "--device-key", *map(str, sorted(keys.iterdir()))]) == 2
    assert "no receipt to verify" in capsys.readouterr().err


def test_note_keys_among_the_receipts_go_to_their_flag_by_type_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--log-key op.vkey w1.vkey r.json`: the shell's glob after one flag. A type-0x01 vkey is a
    # log key, a type-0x04 one a witness key, whichever flag it followed.
    receipt, _ = _receipt_and_key(tmp_path)
    op, w1 = tmp_path / "op.vkey", tmp_path / "w1.vkey"
    op.write_text(generate_note_key("log.example").verifier.vkey() + "\n")
    w1.write_text(generate_cosigner_key("w1.example").verifier.vkey() + "\n")
    code = main(["verify", "--log-key", str(op), str(w1), str(receipt), "--json"])
    assert code == 1  # "{}" is no receipt, but every file found its place
    report = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in report] == [str(receipt)]
    # The witness key counted: a quorum of 1 needs a witness key, and this one was taken.
    code = main(["verify", str(receipt), "--witness-quorum", "1", "--log-key", str(op), str(w1)])
    assert code == 1 and "needs --witness-key" not in capsys.readouterr().err


def test_usage_and_domain_errors_share_one_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["verify"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(ERROR_PREFIX + "verify: ")
    with pytest.raises(SystemExit):
        main(["verify", "r.json", "--no-such-flag"])
    assert capsys.readouterr().err.splitlines()[-1].startswith(ERROR_PREFIX)
    assert main(["verify", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.startswith(ERROR_PREFIX)
    bad = tmp_path / "bad.toml"
    bad.write_text("batch_size = 'x'\n")
    assert main(["config", "show", "--config", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(ERROR_PREFIX)


def test_verbose_is_accepted_after_the_subcommand(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("batch_size = 7\n")
    anchor_log = logging.getLogger("anchor")
    level = anchor_log.level
    try:
        assert main(["config", "show", "-v", "--config", str(config)]) == 0
        assert anchor_log.level == logging.INFO
        assert main(["-v", "config", "show", "-v", "--config", str(config)]) == 0
        assert anchor_log.level == logging.DEBUG
    finally:
        anchor_log.setLevel(level)


def test_out_names_a_directory_or_a_file_as_the_help_says() -> None:
    choices = _choices()
    for command, kind in (("keygen", "DIR"), ("export", "DIR"), ("demo", "DIR"), ("sign", "FILE")):
        out = next(a for a in choices[command]._actions if "--out" in a.option_strings)
        assert out.metavar == kind, command


def test_a_closed_pipe_ends_verify_quietly(tmp_path: Path) -> None:
    """`verify --json | head -1`: the reader is gone before verify writes (made certain here by
    closing the pipe's read end before the command starts). Before: a BrokenPipeError
    traceback on stderr."""
    receipt, _ = _receipt_and_key(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "anchor", "verify", "--json", str(receipt), str(receipt)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""  # no traceback, no "Exception ignored" from the final flush
    assert proc.returncode == 1
