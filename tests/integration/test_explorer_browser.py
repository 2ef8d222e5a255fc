"""The proof explorer (``/explorer``) in headless Chromium, against the real API process.

The Debian ``chromium`` package is driven by playwright-core (``tests/browser/run-explorer.mjs``,
pinned in package.json): look readings up and see every check pass in the browser; paste a
tampered receipt and see the failing checks named and the reading's values marked untrusted;
give keys and a chain endpoint of one's own (remembered in the browser) and see the verdict say
whose keys were used. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from anchor.verify import CHECK_NAMES
from integration.api_fixtures import ApiWorld

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
RUNNER = ROOT / "tests" / "browser" / "run-explorer.mjs"
ARTIFACTS = ROOT / "test-artifacts"

# The API of these tests configures no witness: the witnesses check skips (never passes).
ALL_PASS = {**dict.fromkeys(CHECK_NAMES, "pass"), "witnesses": "skip"}


def _get(world: ApiWorld, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(world.url(path), timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_explorer_serves_page_config_and_static_files(api_world: ApiWorld) -> None:
    status, headers, body = _get(api_world, "/explorer")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/explorer/static/explorer.js"' in body
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    # The page may call the chain's published JSON-RPC endpoint, and a user's own (any https
    # one, or a node on their machine); no other plain-http origin.
    assert f"connect-src 'self' {api_world.rpc_url.rstrip('/')} https: http://127.0.0.1:*" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"

    status, _, body = _get(api_world, "/explorer/config.json")
    assert status == 200
    config = json.loads(body)
    assert config["chains"] == [
        {
            "name": "local",
            "chain_id": api_world.chain_id,
            "rpc_url": api_world.rpc_url,
            "contract": api_world.contract,
        }
    ]
    assert config["operator_vkey"] == api_world.operator.verifier.vkey()
    assert config["operator_vkeys"] == [api_world.operator.verifier.vkey()]
    assert (config["witness_vkeys"], config["witness_quorum"]) == ([], 0)

    for name, media_type in (
        ("explorer.js", "text/javascript"),
        ("explain.js", "text/javascript"),
        ("verify.js", "text/javascript"),
        ("explorer.css", "text/css"),
    ):
        status, headers, _ = _get(api_world, f"/explorer/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(media_type), name
    for name in ("index.html", "..%2F__init__.py", "nope.js"):
        status, headers, body = _get(api_world, f"/explorer/static/{name}")
        assert status == 404, name
        assert json.loads(body)["reason"] == "not_found"


def _run_browser(
    world: ApiWorld, targets: list[tuple[str, int]], size_attack: tuple[str, int]
) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH (make install needs it for anvil too)")
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        pytest.fail("playwright-core is not installed: run `npm ci` (make install does)")
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "explorer.png"
    for old in (
        screenshot,
        ARTIFACTS / "explorer-tampered.png",
        ARTIFACTS / "explorer-size.png",
        ARTIFACTS / "explorer-own.png",
    ):
        old.unlink(missing_ok=True)
    result = subprocess.run(
        [
            node,
            str(RUNNER),
            world.base_url,
            str(screenshot),
            "--size-attack",
            f"{size_attack[0]}:{size_attack[1]}",
            *(f"{d}:{s}" for d, s in targets),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output from the browser script (exit {result.returncode}): {result.stderr}"
    out: dict[str, Any] = json.loads(lines[-1])
    assert result.returncode == 0 and "error" not in out, out.get("error") or result.stderr
    return out


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing: install the Debian `chromium` package "
    "(scripts/ensure-system-deps.sh does)",
)
def test_explorer_verifies_receipts_in_headless_chromium(api_world: ApiWorld) -> None:
    # Readings of api-dev-00 (Ed25519, COSE_Sign1), -01 (P-256, JWS), -03 (Ed25519, JWS);
    # then one that is sealed but not anchored yet.
    anchored = [api_world.anchored[i] for i in (0, 1, 3)]
    sealed = api_world.sealed_only[0]
    for device_id, seq in [*anchored, sealed]:
        status, _, _ = _get(api_world, f"/v1/receipts/{device_id}/{seq}")
        assert status == 200, f"GET /v1/receipts/{device_id}/{seq}: {status}"

    out = _run_browser(api_world, [*anchored, sealed], api_world.eight[0])

    assert out["console_errors"] == []
    *looked_up, sealed_result = out["lookups"]
    # 1) Looked up through the form: every check passes in the browser, with this server's keys
    # and endpoint, which the verdict says instead of "Fully verified" (issue 14 item 16).
    for result in looked_up:
        assert result["state"] == "done", result
        assert result["checks"] == ALL_PASS, json.dumps(result["details"])
        assert result["verdict_state"] == "server", result
        assert not result["verdict"].startswith("Fully verified"), result
        assert "of this server" in result["verdict"], result
        assert {k: v["from"] for k, v in result["trust"].items()} == {
            "device": "server",
            "operator": "server",
            "witnesses": "none",
            "rpc": "server",
        }, result["trust"]
        assert "not independent" in result["trust"]["device"]["text"]
        assert result["reading_trust"] == ""
        # Item 18: a plain line per check; the technical detail is one click away.
        assert all(result["plain"][name] for name in CHECK_NAMES), result["plain"]
        assert all(result["tech_hidden"].values()), result["tech_hidden"]
        assert result["plain"]["signature"].startswith("The device's signature matches")
        assert result["plain"]["batch_path"].startswith("This reading is in batch ")
        assert "is in the log the city signed" in result["plain"]["checkpoint_signature"]
        assert "written to the blockchain" in result["plain"]["anchors"]
        # Item 17: the anchors row says its status once.
        assert not result["details"]["anchors"].startswith("pass"), result["details"]
    assert sealed_result["checks"] == {**ALL_PASS, "anchors": "skip"}, sealed_result["details"]
    assert "not anchored yet" in sealed_result["details"]["anchors"]
    first = looked_up[0]
    assert first["title"] == f"Receipt: {anchored[0][0]} #{anchored[0][1]}"
    assert first["url"].endswith(f"/explorer?device_id={anchored[0][0]}&seq={anchored[0][1]}")

    # 2) Pasted with one envelope byte flipped: the signature and the hashes fail, by name.
    envelope = out["tampered"]["envelope_byte"]
    assert envelope["state"] == "done"
    assert envelope["checks"] == {
        **ALL_PASS,
        "signature": "fail",
        "leaf_hash": "fail",
        "batch_path": "fail",
    }, envelope["details"]
    assert "signature, leaf_hash, batch_path failed" in envelope["verdict"]
    # ... and the reading's values are marked untrusted, next to the status (item 16).
    assert envelope["reading_trust"] == "untrusted"
    assert envelope["rows"]["Status"]["untrusted"], envelope["rows"]
    status_row = envelope["rows"]["Status"]["text"]
    assert "Untrusted: signature, leaf_hash, batch_path failed" in status_row
    assert envelope["rows"]["Values"]["untrusted"], envelope["rows"]
    assert envelope["plain"]["signature"].startswith("The device's signature does not match")
    # ... and with log.root changed: the log path, the checkpoint and the anchor fail.
    log_root = out["tampered"]["log_root"]
    assert log_root["checks"] == {
        **ALL_PASS,
        "log_path": "fail",
        "checkpoint": "fail",
        "anchors": "fail",
    }, log_root["details"]
    assert "log root not anchored" in log_root["details"]["anchors"]
    # ... and re-spelt by a third party (issue 10 item 5), leaf_hash matching the variant: the
    # browser's own parser refuses it as non_canonical and never checks a signature over it
    # (the batch path fails too: the genuine envelope is the one in the batch).
    respelt = out["tampered"]["non_canonical"]
    assert respelt["checks"] == {
        **ALL_PASS,
        "envelope": "fail",
        "signature": "skip",
        "batch_path": "fail",
    }, respelt["details"]
    assert "(non_canonical)" in respelt["states"]["envelope"], respelt["states"]

    # 3) Issue 10 item 6: leaf 0 of the batch of 8 with batch.size lowered to 7. RFC 9162 alone
    # accepts the batch path at that index; the v2 log leaf binds the size, so log_path fails.
    attack = out["size_attack"]
    assert attack["batch"] == {"size": 8, "index": 0}
    assert attack["genuine"]["checks"] == ALL_PASS, attack["genuine"]["details"]
    lowered = attack["lowered"]
    assert lowered["state"] == "done"
    assert lowered["checks"] == {**ALL_PASS, "log_path": "fail"}, lowered["details"]
    assert "log_path failed" in lowered["verdict"]
    # ... and the same receipt as a v1 document (with a batch.id): refused, saying why.
    v1 = attack["v1"]
    assert v1["state"] == "error" and v1["checks"] == {}
    assert "(receipt_version_retired)" in v1["status"]
    assert "cityanchor/receipt/v1 receipts are refused" in v1["status"]

    # 4) Keys and an endpoint the user gave: "Fully verified", saying they are the user's; kept
    # in localStorage across a reload; the server's keys explicitly accepted count too; "Forget"
    # returns to the server's keys and clears the storage.
    own = out["own_keys"]
    given = own["given"]
    assert given["checks"] == ALL_PASS, given["details"]
    assert given["verdict_state"] == "pass" and given["verdict"].startswith("Fully verified")
    assert "you supplied" in given["verdict"]
    assert {k: v["from"] for k, v in given["trust"].items()} == {
        "device": "user",
        "operator": "user",
        "witnesses": "none",
        "rpc": "user",
    }, given["trust"]
    assert api_world.rpc_url in given["trust"]["rpc"]["text"]
    assert "the key you gave" in given["details"]["signature"]
    assert own["stored"] and json.loads(own["stored"])["rpc_url"] == api_world.rpc_url
    assert own["fields_after_reload"]["rpc_url"] == api_world.rpc_url
    assert own["fields_after_reload"]["operator_vkeys"] == api_world.operator.verifier.vkey()
    assert own["after_reload"]["verdict_state"] == "pass", own["after_reload"]
    accepted = own["accepted"]
    assert accepted["verdict_state"] == "pass", accepted
    assert "supplied or accepted" in accepted["verdict"]
    assert "accepted by you" in accepted["trust"]["device"]["text"]
    assert own["forgotten"]["verdict_state"] == "server", own["forgotten"]
    assert own["stored_after_forget"] is None

    # 5) The screenshots are test artifacts.
    for path in out["screenshots"]:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
