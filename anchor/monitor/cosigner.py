"""The monitor as a witness: the tlog-witness server of :mod:`anchor.witness`, run in a thread
beside the monitor's rounds, that cosigns only what the monitor itself verified.

The witness's own checks (log signature, its stored size, the consistency proof in the request)
run first; then :meth:`MonitorAdmission.__call__` asks the monitor's view: a checkpoint whose
(size, root) the monitor verified against the API, the chain and everything it saw is cosigned;
one of a size it has not verified yet is answered 503 ``witness_not_verified`` (the log retries
after the monitor's next round); one with another root than the monitor verified for that size,
or anything once the monitor holds evidence, is refused.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

from anchor.checkpoint import Checkpoint, NoteVerifier
from anchor.cosignature import CosignerSigner
from anchor.errors import Reason
from anchor.log_view import LogView
from anchor.witness import WitnessConfig, WitnessState, serve_witness
from anchor.witness_protocol import Refused

__all__ = ["CosignerThread", "MonitorAdmission"]


class MonitorAdmission:
    """The admission hook: reads the monitor's current view (replaced whole after each round,
    so a read from the witness's worker thread sees one consistent view) without any I/O."""

    def __init__(self, view: Callable[[], LogView], alarmed: Callable[[], bool]) -> None:
        self._view = view
        self._alarmed = alarmed

    def __call__(self, checkpoint: Checkpoint) -> Refused | None:
        if self._alarmed():
            return Refused(
                503,
                Reason.WITNESS_NOT_VERIFIED,
                "this monitor holds evidence that the log is inconsistent; it cosigns nothing",
            )
        seen = self._view().at(checkpoint.size)
        if seen is None:
            return Refused(
                503,
                Reason.WITNESS_NOT_VERIFIED,
                f"size {checkpoint.size} not verified by this monitor yet; retry after its "
                "next round",
            )
        if seen.root != checkpoint.root:
            return Refused(
                422,
                Reason.WITNESS_INCONSISTENT,
                f"the monitor verified another root for size {checkpoint.size}",
                checkpoint=checkpoint,
            )
        return None


class CosignerThread:
    """``serve_witness`` on its own event loop in a daemon thread; :meth:`start` returns once
    the port is bound (its URL), :meth:`stop` finishes requests in flight and closes the state."""

    def __init__(
        self,
        *,
        signer: CosignerSigner,
        log_keys: dict[str, list[NoteVerifier]],
        state_path: Path,
        host: str,
        port: int,
        admit: MonitorAdmission,
    ) -> None:
        self._config = WitnessConfig(signer=signer, log_keys=log_keys)
        self._state = WitnessState(state_path)
        self._host, self._port, self._admit = host, port, admit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._url: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="monitor-witness", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def listening(url: str) -> None:
                self._url = url
                self._ready.set()

            await serve_witness(
                self._config,
                self._state,
                host=self._host,
                port=self._port,
                stop=self._stop,
                admit=self._admit,
                on_listening=listening,
            )

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to start(); the thread ends
            self._error = exc
        finally:
            self._ready.set()

    def start(self, timeout_s: float = 30.0) -> str:
        """Start serving; raises ``OSError`` when the address cannot be bound."""
        self._thread.start()
        self._ready.wait(timeout_s)
        if self._error is not None:
            self._state.close()
            raise self._error
        if self._url is None:
            raise OSError("the witness server did not start")
        return self._url

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._state.close()
