"""The OpenAPI document and the app's router come from the same route tables: every route
served is described (methods too) and every described route is served; what /openapi.json and
/docs show holds no notes for maintainers; the description has no import cycle."""

from __future__ import annotations

import ast
import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from anchor.api import openapi
from anchor.api.app import ApiContext, create_app, openapi_document, route_tables
from anchor.api.spec import RouteTable
from anchor.host.config import Settings

ANCHOR = Path(__file__).resolve().parents[2] / "anchor" / "api"
ROUTE_MODULES = (
    "app.py",
    "public.py",
    "public_proofs.py",
    "public_log.py",
    "public_schemas.py",
    "public_http.py",
    "operator.py",
    "operator_devices.py",
    "operator_guard.py",
    "operator_requests.py",
    "operator_schemas.py",
    "explorer/__init__.py",
)


def _app() -> web.Application:
    return create_app(ApiContext(store=None, settings=Settings()))  # type: ignore[arg-type]


def test_every_route_is_documented_and_every_documented_route_is_served() -> None:
    app = _app()
    served: set[tuple[str, str]] = set()
    heads: set[str] = set()
    for route in app.router.routes():
        assert route.resource is not None
        if route.method == "HEAD":
            heads.add(route.resource.canonical)  # aiohttp's automatic HEAD of a GET
        else:
            served.add((route.method.lower(), route.resource.canonical))
    documented = {
        (method, path) for path, item in openapi_document()["paths"].items() for method in item
    }
    assert served == documented, sorted(served ^ documented)
    assert heads == {path for method, path in served if method == "get"}


def test_the_app_serves_the_assembled_document_and_a_page_of_it() -> None:
    async def body() -> tuple[Any, str]:
        async with TestClient(TestServer(_app())) as client:
            doc = await (await client.get("/openapi.json")).json()
            page = await (await client.get("/docs")).text()
            return doc, page

    doc, page = asyncio.run(body())
    assert doc == openapi_document()
    for path in doc["paths"]:
        assert path in page


_NOTES = re.compile(r"\b(TODO|FIXME|XXX|not yet|kept in step|issue \d+|#\d+)", re.IGNORECASE)


def test_no_maintainer_notes_reach_the_description() -> None:
    text = json.dumps(openapi_document())
    assert _NOTES.search(text) is None, _NOTES.search(text)
    page = openapi.render_docs(route_tables())
    assert _NOTES.search(page) is None, _NOTES.search(page)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("__import__")
    return names


def test_route_modules_do_not_import_the_assembler_and_it_imports_no_route_module() -> None:
    for name in ROUTE_MODULES[1:]:
        imported = _imports(ANCHOR / name)
        assert "anchor.api.openapi" not in imported, name
        assert "__import__" not in imported, name
    own = _imports(ANCHOR / "openapi.py")
    assert "__import__" not in own
    for module in (
        "anchor.api.app",
        "anchor.api.public",
        "anchor.api.public_proofs",
        "anchor.api.public_log",
        "anchor.api.public_schemas",
        "anchor.api.public_http",
        "anchor.api.operator",
        "anchor.api.operator_devices",
        "anchor.api.operator_guard",
        "anchor.api.operator_requests",
        "anchor.api.operator_schemas",
        "anchor.api.explorer",
    ):
        assert module not in own
    assert "anchor.api.openapi" not in _imports(ANCHOR / "spec.py")


def test_a_route_or_component_declared_twice_is_refused() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response()

    table = RouteTable(components={"schemas": {"Hash": {}}})
    table.get("/x", {"responses": {}})(handler)
    with pytest.raises(ValueError, match="declared twice"):
        table.get("/x", {"responses": {}})(handler)
    with pytest.raises(ValueError, match="declared twice"):
        openapi.build_document((table,))  # Hash is a shared schema already
    other = RouteTable()
    other.get("/x", {"responses": {}})(handler)
    with pytest.raises(ValueError, match="declared twice"):
        openapi.build_document((RouteTable(), other, other))
