"""schemathesis against the live ``/openapi.json``: no 5xx, every response as documented.

Every public operation and the operations endpoints are exercised with generated inputs, valid
(positive) and invalid (negative), against the ``api_world`` server; each response must match
the document in status code, content type, headers and body (schemathesis's default checks).
Operator endpoints (bearer tokens) are tested on their own.
"""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import CheckFunction, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from anchor.api import app as api
from anchor.api import public as api_public
from anchor.api.app import openapi_document
from integration.api_fixtures import ApiWorld

# The paths of the public routes and the app's own (operations) routes.
OWN_PATHS = {*api.ROUTES.paths(), *api_public.ROUTES.paths()}

# The public and operations endpoints, from the document the server serves (compared below),
# valid inputs for each, invalid ones for those that take input; the operator endpoints' own
# tests cover theirs.
OPERATIONS = [
    (path, method.upper(), mode)
    for path, item in openapi_document()["paths"].items()
    if path in OWN_PATHS
    for method, op in item.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or "parameters" in op or "requestBody" in op
]
MAX_EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 20}
# Operations whose valid inputs have constraints JSON Schema cannot state, so a schema-valid
# request may rightly be refused with 400: the positive_data_acceptance check is off for them.
CROSS_FIELD = {
    "/v1/devices/{device_id}/completeness": "to_seq >= from_seq, at most 1000 seqs",
    "/v1/log/consistency": "old <= new",
    "/v1/verify": "a P-256 device_key must be a point on the curve",
}


@pytest.fixture(scope="module")
def live_schema(api_world: ApiWorld) -> Any:
    status, served = api_world.get_json("/openapi.json")
    assert (status, served) == (200, openapi_document()), "the server serves another document"
    return schemathesis.openapi.from_url(api_world.url("/openapi.json"))


@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS)
def test_operation_matches_the_document(
    api_world: ApiWorld, live_schema: Any, path: str, method: str, mode: GenerationMode
) -> None:
    operation = live_schema[path][method]
    excluded: list[CheckFunction] = [positive_data_acceptance] if path in CROSS_FIELD else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES[mode],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(base_url=api_world.base_url, timeout=30, excluded_checks=excluded)

    run()


def test_real_data_matches_the_document(api_world: ApiWorld, live_schema: Any) -> None:
    # Generated inputs mostly miss the stored data; these hit it, so that every 200 body (and
    # the 304) is checked against its schema too.
    device_id, seq = api_world.anchored[0]
    sealed_device, sealed_seq = api_world.sealed_only[0]
    _, receipt = api_world.get_json(f"/v1/receipts/{device_id}/{seq}")
    _, sealed = api_world.get_json(f"/v1/receipts/{sealed_device}/{sealed_seq}")
    # A v2 receipt names its batch by log.index; the batch document gives its id.
    old, log_index = receipt["log"]["size"], receipt["log"]["index"]
    _, batch_doc = api_world.get_json(f"/v1/log/batches/{log_index}")
    batch = batch_doc["id"]
    jwk = api_world.signers[device_id].key.public_key.to_jwk()
    cases: list[tuple[str, str, dict[str, Any]]] = [
        (
            "/v1/receipts/{device_id}/{seq}",
            "GET",
            {"path_parameters": {"device_id": device_id, "seq": seq}},
        ),
        (
            "/v1/receipts/{device_id}/{seq}",
            "GET",
            {"path_parameters": {"device_id": sealed_device, "seq": sealed_seq}},
        ),
        ("/v1/verify", "POST", {"body": {"receipt": receipt}}),
        ("/v1/verify", "POST", {"body": {"receipt": sealed, "device_key": jwk}}),
        (
            "/v1/devices/{device_id}/completeness",
            "GET",
            {"path_parameters": {"device_id": device_id}, "query": {"from_seq": 2, "to_seq": 40}},
        ),
        ("/v1/batches/{batch_id}", "GET", {"path_parameters": {"batch_id": batch}}),
        ("/v1/log/batches/{log_index}", "GET", {"path_parameters": {"log_index": log_index}}),
        ("/v1/log/checkpoint", "GET", {}),
        ("/v1/log/checkpoint", "GET", {"query": {"size": old, "format": "json"}}),
        ("/v1/log/checkpoint", "GET", {"headers": {"Accept": "application/json"}}),
        ("/v1/log/consistency", "GET", {"query": {"old": 1, "new": old}}),
        ("/v1/anchors", "GET", {"query": {"since": 0, "limit": 1}}),
        ("/v1/operator-key", "GET", {}),
    ]
    for path, method, kwargs in cases:
        response = (
            live_schema[path][method]
            .Case(**kwargs)
            .call_and_validate(base_url=api_world.base_url, timeout=30)
        )
        assert response.status_code == 200, (path, kwargs, response.text[:300])
    etag = api_world_etag(api_world, device_id, seq)
    response = (
        live_schema["/v1/receipts/{device_id}/{seq}"]["GET"]
        .Case(path_parameters={"device_id": device_id, "seq": seq}, headers={"If-None-Match": etag})
        .call_and_validate(base_url=api_world.base_url, timeout=30)
    )
    assert response.status_code == 304


def api_world_etag(api_world: ApiWorld, device_id: str, seq: int) -> str:
    with urllib.request.urlopen(api_world.url(f"/v1/receipts/{device_id}/{seq}")) as resp:
        return str(resp.headers["ETag"])
