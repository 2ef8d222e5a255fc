-- Batch-log leaves v2 (receipt cityanchor/receipt/v2, DESIGN.md "Batch log"): from this
-- version on, the log leaf of a batch is SHA-256(0x00 || uint64_be(batch size) || batch root),
-- where it was SHA-256(0x00 || batch root) before. A v1 leaf does not bind the batch size, so a
-- v1 receipt's batch.size could be changed without any check failing.
--
-- A log built with v1 leaves cannot be converted: its checkpoints are signed and its roots are
-- anchored on chain, and the roots of the same batches under v2 leaves are different ones. It
-- cannot be extended either (a log mixing both leaf kinds would prove neither). So this
-- migration refuses a database that holds any batch, with SQLSTATE CA001, which
-- Store.migrate() reports as reason `migration_refused`; an empty log simply starts with v2
-- leaves. What an operator does then: docs/operator-guide.md, "Upgrading to receipt v2".
--
-- Applied by anchor.store.Store.migrate(); never edit once applied anywhere.
DO $$
DECLARE
    n bigint;
BEGIN
    SELECT count(*) INTO n FROM batches;
    IF n > 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'CA001',
            MESSAGE = format(
                'this database''s batch log holds %s batch(es) sealed with v1 log leaves '
                '(SHA-256(0x00 || batch root)); this version of cityanchor writes and proves '
                'only v2 leaves (SHA-256(0x00 || uint64_be(batch size) || batch root)) and '
                'cityanchor/receipt/v2 receipts, and a v1 log cannot be converted: its roots '
                'are signed and anchored', n),
            HINT = 'keep this database (with the cityanchor release that made it) for its '
                'v1 data, and start this version on a new, empty database or data dir; see '
                'docs/operator-guide.md, "Upgrading to receipt v2"';
    END IF;
END
$$;
