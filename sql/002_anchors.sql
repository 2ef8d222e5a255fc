-- Anchoring: every transaction the job prepares (persisted BEFORE broadcast, so a crash can
-- never make it send a second one for the same slot), and every confirmed anchor.

CREATE TABLE anchor_txs (
    id          bigserial   PRIMARY KEY,
    backend     text        NOT NULL,
    chain_id    bigint      NOT NULL,
    contract    text        NOT NULL,
    log_size    bigint      NOT NULL REFERENCES checkpoints (log_size),
    root        bytea       NOT NULL CHECK (octet_length(root) = 32),
    tx_hash     text        NOT NULL UNIQUE,
    tx          jsonb       NOT NULL,            -- AnchorTx.to_json(): raw signed bytes, nonce, fees
    -- prepared: stored, maybe not sent; sent: broadcast at least once; confirmed: see anchors;
    -- replaced: a higher-fee transaction took its slot; failed: mined but reverted, or refused.
    state       text        NOT NULL CHECK (state IN ('prepared', 'sent', 'confirmed', 'replaced', 'failed')),
    detail      text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX anchor_txs_open ON anchor_txs (backend, id) WHERE state IN ('prepared', 'sent');

CREATE TABLE anchors (
    backend      text        NOT NULL,
    chain_id     bigint      NOT NULL,
    contract     text        NOT NULL,
    log_size     bigint      NOT NULL REFERENCES checkpoints (log_size),
    root         bytea       NOT NULL CHECK (octet_length(root) = 32),
    tx_hash      text        NOT NULL,
    block_number bigint      NOT NULL CHECK (block_number > 0),
    block_time   timestamptz NOT NULL,
    confirmed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (backend, log_size)
);
CREATE INDEX anchors_by_size ON anchors (log_size);
