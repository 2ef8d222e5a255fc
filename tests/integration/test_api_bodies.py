"""Request bodies the API cannot parse are refused with ``body_malformed`` (400), audited, and
never reach ``json.loads`` unbounded (issue 10, item 7): against the running ``cityanchor api``
of ``api_world``.

The attack: ``POST /v1/devices`` with JSON nested 2,000 deep and no token gave a 500, a
RecursionError traceback in the API log and no audit row (the audit target re-parsed the body
without a depth bound).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from anchor.api import tokens
from integration.api_fixtures import ApiWorld
from integration.test_api_operator import Answer, call, on_db

RUN = uuid.uuid4().hex[:8]


def _deep(levels: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return (
        b'{"device_id": "deep-'
        + RUN.encode()
        + b'", "x": '
        + opener * levels
        + closer * levels
        + b"}"
    )


# Every JSON-parsing endpoint, with and without a usable token.
ENDPOINTS = [
    ("POST", "/v1/devices"),
    ("POST", "/v1/devices/api-dev-00/rotate"),
    ("POST", "/v1/devices/api-dev-00/revoke"),
    ("DELETE", "/v1/readings/api-dev-00/1"),
    ("POST", "/v1/verify"),
]
BODIES = {
    "2000 deep lists": _deep(2000),
    "100000 deep lists": _deep(100_000),
    "2000 deep objects": b'{"a":' * 2000 + b"1" + b"}" * 2000,
    "49 deep (one over the bound)": _deep(48),
    "NaN": b'{"device_id": NaN}',
}


@pytest.fixture(scope="module")
def tokens_by_scope(api_world: ApiWorld) -> dict[str, str]:
    async def work(store: Any) -> dict[str, str]:
        out = {}
        for scope in ("devices:write", "readings:erase", "audit:read"):
            new = await tokens.create_token(
                store, name=f"bodies-{scope.replace(':', '-')}-{RUN}", scopes=[scope]
            )
            out[scope] = new.token
        return out

    result: dict[str, str] = on_db(api_world.dsn, work)
    return result


def _audit_entries_after(world: ApiWorld, auditor: str, after: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        a = call(world, "GET", f"/v1/audit?after={after}&limit=1000", token=auditor)
        assert a.status == 200, a.body
        found.extend(a.body["entries"])
        if a.body["next"] is None:
            return found
        after = a.body["next"]


def _last_audit_id(world: ApiWorld, auditor: str) -> int:
    entries = _audit_entries_after(world, auditor, 0)
    return max((e["id"] for e in entries), default=0)


@pytest.mark.parametrize("name", list(BODIES))
def test_malformed_bodies_are_400_body_malformed_and_audited(
    api_world: ApiWorld, tokens_by_scope: dict[str, str], name: str
) -> None:
    body = BODIES[name]
    auditor = tokens_by_scope["audit:read"]
    log_path = api_world.workdir / "api.log"
    log_before = log_path.stat().st_size
    audit_before = _last_audit_id(api_world, auditor)
    answers: list[tuple[str, str, str | None, Answer]] = []
    for method, path in ENDPOINTS:
        scope = "readings:erase" if method == "DELETE" else "devices:write"
        for token in (None, tokens_by_scope[scope]):
            answer = call(api_world, method, path, token=token, raw=body)
            answers.append((method, path, token, answer))
    for method, path, token, a in answers:
        who = "no token" if token is None else "token"
        assert (a.status, a.body["reason"]) == (400, "body_malformed"), (method, path, who, a.body)
        assert a.headers["Content-Type"].startswith("application/problem+json")
    # Every refusal on an operator endpoint is in the audit log, as body_malformed (400).
    entries = _audit_entries_after(api_world, auditor, audit_before)
    refused = [e for e in entries if e["outcome"] == "body_malformed" and e["status"] == 400]
    expected = {
        "device.register": 2, "device.rotate": 2, "device.revoke": 2, "reading.erase": 2,
    }  # fmt: skip
    got: dict[str, int] = {}
    for e in refused:
        got[e["action"]] = got.get(e["action"], 0) + 1
    assert got == expected, entries
    # Judged before the token, but the sender is still named when its token is good.
    assert sorted(e["actor"] == "anonymous" for e in refused) == [False] * 4 + [True] * 4
    # The server stayed up and logged no traceback.
    assert call(api_world, "GET", "/healthz").status == 200
    logged = log_path.read_bytes()[log_before:]
    assert b"Traceback" not in logged and b"RecursionError" not in logged, logged[-2000:]


def test_a_well_formed_body_without_a_token_is_still_401(api_world: ApiWorld) -> None:
    a = call(api_world, "POST", "/v1/devices", raw=b'{"device_id": "x"}')
    assert (a.status, a.body["reason"]) == (401, "unauthorized")


def test_a_body_over_the_size_limit_is_413_and_audited(
    api_world: ApiWorld, tokens_by_scope: dict[str, str]
) -> None:
    auditor = tokens_by_scope["audit:read"]
    before = _last_audit_id(api_world, auditor)
    a = call(api_world, "POST", "/v1/devices", raw=b" " * (1 << 20) + b"{}")
    assert (a.status, a.body["reason"]) == (413, "too_large")
    entries = _audit_entries_after(api_world, auditor, before)
    assert [(e["action"], e["outcome"], e["status"]) for e in entries] == [
        ("device.register", "too_large", 413)
    ]
