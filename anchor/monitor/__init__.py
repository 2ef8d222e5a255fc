"""The monitor wing: ``cityanchor monitor`` follows one log from outside, trusting only the
operator's public key, the chain RPC and the witness keys (DESIGN.md "Witness and monitor").

Thin I/O around the pure rules of :mod:`anchor.log_view`: :mod:`~anchor.monitor.api_client`
(the log's public API), :mod:`~anchor.monitor.chain` (``Anchored`` events over JSON-RPC, web3),
:mod:`~anchor.monitor.state` (the state file), :mod:`~anchor.monitor.output` (evidence files,
webhook, metrics) and :mod:`~anchor.monitor.runner` (one round).
"""

from anchor.monitor.api_client import ApiClient, MonitorError
from anchor.monitor.runner import Monitor, MonitorConfig, RoundResult
from anchor.monitor.state import MonitorState

__all__ = ["ApiClient", "Monitor", "MonitorConfig", "MonitorError", "MonitorState", "RoundResult"]
