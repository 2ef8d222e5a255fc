"""The API process itself: health, readiness, problem details for unknown routes."""

from __future__ import annotations

from integration.api_fixtures import ApiWorld


def test_health_and_readiness(api_world: ApiWorld) -> None:
    assert api_world.get_json("/healthz") == (200, {"status": "ok"})
    status, body = api_world.get_json("/readyz")
    assert status == 200, body
    assert body["checks"] == {"database": "ok", "chain:local": "ok"}


def test_unknown_route_is_a_problem_document(api_world: ApiWorld) -> None:
    status, body = api_world.get_json("/v1/nothing-here")
    assert status == 404
    assert body["reason"] == "not_found" and body["status"] == 404 and "type" in body
