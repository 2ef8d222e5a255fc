"""docs/api-examples.md, run as written (issue 14 item 8): every ```sh block of the page, in
order, in one bash with `set -euo pipefail`, against a real `cityanchor up` (its PostgreSQL,
Mosquitto, anvil, ingestors and API), with the real `curl`, `jq` and `mosquitto_pub`.

The page is the operator's copy-paste walk-through: register a device with curl, sign a reading
with `cityanchor sign`, publish it with `mosquitto_pub`, wait for its anchored receipt, verify it
with `POST /v1/verify` (the `{"receipt": ...}` wrapper), read the log, batches, anchors and
registry, the operator reads, then rotate, revoke and erase. tests/unit/test_api_examples_cover.py
checks that every endpoint the guides mention is on that page.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.up_process import running_up

PAGE = Path(__file__).resolve().parents[2] / "docs" / "api-examples.md"


@pytest.fixture(scope="module")
def up_dir(services_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data_dir = Path(tempfile.mkdtemp(prefix="upx-", dir=services_dir))
    with running_up(data_dir, tmp_path_factory.mktemp("up") / "up.log", "--anchor-period", "3s"):
        yield data_dir


def _blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("bash", "curl", "jq", "mosquitto_pub")),
    reason="needs bash, curl, jq and mosquitto_pub",
)
def test_the_api_examples_page_runs_as_written(up_dir: Path, tmp_path: Path) -> None:
    blocks = _blocks(PAGE.read_text())
    assert len(blocks) >= 8
    script = tmp_path / "examples.sh"
    script.write_text("set -euo pipefail\nset -x\n" + "\n".join(blocks))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYANCHOR_")}
    # `cityanchor` as an operator's shell finds it: the installed console script.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["D"] = str(up_dir)
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        ["bash", str(script)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]

    # What the page promises, seen in what it printed and left behind.
    assert json.loads((work / "registration.json").read_text())["mqtt_login_active"] is True
    assert "signature: pass" in result.stdout and "anchors: pass" in result.stdout
    verified = json.loads((work / "verified.json").read_text())
    assert verified["valid"] is True and verified["fully_verified"] is True
    assert '"status": "erased"' in result.stdout
    assert '"erased_by"' in result.stdout
