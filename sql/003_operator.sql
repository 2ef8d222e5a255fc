-- Operator side: API bearer tokens, the audit log, and reading erasures (tombstones).
--
-- Applied by anchor.store.Store.migrate(); never edit once applied anywhere, add 004_*.sql.

-- ------------------------------------------------------------------------------ api tokens

-- A token is `ca_<id>_<base64url(secret)>` with a random 32-byte secret; only SHA-256(secret)
-- is stored, so a copy of this table does not let anyone in. Tokens are revoked, never
-- deleted, so the audit log's token_id always names one.
CREATE TABLE api_tokens (
    id           bigserial   PRIMARY KEY,
    name         text        NOT NULL CHECK (name ~ '^[A-Za-z0-9._@:-]{1,64}$'),
    scopes       text[]      NOT NULL CHECK (cardinality(scopes) >= 1),
    token_hash   bytea       NOT NULL CHECK (octet_length(token_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- ------------------------------------------------------------------------------- audit log

-- Every operator action: token-authenticated requests that change something (successful or
-- not, including refusals such as 401/403), and the token CLI. Append-only by convention; the
-- API never updates or deletes a row.
CREATE TABLE audit_log (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,      -- token name, "anonymous", or "cli:<os user>"
    token_id    bigint      REFERENCES api_tokens (id),
    action      text        NOT NULL,      -- e.g. device.register, reading.erase
    target      text        NOT NULL DEFAULT '',
    outcome     text        NOT NULL,      -- "ok" or the reason code of the failure
    status      int,                       -- the HTTP status, NULL for the CLI
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    remote_addr text
);
CREATE INDEX audit_log_at ON audit_log (at);

-- ------------------------------------------------------------------------ reading erasures

-- Erasure for privacy law (PIPL / GDPR): readings.envelope is set to NULL, and so are the
-- values it carried; leaf_hash, batch_id and batch_index stay, so every tree, every proof and
-- every other receipt stays valid. One tombstone per erased reading says who, when and why.
CREATE TABLE reading_erasures (
    device_id    text        NOT NULL,
    seq          bigint      NOT NULL,
    leaf_hash    bytea       NOT NULL CHECK (octet_length(leaf_hash) = 32),
    erased_at    timestamptz NOT NULL DEFAULT now(),
    actor        text        NOT NULL,
    token_id     bigint      REFERENCES api_tokens (id),
    legal_reason text        NOT NULL CHECK (length(legal_reason) BETWEEN 1 AND 1000),
    PRIMARY KEY (device_id, seq),
    FOREIGN KEY (device_id, seq) REFERENCES reading_seqs (device_id, seq)
);
