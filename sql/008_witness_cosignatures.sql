-- Witness cosignatures of the batch log's checkpoints (issue 13; C2SP tlog-witness and
-- tlog-cosignature).
--
-- The anchoring process asks every configured witness to cosign checkpoints. A cosignature is
-- one signed-note signature line; it is verified with the witness's key before it is stored
-- here, and receipts and GET /v1/log/checkpoint append the stored lines of a log size to the
-- operator-signed note of that size. A witness is identified by its verifier key
-- (`name+keyid+base64(0x04||key)`), never by its URL: a witness that moves keeps its state, and
-- two witnesses behind one URL never share it.
--
-- Applied by anchor.store.Store.migrate(); never edit once applied anywhere.

CREATE TABLE witness_cosignatures (
    log_size    bigint      NOT NULL REFERENCES checkpoints (log_size),
    witness     text        NOT NULL,
    -- The signature line with its final newline, exactly as the witness sent it.
    line        text        NOT NULL CHECK (line LIKE '— %' AND right(line, 1) = E'\n'),
    -- The cosignature's own timestamp (tlog-cosignature: POSIX seconds, 1 .. 2^63-1).
    cosigned_at bigint      NOT NULL CHECK (cosigned_at > 0),
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (log_size, witness)
);
-- "The newest checkpoint a given witness cosigned" (quorum, metrics) reads by witness.
CREATE INDEX witness_cosignatures_by_witness ON witness_cosignatures (witness, log_size);

-- Per witness, the size of the latest checkpoint it cosigned for this log, as far as we know:
-- the next add-checkpoint request sends it as `old` with the consistency proof from it. A 409
-- from the witness corrects it (the witness's own state wins).
-- It also counts the requests by outcome (cosigned, conflict, refused, inconsistent,
-- unavailable, invalid, ...), so every API replica's /metrics shows the same figures although
-- only the anchoring process talks to witnesses.
CREATE TABLE witness_state (
    witness       text        PRIMARY KEY,
    url           text        NOT NULL,
    cosigned_size bigint      NOT NULL DEFAULT 0 CHECK (cosigned_size >= 0),
    outcomes      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    last_outcome  text        NOT NULL DEFAULT '',
    last_reason   text        NOT NULL DEFAULT '',
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One row: whether anchoring is waiting for a witness quorum (--witness-anchor-quorum) and how
-- often it found none, for metrics and `witness_quorum_not_met` alerts.
CREATE TABLE witness_quorum_status (
    id             smallint    PRIMARY KEY CHECK (id = 1),
    waiting        boolean     NOT NULL DEFAULT false,
    log_size       bigint      NOT NULL DEFAULT 0,
    not_met_total  bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
