"""The log side of C2SP tlog-witness: ask one witness to cosign one checkpoint.

:meth:`WitnessClient.cosign` sends ``POST <url>/add-checkpoint`` with ``old`` = the size the
witness last cosigned for us (as stored; 0 at first) and the RFC 9162 consistency proof from it
(tlog-witness, "add-checkpoint"), then:

* **200**: the answer's signature lines are verified with the witness's key
  (:func:`anchor.cosignature.verified_cosignatures` over the note with the lines appended)
  before the one of that key is stored; an answer without a valid line of that key is
  ``witness_cosignature_invalid`` and nothing is stored;
* **409**: the body is the witness's size. If it is 0 or the size of one of our checkpoints
  not above the one being cosigned, the client records it and retries **once** from it; a size
  beyond the checkpoint (but within our log) means the witness is ahead of it (``behind``: a
  checkpoint older than one it cosigned cannot be cosigned); a size we never had means the
  witness saw a checkpoint of our origin that our database does not hold: ``witness_size_conflict``,
  logged as an error;
* **422** ``witness_inconsistent`` is an alarm: the witness holds a checkpoint this one is not
  a consistent extension of (a fork, or our database was rolled back);
* **403** / **404** / **400**: the witness does not trust our key, does not know our origin,
  or refused the request's format; logged with their reason codes;
* anything else, a timeout or a refused connection: ``witness_unavailable`` (the caller backs
  off).

Every outcome is counted per witness in the database (``witness_state.outcomes``), which the
API's ``/metrics`` shows (``cityanchor_witness_requests_total``). The client never raises for a
witness's failure; database failures (``StoreError``) propagate.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from anchor.cosignature import CosignerVerifier, add_cosignatures, verified_cosignatures
from anchor.errors import AnchorError, Reason
from anchor.host.redact import redact_text, redact_url
from anchor.store import StoredCosignature
from anchor.witness_protocol import (
    ADD_CHECKPOINT_PATH,
    WitnessRequestError,
    format_add_checkpoint,
    parse_cosignature_response,
    parse_size_body,
)

__all__ = [
    "MAX_ANSWER_BYTES",
    "OUTCOMES",
    "CosignResult",
    "CosignStore",
    "HttpPost",
    "Witness",
    "WitnessClient",
    "WitnessUnavailable",
    "aiohttp_post",
    "cosign_all",
]

log = logging.getLogger("anchor.cosigning")

#: Outcomes of one :meth:`WitnessClient.cosign`, also the metric's ``outcome`` label values.
OUTCOMES = (
    "cosigned",  # a verified cosignature was stored
    "up_to_date",  # already stored: no request sent
    "behind",  # the witness cosigned a later checkpoint: this one cannot be cosigned any more
    "conflict",  # 409 (counted for each 409, also when the retry succeeds)
    "refused",  # 400, 403, 404
    "inconsistent",  # 422: the witness says we forked
    "invalid",  # an answer that is not a valid cosignature by the witness's key
    "unavailable",  # no answer, a timeout, another status
)
#: The most the client reads of an answer (a few signature lines, or a size).
MAX_ANSWER_BYTES = 64 * 1024

_REFUSALS = {
    400: ("refused", Reason.WITNESS_REQUEST_MALFORMED),
    403: ("refused", Reason.WITNESS_LOG_SIGNATURE_INVALID),
    404: ("refused", Reason.WITNESS_UNKNOWN_LOG),
    409: ("conflict", Reason.WITNESS_SIZE_CONFLICT),
    422: ("inconsistent", Reason.WITNESS_INCONSISTENT),
}


@dataclass(frozen=True, slots=True)
class Witness:
    """A witness the log asks: its base URL and its cosignature verifier key."""

    url: str
    verifier: CosignerVerifier

    @property
    def key(self) -> str:
        """The witness's identity in the database: its verifier key string."""
        return self.verifier.vkey()

    @property
    def label(self) -> str:
        return self.verifier.key_label


@dataclass(frozen=True, slots=True)
class CosignResult:
    """What one request (with its one 409 retry) did."""

    witness: str  # name+keyid
    outcome: str  # one of OUTCOMES
    log_size: int
    reason: Reason | None = None
    detail: str = ""
    timestamp: int | None = None  # the stored cosignature's time, when cosigned

    def to_log(self) -> str:
        return json.dumps(
            {
                "event": "witness",
                "witness": self.witness,
                "outcome": self.outcome,
                "reason": self.reason,
                "log_size": self.log_size,
                "detail": self.detail,
            }
        )


class CosignStore(Protocol):
    """What the client needs of :class:`anchor.store.Store`."""

    async def witness_size(self, witness: str) -> int: ...

    async def log_size(self) -> int: ...

    async def checkpoint_at(self, log_size: int) -> str: ...

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]: ...

    async def cosignatures_at(self, log_size: int) -> Sequence[StoredCosignature]: ...

    async def note_witness_outcome(
        self, *, witness: str, url: str, outcome: str, reason: str = "", size: int | None = None
    ) -> None: ...

    async def record_cosignature(
        self, *, witness: str, url: str, log_size: int, line: str, timestamp: int
    ) -> None: ...


class WitnessUnavailable(AnchorError):
    """The witness did not answer in time, or the connection failed."""

    reason = Reason.WITNESS_UNAVAILABLE
    retryable = True


HttpPost = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]
"""``post(url, body) -> (status, answer)``; raises :class:`WitnessUnavailable`."""


def aiohttp_post(session: aiohttp.ClientSession, *, timeout_s: float) -> HttpPost:
    """An :data:`HttpPost` over ``session`` (keep-alive: one session for every request)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 5.0))

    async def post(url: str, body: bytes) -> tuple[int, bytes]:
        try:
            async with session.post(
                url, data=body, timeout=timeout, allow_redirects=False
            ) as response:
                # read(n) returns what has arrived, up to n: loop to the end, bounded.
                answer = bytearray()
                while chunk := await response.content.read(MAX_ANSWER_BYTES + 1 - len(answer)):
                    answer += chunk
                    if len(answer) > MAX_ANSWER_BYTES:
                        raise WitnessUnavailable(
                            f"{redact_url(url)} answered more than {MAX_ANSWER_BYTES} bytes"
                        )
                return response.status, bytes(answer)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            where = redact_url(url)
            raise WitnessUnavailable(f"{where}: {redact_text(str(exc))}"[:300]) from exc

    return post


def _sanitised(answer: bytes) -> str:
    """A witness's error text, safe for a log line: printable ASCII, one line, bounded."""
    text = answer[:200].decode("ascii", "replace")
    return "".join(c if c.isprintable() and c.isascii() else "?" for c in text).strip()


class WitnessClient:
    """Asks witnesses to cosign checkpoints; see the module docstring."""

    def __init__(self, *, store: CosignStore, post: HttpPost) -> None:
        self.store = store
        self._post = post

    async def cosign(self, witness: Witness, log_size: int, note: str) -> CosignResult:
        """Have ``witness`` cosign our checkpoint ``note`` of ``log_size`` (operator-signed,
        without cosignatures). Never raises for the witness's failures."""
        key, label = witness.key, witness.label
        old = await self.store.witness_size(key)
        if old > log_size:
            return CosignResult(
                label, "behind", log_size, detail=f"witness already cosigned size {old}"
            )
        if old == log_size and any(
            c.witness == key for c in await self.store.cosignatures_at(log_size)
        ):
            return CosignResult(label, "up_to_date", log_size)
        answer = await self._ask(witness, log_size, note, old)
        if isinstance(answer, int):  # 409 with a size we can prove from: retry once from it
            answer = await self._ask(witness, log_size, note, answer)
            if isinstance(answer, int):
                answer = CosignResult(
                    label,
                    "conflict",
                    log_size,
                    Reason.WITNESS_SIZE_CONFLICT,
                    f"the witness answered 409 twice (now size {answer}); next time from it",
                )
        result = answer
        level = {
            "inconsistent": logging.ERROR,
            "conflict": logging.ERROR,
            "invalid": logging.ERROR,
            "refused": logging.ERROR,
            "unavailable": logging.WARNING,
        }.get(result.outcome, logging.INFO)
        log.log(level, result.to_log())
        return result

    async def _ask(
        self, witness: Witness, log_size: int, note: str, old: int
    ) -> CosignResult | int:
        """One request: its result, or (a 409 worth retrying) the witness's size."""
        key, label, url = witness.key, witness.label, redact_url(witness.url)
        proof = await self.store.consistency_proof(old, log_size) if 0 < old < log_size else []
        body = format_add_checkpoint(old, proof, note)
        try:
            status, answer = await self._post(witness.url.rstrip("/") + ADD_CHECKPOINT_PATH, body)
        except WitnessUnavailable as exc:
            await self.store.note_witness_outcome(
                witness=key, url=url, outcome="unavailable", reason=exc.reason
            )
            return CosignResult(label, "unavailable", log_size, exc.reason, exc.detail)
        if status == 200:
            return await self._accept(witness, log_size, note, answer)
        if status == 409:
            return await self._conflict(witness, log_size, answer)
        outcome, reason = _REFUSALS.get(status, ("unavailable", Reason.WITNESS_UNAVAILABLE))
        await self.store.note_witness_outcome(witness=key, url=url, outcome=outcome, reason=reason)
        detail = f"HTTP {status} from {url}: {_sanitised(answer)}"
        if outcome == "inconsistent":
            detail += " (the witness holds a checkpoint this one does not extend: a fork?)"
        return CosignResult(label, outcome, log_size, reason, detail)

    async def _conflict(self, witness: Witness, log_size: int, answer: bytes) -> CosignResult | int:
        key, label, url = witness.key, witness.label, redact_url(witness.url)
        try:
            size = parse_size_body(answer)
        except WitnessRequestError as exc:
            await self.store.note_witness_outcome(
                witness=key, url=url, outcome="invalid", reason=exc.reason
            )
            return CosignResult(label, "invalid", log_size, exc.reason, f"409: {exc.detail}")
        ours = await self.store.log_size()
        if size > ours or (0 < size <= log_size and not await self._have(size)):
            # The witness cosigned a checkpoint of our origin that we do not hold.
            await self.store.note_witness_outcome(
                witness=key, url=url, outcome="conflict", reason=Reason.WITNESS_SIZE_CONFLICT
            )
            return CosignResult(
                label,
                "conflict",
                log_size,
                Reason.WITNESS_SIZE_CONFLICT,
                f"the witness reports size {size}, which is not a checkpoint of ours "
                f"(log size {ours}): a checkpoint we never signed, or our log was rolled back",
            )
        await self.store.note_witness_outcome(
            witness=key, url=url, outcome="conflict", reason=Reason.WITNESS_SIZE_CONFLICT, size=size
        )
        if size > log_size:
            return CosignResult(
                label, "behind", log_size, detail=f"the witness already cosigned size {size}"
            )
        return size

    async def _have(self, size: int) -> bool:
        try:
            await self.store.checkpoint_at(size)
        except AnchorError as exc:
            if exc.reason == Reason.NOT_FOUND:
                return False
            raise
        return True

    async def _accept(
        self, witness: Witness, log_size: int, note: str, answer: bytes
    ) -> CosignResult:
        key, label, url = witness.key, witness.label, redact_url(witness.url)
        best: tuple[int, str] | None = None
        problem: AnchorError | None = None
        try:
            lines = parse_cosignature_response(answer)
        except WitnessRequestError as exc:
            lines, problem = (), exc
        for line in lines:
            # Each line alone: a line of another key (another algorithm, another name) is not
            # ours to judge; one of this witness's key must verify.
            try:
                found = verified_cosignatures(add_cosignatures(note, [line]), [witness.verifier])
            except AnchorError as exc:
                problem = exc
                continue
            for cosig in found:
                if best is None or cosig.timestamp > best[0]:
                    best = (cosig.timestamp, line)
        if best is None:
            reason = Reason.WITNESS_COSIGNATURE_INVALID
            detail = problem.detail if problem else "no cosignature line of the witness's key"
            await self.store.note_witness_outcome(
                witness=key, url=url, outcome="invalid", reason=reason
            )
            return CosignResult(label, "invalid", log_size, reason, detail)
        timestamp, line = best
        await self.store.record_cosignature(
            witness=key, url=url, log_size=log_size, line=line, timestamp=timestamp
        )
        return CosignResult(label, "cosigned", log_size, timestamp=timestamp)


async def cosign_all(
    client: WitnessClient, witnesses: Sequence[Witness], log_size: int, note: str
) -> list[CosignResult]:
    """Ask every witness concurrently."""
    return list(await asyncio.gather(*(client.cosign(w, log_size, note) for w in witnesses)))
