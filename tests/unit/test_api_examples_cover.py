"""Every endpoint the guides mention has a copy-paste example (issue 14 item 8).

docs/api-examples.md holds a curl command for each, and
tests/integration/test_api_examples.py runs that page against a real `cityanchor up`. Here,
without services: every `METHOD /path` named in README.md and docs/*.md has a curl line of that
method and path on that page, and every curl line of another page is copied from it verbatim
(so it is run too).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "api-examples.md"
_ENDPOINT = re.compile(r"\b(GET|POST|DELETE) (/(?:v1/|metrics|healthz|readyz)[^\s`'\",;)]*)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _curl_lines() -> list[str]:
    """The curl commands of the examples page, continuation lines joined."""
    text = EXAMPLES.read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if "curl " in line]


def _example_for(method: str, path: str, curls: list[str]) -> bool:
    # {device_id}, {id}, {seq}, {log.index}, ... stand for any path segment; a "..." tail too.
    path = path.rstrip(".").split("?")[0]
    pattern = re.escape(path)
    pattern = re.sub(r"\\\{[^}]*\\\}", r"[^/?\"]+", pattern)
    url = re.compile(r"/" + pattern.lstrip("/") + r"(?:[?\"]|$)")
    for line in curls:
        says = re.search(r"-X (POST|DELETE)", line)
        line_method = says.group(1) if says else ("POST" if "--data-binary" in line else "GET")
        if line_method == method and url.search(line):
            return True
    return False


def test_every_endpoint_in_the_guides_has_a_curl_example() -> None:
    curls = _curl_lines()
    missing = set()
    for page in _pages():
        for method, path in _ENDPOINT.findall(page.read_text()):
            if path.endswith(("/...", "/")) or "[" in path:
                continue  # prose shorthand ("GET /v1/receipts/...", "GET /v1/devices[/{id}]")
            if not _example_for(method, path, curls):
                missing.add(f"{method} {path} ({page.name})")
    assert not missing, "no curl example in docs/api-examples.md for: " + ", ".join(sorted(missing))


def test_curl_lines_elsewhere_are_copies_of_the_run_examples() -> None:
    examples = EXAMPLES.read_text()
    for page in _pages():
        if page == EXAMPLES:
            continue
        in_code = False
        for line in page.read_text().splitlines():
            if line.startswith("```"):
                in_code = not in_code
                continue
            if in_code and line.lstrip().startswith(("curl ", "jq ")):
                assert line in examples, f"{page.name}: {line!r} is not in api-examples.md"
