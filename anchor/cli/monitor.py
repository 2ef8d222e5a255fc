"""``cityanchor monitor``: follow one log from outside (DESIGN.md "Witness and monitor").

Exit codes: 0 everything seen is consistent; 1 an inconsistency, with its evidence printed as
JSON (and written beside the state file, and posted to ``--webhook``); 2 a usage error,
including a state file that cannot be read (never reset silently); 3 (``--once`` only) the API
or a chain could not be read, so the round did not complete and nothing inconsistent was seen.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from anchor.cli.inputs import EXIT_INVALID, EXIT_OK, parse_duration
from anchor.errors import AnchorError, UsageError
from anchor.host.files import KEY_FILE_LIMIT, read_user_file

__all__ = ["EXIT_UNAVAILABLE", "add_monitor_command"]

EXIT_UNAVAILABLE = 3
log = logging.getLogger("anchor.monitor")


def _key_text(value: str, what: str) -> str:
    """A vkey given inline or as the path of a file holding it."""
    if Path(value).is_file():
        return read_user_file(value, what=what, limit=KEY_FILE_LIMIT).decode("utf-8", "replace")
    return value


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics-listen must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _config(args: argparse.Namespace) -> Any:
    from anchor.checkpoint import NoteVerifier
    from anchor.cosignature import CosignerVerifier
    from anchor.monitor.runner import MonitorConfig

    try:
        log_key = NoteVerifier.from_vkey(_key_text(args.log_key, "log key").strip())
    except AnchorError as exc:
        raise UsageError(f"--log-key: {exc.detail}") from exc
    witnesses = []
    for value in args.witness_key:
        try:
            witnesses.append(CosignerVerifier.from_vkey(_key_text(value, "witness key").strip()))
        except AnchorError as exc:
            raise UsageError(f"--witness-key {value}: {exc.detail}") from exc
    quorum = args.witness_quorum if args.witness_quorum is not None else min(1, len(witnesses))
    if quorum < 0 or quorum > len(witnesses):
        raise UsageError(f"--witness-quorum {quorum} with {len(witnesses)} --witness-key")
    if args.sample < 0 or args.block_page < 1 or args.confirmations < 1 or args.from_block < 0:
        raise UsageError("--sample, --from-block must be >= 0; --block-page, --confirmations >= 1")
    if not args.api.startswith(("http://", "https://")):
        raise UsageError(f"--api must be an http(s) URL, got {args.api!r}")
    return MonitorConfig(
        api_url=args.api,
        log_key=log_key,
        state_path=Path(args.state),
        rpc_urls=tuple(args.rpc),
        contract=args.contract,
        submitters=tuple(args.submitter),
        witnesses=tuple(witnesses),
        witness_quorum=quorum,
        sample=args.sample,
        sample_devices=tuple(args.sample_device),
        webhook=args.webhook,
        block_page=args.block_page,
        from_block=args.from_block,
        confirmations=args.confirmations,
        timeout_s=parse_duration(args.timeout),
    )


def _print_status(args: argparse.Namespace, status: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(status, sort_keys=True), flush=True)
    elif "size" in status:
        print(
            f"monitor: round {status.get('round')}: log size {status['size']} root "
            f"{status['root']} consistent with everything seen",
            flush=True,
        )
    else:
        print(f"monitor: round {status.get('round')}: {status.get('log', 'nothing yet')}")


def _print_evidence(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=1, sort_keys=True), flush=True)
    print(
        f"cityanchor monitor: INCONSISTENT [{document.get('kind')}] {document.get('detail')}",
        file=sys.stderr,
    )


def _cmd_monitor(args: argparse.Namespace) -> int:
    from anchor.log_view import MonitorStateError
    from anchor.monitor.output import MonitorMetrics
    from anchor.monitor.runner import Monitor

    config = _config(args)
    metrics = MonitorMetrics()
    try:
        monitor = Monitor(config, metrics=metrics)
    except MonitorStateError as exc:
        raise UsageError(exc.detail) from exc
    if args.metrics_listen:
        host, port = _hostport(args.metrics_listen)
        try:
            metrics.serve(host, port)
        except OSError as exc:
            raise UsageError(f"--metrics-listen {args.metrics_listen}: {exc}") from exc
    cosigner = _start_cosigner(args, config, monitor)
    try:
        return _loop(args, monitor)
    finally:
        if cosigner is not None:
            cosigner.stop()


def _start_cosigner(args: argparse.Namespace, config: Any, monitor: Any) -> Any:
    """With ``--cosign-key``: the tlog-witness server, cosigning only what ``monitor`` verified."""
    if not args.cosign_key:
        if args.listen or args.witness_state:
            raise UsageError("--listen and --witness-state need --cosign-key")
        return None
    from anchor.checkpoint import parse_checkpoint_unverified
    from anchor.cli.witness import parse_listen
    from anchor.cosignature import CosignerSigner
    from anchor.monitor.cosigner import CosignerThread, MonitorAdmission

    if args.interval is None:
        raise UsageError("--cosign-key needs --interval: a witness must keep running")
    raw = read_user_file(args.cosign_key, what="the witness key", limit=KEY_FILE_LIMIT)
    try:
        signer = CosignerSigner.from_skey(raw.decode("utf-8", "replace").strip())
    except AnchorError as exc:
        raise UsageError(f"--cosign-key {args.cosign_key}: {exc.detail}") from None
    host, port = parse_listen(args.listen or "127.0.0.1:7380")
    origins = {config.log_key.name, *args.origin}
    head = monitor.state.view.head
    if head is not None:
        origins.add(parse_checkpoint_unverified(head.note).origin)
    admission = MonitorAdmission(
        lambda: monitor.state.view, lambda: monitor.state.alarm is not None
    )
    state_path = Path(args.witness_state or f"{config.state_path}.witness.sqlite")
    try:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        thread = CosignerThread(
            signer=signer,
            log_keys={origin: [config.log_key] for origin in sorted(origins)},
            state_path=state_path,
            host=host,
            port=port,
            admit=admission,
        )
    except (OSError, AnchorError) as exc:
        raise UsageError(f"witness state {state_path}: {exc}") from exc
    try:
        url = thread.start()
    except OSError as exc:
        raise UsageError(f"--listen {args.listen}: {exc}") from exc
    print(f"witness listening on {url} (cosigns only what this monitor verified)", flush=True)
    return thread


def _loop(args: argparse.Namespace, monitor: Any) -> int:
    from anchor.monitor.api_client import MonitorError

    stop = threading.Event()
    if args.interval is not None and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    interval = parse_duration(args.interval) if args.interval is not None else None
    while True:
        try:
            result = monitor.run_round()
        except MonitorError as exc:
            if interval is None:
                print(f"cityanchor monitor: round incomplete: {exc}", file=sys.stderr)
                return EXIT_UNAVAILABLE
            log.warning("round incomplete, retrying in %ss: %s", interval, exc)
        else:
            if result.evidence is not None:
                _print_evidence(result.evidence)
                monitor.notify(result.evidence)
                return EXIT_INVALID
            _print_status(args, result.status)
        if interval is None or stop.wait(interval):
            return EXIT_OK


def add_monitor_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``monitor``."""
    p = sub.add_parser(
        "monitor",
        help="follow a log from outside: checkpoints, consistency, anchors, receipts",
        description="Exit 0: consistent; 1: inconsistent (evidence JSON printed); 2: usage "
        "error or unreadable state; 3 (--once): API or chain unreachable.",
    )
    p.add_argument("--api", required=True, metavar="URL", help="the log's public API")
    p.add_argument(
        "--log-key", required=True, metavar="VKEY", help="operator's note vkey (or its file)"
    )
    p.add_argument(
        "--rpc", action="append", default=[], metavar="URL", help="chain JSON-RPC (repeatable)"
    )
    p.add_argument("--contract", help="AnchorRegistry address (default: from the API's anchors)")
    p.add_argument(
        "--submitter",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="the operator's anchoring account (repeatable; default: the senders of the "
        "transactions the API lists as its anchors)",
    )
    p.add_argument(
        "--witness-key",
        action="append",
        default=[],
        metavar="VKEY",
        help="trusted witness vkey, type 0x04 (or its file); repeatable",
    )
    p.add_argument(
        "--witness-quorum", type=int, default=None, metavar="K", help="cosignatures required"
    )
    p.add_argument("--state", required=True, metavar="PATH", help="state file (JSON)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one round, then exit (cron)")
    mode.add_argument("--interval", metavar="S", help="follow: one round every S (e.g. 60s)")
    p.add_argument("--json", action="store_true", help="one JSON status object per round")
    p.add_argument("--webhook", metavar="URL", help="POST the evidence JSON here as well")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve Prometheus metrics")
    p.add_argument("--sample", type=int, default=2, metavar="N", help="receipts per round")
    p.add_argument(
        "--sample-device",
        action="append",
        default=[],
        metavar="ID",
        help="device whose receipts are sampled (repeatable; none: no sampling)",
    )
    p.add_argument("--block-page", type=int, default=2000, help="blocks per eth_getLogs call")
    p.add_argument("--from-block", type=int, default=0, help="first block to read on a new state")
    p.add_argument(
        "--confirmations", type=int, default=1, help="blocks (incl. its own) before an event counts"
    )
    p.add_argument("--timeout", default="10s", help="per HTTP or JSON-RPC request")
    p.add_argument(
        "--cosign-key",
        metavar="SKEY",
        help="act as a witness (c2sp.org/tlog-witness) with this witness.skey, cosigning only "
        "checkpoints this monitor verified; needs --interval",
    )
    p.add_argument("--listen", metavar="HOST:PORT", help="witness address (default 127.0.0.1:7380)")
    p.add_argument(
        "--witness-state", metavar="PATH", help="witness state (default STATE.witness.sqlite)"
    )
    p.add_argument(
        "--origin", action="append", default=[], help="log origin if not the log key's name"
    )
    p.set_defaults(func=_cmd_monitor)
