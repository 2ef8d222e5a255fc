-- Packed reading storage (issue 16): bytes per reading close to the envelope's.
--
-- Until 008 every reading cost a `readings` row (envelope plus device_id, seq, ts, format, kind,
-- kid, leaf_hash, batch position: each with a 28-byte tuple overhead and two indexes) AND a
-- `reading_seqs` row carrying the leaf hash again and the reading's whole batch path (~320
-- bytes): about 3.8x the envelope. From 009 on (docs/benchmarks.md, "Storage"):
--
-- * `reading_batches`: ONE row per sealed batch, partitioned by month of `sealed_at` (the
--   batch's `batches.sealed_at`; a batch lives in the month it was sealed in, so whole months
--   can be detached, archived, dropped and restored). `leaves` is the batch's leaf hashes in
--   batch order (32 bytes each; paths are built from them, never stored per reading),
--   `envelopes` the envelopes concatenated in batch order, and `ends` the end offset of each
--   envelope in `envelopes` (uint32 big-endian, 4 bytes each). All three are STORAGE EXTERNAL
--   (out of line, uncompressed), so substring() reads only the TOAST chunks it needs: a
--   receipt reads one envelope and 16 leaves, not the batch.
-- * `reading_seqs`: (device_id, seq) -> (batch_id, batch_index, received_at), the global
--   uniqueness of (device_id, seq) and the receipt / dedupe lookup. The leaf hash and the batch
--   path are gone from it (the leaf is `leaves` at 32 * batch_index).
--
-- Erasure: the erased envelope's bytes in `envelopes` are overwritten with zero bytes (same
-- length, so no offset moves) and the tombstone in reading_erasures says so; readings erased
-- before 009 (envelope NULL) get an empty slot. A tombstone now also keeps the erased
-- reading's format (receipts show it). The leaf hash stays in `leaves`, so every proof holds.
--
-- The format of a stored reading is read from its envelope (anchor.envelope.detect_format);
-- ts, kind and kid are inside the signed envelope and were queried nowhere.
--
-- Applied by anchor.store.Store.migrate() in one transaction; never edit once applied anywhere.

CREATE TABLE reading_batches (
    batch_id  bigint      NOT NULL,
    sealed_at timestamptz NOT NULL,
    leaves    bytea       NOT NULL CHECK (octet_length(leaves) % 32 = 0),
    ends      bytea       NOT NULL CHECK (octet_length(ends) * 8 = octet_length(leaves)),
    envelopes bytea       NOT NULL,
    PRIMARY KEY (batch_id, sealed_at)
) PARTITION BY RANGE (sealed_at);
CREATE TABLE reading_batches_default PARTITION OF reading_batches DEFAULT;
-- Recurses to the partitions; Store.ensure_partitions() creates new ones with INCLUDING STORAGE.
ALTER TABLE reading_batches
    ALTER COLUMN leaves SET STORAGE EXTERNAL,
    ALTER COLUMN ends SET STORAGE EXTERNAL,
    ALTER COLUMN envelopes SET STORAGE EXTERNAL;

-- The existing readings, packed per batch (ends: running sum of the envelope lengths).
INSERT INTO reading_batches (batch_id, sealed_at, leaves, ends, envelopes)
SELECT r.batch_id, b.sealed_at,
       string_agg(r.leaf_hash, ''::bytea ORDER BY r.batch_index),
       string_agg(int4send(r.e::int), ''::bytea ORDER BY r.batch_index),
       string_agg(r.env, ''::bytea ORDER BY r.batch_index)
FROM (
    SELECT batch_id, batch_index, leaf_hash, coalesce(envelope, ''::bytea) AS env,
           sum(coalesce(octet_length(envelope), 0))
               OVER (PARTITION BY batch_id ORDER BY batch_index) AS e
    FROM readings
) AS r
JOIN batches b ON b.id = r.batch_id
GROUP BY r.batch_id, b.sealed_at;

ALTER TABLE reading_erasures ADD COLUMN format text CHECK (format IN ('cose-sign1', 'jws'));
UPDATE reading_erasures e SET format = r.format
FROM readings r WHERE r.device_id = e.device_id AND r.seq = e.seq;
ALTER TABLE reading_erasures ALTER COLUMN format SET NOT NULL;

-- The slim reading_seqs, columns ordered for the narrowest tuple (fixed-width first).
CREATE TABLE reading_seqs_packed (
    seq         bigint      NOT NULL CHECK (seq >= 1),
    batch_id    bigint      NOT NULL,
    received_at timestamptz NOT NULL,
    batch_index int         NOT NULL CHECK (batch_index >= 0),
    device_id   text        NOT NULL
);
INSERT INTO reading_seqs_packed (seq, batch_id, received_at, batch_index, device_id)
SELECT seq, batch_id, received_at, batch_index, device_id FROM reading_seqs
ORDER BY device_id, seq;

DROP VIEW device_seq_gaps;
DROP VIEW device_heads;
ALTER TABLE reading_erasures DROP CONSTRAINT reading_erasures_device_id_seq_fkey;
DROP TABLE readings;
DROP TABLE reading_seqs;
ALTER TABLE reading_seqs_packed RENAME TO reading_seqs;
ALTER TABLE reading_seqs ADD CONSTRAINT reading_seqs_pkey PRIMARY KEY (device_id, seq);
ALTER TABLE reading_erasures ADD CONSTRAINT reading_erasures_device_id_seq_fkey
    FOREIGN KEY (device_id, seq) REFERENCES reading_seqs (device_id, seq);

-- The views of 001, unchanged, on the new reading_seqs.
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
