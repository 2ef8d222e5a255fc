"""anchor.store's shape: modules by concern, none large, and no caller reaching inside.

Every query the service runs is a named method (or an anchor.store.operator function) of this
package; outside it nothing touches a private name of the store or its raw connections
(``Store.connection()`` is for tests and one-off tools only).
"""

from __future__ import annotations

import re
from pathlib import Path

import anchor.store
from anchor.store import Store

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "anchor" / "store"
# `store._connection(...)`, `store.connection(...)`, `Store._x`, `from anchor.store... import _x`
_REACHING_IN = re.compile(
    r"\b_connection\(|\bstore\.connection\(|\b[Ss]tore\._[a-z]|"
    r"from anchor\.store(?:\.\w+)? import [^\n]*\b_[a-z]"
)


def test_modules_stay_small() -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 600} == {}


def test_production_code_does_not_reach_into_the_store() -> None:
    offenders = []
    for base in ("anchor", "devices", "bench"):
        for path in sorted((ROOT / base).rglob("*.py")):
            if path.is_relative_to(PACKAGE):
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _REACHING_IN.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_every_exported_name_is_importable_from_the_package() -> None:
    for name in anchor.store.__all__:
        assert getattr(anchor.store, name) is not None, name
    # The registry, seal, receipt, proof and anchoring methods callers use, on one object.
    for method in (
        "connect", "migrate", "register_devices", "revoke_device", "device_keys_snapshot",
        "seal", "quarantine", "receipt", "receipts_for_batch", "consistency_proof",
        "completeness_proof", "batch_record_at", "record_anchor", "anchors_page", "leadership",
        "set_device_login", "device_logins",
    ):  # fmt: skip
        assert callable(getattr(Store, method)), method
