"""The `device` and `db` subcommands of anchor.cli.devices, run through argparse."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from anchor.cli.devices import ImportFileError, add_db_commands, add_device_commands
from anchor.errors import UsageError
from anchor.keys import PrivateKey, b64url_encode
from anchor.store import DeviceRecord, Store, StoreError


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="cityanchor")
    sub = parser.add_subparsers(dest="command", required=True)
    add_device_commands(sub)
    add_db_commands(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def get(dsn: str, device_id: str) -> DeviceRecord:
    async def main() -> DeviceRecord:
        store = await Store.connect(dsn)
        try:
            return await store.get_device(device_id)
        finally:
            await store.close()

    return asyncio.run(main())


def write_jwk(directory: Path, name: str) -> tuple[Path, PrivateKey]:
    key = PrivateKey.generate()
    path = directory / f"{name}.jwk"
    path.write_text(json.dumps(key.public_key.to_jwk()))
    return path, key


@pytest.fixture
def migrated(db_dsn: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli("db", "migrate", "--database-url", db_dsn) == 0
    assert "applied migration(s) 001" in capsys.readouterr().out
    assert cli("db", "migrate", "--database-url", db_dsn) == 0
    assert "up to date" in capsys.readouterr().out
    return db_dsn


def test_register_show_rotate_revoke(
    migrated: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = migrated
    jwk, key = write_jwk(tmp_path, "aq-1")
    assert cli(
        "device", "register", "aq-1", "--jwk", str(jwk), "--district", "nanshan",
        "--kind", "iot.air_quality", "--database-url", dsn, "--json",
    ) == 0  # fmt: skip
    shown = json.loads(capsys.readouterr().out)
    assert shown["device_id"] == "aq-1" and shown["status"] == "active"
    # The API's device shape: kid in hex, the envelope's base64url form beside it.
    assert shown["keys"][0]["kid"] == key.public_key.kid.hex() == shown["kid"]
    assert shown["keys"][0]["kid_b64url"] == b64url_encode(key.public_key.kid)

    with pytest.raises(StoreError) as exc:
        cli("device", "register", "aq-1", "--jwk", str(jwk), "--database-url", dsn)
    assert exc.value.reason == "conflict"

    new_jwk, new = write_jwk(tmp_path, "aq-1-new")
    assert cli("device", "rotate", "aq-1", "--jwk", str(new_jwk), "--database-url", dsn) == 0
    record = get(dsn, "aq-1")
    assert [k.kid for k in record.keys] == [key.public_key.kid, new.public_key.kid]
    assert record.keys[0].valid_until is not None and record.keys[1].current

    assert cli("device", "revoke", "aq-1", "--reason", "tampered", "--database-url", dsn) == 0
    assert "revoked" in capsys.readouterr().out
    assert cli("device", "show", "aq-1", "--database-url", dsn, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "revoked" and shown["revoke_reason"] == "tampered"
    assert [k["current"] for k in shown["keys"]] == [False, True]

    with pytest.raises(StoreError) as exc:
        cli("device", "show", "nope", "--database-url", dsn)
    assert exc.value.reason == "not_found"


def test_import_csv_and_json(
    migrated: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = migrated
    p1, _ = write_jwk(tmp_path, "c-1")
    _, k2 = write_jwk(tmp_path, "c-2")
    inline = json.dumps(k2.public_key.to_jwk()).replace('"', '""')
    csv_path = tmp_path / "devices.csv"
    csv_path.write_text(
        "# fleet of the north\n"
        "device_id,district,kind,public_key_jwk_path,public_key_jwk\n"
        f"c-1,north,iot.noise,{p1.name},\n"
        f'c-2,north,iot.noise,,"{inline}"\n'
    )
    assert cli("device", "import", str(csv_path), "--database-url", dsn) == 0
    assert "imported 2 device(s)" in capsys.readouterr().out

    # Header-less CSV: device_id,district,kind,KEY (inline JSON or a path).
    p3, _ = write_jwk(tmp_path, "c-3")
    plain = tmp_path / "plain.csv"
    plain.write_text(f"c-3,south,5g.cell_kpi,{p3}\n")
    assert cli("device", "import", str(plain), "--database-url", dsn) == 0
    assert "imported 1 device(s)" in capsys.readouterr().out

    items = [
        {
            "device_id": f"j-{i}",
            "public_key_jwk": PrivateKey.generate().public_key.to_jwk(),
            "district": "east",
            "kind": "iot.water_level",
        }
        for i in range(3)
    ]
    json_path = tmp_path / "devices.json"
    json_path.write_text(json.dumps(items, indent=2))
    assert cli("device", "import", str(json_path), "--database-url", dsn, "--json") == 0
    assert [d["device_id"] for d in json.loads(capsys.readouterr().out)] == ["j-0", "j-1", "j-2"]

    assert cli("device", "list", "--database-url", dsn, "--limit", "2", "--after", "c-2") == 0
    lines = capsys.readouterr().out.splitlines()
    # A header row, the page, and the cursor of the next page (the page was full).
    assert [line.split("\t")[0] for line in lines] == [
        "DEVICE_ID",
        "c-3",
        "j-0",
        "# more: --after j-0",
    ]
    assert cli("device", "list", "--database-url", dsn, "--district", "east", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_import_is_all_or_nothing_with_line_numbers(migrated: str, tmp_path: Path) -> None:
    dsn = migrated
    good = [f"g-{i},west,iot.noise,{write_jwk(tmp_path, f'g-{i}')[0].name}" for i in range(3)]
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "\n".join([good[0], "bad id!,west,iot.noise,missing.jwk", good[1], "g-9,west,x", good[2]])
        + "\n"
    )
    with pytest.raises(ImportFileError) as exc:
        cli("device", "import", str(bad), "--database-url", dsn)
    assert [line for line, _ in exc.value.errors] == [2, 4]
    with pytest.raises(StoreError):
        get(dsn, "g-0")

    # JSON: an invalid key on line 8, and a device that already exists (found in the DB).
    jwk_a = PrivateKey.generate().public_key.to_jwk()
    doc = tmp_path / "bad.json"
    doc.write_text(
        "[\n"
        f'  {{"device_id": "h-1", "public_key_jwk": {json.dumps(jwk_a)}}},\n'
        '  {"device_id": "h-2",\n'
        '   "public_key_jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}}\n'
        "]\n"
    )
    with pytest.raises(ImportFileError) as exc:
        cli("device", "import", str(doc), "--database-url", dsn)
    assert [line for line, _ in exc.value.errors] == [3]

    ok = tmp_path / "ok.csv"
    ok.write_text("\n".join(good) + "\n")
    assert cli("device", "import", str(ok), "--database-url", dsn) == 0
    again = tmp_path / "again.json"
    again.write_text(
        json.dumps(
            [
                {"device_id": "h-3", "public_key_jwk": jwk_a},
                {"device_id": "g-1", "public_key_jwk": PrivateKey.generate().public_key.to_jwk()},
            ]
        )
    )
    with pytest.raises(StoreError) as sexc:
        cli("device", "import", str(again), "--database-url", dsn)
    assert sexc.value.reason == "conflict" and "g-1 is already registered" in sexc.value.detail
    with pytest.raises(StoreError):
        get(dsn, "h-3")


def test_missing_database_url_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CITYANCHOR_DATABASE_URL", raising=False)
    with pytest.raises(UsageError):
        cli("device", "list")
