"""PostgreSQL storage: the device registry, sealed batches, the batch log and quarantine.

An adapter around asyncpg (the pure decisions live in :mod:`anchor.sealing`). Every asyncpg or
socket failure is translated here, at the edge, into :class:`StoreError` with a stable reason:

``db_unavailable``  the server cannot be reached or went away (refused, reset, shut down,
                    timed out, too many connections, out of disk); retryable.
``db_busy``         a serialization failure, deadlock or lock timeout; retryable.
``db_error``        any other database error (a bug or a schema mismatch); not retryable.
``not_found``       the device, reading or batch does not exist.
``conflict``        the device or key is already registered, the device already revoked, ...
``device_id_invalid``  a device id outside ``[A-Za-z0-9._-]{1,64}``.
``device_id_reserved``  registering a well-formed but reserved id (``.``, ``..``, ``-...``,
                    ``cityanchor...``; see :mod:`anchor.device_id`).
``migration_checksum_mismatch``  an applied ``sql/NNN_*.sql`` file was edited afterwards.
``migrations_missing``  the migrations cannot be read (see :mod:`anchor.store.schema`).
``log_inconsistent``   the batch log and its checkpoints disagree (never expected; the seal
                    refuses to extend a log it cannot account for).
``erased``          the reading's envelope is gone without a tombstone (an erasure with a
                    tombstone gives a receipt with status ``erased`` instead).

:attr:`StoreError.retryable` tells a caller whether trying again later can help. In particular
:meth:`Store.seal` is all-or-nothing: when it raises, nothing of the seal was committed, and the
ingestor must not acknowledge the MQTT messages (the broker redelivers them, and the dedupe check
makes the retry idempotent).

Key validity (rotation). A device keeps every key it ever had in ``device_keys``; rotation sets
the current key's ``valid_until`` to the rotation time and adds the new key with ``valid_until``
NULL. A reading signed with key K is acceptable when K is a key of that device and either K is
current (``valid_until`` NULL) or the reading's device time ``ts`` (ms) is before
``K.valid_until``. So a reading signed just before a rotation but delivered after it still
verifies, and a reading signed with the old key after the rotation does not. A backdated
``ts`` is bounded by the ingestor's clock-skew check (``ts`` must be close to the time it is
received), so an old key is in effect honoured only until ``valid_until`` plus that bound.
Revocation is by *received* time: a revoked device's readings received at or after
``revoked_at`` are refused whatever their ``ts``. :meth:`DeviceRecord.check_reading` applies
both rules.

Which clock decides. ``received_at`` is the ingestor's wall clock when it took the message off
MQTT; ``revoked_at`` and ``valid_until`` are PostgreSQL's ``clock_timestamp()`` read *after*
the revoke or rotate transaction holds the device row ``FOR UPDATE``. The ingestor's registry
cache only pre-screens: :meth:`Store.seal` re-checks every candidate against the registry rows
it reads ``FOR SHARE`` (see :func:`recheck_key_validity`), so a revoke or rotate either commits
before the seal reads the device (and the seal sees it) or waits for the seal to commit (and
then stamps a time later than every reading that seal holds). Both clocks are wall clocks: on
one host (``cityanchor up``, the demo) they are the same clock; across hosts they must be
NTP-synchronised, and the rule is exact up to their offset (the ingestor measures it against
the database at every registry refresh and warns above
``anchor.ingest.ingestor.CLOCK_OFFSET_WARN_S``).

Concurrency. Every seal takes the transaction-level advisory lock :data:`SEAL_LOCK`, so seals
of any number of ingestors are serialised: the dedupe check, the batch's log index and the
checkpoint are decided under it and committed with the readings. ``migrate()`` holds
:data:`MIGRATE_LOCK` (a session lock) for its whole run; ``ensure_partitions()`` takes the seal
lock so that moving rows out of the default partition never races a seal.

Layout. One module per concern, each a mixin over :class:`~anchor.store.connection.StoreBase`
(the pool and the one connection helper that translates failures): :mod:`.schema`
(migrations, partitions), :mod:`.devices` (registry, broker logins), :mod:`.seal`, :mod:`.receipts`,
:mod:`.proofs` (checkpoints, consistency and completeness proofs, batch records),
:mod:`.anchors`, :mod:`.witnesses` (witness cosignatures), :mod:`.archives` (archived months,
sql/010); :mod:`.records` holds the frozen
values, :mod:`.errors` the errors and
:mod:`.operator` the operator side's queries (tokens, audit, erasure, metrics). :class:`Store`
is their sum. Mixins rather than one object per concern because callers hold one ``Store``
and call ``store.seal(...)``, ``store.receipt(...)``: that stays as it was, each concern
stays a file of its own, and the concerns share one pool and one cache without passing them
around. The mixins never call each other's methods; what two concerns share is a module
function (:func:`.devices.fetch_devices`, :func:`.proofs.resolve_nodes`). Nothing outside
this package touches a private name of it: a query a caller needs is a named method here.
"""

from __future__ import annotations

from anchor.sealing import Candidate, Rejection
from anchor.store.anchors import AnchorsMixin
from anchor.store.archives import ArchiveRecord, ArchivesMixin
from anchor.store.connection import (
    ADVISORY_LOCKS,
    ANCHOR_LOCK,
    ARCHIVE_LOCK,
    MIGRATE_LOCK,
    MIGRATION_REFUSED_STATE,
    SEAL_LOCK,
)
from anchor.store.devices import DevicesMixin
from anchor.store.errors import RegistryError, StoreError
from anchor.store.proofs import ProofsMixin
from anchor.store.receipts import BATCH_TREE_CACHE, ReceiptsMixin
from anchor.store.records import (
    BatchRecord,
    CheckpointRecord,
    DeviceKeyRecord,
    DeviceRecord,
    DeviceSpec,
    OpenAnchorTx,
    SealResult,
    StoredAnchor,
    VanishedAnchor,
)
from anchor.store.schema import SQL_DIR, SchemaMixin, migration_files, migrations_dir
from anchor.store.seal import QUARANTINE_RAW_LIMIT, SealMixin, recheck_key_validity
from anchor.store.witnesses import StoredCosignature, WitnessesMixin, WitnessFigures

__all__ = [
    "ADVISORY_LOCKS",
    "ANCHOR_LOCK",
    "ARCHIVE_LOCK",
    "BATCH_TREE_CACHE",
    "MIGRATE_LOCK",
    "MIGRATION_REFUSED_STATE",
    "QUARANTINE_RAW_LIMIT",
    "SEAL_LOCK",
    "SQL_DIR",
    "ArchiveRecord",
    "BatchRecord",
    "Candidate",
    "CheckpointRecord",
    "DeviceKeyRecord",
    "DeviceRecord",
    "DeviceSpec",
    "OpenAnchorTx",
    "RegistryError",
    "Rejection",
    "SealResult",
    "Store",
    "StoreError",
    "StoredAnchor",
    "StoredCosignature",
    "VanishedAnchor",
    "WitnessFigures",
    "migration_files",
    "migrations_dir",
    "recheck_key_validity",
]


class Store(
    SchemaMixin,
    DevicesMixin,
    SealMixin,
    ReceiptsMixin,
    ProofsMixin,
    AnchorsMixin,
    WitnessesMixin,
    ArchivesMixin,
):
    """A pool of connections to the cityanchor database. Build it with :meth:`connect`.

    Every method is one concern's (see "Layout" above); all of them raise ``StoreError`` with
    the reasons listed in this module's docstring.
    """
