"""Where and how a ``cityanchor`` command logs: text or JSON lines, stderr or a rotated file.

``--log-format json`` writes one JSON object per line::

    {"time": "2026-12-03T16:44:05.123Z", "level": "INFO", "logger": "anchor.ingest",
     "message": "ingest stats", "fields": {"received": 1200, ...}}

``time`` is RFC 3339 in UTC with milliseconds; ``fields`` holds the structured part of the
record: attributes passed with ``extra=`` and, for the services' ``"what: {json}"`` lines
(start-up settings, ingest stats), that JSON object, so a log shipper indexes it without parsing
the message; ``exc`` holds a traceback. Every line goes through
:func:`anchor.host.redact.redact_text` after it is serialised (a value that holds a password or
a token is masked, and the line stays valid JSON: the mask is plain text).

``--log-file PATH`` writes to PATH instead of stderr, rotated by size
(:class:`logging.handlers.RotatingFileHandler`: ``--log-max-bytes``, ``--log-backups``). Under a
supervisor (systemd, docker) leave it out: stderr is the log and the supervisor keeps it.
``cityanchor up`` runs its children with ``--log-format json`` and rotates their files itself
(:func:`rotate_copytruncate`).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anchor.host.redact import MASK, RedactingFormatter, redact_text

__all__ = [
    "LOG_BACKUPS",
    "LOG_MAX_BYTES",
    "JsonLineFormatter",
    "configure_logging",
    "rotate_copytruncate",
]

LOG_MAX_BYTES = 10 << 20
"""Default size at which a log file is rotated (10 MiB)."""
LOG_BACKUPS = 5
"""Default number of rotated files kept (``NAME.log.1`` .. ``NAME.log.5``)."""

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"

# The attributes every LogRecord has; anything else was passed with extra= and is a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# "what: {json object}" as the services log their settings and stats.
_TRAILING_JSON = re.compile(r"^(?P<message>.*?):\s*(?P<json>\{.*\})\s*$", re.DOTALL)


def _rfc3339(created: float) -> str:
    when = datetime.fromtimestamp(created, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, fields (secrets masked)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields: dict[str, Any] = {
            k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        }
        match = _TRAILING_JSON.match(message)
        if match:
            try:
                parsed = json.loads(match["json"])
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                message = match["message"]
                fields = {**parsed, **fields}
        doc: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        if fields:
            doc["fields"] = fields
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        # Masked before serialising: masking the JSON text could eat the backslash of an
        # escaped quote and leave a line that is no longer JSON.
        return json.dumps(_redacted(doc), default=str, ensure_ascii=False)


_SECRET_KEY = re.compile(r"(?i)pass(word|wd)?$|secret|token$|api[-_]?key|private[-_]?key")


def _redacted(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _redacted(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v, key) for v in value]
    if isinstance(value, str):
        return MASK if value and _SECRET_KEY.search(key) else redact_text(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(str(value))


def configure_logging(
    *,
    fmt: str = "text",
    file: Path | None = None,
    max_bytes: int = LOG_MAX_BYTES,
    backups: int = LOG_BACKUPS,
) -> None:
    """Install the root handler (unless one is installed already, as under pytest).

    ``fmt`` is ``text`` (``LEVEL logger: message``) or ``json`` (:class:`JsonLineFormatter`);
    ``file`` rotates at ``max_bytes`` keeping ``backups`` files, else the log goes to stderr.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler: logging.Handler
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(JsonLineFormatter() if fmt == "json" else RedactingFormatter(TEXT_FORMAT))
    root.addHandler(handler)


def rotate_copytruncate(path: Path, *, max_bytes: int, backups: int) -> bool:
    """Rotate ``path`` if it is larger than ``max_bytes``: NAME.1 .. NAME.backups shift up, a
    copy becomes NAME.1 and NAME is truncated in place; returns whether it rotated.

    For a file other processes hold open in append mode (``up``'s children write their output
    there): they keep writing to the same, now empty, file. What a child writes between the copy
    and the truncation is lost, as with logrotate's ``copytruncate``; a few lines at most.
    """
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{n + 1}"))
    if backups > 0:
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with path.open("r+b") as f:
        f.truncate(0)
    return True
