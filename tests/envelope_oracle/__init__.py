"""The envelope parser as it was before the canonical-layout shortcuts (commit 77305c6), kept
verbatim but for imports as the oracle of tests/unit/test_envelope_fastpath.py.

``model``, ``cose`` and ``jws`` are that commit's ``anchor/envelope_model.py``,
``anchor/envelope_cose.py`` and ``anchor/envelope_jws.py``; ``wire`` holds its
``anchor.wire.strict_loads``. The oracle has its own error classes and ``Reading``: compare
outcomes by reason code, message and field values, never by class identity. Do not "fix" or
speed up anything here: its only job is to be the old behaviour.
"""

from __future__ import annotations

from envelope_oracle.cose import _COSE_SIGN1_TAG, parse_cose
from envelope_oracle.jws import parse_jws
from envelope_oracle.model import Envelope, OversizedEnvelope, _malformed

MAX_ENVELOPE_BYTES = 16 * 1024


def parse_envelope(raw: bytes) -> Envelope:
    """anchor.envelope.parse_envelope and detect_format of that commit (its ``Envelope`` type
    is the same; its ``reading`` is the oracle's own ``Reading``)."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        _malformed(f"an envelope is bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise OversizedEnvelope(f"envelope is {len(raw)} bytes, more than {MAX_ENVELOPE_BYTES}")
    if not raw:
        _malformed("empty envelope")
    if raw[0] in (_COSE_SIGN1_TAG, 0x84):
        return parse_cose(raw)
    if raw.isascii() and raw.count(b".") == 2:
        return parse_jws(raw)
    _malformed("neither a COSE_Sign1 message nor a JWS compact serialization")
