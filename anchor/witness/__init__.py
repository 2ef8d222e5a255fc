"""The witness: ``cityanchor witness serve`` (c2sp.org/tlog-witness, c2sp.org/tlog-cosignature).

Thin I/O around the pure core (:mod:`anchor.witness_protocol` decides, :mod:`anchor.cosignature`
signs): :mod:`anchor.witness.state` keeps, per log, the latest checkpoint cosigned in a SQLite
file, checking and writing atomically; :mod:`anchor.witness.server` speaks HTTP.
"""

from anchor.witness.server import Admit, WitnessConfig, build_witness_app, serve_witness
from anchor.witness.state import StoredCheckpoint, WitnessState, WitnessStateError

__all__ = [
    "Admit",
    "StoredCheckpoint",
    "WitnessConfig",
    "WitnessState",
    "WitnessStateError",
    "build_witness_app",
    "serve_witness",
]
