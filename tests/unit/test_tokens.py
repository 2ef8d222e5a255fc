"""Bearer tokens: format, hashing, constant-time comparison, scopes (no database needed)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import pytest

from anchor.api import tokens
from anchor.api.tokens import TokenError
from anchor.store import operator as operator_store
from anchor.store.operator import TokenRow

SECRET = bytes(range(32))
_REAL_COMPARE_DIGEST = hmac.compare_digest
NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def _row(token_id: int = 7, secret: bytes = SECRET, **kw: Any) -> TokenRow:
    fields: dict[str, Any] = {
        "id": token_id,
        "name": "ops-test",
        "scopes": ("devices:write",),
        "token_hash": hashlib.sha256(secret).digest(),
        "created_at": NOW,
        "revoked_at": None,
        "last_used_at": None,
    }
    fields.update(kw)
    return TokenRow(**fields)


class _Recorder:
    """Stands in for hmac.compare_digest and records its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []

    def __call__(self, a: bytes, b: bytes) -> bool:
        self.calls.append((bytes(a), bytes(b)))
        return _REAL_COMPARE_DIGEST(a, b)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    rec = _Recorder()
    monkeypatch.setattr(tokens.hmac, "compare_digest", rec)
    return rec


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch) -> dict[int, TokenRow]:
    """A fake token table behind operator_store.get_token / touch_token."""
    rows: dict[int, TokenRow] = {}

    async def get_token(store: object, token_id: int) -> TokenRow | None:
        return rows.get(token_id)

    async def touch_token(store: object, token_id: int) -> None:
        return None

    monkeypatch.setattr(operator_store, "get_token", get_token)
    monkeypatch.setattr(operator_store, "touch_token", touch_token)
    return rows


def _auth(text: str) -> TokenRow:
    return asyncio.run(tokens.authenticate(object(), text))  # type: ignore[arg-type]


# --- format -----------------------------------------------------------------------------------


def test_format_and_parse_round_trip() -> None:
    text = tokens.format_token(42, SECRET)
    assert text.startswith("ca_42_") and len(text) == len("ca_42_") + 43
    assert tokens.parse_token(text) == (42, SECRET)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ca_",
        "ca_0_" + "A" * 43,  # ids start at 1
        "ca_01_" + "A" * 43,  # one spelling per id
        "ca_1_" + "A" * 42,
        "ca_1_" + "A" * 44,
        "ca_1_" + "A" * 42 + "B",  # non-zero trailing bits: not canonical
        "ca_1_" + "A" * 42 + "=",
        "xx_1_" + "A" * 43,
        "ca_1_" + "A" * 43 + "\n",
        "Bearer ca_1_" + "A" * 43,
    ],
)
def test_parse_rejects_anything_but_the_canonical_shape(text: str) -> None:
    assert tokens.parse_token(text) is None


def test_secret_hash_is_sha256_of_the_secret() -> None:
    assert tokens.hash_secret(SECRET) == hashlib.sha256(SECRET).digest()


def test_bearer_header() -> None:
    assert tokens.bearer("Bearer abc") == "abc"
    assert tokens.bearer("bearer   abc ") == "abc"
    for bad in (None, "", "Basic abc", "Bearer", "Bearer  "):
        with pytest.raises(TokenError) as exc:
            tokens.bearer(bad)
        assert exc.value.reason == "unauthorized" and exc.value.failure == "missing"


def test_scopes() -> None:
    assert tokens.check_scopes(["metrics:read", "devices:write", "metrics:read"]) == (
        "devices:write",
        "metrics:read",
    )
    for bad in ([], ["devices:read"], ["admin"]):
        with pytest.raises(TokenError) as exc:
            tokens.check_scopes(bad)
        assert exc.value.reason == "scope_invalid"
    tokens.require_scope(_row(), "devices:write")
    with pytest.raises(TokenError) as exc:
        tokens.require_scope(_row(), "readings:erase")
    assert exc.value.reason == "forbidden" and exc.value.failure == "forbidden"


# --- constant-time comparison ---------------------------------------------------------------


def test_secret_matches_uses_compare_digest(recorder: _Recorder) -> None:
    stored = hashlib.sha256(SECRET).digest()
    assert tokens.secret_matches(SECRET, stored)
    assert not tokens.secret_matches(b"other", stored)
    assert recorder.calls == [
        (stored, stored),
        (hashlib.sha256(b"other").digest(), stored),
    ]


def test_valid_token_is_checked_with_compare_digest(
    recorder: _Recorder, db: dict[int, TokenRow]
) -> None:
    db[7] = _row(7)
    assert _auth(tokens.format_token(7, SECRET)).id == 7
    assert recorder.calls == [(hashlib.sha256(SECRET).digest(), db[7].token_hash)]


def test_unknown_id_still_hashes_and_compares(recorder: _Recorder, db: dict[int, TokenRow]) -> None:
    # Same work as a known id: the presented secret is hashed and compared (with a dummy), so
    # the timing does not reveal which ids exist.
    other = bytes(32)
    with pytest.raises(TokenError) as exc:
        _auth(tokens.format_token(99, other))
    assert exc.value.reason == "unauthorized" and exc.value.failure == "invalid"
    assert len(recorder.calls) == 1
    presented, against = recorder.calls[0]
    assert presented == hashlib.sha256(other).digest()
    assert against == tokens._DUMMY_HASH


def test_wrong_secret_is_unauthorized(recorder: _Recorder, db: dict[int, TokenRow]) -> None:
    db[7] = _row(7)
    with pytest.raises(TokenError) as exc:
        _auth(tokens.format_token(7, bytes(32)))
    assert exc.value.reason == "unauthorized" and exc.value.failure == "invalid"
    assert recorder.calls == [(hashlib.sha256(bytes(32)).digest(), db[7].token_hash)]


def test_garbage_token_still_hashes_and_compares(
    recorder: _Recorder, db: dict[int, TokenRow]
) -> None:
    with pytest.raises(TokenError) as exc:
        _auth("definitely-not-a-token")
    assert exc.value.reason == "unauthorized"
    assert recorder.calls == [
        (hashlib.sha256(b"definitely-not-a-token").digest(), tokens._DUMMY_HASH)
    ]


def test_revoked_token_is_unauthorized_after_the_comparison(
    recorder: _Recorder, db: dict[int, TokenRow]
) -> None:
    db[7] = _row(7, revoked_at=NOW)
    with pytest.raises(TokenError) as exc:
        _auth(tokens.format_token(7, SECRET))
    assert exc.value.reason == "unauthorized" and exc.value.failure == "revoked"
    assert len(recorder.calls) == 1


def test_token_repr_never_holds_a_secret() -> None:
    # TokenRow.to_dict (what the CLI and API print) has neither the hash nor a secret.
    d = _row().to_dict()
    assert set(d) == {"id", "name", "scopes", "created_at", "revoked_at", "last_used_at"}


def test_create_token_rejects_bad_names_before_touching_the_database() -> None:
    for bad in ("", "has space", "x" * 65, "semi;colon"):
        with pytest.raises(TokenError) as exc:
            asyncio.run(tokens.create_token(object(), name=bad, scopes=["metrics:read"]))  # type: ignore[arg-type]
        assert exc.value.reason == "token_name_invalid"
