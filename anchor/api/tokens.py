"""Scoped bearer tokens for the operator endpoints of the API.

A token is ``ca_<id>_<secret>``: ``id`` the decimal row id in ``api_tokens``, ``secret`` 32
random bytes (:func:`secrets.token_bytes`) as unpadded base64url (43 characters). The database
keeps only ``SHA-256(secret)``; the token text is shown once, when it is created.

Checking a presented token (:func:`authenticate`):

1. parse it; whatever its shape, the presented secret is hashed (a garbage token hashes its
   text), so every attempt costs the same work;
2. look the id up; for an unknown id the hash is compared against a fixed dummy, so the timing
   does not tell which ids exist;
3. compare with :func:`hmac.compare_digest` (constant time in the length of the digests);
4. only then look at ``revoked_at`` (a revoked token is 401 like a wrong one, but its detail
   says revoked: the caller proved it held the secret).

Scopes (:data:`SCOPES`): ``devices:write`` (register, rotate, revoke devices),
``readings:erase`` (erasure), ``anchors:run`` (trigger an anchoring step), ``metrics:read``
(``/metrics``), ``audit:read`` (``GET /v1/audit``; kept apart from ``metrics:read`` because the
audit log names people and legal reasons, which a metrics scraper has no business reading).

Reasons (:class:`TokenError`): ``unauthorized`` (missing, malformed, unknown, wrong or revoked
token: HTTP 401), ``forbidden`` (valid token without the scope: 403), ``scope_invalid``,
``token_name_invalid`` (creation).

CLI (:func:`add_token_commands`)::

    cityanchor token create --name NAME --scope SCOPE [--scope SCOPE]... [--out FILE]
    cityanchor token revoke ID
    cityanchor token list

each with ``--database-url`` (default ``$CITYANCHOR_DATABASE_URL``) and ``--json``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from anchor.errors import AnchorError, Reason
from anchor.store import Store
from anchor.store import operator as ops
from anchor.store.operator import TokenRow

__all__ = [
    "SCOPES",
    "NewToken",
    "TokenError",
    "authenticate",
    "create_token",
    "format_token",
    "hash_secret",
    "list_tokens",
    "parse_token",
    "require_scope",
    "revoke_token",
    "secret_matches",
]

SCOPES = ("devices:write", "readings:erase", "anchors:run", "metrics:read", "audit:read")
SECRET_BYTES = 32
TOKEN_PREFIX = "ca_"
_TOKEN = re.compile(r"ca_([1-9][0-9]{0,17})_([A-Za-z0-9_-]{43})")
_NAME = re.compile(r"[A-Za-z0-9._@:-]{1,64}")
# Compared against when the id is unknown, so that path does the same work as a real one.
_DUMMY_HASH = hashlib.sha256(b"cityanchor: no such token").digest()
_MAX_TOKEN_TEXT = 256

T = TypeVar("T")


class TokenError(AnchorError):
    """A bearer token was refused (``unauthorized``, ``forbidden``) or cannot be created."""

    reason = Reason.UNAUTHORIZED

    def __init__(
        self, detail: str, *, reason: Reason | None = None, failure: str = "invalid"
    ) -> None:
        super().__init__(detail, reason=reason)
        self.failure = failure
        """For metrics: ``missing``, ``invalid``, ``revoked``, ``forbidden`` (or ``invalid``)."""


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just created: ``token`` is the bearer text, shown this once and never stored."""

    record: TokenRow
    token: str


# --------------------------------------------------------------------------------------------
# Pure parts


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hash_secret(secret: bytes) -> bytes:
    """What the database stores for a secret: its SHA-256."""
    return hashlib.sha256(secret).digest()


def secret_matches(presented: bytes, stored_hash: bytes) -> bool:
    """``SHA-256(presented) == stored_hash``, compared in constant time."""
    return hmac.compare_digest(hash_secret(presented), stored_hash)


def format_token(token_id: int, secret: bytes) -> str:
    """The bearer text of a token."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a token secret is {SECRET_BYTES} bytes")
    return f"{TOKEN_PREFIX}{token_id}_{_b64url(secret)}"


def parse_token(text: str) -> tuple[int, bytes] | None:
    """``(id, secret)`` from bearer text, or None when it is not a token's shape."""
    m = _TOKEN.fullmatch(text)
    if m is None:
        return None
    encoded = m.group(2)
    try:
        secret = base64.urlsafe_b64decode(encoded + "=")
    except (binascii.Error, ValueError):
        return None
    if len(secret) != SECRET_BYTES or _b64url(secret) != encoded:
        return None  # non-canonical spelling: one text per token
    return int(m.group(1)), secret


def check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    """The scopes, deduplicated in :data:`SCOPES` order; raises ``TokenError``
    (``scope_invalid``) for an unknown one or none at all."""
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise TokenError(
            f"unknown scope(s) {', '.join(map(repr, unknown))}; known: {', '.join(SCOPES)}"
            if unknown
            else f"a token needs at least one scope of {', '.join(SCOPES)}",
            reason=Reason.SCOPE_INVALID,
        )
    return tuple(s for s in SCOPES if s in scopes)


def require_scope(token: TokenRow, scope: str) -> None:
    """Raises ``TokenError`` (``forbidden``) unless ``token`` carries ``scope``."""
    if scope not in token.scopes:
        raise TokenError(
            f"token {token.name!r} (id {token.id}) lacks the scope {scope!r}",
            reason=Reason.FORBIDDEN,
            failure="forbidden",
        )


def bearer(header: str | None) -> str:
    """The token text of an ``Authorization: Bearer ...`` header (RFC 6750 section 2.1).

    Raises ``TokenError`` (``unauthorized``) when the header is missing or of another scheme.
    """
    if not header:
        raise TokenError("no bearer token (Authorization: Bearer ca_...)", failure="missing")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise TokenError("the Authorization header is not 'Bearer <token>'", failure="missing")
    return value.strip()


# --------------------------------------------------------------------------------------------
# Against the database


async def create_token(store: Store, *, name: str, scopes: Sequence[str]) -> NewToken:
    """Create a token; the returned :attr:`NewToken.token` is the only copy of its secret.

    Raises ``TokenError`` (``token_name_invalid``, ``scope_invalid``) or ``StoreError``.
    """
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise TokenError(
            f"token name {ascii(name)[:80]} does not match [A-Za-z0-9._@:-]{{1,64}}",
            reason=Reason.TOKEN_NAME_INVALID,
        )
    wanted = check_scopes(scopes)
    secret = secrets.token_bytes(SECRET_BYTES)
    record = await ops.insert_token(store, name=name, scopes=wanted, token_hash=hash_secret(secret))
    return NewToken(record, format_token(record.id, secret))


async def authenticate(store: Store, presented: str) -> TokenRow:
    """The token row of valid, unrevoked bearer text; see the module docstring for the steps.

    Raises ``TokenError`` (``unauthorized``) or ``StoreError`` (the database is down).
    """
    text = presented[:_MAX_TOKEN_TEXT]
    parsed = parse_token(text)
    # (1) and (2): always hash something and always compare, whatever we found.
    token_id, secret = parsed if parsed is not None else (0, text.encode("utf-8", "replace"))
    row = await ops.get_token(store, token_id) if parsed is not None else None
    matched = secret_matches(secret, row.token_hash if row is not None else _DUMMY_HASH)
    if row is None or not matched:
        raise TokenError("invalid token")
    if row.revoked_at is not None:
        raise TokenError(
            f"token {row.id} was revoked at {row.revoked_at.isoformat()}", failure="revoked"
        )
    await ops.touch_token(store, row.id)
    return row


async def revoke_token(store: Store, token_id: int) -> TokenRow:
    """Revoke a token now; raises ``StoreError`` (``not_found``, ``conflict``)."""
    return await ops.revoke_token(store, token_id)


async def list_tokens(store: Store) -> list[TokenRow]:
    """Every token (never a secret or hash), oldest first."""
    return await ops.list_tokens(store)


# --------------------------------------------------------------------------------------------
# Command line
