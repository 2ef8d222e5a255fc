-- Archived months (issue 16, "Retention without losing proofs"): `cityanchor archive` writes a
-- month's `reading_batches` rows (sql/009) to one gzip JSON-lines file with a manifest, then
-- detaches and drops the month's partition in the same transaction that inserts its row here.
-- A month is in the database (its partition) or archived (a row here with restored_at NULL and
-- its verified file), never neither: see anchor/store/archives.py.
--
-- What stays in the database for an archived month: `batches` (size, root, log index),
-- `reading_seqs` (replay protection and receipt lookup), `log_nodes`, `checkpoints`, `anchors`,
-- the witness cosignatures and the tombstones in `reading_erasures`: all small. Only the
-- envelopes and leaves move to the file.
--
-- Erasure on an archived month rewrites the file (the envelope's bytes zeroed, the index added
-- to the batch line's `erased`) under a new name; `file`, `sha256` and `bytes` are updated in
-- the transaction that writes the tombstone, and `generation` counts the rewrites (it is part of
-- the file name).
--
-- Applied by anchor.store.Store.migrate() in one transaction; never edit once applied anywhere.

CREATE TABLE archives (
    month       text        PRIMARY KEY CHECK (month ~ '^[0-9]{4}-[0-9]{2}$'),
    file        text        NOT NULL CHECK (file ~ '^[A-Za-z0-9._-]+$'),
    sha256      bytea       NOT NULL CHECK (octet_length(sha256) = 32),
    bytes       bigint      NOT NULL CHECK (bytes > 0),
    batches     int         NOT NULL CHECK (batches >= 1),
    readings    bigint      NOT NULL CHECK (readings >= 1),
    log_from    bigint      NOT NULL CHECK (log_from >= 0),
    log_to      bigint      NOT NULL CHECK (log_to >= log_from),
    generation  int         NOT NULL DEFAULT 0 CHECK (generation >= 0),
    archived_at timestamptz NOT NULL DEFAULT now(),
    restored_at timestamptz
);
