"""Unit tests for the device import-file parser (anchor.cli.devices.parse_import): CSV and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anchor.cli.devices import ImportFileError, parse_import
from anchor.errors import UsageError
from anchor.keys import PrivateKey

KEYS = [PrivateKey.generate("Ed25519").public_key, PrivateKey.generate("P-256").public_key]
JWK = [json.dumps(k.to_jwk()) for k in KEYS]


def csv_quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def bad_rows(path: Path, **kwargs: str) -> list[tuple[int, str]]:
    with pytest.raises(ImportFileError) as exc:
        parse_import(path, **kwargs)
    assert exc.value.reason == "import_invalid"
    return exc.value.errors


# ------------------------------------------------------------------------------------------ CSV


def test_csv_with_header_inline_and_path_keys(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "b.jwk").write_text(JWK[1])
    text = (
        "# a comment\n"
        "device_id,district,kind,public_key_jwk,public_key_jwk_path\n"
        "\n"
        f" aq-1 , north , iot.air ,{csv_quote(JWK[0])},\n"
        "aq-2,south,,,keys/b.jwk\n"
    )
    specs = parse_import(write(tmp_path, "d.csv", text))
    assert [(s.device_id, s.district, s.kind, s.key, s.line) for s in specs] == [
        ("aq-1", "north", "iot.air", KEYS[0], 4),
        ("aq-2", "south", "", KEYS[1], 5),
    ]


def test_csv_without_header_takes_four_columns(tmp_path: Path) -> None:
    (tmp_path / "b.jwk").write_text(JWK[1])
    text = f"aq-1,north,iot.air,{csv_quote(JWK[0])}\naq-2,south,k,b.jwk\n"
    specs = parse_import(write(tmp_path, "d.txt", text))  # not .json: CSV
    assert [s.key for s in specs] == KEYS


def test_csv_bad_rows_are_all_reported_with_their_lines(tmp_path: Path) -> None:
    text = (
        "device_id,district,kind,public_key_jwk\n"
        "aq-1,north\n"
        f"aq-2,n,k,{csv_quote('{not json')}\n"
        ",n,k,x\n"
        f"aq-4,n,k,{csv_quote(JWK[0])}\n"
    )
    errors = bad_rows(write(tmp_path, "d.csv", text))
    assert [line for line, _ in errors] == [2, 3, 4]
    assert "2 fields, the header has 4" in errors[0][1]
    assert errors[1][1].startswith("public_key_jwk is not a JWK")
    assert errors[2][1] == "device_id is missing"


def test_csv_row_level_errors(tmp_path: Path) -> None:
    (tmp_path / "b.jwk").write_text(JWK[1])
    text = (
        "device_id,public_key_jwk,public_key_jwk_path\n"
        f"aq-1,{csv_quote(JWK[0])},b.jwk\n"
        "aq-2,,\n"
        "aq-3,,missing.jwk\n"
        f"aq-4,{csv_quote(json.dumps({'kty': 'OKP'}))},\n"
    )
    errors = dict(bad_rows(write(tmp_path, "d.csv", text)))
    assert errors[2] == "give public_key_jwk or public_key_jwk_path, not both"
    assert errors[3] == "no public_key_jwk or public_key_jwk_path"
    assert "cannot read JWK file" in errors[4]
    assert errors[5].startswith("public_key_jwk: ")


def test_csv_unknown_column_stops_at_the_header(tmp_path: Path) -> None:
    errors = bad_rows(write(tmp_path, "d.csv", "device_id,colour\naq-1,red\n"))
    assert errors == [(1, "unknown column(s) colour")]


def test_csv_headerless_needs_four_fields(tmp_path: Path) -> None:
    errors = bad_rows(write(tmp_path, "d.csv", "aq-1,north,kind\n"))
    assert errors == [(1, "3 fields, expected device_id,district,kind,KEY")]


# ----------------------------------------------------------------------------------------- JSON


def test_json_list_with_objects_and_lines(tmp_path: Path) -> None:
    text = json.dumps(
        [
            {"device_id": "aq-1", "district": "n", "public_key_jwk": KEYS[0].to_jwk()},
            {"device_id": "aq-2", "kind": "k", "public_key_jwk": JWK[1]},
        ],
        indent=2,
    )
    specs = parse_import(write(tmp_path, "d.JSON", text))
    second = text[: text.index('"aq-2"')].count("\n")  # the line of its "{"
    assert [(s.device_id, s.key, s.line) for s in specs] == [
        ("aq-1", KEYS[0], 2),
        ("aq-2", KEYS[1], second),
    ]


def test_json_bad_items_are_reported_with_their_lines(tmp_path: Path) -> None:
    text = '[\n  1,\n  {"device_id": "aq-1", "colour": 1},\n  {"district": 3}\n]'
    errors = bad_rows(write(tmp_path, "d.json", text))
    assert errors == [
        (2, "expected an object, got int"),
        (3, "unknown member(s) 'colour'"),
        (4, "device_id is missing"),
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"device_id": "x"}', "a JSON import file holds a list of device objects"),
        ("[1 2]", "line 1: expected ',' or ']'"),
        ("[1] x", "trailing data after the JSON list"),
        ("[\n  {,}\n]", "line 2: not JSON"),
        ('[{"device_id": "a", "device_id": "b"}]', "line 1: not acceptable JSON: duplicate key"),
        ('[{"device_id": NaN}]', "line 1: not acceptable JSON: NaN is not JSON"),
        ("[" * 9 + "]" * 9, "nests deeper than 8"),
        ("[]", "lists no devices"),
    ],
)
def test_json_file_level_errors(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_import(write(tmp_path, "d.json", text))
    assert fragment in exc.value.detail


# ------------------------------------------------------------------------------------- the file


def test_format_option_and_encoding(tmp_path: Path) -> None:
    row = {"device_id": "aq-1", "public_key_jwk": JWK[0]}
    path = write(tmp_path, "d.csv", ("\ufeff" + json.dumps([row])).encode("utf-8"))
    assert parse_import(path, format="json")[0].key == KEYS[0]  # a BOM is accepted
    with pytest.raises(UsageError, match="is not csv or json"):
        parse_import(path, format="xml")
    with pytest.raises(UsageError, match=r"is not UTF-8 \(byte 0\)"):
        parse_import(write(tmp_path, "e.csv", b"\xff\xfe"))
    with pytest.raises(UsageError, match="lists no devices"):
        parse_import(write(tmp_path, "empty.csv", "# nothing\n\n"))
    with pytest.raises(UsageError, match="cannot read import file"):
        parse_import(tmp_path / "missing.csv")
