"""The service commands: ``config show``, ``ingest``, ``up``, ``audit``, ``api``, ``anchor`` and
``chain deploy``.

Each builds its Settings with :func:`anchor.cli.inputs.settings_from_args` and runs one wing
(anchor.ingest, anchor.api, anchor.anchoring, anchor.cli.up, anchor.cli.audit).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from anchor.cli.inputs import (
    EXIT_INVALID,
    EXIT_OK,
    add_service_flags,
    load_log_keys,
    parse_duration,
    port_number,
    settings_from_args,
)
from anchor.errors import AnchorError, UsageError
from anchor.host.logs import LOG_BACKUPS, LOG_MAX_BYTES

__all__ = ["add_service_commands"]

log = logging.getLogger("anchor")


def _cmd_config_show(args: argparse.Namespace) -> int:
    print(json.dumps(settings_from_args(args).masked(), indent=2))
    return EXIT_OK


def _add_reorg_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reorg-window",
        type=int,
        metavar="BLOCKS",
        help="re-check anchors recorded in the last BLOCKS blocks (and each chain's newest); one "
        "a reorg removed is marked anchor_vanished and anchored again (default: "
        "anchor_reorg_window_blocks, 128)",
    )


def _cmd_ingest(args: argparse.Namespace) -> int:
    from anchor.ingest.main import run_ingest

    settings = settings_from_args(args)
    return run_ingest(
        settings,
        workers=args.workers,
        worker_index=args.worker_index,
        metrics_listen=args.metrics_listen,
    )


def _cmd_audit(args: argparse.Namespace) -> int:
    import asyncio

    from anchor.cli.audit import run_audit
    from anchor.host.files import load_operator_signer

    settings = settings_from_args(args)
    keys = load_log_keys(args.log_key)
    if not keys:
        try:
            keys = [load_operator_signer(settings.operator_key_file).verifier]
        except AnchorError:
            print("audit: no --log-key and no operator key: checkpoint signatures not checked")
    backends = []
    if not args.no_chain:
        from anchor.anchoring.backend import build_backend

        backends = [build_backend(c, with_key=False) for c in settings.chains if c.contract]
    report = asyncio.run(
        run_audit(
            settings.database_url,
            log_verifiers=keys,
            backends=backends,
            mark_vanished=args.mark_vanished,
            archive_dir=Path(settings.archive_dir) if settings.archive_dir else None,
        )
    )
    for d in report.divergences:
        print(f"DIVERGENCE {d.kind}: {d.what}: {d.detail}")
    if report.anchors_marked:
        print(
            f"audit: marked {report.anchors_marked} anchor(s) anchor_vanished: receipts no longer "
            "cite them; the anchoring job anchors the newest checkpoint again if it was one"
        )
    if report.archives_unchecked:
        print(
            f"audit: {report.archives_unchecked} of {report.archives} archived month(s) not "
            "checked: no --archive-dir / archive_dir"
        )
    if report.anchors_vanished:
        print(
            f"audit: {report.anchors_vanished} anchor(s) marked vanished earlier "
            "(vanished_anchors; anchored again since or covered by a newer anchor)"
        )
    print(
        f"audit: {report.batches} batches, {report.readings} readings ({report.erased} erased), "
        + (f"{report.archives} archived month(s), " if report.archives else "")
        + f"{report.checkpoints} checkpoints, {report.anchors_checked} anchors checked on chain"
        + (
            f" ({report.anchors_skipped} on unconfigured chains skipped)"
            if report.anchors_skipped
            else ""
        )
        + (" -> OK" if report.ok else f" -> {len(report.divergences)} DIVERGENCE(S)")
    )
    return EXIT_OK if report.ok else EXIT_INVALID


def _cmd_up(args: argparse.Namespace) -> int:
    from anchor.cli.up import UpOptions, run_up

    if (args.rpc_url is None) != (args.chain_id is None):
        raise UsageError("--rpc and --chain-id go together (with --chain-key-file)")
    witnesses = tuple(_witness_flag(w) for w in args.witness)
    return run_up(
        UpOptions(
            data_dir=Path(args.data_dir),
            mqtt_port=args.mqtt_port,
            http_port=args.http_port,
            chain_port=args.chain_port,
            rpc_url=args.rpc_url,
            chain_id=args.chain_id,
            chain_key_file=args.chain_key_file,
            anchor_period_s=parse_duration(args.anchor_period),
            anchor_recheck_s=parse_duration(args.anchor_recheck),
            operator_token_file=Path(args.operator_token_file)
            if args.operator_token_file
            else None,
            workers=args.workers,
            broker_autosave_interval_s=args.broker_autosave_interval,
            broker_autosave_changes=args.broker_autosave_changes,
            broker_max_queued_messages=args.broker_max_queued,
            witnesses=witnesses,
            witness_quorum=1 if args.witness_quorum is None else args.witness_quorum,
            witness_anchor_quorum=args.witness_anchor_quorum,
            witness_mode=args.witness_mode,
            log_max_bytes=args.log_max_bytes,
            log_backups=args.log_backups,
        )
    )


def _witness_flag(flag: str) -> tuple[str, str]:
    """``URL=VKEY_FILE`` -> (URL, the witness's verifier key); UsageError on anything wrong."""
    from anchor.cli.inputs import read_input
    from anchor.cosignature import CosignerVerifier
    from anchor.host.config import check_witness_url
    from anchor.host.files import KEY_FILE_LIMIT

    url, sep, path = flag.partition("=")
    if not sep or not url or not path:
        raise UsageError(f"--witness {flag!r}: expected URL=VKEY_FILE")
    check_witness_url(url)
    text = read_input(path, "witness key", KEY_FILE_LIMIT).decode("utf-8", "replace").strip()
    try:
        return url, CosignerVerifier.from_vkey(text).vkey()
    except AnchorError as exc:
        raise UsageError(f"--witness {url}: witness key {path}: {exc.detail}") from exc


def _cmd_api(args: argparse.Namespace) -> int:
    from anchor.api.app import run_api

    logging.getLogger("anchor").setLevel(min(log.level or logging.INFO, logging.INFO))
    if args.workers > 1 and args.port == 0:
        raise UsageError("--workers needs a fixed --port (the processes share it)")
    return run_api(
        settings_from_args(args),
        host=args.host,
        port=args.port,
        workers=args.workers,
        reuse_port=args.reuse_port,
    )


def _cmd_anchor(args: argparse.Namespace) -> int:
    from anchor.anchoring.main import run_anchor_loop, run_anchor_once

    recheck = getattr(args, "recheck_interval", None)
    settings = settings_from_args(
        args,
        anchor_reorg_window_blocks=args.reorg_window,
        anchor_recheck_ms=None
        if recheck is None
        else max(1, round(parse_duration(recheck) * 1000)),
    )
    if args.anchor_command == "run":
        return run_anchor_once(settings, timeout_s=args.timeout)
    return run_anchor_loop(
        settings, period_s=parse_duration(args.period or f"{settings.anchor_period_s}s")
    )


def _cmd_chain_deploy(args: argparse.Namespace) -> int:
    import dataclasses

    from anchor.anchoring.backend import deploy
    from anchor.host.config import ChainSettings, settings_to_toml

    settings = settings_from_args(args)
    existing = next((c for c in settings.chains if c.name == args.name), None)
    chain = existing or ChainSettings(name=args.name)
    updates = {
        k: v
        for k, v in {
            "rpc_url": args.rpc_url,
            "chain_id": args.chain_id,
            "key_file": args.key_file,
            "fee_mode": args.fee_mode,
        }.items()
        if v is not None
    }
    chain = dataclasses.replace(chain, **updates)
    address = deploy(chain, submitters=args.submitter)
    chain = dataclasses.replace(chain, contract=address)
    print(f"AnchorRegistry deployed on chain {chain.chain_id} at {address}")
    if args.config:
        others = [c for c in settings.chains if c.name != chain.name]
        updated = dataclasses.replace(settings, chains=(*others, chain))
        Path(args.config).write_text(settings_to_toml(updated), encoding="utf-8")
        print(f"wrote the address to {args.config} (chain {chain.name!r})")
    return EXIT_OK


def _add_rpc_flag(p: argparse.ArgumentParser, help: str) -> None:
    """``--rpc URL``, the one name every command gives a chain's JSON-RPC endpoint (``verify``,
    ``monitor``); ``--rpc-url``, its earlier spelling here, still works but is not shown."""
    p.add_argument("--rpc", dest="rpc_url", metavar="URL", help=help)
    p.add_argument("--rpc-url", dest="rpc_url", help=argparse.SUPPRESS)


def add_service_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``config``, ``ingest``, ``up``, ``audit``, ``api``, ``anchor`` and ``chain``."""
    p = sub.add_parser("config", help="configuration")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("show", help="print the effective settings, secrets masked")
    add_service_flags(c)
    c.set_defaults(func=_cmd_config_show)

    p = sub.add_parser("ingest", help="run the MQTT ingestor")
    add_service_flags(p)
    p.add_argument("--batch-size", type=int, help="readings per batch (default 1000)")
    p.add_argument("--batch-age-ms", type=int, help="seal a batch this old (default 1000)")
    p.add_argument("--verify-processes", type=int, help="signature workers (default: one per core)")
    p.add_argument(
        "--mqtt-client",
        choices=("native", "paho"),
        help="the ingestor's MQTT client: native (asyncio, default) or paho",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="ingestor processes on the shared subscription"
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve this process's Prometheus metrics (no token: bind to an internal address; "
        "worker i of --workers N on PORT+i)",
    )
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser(
        "up",
        help="run everything on this machine (database, broker, chain, services): the "
        "single-machine evaluation mode",
        description="Run everything on this machine: a private PostgreSQL, Mosquitto and local "
        "chain, the ingestor, the anchoring job and the API. This is the single-machine "
        "evaluation mode: every port listens on 127.0.0.1 only, with no TLS. For a real fleet "
        "(TLS for MQTT and HTTPS, separate hosts, backups) deploy with docker/ (docker/README.md).",
    )
    p.add_argument(
        "--data-dir",
        required=True,
        help="all state lives here; reuse it to resume. When run as root, the system users "
        "postgres and mosquitto must be able to enter every directory above it (not under a "
        "0700 directory such as /root)",
    )
    p.add_argument(
        "--mqtt-port", type=port_number, help="broker port (default: last time's, else free)"
    )
    p.add_argument(
        "--http-port", type=port_number, help="API port (default: last time's, else free)"
    )
    p.add_argument(
        "--chain-port",
        type=port_number,
        help="local chain port (default: last time's, else free)",
    )
    _add_rpc_flag(p, "an external EVM chain's JSON-RPC URL, instead of the local one")
    p.add_argument("--chain-id", type=int, help="the external chain's id")
    p.add_argument("--chain-key-file", help="the external chain account's hex private key")
    p.add_argument(
        "--anchor-period", default="60s", metavar="DURATION", help="anchoring period, e.g. 60s"
    )
    p.add_argument(
        "--anchor-recheck",
        default="30s",
        metavar="DURATION",
        help="how often recent anchors are re-checked against the chain (reorgs), e.g. 30s",
    )
    p.add_argument(
        "--operator-token-file",
        help="where to keep the operator's API token (default: DATA_DIR/keys/operator.token)",
    )
    p.add_argument("--workers", type=int, default=1, help="ingestor processes")
    p.add_argument(
        "--log-max-bytes",
        type=int,
        default=LOG_MAX_BYTES,
        metavar="N",
        help="each service's log (DATA_DIR/logs/NAME.log, JSON lines) is rotated at N bytes",
    )
    p.add_argument(
        "--log-backups",
        type=int,
        default=LOG_BACKUPS,
        metavar="N",
        help="rotated logs kept per service (NAME.log.1 .. NAME.log.N)",
    )
    p.add_argument(
        "--broker-autosave-interval",
        type=int,
        default=1,
        metavar="SECONDS",
        help="Mosquitto saves its database every SECONDS: a crash loses at most that much of what "
        "it PUBACKed and had not delivered (default: %(default)s)",
    )
    p.add_argument(
        "--broker-autosave-changes",
        type=int,
        default=None,
        metavar="N",
        help="save after every N changes instead (each queued reading is one; every save "
        "rewrites the whole backlog, see docs/operator-guide.md) (default: off)",
    )
    p.add_argument(
        "--broker-max-queued",
        type=int,
        default=1_000_000,
        metavar="N",
        help="readings the broker queues for the ingestors before it drops them "
        "(~0.63 KB of memory each) (default: %(default)s)",
    )
    p.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="URL=VKEY_FILE",
        help="a C2SP tlog-witness to ask for cosignatures: its base URL (POST URL/add-checkpoint) "
        "and its cosignature verifier key file (cityanchor keygen --witness); repeatable",
    )
    p.add_argument(
        "--witness-quorum",
        type=int,
        default=None,
        metavar="K",
        help="distinct witnesses whose cosignatures make a checkpoint witnessed (default 1: one "
        "honest witness that saw a checkpoint makes a split view detectable, and one witness "
        "down does not hold anything back; raise it to need more of them to collude)",
    )
    p.add_argument(
        "--witness-anchor-quorum",
        action="store_true",
        help="anchor only checkpoints that --witness-quorum witnesses cosigned, and wait "
        "(witness_quorum_not_met) while there is none (default: anchor whatever the "
        "witnesses answer)",
    )
    p.add_argument(
        "--witness-mode",
        choices=("seal", "anchor"),
        default="seal",
        help="seal: have every new checkpoint cosigned as it is sealed (sealed receipts carry "
        "cosignatures); anchor: only the checkpoint about to be anchored (one request per "
        "witness per period) (default: %(default)s)",
    )
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("audit", help="recompute every batch, the log, checkpoints and anchors")
    # The database, the chains (config) and the operator key: no broker, no origin.
    add_service_flags(p, mqtt=False, origin=False)
    p.add_argument(
        "--log-key",
        action="extend",
        nargs="+",
        default=[],
        metavar="VKEY_FILE",
        help="operator key to check checkpoint signatures; repeatable (default: the public key "
        "of --operator-key / operator_key_file)",
    )
    p.add_argument("--no-chain", action="store_true", help="do not check anchors on chain")
    p.add_argument(
        "--archive-dir",
        metavar="DIR",
        help="the archived months' files (cityanchor archive --dir): each is checked against its "
        "manifest, its database record and the batch roots (default: archive_dir; none: "
        "archived months are counted, not checked)",
    )
    p.add_argument(
        "--mark-vanished",
        action="store_true",
        help="mark anchors found gone from their chain anchor_vanished (as the anchoring job "
        "does within its reorg window), so receipts stop citing them",
    )
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("api", help="serve the HTTP API (receipts, verification, operator)")
    add_service_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="listen address")
    p.add_argument("--port", type=port_number, default=8080, help="listen port")
    p.add_argument("--workers", type=int, default=1, help="API processes sharing the port")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--archive-dir",
        metavar="DIR",
        help="the archived months' files (cityanchor archive --dir): receipts of archived "
        "readings are served from them (default: archive_dir; none: answered 410 "
        "reading_archived)",
    )
    p.set_defaults(func=_cmd_api)

    p = sub.add_parser("anchor", help="anchor the batch log's checkpoints on chain")
    asub = p.add_subparsers(dest="anchor_command", required=True, metavar="ACTION")
    a = asub.add_parser(
        "run",
        help="re-check recent anchors, anchor the newest checkpoint once and wait for it",
    )
    add_service_flags(a, mqtt=False, operator_key=False, origin=False)
    a.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for confirmation")
    _add_reorg_flags(a)
    a.set_defaults(func=_cmd_anchor)
    a = asub.add_parser("loop", help="the anchoring job: one transaction per period")
    add_service_flags(a, mqtt=False, operator_key=False, origin=False)
    a.add_argument("--period", help="e.g. 60s (default: anchor_period_s, 60s)")
    _add_reorg_flags(a)
    a.add_argument(
        "--recheck-interval",
        metavar="DURATION",
        help="how often recent anchors are re-checked against the chain, e.g. 30s (default: "
        "anchor_recheck_ms, 30s; also at start)",
    )
    a.set_defaults(func=_cmd_anchor)

    p = sub.add_parser("chain", help="chain operations")
    chsub = p.add_subparsers(dest="chain_command", required=True, metavar="ACTION")
    c = chsub.add_parser("deploy", help="deploy the AnchorRegistry contract")
    add_service_flags(c, mqtt=False, operator_key=False, origin=False)
    c.add_argument("--name", default="evm", help="backend name (a [[chains]] entry)")
    _add_rpc_flag(c, "JSON-RPC endpoint")
    c.add_argument("--chain-id", type=int, help="the chain id the endpoint must report")
    c.add_argument("--key-file", help="file holding the deploying account's hex private key")
    c.add_argument("--fee-mode", choices=("eip1559", "legacy", "zero"))
    c.add_argument(
        "--submitter",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="restrict anchoring to these accounts, forever (repeatable)",
    )
    c.set_defaults(func=_cmd_chain_deploy)
