-- Each reading's audit path in its batch, written at seal time (the concatenated 32-byte
-- hashes, bottom-up), so a receipt needs one row and ~10 hashes to check, not the whole batch.
-- NULL for readings sealed before this migration: their paths are recomputed from the leaves.
ALTER TABLE reading_seqs ADD COLUMN batch_path bytea
    CHECK (batch_path IS NULL OR octet_length(batch_path) % 32 = 0);
