"""The OpenAPI 3.1 description of the HTTP API, assembled from the route tables, and the
``/docs`` page rendered from it.

Each route module declares its handlers on a :class:`anchor.api.spec.RouteTable` with the
operation that describes each one (next to the handler), plus the ``components`` it refers to;
:func:`build_document` puts the tables together under the document's ``info`` and ``tags``.
:func:`anchor.api.app.create_app` calls it with the tables it registers, so every route served is
described and every route described is served (``tests/unit/test_openapi.py`` checks it, and
``tests/integration/test_api_schemathesis.py`` holds the server to the document: every status
code, content type and body). This module imports no route module.

``/docs`` is generated server-side from the document: one self-contained HTML page (inline
styles, no script, no CDN), every string escaped.
"""

from __future__ import annotations

import functools
import html
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from anchor import __version__
from anchor.api.problems import problem_rows_html
from anchor.api.spec import METHODS, REF, SHARED_SCHEMAS, RouteTable

__all__ = ["build_document", "render_docs"]

_INFO = {
    "title": "cityanchor API",
    "version": __version__,
    "summary": "Receipts and proofs for tamper-evident smart-city sensor data.",
    "description": "Public endpoints need no authentication. Every error is an RFC 9457 "
    "problem document (`application/problem+json`) whose `reason` is a stable code and "
    "whose `type` is `/problems/{reason}`, a page of this API documenting it (all of them: "
    '`/problems`, or "Problem types" below): `not_found` 404, `erased` 410, `device_id_invalid`, '
    "`invalid_parameter`, `range_too_large`, `body_malformed`, `key_invalid` 400, "
    "`method_not_allowed` 405, `too_large` 413, `rate_limited` 429, `db_unavailable`, "
    "`db_busy` 503, `internal`, `db_error`, `log_inconsistent` 500. Integer "
    "parameters are decimal digits only, at most 2^63-1. Lists are cursor-paginated; each "
    "`limit` parameter states its maximum.",
    "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
}
_TAGS = [
    {"name": "proofs", "description": "Receipts, verification, completeness"},
    {"name": "log", "description": "Batches, the batch log, checkpoints and anchors"},
    {"name": "operator", "description": "Device registry, erasure, anchoring, audit, metrics"},
    {"name": "explorer", "description": "The proof explorer page"},
    {"name": "operations", "description": "Health, readiness, this description"},
]


@functools.cache
def build_document(tables: Sequence[RouteTable]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these route tables (built once per tuple of tables; the
    caller must not change it). Raises ``ValueError`` when two tables declare the same
    operation or the same component."""
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, dict[str, Any]] = {"schemas": dict(SHARED_SCHEMAS)}
    for table in tables:
        for path, item in table.paths().items():
            into = paths.setdefault(path, {})
            for method, operation in item.items():
                if method in into:
                    raise ValueError(f"{method.upper()} {path} is declared twice")
                into[method] = operation
        for section, entries in table.components.items():
            into = components.setdefault(section, {})
            for name, value in entries.items():
                if name in into:
                    raise ValueError(f"component {section}/{name} is declared twice")
                into[name] = value
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": _INFO,
        "tags": _TAGS,
        "paths": paths,
        "components": components,
    }


# ------------------------------------------------------------------------------- /docs page

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d2430;background:#f7f8fa}
header{background:#1d2430;color:#fff;padding:1.2em 2em}header h1{margin:0;font-size:1.5em}
main{max-width:70em;margin:0 auto;padding:1em 2em}nav ul{columns:2;padding-left:1.2em}
section.op{background:#fff;border:1px solid #d8dde6;border-radius:6px;margin:1.2em 0;padding:1em}
.method{display:inline-block;min-width:4em;text-align:center;border-radius:4px;color:#fff;
font-weight:700;padding:.1em .5em;margin-right:.6em}.get{background:#2b7a4b}
.post{background:#2456a6}.put{background:#9a6a00}.delete{background:#a62424}.patch{background:#6b3fa0}
code,pre{font:13px/1.4 ui-monospace,monospace}pre{background:#f1f3f6;padding:.6em;overflow:auto;
border-radius:4px;max-height:24em}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #e3e6eb;padding:.3em .5em;text-align:left;vertical-align:top}
.status{font-weight:700}details{margin:.4em 0}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _md(value: object) -> str:
    """Escaped text with Markdown code spans (`x`) as <code> (the only markup used here)."""
    return re.sub(r"`([^`<>]+)`", r"<code>\1</code>", _e(value))


def _schema_summary(schema: Mapping[str, Any]) -> str:
    if "$ref" in schema:
        name = str(schema["$ref"]).removeprefix(REF)
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    parts = []
    kind = schema.get("type")
    if kind is not None:
        parts.append(" | ".join(kind) if isinstance(kind, list) else str(kind))
    if "enum" in schema:
        parts.append("one of " + ", ".join(json.dumps(v) for v in schema["enum"]))
    for key in ("minimum", "maximum", "default", "pattern"):
        if key in schema:
            parts.append(f"{key} {schema[key]}")
    return _e(", ".join(parts) or "any")


def _pretty(value: Any) -> str:
    return _e(json.dumps(value, indent=2, ensure_ascii=False))


def _render_operation(path: str, method: str, op: Mapping[str, Any]) -> str:
    anchor = _e(op.get("operationId", f"{method}-{path}"))
    out = [
        f'<section class="op" id="{anchor}"><h3><span class="method {_e(method)}">'
        f"{_e(method.upper())}</span><code>{_e(path)}</code></h3>",
        f"<p><strong>{_e(op.get('summary', ''))}</strong></p>",
    ]
    if op.get("description"):
        out.append(f"<p>{_md(op['description'])}</p>")
    params = op.get("parameters", [])
    if params:
        out.append(
            "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>required</th>"
            "<th>schema</th><th>description</th></tr>"
        )
        for p in params:
            out.append(
                f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
                f"<td>{'yes' if p.get('required') else 'no'}</td>"
                f"<td>{_schema_summary(p.get('schema', {}))}</td>"
                f"<td>{_md(p.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        out.append("<h4>Request body</h4>")
        for media, spec in body.get("content", {}).items():
            summary = _schema_summary(spec.get("schema", {}))
            out.append(f"<p><code>{_e(media)}</code>: {summary}</p>")
            if "example" in spec:
                out.append(
                    f"<details><summary>example</summary><pre>{_pretty(spec['example'])}"
                    "</pre></details>"
                )
    out.append(
        "<h4>Responses</h4><table><tr><th>status</th><th>description</th><th>content</th></tr>"
    )
    for status, resp in op.get("responses", {}).items():
        cells = []
        for media, spec in resp.get("content", {}).items():
            cell = f"<code>{_e(media)}</code>: {_schema_summary(spec.get('schema', {}))}"
            if "example" in spec:
                example = spec["example"]
                shown = _e(example) if isinstance(example, str) else _pretty(example)
                cell += f"<details><summary>example</summary><pre>{shown}</pre></details>"
            cells.append(cell)
        headers = ", ".join(_e(h) for h in resp.get("headers", {}))
        if headers:
            cells.append(f"headers: {headers}")
        out.append(
            f'<tr><td class="status">{_e(status)}</td><td>{_md(resp.get("description", ""))}</td>'
            f"<td>{'<br>'.join(cells)}</td></tr>"
        )
    out.append("</table></section>")
    return "\n".join(out)


@functools.cache
def render_docs(tables: Sequence[RouteTable]) -> str:
    """The ``/docs`` page: every operation of :func:`build_document`, then every schema."""
    doc = build_document(tables)
    info = doc["info"]
    ops = [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]
    toc = "".join(
        f'<li><a href="#{_e(op.get("operationId", ""))}"><span class="method {_e(m)}">'
        f"{_e(m.upper())}</span>{_e(p)}</a></li>"
        for p, m, op in ops
    )
    schemas = "".join(
        f'<details id="schema-{_e(name)}"><summary><code>{_e(name)}</code></summary>'
        f"<pre>{_pretty(schema)}</pre></details>"
        for name, schema in doc["components"]["schemas"].items()
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(info['title'])} {_e(info['version'])}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_CSS}</style></head><body><header><h1>{_e(info['title'])} "
        f"<small>{_e(info['version'])}</small></h1><p>{_e(info['summary'])}</p></header><main>"
        f"<p>{_md(info['description'])}</p>"
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>'
        f"<nav><h2>Endpoints</h2><ul>{toc}</ul></nav><h2>Operations</h2>"
        + "\n".join(_render_operation(p, m, op) for p, m, op in ops)
        + f"<h2>Schemas</h2>{schemas}"
        + '<h2 id="problem-types">Problem types</h2><p>The <code>reason</code> codes of the '
        "problem documents, each the <code>type</code> <code>/problems/{reason}</code>.</p>"
        + problem_rows_html()
        + "</main></body></html>"
    )
