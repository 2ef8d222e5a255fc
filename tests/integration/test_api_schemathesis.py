"""schemathesis against the live ``/openapi.json``: no 5xx, every response as documented.

Every public operation and the operations endpoints are exercised with generated inputs, valid
(positive) and invalid (negative), against the ``api_world`` server; each response must match
the document in status code, content type, headers and body (schemathesis's default checks).
Operator endpoints (bearer tokens) are tested on their own.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from anchor.openapi import openapi_document, own_paths
from integration.api_fixtures import ApiWorld

# The public and operations endpoints, from the document the server serves (compared below);
# the operator endpoints' own tests cover theirs.
OPERATIONS = [
    (path, method.upper())
    for path, item in openapi_document()["paths"].items()
    for method in item
    if path in own_paths()
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


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_operation_matches_the_document(
    api_world: ApiWorld, live_schema: Any, path: str, method: str, mode: GenerationMode
) -> None:
    operation = live_schema[path][method]
    excluded = [positive_data_acceptance] if path in CROSS_FIELD else []
    if mode == GenerationMode.NEGATIVE and not (
        operation.path_parameters or operation.query or operation.headers or operation.body
    ):
        pytest.skip("nothing to make invalid: the operation takes no input")

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES[mode],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=api_world.base_url, timeout=30, excluded_checks=excluded)

    run()
