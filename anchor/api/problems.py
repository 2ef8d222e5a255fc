"""The problem types of the HTTP API, documented where their ``type`` URIs point.

Every problem document (RFC 9457) the API answers with has ``"type": "/problems/<reason>"``, a
URI reference relative to the API itself (RFC 9457 section 3.1.1), and ``GET /problems/<reason>``
serves the page that documents that type: its ``reason`` code, the HTTP status that carries it
and what it means, from :class:`anchor.errors.Reason`. ``/docs`` lists the codes the API answers
with under "Problem types", each at ``/docs#problem-<reason>``.

A leaf: imported by :mod:`anchor.api.public` (the routes) and :mod:`anchor.api.openapi` (the
``/docs`` section); it imports no route module.
"""

from __future__ import annotations

import html
import re

from anchor.api.context import PROBLEM_TYPE, status_for
from anchor.errors import Reason

__all__ = [
    "PAGE_CSP",
    "api_reasons",
    "problem_index_html",
    "problem_page_html",
    "problem_rows_html",
    "problem_type",
]

PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
"""The pages are self-contained: no script, inline styles only."""

# "HTTP 404", "HTTP 4xx" as a segment of Reason.where: a code of this API's problem documents
# (not "witness HTTP 400", which the witness server answers, nor "HTTP server start").
_HTTP = re.compile(r"(?:^|; )HTTP (?:\d{3}|4xx)\b")

_CSS = (
    "body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:60em;padding:1em 2em;"
    "color:#1d2430}code{font:13px ui-monospace,monospace}table{border-collapse:collapse;"
    "width:100%}td,th{border-bottom:1px solid #e3e6eb;padding:.3em .5em;text-align:left;"
    "vertical-align:top}"
)


def problem_type(reason: Reason) -> str:
    """The ``type`` URI of a problem document with this ``reason``."""
    return PROBLEM_TYPE + reason.value


def api_reasons() -> list[Reason]:
    """The reason codes the API's problem documents carry, in table order."""
    return [r for r in Reason if _HTTP.search(r.where)]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def problem_rows_html() -> str:
    """The ``/docs`` "Problem types" table: one row per code, with the id ``problem-<code>``."""
    rows = "".join(
        f'<tr id="problem-{_e(r.value)}"><td><a href="{_e(problem_type(r))}"><code>'
        f"{_e(r.value)}</code></a></td><td>{status_for(r)}</td><td>{_e(r.meaning)}</td></tr>"
        for r in api_reasons()
    )
    return f"<table><tr><th>reason</th><th>status</th><th>meaning</th></tr>{rows}</table>"


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}'
        f"</title><style>{_CSS}</style></head><body>{body}</body></html>"
    )


_ABOUT = (
    "<p>An error of this API is an RFC 9457 problem document (<code>application/problem+json"
    "</code>) with <code>type</code>, <code>title</code>, <code>status</code>, <code>detail"
    "</code> and <code>reason</code>. Branch on <code>reason</code> (or <code>type</code>), "
    "never on <code>detail</code>, which is for people and may change.</p>"
)


def problem_page_html(reason: Reason) -> str:
    """The page at ``/problems/<reason>``."""
    listed = reason in api_reasons()
    body = (
        f"<h1>Problem type <code>{_e(reason.value)}</code></h1>"
        f"<table><tr><th>type</th><td><code>{_e(problem_type(reason))}</code></td></tr>"
        f"<tr><th>reason</th><td><code>{_e(reason.value)}</code></td></tr>"
        f"<tr><th>status</th><td>{status_for(reason)}</td></tr>"
        f"<tr><th>title</th><td>{_e(reason.value.replace('_', ' '))}</td></tr>"
        f"<tr><th>meaning</th><td>{_e(reason.meaning)}</td></tr></table>"
        + _ABOUT
        + (
            f'<p><a href="/docs#problem-{_e(reason.value)}">In the API description</a> · '
            if listed
            else '<p>Not normally answered by this API. <a href="/docs">The API description</a> · '
        )
        + '<a href="/problems">every problem type</a></p>'
    )
    return _page(f"Problem type {reason.value}", body)


def problem_index_html() -> str:
    """The page at ``/problems``: every problem type of the API."""
    body = (
        "<h1>Problem types</h1>"
        + _ABOUT
        + problem_rows_html()
        + '<p><a href="/docs">The API description</a></p>'
    )
    return _page("Problem types", body)
