-- cityanchor schema, version 1: device registry, readings, batches, the batch log, quarantine.
--
-- Applied by anchor.store.Store.migrate() (`cityanchor db migrate`) inside one transaction and
-- recorded in schema_migrations with its SHA-256; never edit this file once applied anywhere,
-- add 002_*.sql instead (migrate() refuses to run when an applied file's checksum changed).
--
-- device_id leads every key so the big tables can be distributed by device_id (Citus).
-- Monthly partitions of `readings` are created ahead by Store.ensure_partitions(); rows for a
-- month without a partition land in readings_default and are moved when the partition is made.

-- ------------------------------------------------------------------------------ registry

CREATE TABLE devices (
    device_id     text        PRIMARY KEY CHECK (device_id ~ '^[A-Za-z0-9._-]{1,64}$'),
    district      text        NOT NULL DEFAULT '',
    kind          text        NOT NULL DEFAULT '',
    status        text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    registered_at timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    revoke_reason text,
    CONSTRAINT devices_revoked_at CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX devices_district ON devices (district, device_id);

-- Key history: rotation closes the current key (valid_until = now()) and adds the new one; old
-- keys stay so readings signed before the rotation still verify (see anchor.store, "Key
-- validity"). A key belongs to one device only, ever (kid is unique across the table).
CREATE TABLE device_keys (
    device_id   text        NOT NULL REFERENCES devices (device_id),
    kid         bytea       NOT NULL CHECK (octet_length(kid) = 32),
    key_type    text        NOT NULL CHECK (key_type IN ('Ed25519', 'P-256')),
    public_key  bytea       NOT NULL,
    public_jwk  jsonb       NOT NULL,
    valid_from  timestamptz NOT NULL DEFAULT now(),
    valid_until timestamptz,
    PRIMARY KEY (device_id, kid),
    CONSTRAINT device_keys_window CHECK (valid_until IS NULL OR valid_until >= valid_from)
);
CREATE UNIQUE INDEX device_keys_kid ON device_keys (kid);
-- At most one current key per device.
CREATE UNIQUE INDEX device_keys_current ON device_keys (device_id) WHERE valid_until IS NULL;

-- ------------------------------------------------------------------------- batches and log

CREATE SEQUENCE batch_ids AS bigint START 1;

CREATE TABLE batches (
    id        bigint      PRIMARY KEY,
    size      int         NOT NULL CHECK (size >= 1),
    root      bytea       NOT NULL CHECK (octet_length(root) = 32),
    log_index bigint      NOT NULL UNIQUE CHECK (log_index >= 0),
    sealed_at timestamptz NOT NULL DEFAULT now(),
    ingestor  text        NOT NULL DEFAULT ''
);

-- One row per log size: the signed C2SP checkpoint and the compact range ("frontier") of the
-- log at that size, so the next append costs O(log n) hashes and rereads nothing.
CREATE TABLE checkpoints (
    log_size   bigint      PRIMARY KEY CHECK (log_size >= 1),
    root       bytea       NOT NULL CHECK (octet_length(root) = 32),
    note       text        NOT NULL,
    frontier   bytea[]     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every perfect subtree of the batch log: the root of log leaves [idx * 2^level,
-- (idx + 1) * 2^level). An append adds the leaf (level 0) and each subtree it completes, so a
-- log inclusion or consistency proof needs O(log n) rows, never a scan of every batch root.
CREATE TABLE log_nodes (
    level smallint NOT NULL CHECK (level BETWEEN 0 AND 63),
    idx   bigint   NOT NULL CHECK (idx >= 0),
    hash  bytea    NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (level, idx)
);

-- ------------------------------------------------------------------------------ readings

CREATE TABLE readings (
    device_id   text        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq >= 1),
    ts          bigint      NOT NULL,
    received_at timestamptz NOT NULL,
    format      text        NOT NULL CHECK (format IN ('cose-sign1', 'jws')),
    kind        text        NOT NULL,
    kid         bytea       NOT NULL,
    envelope    bytea,      -- NULL once erased; leaf_hash still commits to the bytes
    leaf_hash   bytea       NOT NULL CHECK (octet_length(leaf_hash) = 32),
    batch_id    bigint      NOT NULL,
    batch_index int         NOT NULL CHECK (batch_index >= 0),
    PRIMARY KEY (device_id, seq, received_at)
) PARTITION BY RANGE (received_at);
CREATE TABLE readings_default PARTITION OF readings DEFAULT;
CREATE INDEX readings_batch ON readings (batch_id, batch_index);

-- Global uniqueness of (device_id, seq) (a partitioned table cannot enforce it without the
-- partition key) and the index for receipt lookups and the seal's dedupe check.
CREATE TABLE reading_seqs (
    device_id   text        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq >= 1),
    leaf_hash   bytea       NOT NULL CHECK (octet_length(leaf_hash) = 32),
    batch_id    bigint      NOT NULL,
    batch_index int         NOT NULL CHECK (batch_index >= 0),
    received_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX reading_seqs_batch ON reading_seqs (batch_id, batch_index);

-- ---------------------------------------------------------------------------- quarantine

CREATE TABLE quarantine (
    id          bigserial   PRIMARY KEY,
    received_at timestamptz NOT NULL,
    topic       text        NOT NULL,
    device_id   text,
    seq         bigint,
    reason      text        NOT NULL,
    detail      text        NOT NULL DEFAULT '',
    raw         bytea,      -- first 16 KiB; NULL for replays (the stored reading has the bytes)
    raw_size    int         NOT NULL,
    raw_sha256  bytea       NOT NULL CHECK (octet_length(raw_sha256) = 32),
    ingestor    text        NOT NULL DEFAULT ''
);
CREATE INDEX quarantine_reason ON quarantine (reason);
CREATE INDEX quarantine_device ON quarantine (device_id);

-- ------------------------------------------------------------------------------- views

-- Missing seqs per device, as closed ranges [gap_from, gap_to]; a device whose first stored seq
-- is above 1 has a leading gap from 1. Completeness proofs build on these.
CREATE VIEW device_seq_gaps AS
SELECT device_id, prev_seq + 1 AS gap_from, seq - 1 AS gap_to
FROM (
    SELECT device_id, seq,
           coalesce(lag(seq) OVER (PARTITION BY device_id ORDER BY seq), 0) AS prev_seq
    FROM reading_seqs
) AS s
WHERE seq > prev_seq + 1;

CREATE VIEW device_heads AS
SELECT device_id, max(seq) AS max_seq, count(*) AS readings
FROM reading_seqs
GROUP BY device_id;
