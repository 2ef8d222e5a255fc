"""The witness's HTTP face: c2sp.org/tlog-witness over aiohttp.

Routes (one prefix serves as both the spec's *submission* and *monitoring* prefix):

``POST /add-checkpoint``
    Body as tlog-witness says (``old N``, proof lines, empty line, the signed checkpoint), at most
    :data:`anchor.witness_protocol.MAX_REQUEST_BYTES` (413 above). Answers exactly as the spec
    says: 200 ``text/plain; charset=utf-8`` with the cosignature line; 409
    ``text/x.tlog.size`` with ``<size>\\n``; 400, 403, 404 and 422 with one plain-text line
    ``<reason code>: <detail>``. The decision is :func:`anchor.witness_protocol.
    decide_add_checkpoint`, run with the state under its write lock
    (:meth:`anchor.witness.state.WitnessState.apply`); the cosignature is made only after the
    new state is committed.
``GET /<origin hash>/checkpoint``
    The spec's monitoring endpoint: the latest checkpoint cosigned for the log whose origin
    hashes (SHA-256, lowercase hex) to ``<origin hash>``, with the log signature(s) the witness
    verified and its own cosignature; 404 if it never cosigned one.
``GET /healthz``, ``GET /metrics``
    Liveness (the state file is readable) and Prometheus metrics.

An optional admission hook (:data:`Admit`) lets another component, such as a monitor, run this
same server and cosign only what it verified itself.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from anchor.checkpoint import Checkpoint, NoteVerifier, parse_note_unverified
from anchor.cosignature import CosignerSigner, add_cosignatures
from anchor.errors import Reason
from anchor.witness.state import Lookup, WitnessState, WitnessStateError
from anchor.witness_protocol import (
    ADD_CHECKPOINT_PATH,
    MAX_REQUEST_BYTES,
    SIZE_CONTENT_TYPE,
    Accepted,
    AddCheckpointRequest,
    Refused,
    WitnessRequestError,
    decide_add_checkpoint,
    format_size_body,
    parse_add_checkpoint,
)

__all__ = [
    "Admit",
    "WitnessConfig",
    "build_witness_app",
    "cosigned_note",
    "serve_witness",
]

log = logging.getLogger("anchor.witness")

Admit = Callable[[Checkpoint], Refused | None]
"""An admission hook: called with a checkpoint that passed every check of tlog-witness (log
signature, sizes, consistency with the witness's state), just before the witness stores and
cosigns it. Return None to let it be cosigned, or a :class:`~anchor.witness_protocol.Refused`
to answer instead (its status, reason and detail are sent as they are; a 409 must carry
``size``). It runs in a worker thread while the state's write lock is held, so it must be quick
and must not block on I/O (look the checkpoint up in what the caller already verified). An
exception from it is answered with 500 and changes nothing."""

_ORIGIN_HASH = re.compile(r"[0-9a-f]{64}")
_TEXT = "text/plain"
_DETAIL_LIMIT = 300


def _now() -> int:
    return int(time.time())


@dataclass(frozen=True, slots=True)
class WitnessConfig:
    """Who the witness is and which logs it witnesses.

    ``log_keys`` maps each log's origin to the note verifier keys trusted for it (several during
    a key rotation). ``clock`` gives POSIX seconds for cosignature timestamps.
    """

    signer: CosignerSigner
    log_keys: Mapping[str, Sequence[NoteVerifier]]
    clock: Callable[[], int] = field(default=_now)


@dataclass(slots=True)
class _Metrics:
    registry: CollectorRegistry
    requests: Counter
    cosignatures: Counter
    size: Gauge

    @classmethod
    def create(cls) -> _Metrics:
        registry = CollectorRegistry(auto_describe=True)
        return cls(
            registry,
            Counter(
                "cityanchor_witness_requests",
                "add-checkpoint requests by HTTP status and reason code ('' for 200)",
                ["status", "reason"],
                registry=registry,
            ),
            Counter(
                "cityanchor_witness_cosignatures",
                "Cosignatures returned, per log origin",
                ["origin"],
                registry=registry,
            ),
            Gauge(
                "cityanchor_witness_checkpoint_size",
                "Size of the latest checkpoint cosigned, per log origin",
                ["origin"],
                registry=registry,
            ),
        )


def cosigned_note(note: str, keys: Sequence[NoteVerifier], line: str) -> str:
    """``note``'s text with only the signature lines of the trusted log ``keys`` (which the
    witness verified) and the witness's cosignature ``line``: what the monitoring endpoint
    serves. Other lines of the submitted note (other witnesses, unknown keys) are dropped,
    since this witness does not vouch for them."""
    parsed = parse_note_unverified(note)
    trusted = {(k.name, k.key_hash) for k in keys}
    verified = [
        f"\u2014 {s.name} {base64.b64encode(s.key_hash + s.signature).decode('ascii')}\n"
        for s in parsed.signatures
        if (s.name, s.key_hash) in trusted
    ]
    return add_cosignatures(parsed.text + "\n" + "".join(verified), [line])


def _text(status: int, body: str) -> web.Response:
    return web.Response(
        status=status, body=body.encode("utf-8"), content_type=_TEXT, charset="utf-8"
    )


def _refusal(refused: Refused) -> web.Response:
    if refused.status == 409:
        # tlog-witness: the body is the size, a newline, and nothing else.
        return web.Response(
            status=409,
            body=format_size_body(refused.size or 0),
            content_type=SIZE_CONTENT_TYPE,
        )
    detail = refused.detail.replace("\n", " ")[:_DETAIL_LIMIT]
    return _text(refused.status, f"{refused.reason}: {detail}\n")


def build_witness_app(
    config: WitnessConfig, state: WitnessState, *, admit: Admit | None = None
) -> web.Application:
    """The witness's aiohttp application (see the module doc for its routes).

    ``state`` is used from worker threads; the caller closes it after the app is cleaned up.
    ``admit`` (optional, see :data:`Admit`) can veto a checkpoint the witness would cosign.
    """
    metrics = _Metrics.create()
    keys = {origin: tuple(vs) for origin, vs in config.log_keys.items()}
    sizes: dict[str, int] = {}  # the gauge only goes up, whatever order answers finish in

    def set_size(origin: str, size: int) -> None:
        sizes[origin] = max(size, sizes.get(origin, 0))
        metrics.size.labels(origin).set(sizes[origin])

    for row in state.logs():
        if row.origin in keys:
            set_size(row.origin, row.size)

    def decide(request: AddCheckpointRequest, lookup: Lookup) -> Accepted | Refused:
        outcome = decide_add_checkpoint(request, keys, lookup)
        if isinstance(outcome, Accepted) and admit is not None:
            veto = admit(outcome.checkpoint)
            if veto is not None:
                return veto
        return outcome

    def count(status: int, reason: str) -> None:
        metrics.requests.labels(str(status), reason).inc()

    async def add_checkpoint(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            count(413, Reason.OVERSIZED)
            return _text(413, f"{Reason.OVERSIZED}: body over {MAX_REQUEST_BYTES} bytes\n")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            count(413, Reason.OVERSIZED)
            return _text(413, f"{Reason.OVERSIZED}: body over {MAX_REQUEST_BYTES} bytes\n")
        try:
            parsed = parse_add_checkpoint(body)
        except WitnessRequestError as exc:
            refused = Refused(400, exc.reason, exc.detail)
            log.info("add-checkpoint refused: 400 [%s] %s", exc.reason, exc.detail)
            count(400, exc.reason)
            return _refusal(refused)
        applied = await asyncio.to_thread(
            state.apply, parsed, lambda lookup: decide(parsed, lookup), now=config.clock()
        )
        outcome = applied.outcome
        if isinstance(outcome, Refused):
            level = logging.WARNING if outcome.status in (403, 422) else logging.INFO
            log.log(
                level,
                "add-checkpoint refused: %d [%s] %s%s",
                outcome.status,
                outcome.reason,
                outcome.detail,
                " (kept as possible fork evidence)" if outcome.evidence else "",
            )
            count(outcome.status, outcome.reason)
            return _refusal(outcome)
        # The new state is committed: only now is the checkpoint cosigned.
        cp = outcome.checkpoint
        line = config.signer.cosign(outcome.note_text, applied.timestamp)
        try:
            full = cosigned_note(parsed.note, keys[cp.origin], line)
            await asyncio.to_thread(
                state.record_cosigned,
                cp.origin,
                size=cp.size,
                root=cp.root,
                timestamp=applied.timestamp,
                cosigned_note=full,
            )
        except Exception:
            # The state is safe; only the monitoring copy trails. Still answer the log.
            log.exception("could not store the cosigned note of %r size %d", cp.origin, cp.size)
        log.info("cosigned %r size %d at %d", cp.origin, cp.size, applied.timestamp)
        count(200, "")
        metrics.cosignatures.labels(cp.origin).inc()
        set_size(cp.origin, cp.size)
        return _text(200, line)

    async def get_checkpoint(request: web.Request) -> web.Response:
        hex_hash = request.match_info["origin_hash"]
        row = None
        if _ORIGIN_HASH.fullmatch(hex_hash):
            row = await asyncio.to_thread(state.by_origin_hash, hex_hash)
        if row is None or row.cosigned_note is None:
            return _text(404, f"{Reason.WITNESS_UNKNOWN_LOG}: no checkpoint cosigned for it\n")
        return _text(200, row.cosigned_note)

    async def healthz(request: web.Request) -> web.Response:
        try:
            await asyncio.to_thread(state.ping)
        except WitnessStateError as exc:
            return _text(503, f"{exc.reason}: {exc.detail}\n")
        return _text(200, "ok\n")

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    @web.middleware
    async def errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except WitnessStateError as exc:
            log.error("witness state failed: %s", exc.detail)
            count(500, exc.reason)
            return _text(500, f"{exc.reason}: the witness cannot use its state; nothing cosigned\n")
        except Exception:
            log.exception("witness request failed")
            count(500, Reason.INTERNAL)
            return _text(500, f"{Reason.INTERNAL}: nothing cosigned\n")

    # request.read() enforces the cap itself (413) when no Content-Length announced it.
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[errors])
    app.router.add_post(ADD_CHECKPOINT_PATH, add_checkpoint)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/{origin_hash}/checkpoint", get_checkpoint)
    return app


async def serve_witness(
    config: WitnessConfig,
    state: WitnessState,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
    admit: Admit | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve until ``stop`` is set, then finish the requests in flight and return.

    ``on_listening`` gets the base URL (with the port actually bound, for ``port=0``). Raises
    ``OSError`` when the address cannot be bound (the CLI turns it into a usage error).
    """
    app = build_witness_app(config, state, admit=admit)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        address = runner.addresses[0]
        bound_host, bound_port = address[0], address[1]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        if on_listening is not None:
            on_listening(f"http://{shown}:{bound_port}")
        await stop.wait()
    finally:
        await runner.cleanup()
