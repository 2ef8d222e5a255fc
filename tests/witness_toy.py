"""A tlog-witness for tests, built from the real rules (anchor.witness_protocol) and the real
cosigner (anchor.cosignature): in memory, callable directly (``post``) or served over HTTP by
aiohttp (``serve``). The production witness is ``cityanchor witness serve``; this one lets a
test break it on purpose (forget its state, answer garbage, go away)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web

from anchor.checkpoint import NoteVerifier
from anchor.cosignature import CosignerSigner, generate_cosigner_key
from anchor.witness_protocol import (
    ADD_CHECKPOINT_PATH,
    SIZE_CONTENT_TYPE,
    Accepted,
    WitnessedCheckpoint,
    WitnessRequestError,
    decide_add_checkpoint,
    format_size_body,
    parse_add_checkpoint,
)


@dataclass
class ToyWitness:
    name: str
    log_keys: Sequence[NoteVerifier]
    signer: CosignerSigner = field(init=False)
    state: dict[str, WitnessedCheckpoint] = field(default_factory=dict)
    requests: list[tuple[int, int]] = field(default_factory=list)  # (old, status)
    # Test knobs: a fixed answer instead of the rules, a key that signs instead of ours.
    answer: tuple[int, bytes] | None = None
    wrong_signer: CosignerSigner | None = None

    def __post_init__(self) -> None:
        self.signer = generate_cosigner_key(self.name)

    def handle(self, body: bytes) -> tuple[int, bytes]:
        if self.answer is not None:
            return self.answer
        try:
            request = parse_add_checkpoint(body)
        except WitnessRequestError as exc:
            return 400, exc.detail.encode()
        keys = {k.name: [k] for k in self.log_keys}
        decision = decide_add_checkpoint(request, keys, self.state.get)
        self.requests.append((request.old_size, decision.status))
        if not isinstance(decision, Accepted):
            if decision.status == 409:
                return 409, format_size_body(decision.size or 0)
            return decision.status, decision.detail.encode()
        cp = decision.checkpoint
        self.state[cp.origin] = WitnessedCheckpoint(cp.origin, cp.size, cp.root, request.note)
        signer = self.wrong_signer or self.signer
        return 200, signer.cosign(decision.note_text, int(time.time())).encode()

    async def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        return self.handle(body)

    def app(self) -> web.Application:
        async def add_checkpoint(request: web.Request) -> web.Response:
            status, answer = self.handle(await request.read())
            ctype = SIZE_CONTENT_TYPE if status == 409 else "text/plain"
            return web.Response(status=status, body=answer, content_type=ctype)

        app = web.Application()
        app.router.add_post(ADD_CHECKPOINT_PATH, add_checkpoint)
        return app
