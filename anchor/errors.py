"""The one exception tree of cityanchor and the one table of its reason codes.

Every failure the service can report is an :class:`AnchorError` with a stable ``reason`` code,
a member of :class:`Reason`. The same code appears in the quarantine table, the logs, the
metrics and HTTP problem details, so callers branch on ``exc.reason``, never on the message text
(which may change). :class:`Reason` is a :class:`~enum.StrEnum`: a member *is* its wire string
(``Reason.OVERSIZED == "oversized"``; JSON, the database and metric labels see the plain
string), so the table can grow without changing a byte anyone already stores or parses.

``docs/reason-codes.md`` lists exactly the codes of this table (a unit test compares the two in
both directions), and a code, once published, keeps its meaning: new codes may be added,
removing or renaming one is a breaking change.

One concept, three published spellings: an input larger than its cap is ``oversized`` (a device
envelope over 16 KiB: quarantine rows, device acknowledgements, the device guide), ``too_large``
(an HTTP request body over 1 MiB: problem documents) and ``receipt_too_large`` (a receipt file
over its cap: the ``receipt`` check of ``cityanchor verify`` and ``POST /v1/verify``). All three
are already on the wire and in stored rows, so none is renamed; new size caps use
``oversized``, and :data:`ALIASES` records the other two as its published aliases.

Pure: no I/O import; part of the consensus-critical core.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "ALIASES",
    "AnchorError",
    "CheckpointError",
    "EnvelopeError",
    "KeyMaterialError",
    "ProofError",
    "Reason",
    "ReceiptError",
    "UsageError",
]


class Reason(StrEnum):
    """Every reason code, with where it applies and a one-line meaning.

    ``where`` names the stage or surface: ``ingest N`` (the N-th admission check; the code is
    stored in the quarantine table and is the ``reason`` label of the quarantine counters),
    ``ack`` (told to the device in its acknowledgement), ``parse``/``verify`` (the envelope
    parser and verifier), ``check X`` (the check ``X`` of a receipt verification report),
    ``HTTP nnn`` (the problem document status), and the class that raises it.
    ``docs/reason-codes.md`` says more about each.
    """

    where: str
    meaning: str

    def __new__(cls, value: str, where: str = "", meaning: str = "") -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.where = where
        member.meaning = meaning
        return member

    @classmethod
    def label(cls, value: str) -> Reason:
        """``value`` as a metric label: its member, or :attr:`ERROR` for a code the table does
        not have (a row written by hand; cityanchor stores table codes only). A label can so
        only take values of this table, and a counter's total stays the sum of its series."""
        try:
            return cls(value)
        except ValueError:
            return cls.ERROR

    # One member a code: (wire string, where it applies, meaning). Kept two lines a member.
    # fmt: off
    # -- the root ------------------------------------------------------------------------------
    ERROR = (
        "error", "AnchorError",
        "The root's default, never raised; the metric label of a stored code not in the table.",
    )
    INTERNAL = (
        "internal", "HTTP 500; check of a report",
        "An unexpected error; the details are in the operator's log only.",
    )

    # -- envelope: parse and verify (anchor.envelope, anchor.keys) -----------------------------
    OVERSIZED = (
        "oversized", "ingest 1, ack; parse (first check); HTTP 413",
        "An envelope larger than MAX_ENVELOPE_BYTES (16 KiB); the canonical size-cap code.",
    )
    MALFORMED = (
        "malformed", "ingest 3, ack; parse",
        "The envelope breaks the envelope wire format.",
    )
    NON_CANONICAL = (
        "non_canonical", "ingest 3, ack; parse (last step); check envelope",
        "A well-formed envelope that is not the one canonical spelling.",
    )
    ALG_NOT_ALLOWED = (
        "alg_not_allowed", "ingest 3, ack; parse",
        "The alg is not on the allow-list (Ed25519, EdDSA, ES256).",
    )
    UNSUPPORTED_HEADER = (
        "unsupported_header", "ingest 3, ack; parse",
        "A critical header the verifier does not implement.",
    )
    UNKNOWN_KID = (
        "unknown_kid", "ingest 6; verify (step 1); check signature",
        "The kid is not one of the device's keys (not the key's thumbprint).",
    )
    ALG_KEY_MISMATCH = (
        "alg_key_mismatch", "verify (step 2), sign; check signature",
        "The alg does not fit the key type.",
    )
    BAD_SIGNATURE = (
        "bad_signature", "ingest 8, ack; verify (step 3); check signature",
        "The signature does not verify with the key.",
    )
    KEY_INVALID = (
        "key_invalid", "KeyMaterialError; HTTP 400",
        "A JWK, PEM or raw key is malformed or unsupported.",
    )
    KEY_UNSUPPORTED = (
        "key_unsupported", "KeyMaterialError",
        "A note key of another signature type than Ed25519.",
    )

    # -- Merkle, checkpoint, receipt (anchor.merkle, anchor.checkpoint, anchor.receipt) ---------
    PROOF_MALFORMED = (
        "proof_malformed", "ProofError; check batch_path, log_path",
        "An inclusion or consistency proof is malformed.",
    )
    ROOT_MISMATCH = (
        "root_mismatch", "ProofError; check batch_path, log_path",
        "A well-formed proof leads to another root than the expected one.",
    )
    UNKNOWN_HASH_SCHEME = (
        "unknown_hash_scheme", "ProofError",
        "The named tree hash scheme is not known.",
    )
    CHECKPOINT_INVALID = (
        "checkpoint_invalid", "CheckpointError",
        "The class default; the checkpoint parser raises the finer checkpoint_* codes.",
    )
    CHECKPOINT_MALFORMED = (
        "checkpoint_malformed", "check checkpoint",
        "The checkpoint is not a C2SP tlog-checkpoint signed note.",
    )
    CHECKPOINT_MISMATCH = (
        "checkpoint_mismatch", "check checkpoint; completeness",
        "The checkpoint names another log size or root.",
    )
    CHECKPOINT_SIGNATURE_INVALID = (
        "checkpoint_signature_invalid", "check checkpoint_signature",
        "A signature by the trusted operator key does not verify.",
    )
    CHECKPOINT_UNKNOWN_KEY = (
        "checkpoint_unknown_key", "check checkpoint_signature",
        "No signature by a trusted operator key.",
    )
    CHECKPOINT_ORIGIN_MISMATCH = (
        "checkpoint_origin_mismatch", "check checkpoint_signature",
        "The checkpoint's origin line is not the one expected.",
    )
    WITNESS_COSIGNATURE_INVALID = (
        "witness_cosignature_invalid", "check witnesses; witness client",
        "A cosignature line from a trusted witness key does not verify or has a bad timestamp.",
    )
    WITNESS_QUORUM_NOT_MET = (
        "witness_quorum_not_met", "check witnesses; anchoring",
        "Fewer trusted witnesses cosigned the checkpoint than the quorum asks.",
    )
    WITNESS_REQUEST_MALFORMED = (
        "witness_request_malformed", "witness HTTP 400",
        "An add-checkpoint request or answer breaks the tlog-witness format.",
    )
    WITNESS_UNKNOWN_LOG = (
        "witness_unknown_log", "witness HTTP 404",
        "The witness is not configured for the checkpoint's origin.",
    )
    WITNESS_LOG_SIGNATURE_INVALID = (
        "witness_log_signature_invalid", "witness HTTP 403",
        "No valid signature from a log key the witness trusts for that origin.",
    )
    WITNESS_SIZE_CONFLICT = (
        "witness_size_conflict", "witness HTTP 409",
        "The request's old size is not the size the witness last cosigned.",
    )
    WITNESS_INCONSISTENT = (
        "witness_inconsistent", "witness HTTP 422",
        "The checkpoint is not a consistent extension of what the witness cosigned.",
    )
    WITNESS_UNAVAILABLE = (
        "witness_unavailable", "log-side witness client",
        "A witness did not answer, timed out, or answered with an unexpected HTTP status.",
    )
    WITNESS_STATE_FAILED = (
        "witness_state_failed", "witness HTTP 500; WitnessStateError",
        "The witness's state file cannot be opened, read or written; nothing was cosigned.",
    )
    # -- monitor (anchor.log_view, anchor.monitor) ---------------------------------------------
    LOG_FORK = (
        "log_fork", "monitor evidence; exit 1",
        "Two operator-signed checkpoints that cannot both be true (same size, or no extension).",
    )
    LOG_ROLLBACK = (
        "log_rollback", "monitor evidence; exit 1",
        "The log's latest signed checkpoint is smaller than one it served before.",
    )
    ANCHOR_INCONSISTENT = (
        "anchor_inconsistent", "monitor evidence; exit 1",
        "The operator anchored a root that is not its signed checkpoint's root of that size.",
    )
    RECEIPT_INVALID = (
        "receipt_invalid", "monitor evidence; exit 1",
        "A receipt the log serves fails verification with the log key.",
    )
    MONITOR_STATE_INVALID = (
        "monitor_state_invalid", "MonitorStateError; monitor exit 2",
        "The monitor's state file is unreadable, of another format or does not verify.",
    )
    WITNESS_NOT_VERIFIED = (
        "witness_not_verified", "monitor-witness HTTP 503",
        "The monitor as a witness has not verified this checkpoint (yet), or holds evidence.",
    )
    MONITOR_UNAVAILABLE = (
        "monitor_unavailable", "MonitorError; monitor exit 3",
        "The API or a chain endpoint the monitor follows cannot be reached or answers garbage.",
    )
    RECEIPT_MALFORMED = (
        "receipt_malformed", "ReceiptError; check receipt",
        "A receipt document does not follow cityanchor/receipt/v2.",
    )
    RECEIPT_VERSION_UNSUPPORTED = (
        "receipt_version_unsupported", "ReceiptError; check receipt",
        "The receipt names a version this verifier does not know.",
    )
    RECEIPT_VERSION_RETIRED = (
        "receipt_version_retired", "ReceiptError; check receipt",
        "A cityanchor/receipt/v1 receipt: a retired format, refused everywhere.",
    )
    RECEIPT_TOO_LARGE = (
        "receipt_too_large", "ReceiptError; check receipt; HTTP 413",
        "A receipt larger than its cap; published alias of oversized.",
    )
    RECEIPT_MISMATCH = (
        "receipt_mismatch", "check envelope",
        "The receipt's device_id, seq or format differ from its envelope's.",
    )
    LEAF_MISMATCH = (
        "leaf_mismatch", "check leaf_hash; completeness",
        "An envelope does not hash to the stated leaf hash.",
    )

    # -- completeness proofs (anchor.completeness) ---------------------------------------------
    COMPLETENESS_MALFORMED = (
        "completeness_malformed", "CompletenessError",
        "The proof is not a cityanchor/completeness/v2 document.",
    )
    COMPLETENESS_VERSION_UNSUPPORTED = (
        "completeness_version_unsupported", "CompletenessError",
        "The proof names another version (v1 proofs are refused).",
    )
    SEQ_ORDER = "seq_order", "CompletenessError", "Sequence numbers are not strictly increasing."
    READING_MISMATCH = (
        "reading_mismatch", "CompletenessError",
        "An entry's device, seq or format differ from its envelope's.",
    )
    CHAIN_BROKEN = (
        "chain_broken", "CompletenessError",
        "Reading k+1's prev is not reading k's leaf hash.",
    )
    GAP_MISMATCH = (
        "gap_mismatch", "CompletenessError",
        "The stated gaps are not the missing sequence numbers.",
    )

    # -- ingest admission and sealing (anchor.ingest.ingestor, anchor.sealing, anchor.store) --
    BAD_TOPIC = "bad_topic", "ingest 2", "The topic is not city/{district}/{device_id}/readings."
    TOPIC_MISMATCH = (
        "topic_mismatch", "ingest 4, ack",
        "The envelope's device_id differs from the one in its topic.",
    )
    UNKNOWN_DEVICE = (
        "unknown_device", "ingest 5; check signature",
        "No registered device has this id.",
    )
    DISTRICT_MISMATCH = (
        "district_mismatch", "ingest 5, ack",
        "The topic's district is not the device's registered district.",
    )
    DEVICE_REVOKED = (
        "device_revoked", "ingest 6, ack, at seal; check signature",
        "The device was revoked before the message was received.",
    )
    KEY_ROTATED = (
        "key_rotated", "ingest 6, ack, at seal; check signature",
        "Signed with a rotated-out key at a ts not before the rotation.",
    )
    CLOCK_SKEW = (
        "clock_skew", "ingest 7, ack",
        "The reading's ts is too far ahead of or behind the receive time.",
    )
    REPLAYED_SEQ = (
        "replayed_seq", "ingest 9 (acknowledged as durable)",
        "The exact envelope is already stored: a redelivery or a replay.",
    )
    SEQ_CONFLICT = (
        "seq_conflict", "ingest 9, ack",
        "The device's seq is already stored with a different envelope.",
    )
    PREV_MISMATCH = (
        "prev_mismatch", "ingest 9, ack",
        "prev is not the leaf hash of the device's reading seq - 1.",
    )
    OUT_OF_RANGE = (
        "out_of_range", "ingest 9, ack",
        "seq or ts above 2^63-1: beyond PostgreSQL bigint.",
    )

    # -- chains and anchoring (anchor.anchoring.chains, anchor.anchoring.job, anchor.cli.audit) --
    CHAIN_UNAVAILABLE = (
        "chain_unavailable", "ChainError (retryable); check anchors; HTTP 503",
        "The JSON-RPC endpoint refused, timed out or answered garbage.",
    )
    CHAIN_MISMATCH = (
        "chain_mismatch", "ChainError; check anchors",
        "The endpoint serves another chain id than configured.",
    )
    TX_REJECTED = "tx_rejected", "ChainError", "The node refused the transaction."
    TX_REVERTED = "tx_reverted", "ChainError", "The transaction was mined but reverted."
    ALREADY_ANCHORED = (
        "already_anchored", "ChainError",
        "The root is already anchored on this contract.",
    )
    CHAIN_ERROR = (
        "chain_error", "ChainError",
        "Any other chain failure (no contract, an unexpected answer).",
    )
    ANCHOR_MISSING = (
        "anchor_missing", "check anchors",
        "anchoredAt(log.root) is 0 on the receipt's contract.",
    )
    ANCHOR_BLOCK_MISMATCH = (
        "anchor_block_mismatch", "check anchors",
        "The root was anchored in another block than the receipt says.",
    )
    ANCHOR_TIME_MISMATCH = (
        "anchor_time_mismatch", "check anchors",
        "The anchoring block's timestamp differs from the receipt's.",
    )
    ANCHOR_VANISHED = (
        "anchor_vanished", "ChainError; anchoring job, audit; vanished_anchors",
        "An anchor recorded as confirmed is no longer on its chain as recorded.",
    )

    # -- HTTP API (anchor.api.app, anchor.api.public, anchor.api.operator, anchor.api.tokens) --
    NOT_FOUND = (
        "not_found", "HTTP 404; StoreError",
        "No such device, reading, batch, checkpoint size or route.",
    )
    ERASED = "erased", "HTTP 410; StoreError", "The reading's envelope is gone without a tombstone."
    READING_ARCHIVED = (
        "reading_archived", "HTTP 410; StoreError",
        "The reading's month is archived to a file this process was not given (archive_dir).",
    )
    DEVICE_ID_INVALID = (
        "device_id_invalid", "HTTP 400; DeviceIdError, StoreError, devices",
        "A device id is not [A-Za-z0-9._-]{1,64}.",
    )
    DEVICE_ID_RESERVED = (
        "device_id_reserved", "HTTP 400; DeviceIdError, StoreError",
        "A well-formed device id that is reserved.",
    )
    INVALID_PARAMETER = (
        "invalid_parameter", "HTTP 400",
        "A path or query parameter is malformed or out of range.",
    )
    RANGE_TOO_LARGE = (
        "range_too_large", "HTTP 400",
        "A completeness range over 1000 sequence numbers.",
    )
    BODY_MALFORMED = (
        "body_malformed", "HTTP 400",
        "The request body is not the JSON object expected.",
    )
    TOO_LARGE = (
        "too_large", "HTTP 413",
        "The request body exceeds 1 MiB; published alias of oversized.",
    )
    UNAUTHORIZED = (
        "unauthorized", "HTTP 401; TokenError",
        "No bearer token, or an unknown, malformed or revoked one.",
    )
    FORBIDDEN = "forbidden", "HTTP 403; TokenError", "The token lacks the endpoint's scope."
    SCOPE_INVALID = (
        "scope_invalid", "HTTP 400; TokenError",
        "Creating a token with an unknown scope.",
    )
    TOKEN_NAME_INVALID = (
        "token_name_invalid", "HTTP 400; TokenError",
        "Creating a token with a bad name.",
    )
    CONFLICT = (
        "conflict", "HTTP 409; StoreError",
        "Already registered, already revoked, or the anchoring lock is held.",
    )
    ANCHORING_UNCONFIGURED = (
        "anchoring_unconfigured", "HTTP 503",
        "POST /v1/anchors/run with no chain configured.",
    )
    RATE_LIMITED = "rate_limited", "HTTP 429", "Too many requests per second from one client."
    METHOD_NOT_ALLOWED = "method_not_allowed", "HTTP 405", "The route does not take this method."
    BAD_REQUEST = (
        "bad_request", "HTTP 4xx",
        "A request refused by the HTTP server before any handler, with another 4xx status.",
    )

    # -- operator side: database, broker logins, migrations, private servers --------------------
    DB_UNAVAILABLE = (
        "db_unavailable", "StoreError (retryable); HTTP 503",
        "PostgreSQL cannot be reached or went away.",
    )
    DB_BUSY = (
        "db_busy", "StoreError (retryable); HTTP 503",
        "Serialization failure, deadlock or lock timeout.",
    )
    DB_ERROR = "db_error", "StoreError; HTTP 500", "Any other database error; not retryable."
    MIGRATION_CHECKSUM_MISMATCH = (
        "migration_checksum_mismatch", "StoreError",
        "An applied migration differs from the file of that name.",
    )
    MIGRATIONS_MISSING = (
        "migrations_missing", "StoreError",
        "The migration files cannot be found, or the database is ahead of them.",
    )
    MIGRATION_REFUSED = (
        "migration_refused", "StoreError",
        "A migration refused the database's contents and changed nothing.",
    )
    LOG_INCONSISTENT = (
        "log_inconsistent", "StoreError; HTTP 500",
        "The stored batch log contradicts itself.",
    )
    ARCHIVE_UNANCHORED = (
        "archive_unanchored", "StoreError; archive",
        "A month to archive holds a batch no anchored checkpoint covers yet.",
    )
    ARCHIVE_INVALID = (
        "archive_invalid", "StoreError; archive, audit; HTTP 500",
        "An archive file or manifest is missing or does not match its record or batch roots.",
    )
    IMPORT_INVALID = "import_invalid", "ImportFileError", "A device import file has bad rows."
    BROKER_UNAVAILABLE = (
        "broker_unavailable", "BrokerError",
        "The broker's control topic cannot be reached or does not answer.",
    )
    BROKER_REFUSED = (
        "broker_refused", "BrokerError",
        "The broker's dynamic-security plugin answered with an error.",
    )
    BINARY_MISSING = (
        "binary_missing", "ServiceError",
        "A server binary (postgres, mosquitto, anvil) is not installed.",
    )
    PORT_IN_USE = (
        "port_in_use", "ServiceError; HTTP server start",
        "The port to listen on is taken.",
    )
    PERMISSION_DENIED = (
        "permission_denied", "ServiceError",
        "The private server's data directory or files are not ours to use.",
    )
    USER_MISSING = (
        "user_missing", "ServiceError",
        "The operating-system user to run the server as does not exist.",
    )
    CONFIG_INVALID = (
        "config_invalid", "ServiceError, BrokerError, chain node",
        "A private server's configuration or answer is not usable.",
    )
    START_FAILED = (
        "start_failed", "ServiceError; cityanchor up, children",
        "A private server or child process did not start or become ready.",
    )
    STOP_FAILED = "stop_failed", "ServiceError", "A private server did not stop."
    SQL_FAILED = "sql_failed", "ServiceError", "Set-up SQL on the private PostgreSQL failed."
    ALREADY_RUNNING = (
        "already_running", "ServiceError",
        "Another process's PostgreSQL runs on that data directory.",
    )
    RPC_FAILED = (
        "rpc_failed", "ServiceError (local chain node)",
        "A JSON-RPC call to the private test chain node failed.",
    )

    # -- CLI and tools ---------------------------------------------------------------------------
    USAGE = (
        "usage", "UsageError; CLI exit 2",
        "The caller asked for something impossible (bad flag, missing file).",
    )
    SIMULATION_FAILED = (
        "simulation_failed", "SimulationError",
        "The device fleet simulation could not run.",
    )
    REGISTER_FAILED = (
        "register_failed", "SimulationError",
        "The simulator could not register its devices over the API.",
    )

    # -- device side (devices.keystore, devices.signer, devices.publisher, anchor.device_ack) ---
    KEY_TYPE_UNSUPPORTED = (
        "key_type_unsupported", "devices.keystore",
        "A key type other than Ed25519 or P-256 was asked for.",
    )
    KEY_FILE_EXISTS = (
        "key_file_exists", "devices.keystore",
        "The device already has a key; it is never overwritten.",
    )
    KEY_FILE_UNWRITABLE = (
        "key_file_unwritable", "devices.keystore",
        "The key files cannot be written.",
    )
    KEY_FILE_UNREADABLE = "key_file_unreadable", "devices.keystore", "A key file cannot be read."
    KEY_FILE_PERMISSIONS = (
        "key_file_permissions", "devices.keystore",
        "A private key file that group or others may read.",
    )
    FORMAT_INVALID = (
        "format_invalid", "DeviceStateError",
        "An envelope format other than cose or jws.",
    )
    STATE_CONFLICT = (
        "state_conflict", "DeviceStateError",
        "The state file disagrees with the state given.",
    )
    STATE_DEVICE_MISMATCH = (
        "state_device_mismatch", "DeviceStateError",
        "The state file belongs to another device.",
    )
    STATE_INVALID = (
        "state_invalid", "DeviceStateError",
        "The state file is unparseable or inconsistent.",
    )
    STATE_UNREADABLE = "state_unreadable", "DeviceStateError", "The state file cannot be read."
    STATE_UNWRITABLE = "state_unwritable", "DeviceStateError", "The state file cannot be written."
    OUTBOX_FULL = "outbox_full", "OutboxError", "The outbox reached max_entries or max_bytes."
    OUTBOX_LOCKED = "outbox_locked", "OutboxError", "Another process or object has the outbox open."
    OUTBOX_UNAVAILABLE = (
        "outbox_unavailable", "OutboxError",
        "SQLite or the filesystem failed under the outbox.",
    )
    FLUSH_TIMEOUT = (
        "flush_timeout", "PublishError",
        "Some readings were not acknowledged by the service in time.",
    )
    CONNECT_FAILED = (
        "connect_failed", "PublishError, SimulationError",
        "The MQTT broker cannot be reached or refused the connection.",
    )
    PUBLISH_FAILED = (
        "publish_failed", "PublishError",
        "The publisher failed otherwise (the class default).",
    )
    TOPIC_INVALID = (
        "topic_invalid", "PublishError",
        "A district or device id that cannot form an MQTT topic.",
    )
    ACK_MALFORMED = (
        "ack_malformed", "AckError; device counter",
        "An acknowledgement that breaks the device guide's layout.",
    )
    # fmt: on


ALIASES: Mapping[Reason, Reason] = MappingProxyType(
    {Reason.TOO_LARGE: Reason.OVERSIZED, Reason.RECEIPT_TOO_LARGE: Reason.OVERSIZED}
)
"""Published codes that name the same concept as another: alias -> canonical. Kept on the wire
because clients and stored rows already use them (see the module docstring)."""


class AnchorError(Exception):
    """Root of every cityanchor error; ``reason`` is a stable machine-readable code."""

    reason: Reason = Reason.ERROR

    def __init__(self, detail: str, *, reason: Reason | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return f"[{self.reason}] {self.detail}"


class ProofError(AnchorError):
    """A Merkle inclusion or consistency proof is malformed or does not match the root.

    Reasons: ``proof_malformed`` (bad sizes, lengths, index out of range) and
    ``root_mismatch`` (well-formed proof that leads to another root).
    """

    reason = Reason.PROOF_MALFORMED


class EnvelopeError(AnchorError):
    """A signed device envelope was rejected; see ``docs/reason-codes.md`` for every reason."""

    reason = Reason.MALFORMED


class KeyMaterialError(AnchorError):
    """A public or private key (JWK, PEM, note key) is malformed or of an unsupported type."""

    reason = Reason.KEY_INVALID


class CheckpointError(AnchorError):
    """A C2SP signed checkpoint note is malformed or its signature does not verify."""

    reason = Reason.CHECKPOINT_INVALID


class ReceiptError(AnchorError):
    """A receipt document does not follow ``cityanchor/receipt/v2``."""

    reason = Reason.RECEIPT_MALFORMED


class UsageError(AnchorError):
    """The caller asked for something impossible (bad flag, missing file)."""

    reason = Reason.USAGE
