"""What ``/docs`` and ``/openapi.json`` say is about the API only (no notes for maintainers, no
repository paths), and every problem document's ``type`` is a URI the API itself serves, the
page documenting that type (issue 14 item 19)."""

from __future__ import annotations

import asyncio
import html
import json
import re
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from anchor.api import openapi
from anchor.api.app import ApiContext, create_app, openapi_document, route_tables
from anchor.api.context import _STATUS, problem
from anchor.api.problems import api_reasons, problem_type
from anchor.errors import Reason
from anchor.host.config import Settings

# A repository path, a design note or the placeholder host of the old problem types.
_INTERNAL = re.compile(
    r"DESIGN\.md|\b[\w/]+\.py\b|\bdocs/|\banchor/|\btests?/|Maintained by hand|"
    r"unit test|cityanchor\.example/problems"
)


def _fetch(*paths: str) -> list[tuple[int, dict[str, str], str]]:
    async def body() -> list[tuple[int, dict[str, str], str]]:
        app = create_app(ApiContext(store=None, settings=Settings()))  # type: ignore[arg-type]
        out = []
        async with TestClient(TestServer(app)) as client:
            for path in paths:
                resp = await client.get(path)
                out.append((resp.status, dict(resp.headers), await resp.text()))
        return out

    return asyncio.run(body())


def test_the_description_and_the_page_hold_no_internal_notes() -> None:
    text = json.dumps(openapi_document())
    assert _INTERNAL.search(text) is None, _INTERNAL.search(text)
    page = openapi.render_docs(route_tables())
    assert _INTERNAL.search(page) is None, _INTERNAL.search(page)
    for r in api_reasons():
        assert f'id="problem-{r.value}"' in page, r


def test_the_api_reasons_cover_every_mapped_status() -> None:
    reasons = set(api_reasons())
    assert set(_STATUS) <= reasons, set(_STATUS) - reasons
    assert {Reason.NOT_FOUND, Reason.INVALID_PARAMETER, Reason.KEY_INVALID} <= reasons
    # Codes of other services (the witness server) or of no HTTP answer are not listed.
    assert Reason.WITNESS_REQUEST_MALFORMED not in reasons
    assert Reason.PORT_IN_USE not in reasons and Reason.MALFORMED not in reasons


def test_every_problem_type_is_a_page_of_the_api() -> None:
    reasons = [*Reason]
    types = [json.loads(problem(400, r, "x").text or "")["type"] for r in reasons]
    assert types == [f"/problems/{r.value}" for r in reasons] == [problem_type(r) for r in reasons]
    answers = _fetch("/problems", *types, "/problems/no_such_code")
    index, *pages, unknown = answers
    assert index[0] == 200 and index[1]["Content-Type"].startswith("text/html")
    for r in api_reasons():
        assert f'href="/problems/{r.value}"' in index[2], r
    for r, (status, headers, text) in zip(reasons, pages, strict=True):
        assert status == 200 and headers["Content-Type"].startswith("text/html"), r
        assert "script" not in headers["Content-Security-Policy"]
        assert f"<code>{r.value}</code>" in text and html.escape(r.meaning) in text
        assert _INTERNAL.search(text) is None, (r, _INTERNAL.search(text))
    # An unknown type is a 404 problem, whose own type is a page.
    status, headers, text = unknown
    body: dict[str, Any] = json.loads(text)
    assert status == 404 and headers["Content-Type"].startswith("application/problem+json")
    assert body["type"] == "/problems/not_found" and body["reason"] == "not_found"
