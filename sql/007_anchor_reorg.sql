-- Anchors that vanished from their chain (issue 11, item 4).
--
-- An anchor recorded as confirmed can still disappear: a reorg deeper than the configured
-- confirmations, or a chain node restarted from an older state. The anchoring job re-checks the
-- anchors of the last `anchor_reorg_window_blocks` blocks (and always each backend's newest)
-- every `anchor_recheck_ms`; one that is no longer on chain as recorded is MOVED from `anchors`
-- to `vanished_anchors` in one transaction, with its reason code, and its checkpoint is
-- anchored again. Moving it (rather than flagging it in place) means that every query that
-- cites anchors (receipts, GET /v1/anchors, completeness proofs, metrics, audit) keeps reading
-- `anchors` and can never cite a vanished one; and the same checkpoint can be anchored again
-- under the same primary key (backend, log_size).
--
-- Applied by anchor.store.Store.migrate(); never edit once applied anywhere.

-- The block's hash at confirmation: a re-check compares it with the canonical block at that
-- height (NULL for anchors recorded before this migration: only anchoredAt is re-checked).
ALTER TABLE anchors
    ADD COLUMN block_hash bytea CHECK (block_hash IS NULL OR octet_length(block_hash) = 32);
-- The re-check reads one backend's anchors above a block number every few seconds.
CREATE INDEX anchors_by_block ON anchors (backend, block_number);

CREATE TABLE vanished_anchors (
    id           bigserial   PRIMARY KEY,
    backend      text        NOT NULL,
    chain_id     bigint      NOT NULL,
    contract     text        NOT NULL,
    log_size     bigint      NOT NULL REFERENCES checkpoints (log_size),
    root         bytea       NOT NULL CHECK (octet_length(root) = 32),
    tx_hash      text        NOT NULL,
    block_number bigint      NOT NULL,
    block_time   timestamptz NOT NULL,
    block_hash   bytea,
    confirmed_at timestamptz NOT NULL,
    reason       text        NOT NULL CHECK (reason IN ('anchor_vanished')),
    detail       text        NOT NULL DEFAULT '',
    vanished_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vanished_anchors_by_backend ON vanished_anchors (backend, log_size);
