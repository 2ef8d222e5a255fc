"""A private Mosquitto broker for tests, the demo and ``cityanchor up``.

The broker lives in a directory the caller gives and listens only on ``127.0.0.1`` (see
:mod:`anchor.local` for the rules all private servers share). Mosquitto drops privileges to the
``mosquitto`` user by itself when started as root, so its directory and files are chowned to
that user (it re-reads config, password and ACL files on SIGHUP, after the drop).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anchor.errors import Reason
from anchor.local.base import (
    LOOPBACK,
    ServiceError,
    SpawnedServer,
    check_traversable,
    chown_tree,
    is_root,
    system_user,
)
from anchor.password_hashes import mosquitto_password_hash

__all__ = ["MosquittoServer", "find_dynsec_plugin", "find_mosquitto"]

_MOSQUITTO_PACKAGE = "mosquitto"
_MOSQUITTO_USER = "mosquitto"
_MQTT_USER = re.compile(r"[^:\s]{1,256}")


def find_mosquitto(env: Mapping[str, str] | None = None) -> Path:
    """Return the ``mosquitto`` broker binary (``CITYANCHOR_MOSQUITTO`` in ``env`` wins).

    /usr/sbin is searched even when it is not on PATH (it is not for most non-root users).

    Raises:
        ServiceError: ``binary_missing``, naming the Debian package to install.
    """
    env = os.environ if env is None else env
    override = env.get("CITYANCHOR_MOSQUITTO")
    if override:
        if not Path(override).is_file():
            raise ServiceError(
                f"CITYANCHOR_MOSQUITTO={override} does not exist", reason=Reason.BINARY_MISSING
            )
        return Path(override)
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise ServiceError(
            f"the mosquitto broker is not installed; install it with `apt-get install -y "
            f"{_MOSQUITTO_PACKAGE}` (or run scripts/ensure-system-deps.sh), "
            "or set CITYANCHOR_MOSQUITTO",
            reason=Reason.BINARY_MISSING,
        )
    return Path(found)


# Where Debian/Ubuntu (libmosquitto, multiarch), the eclipse-mosquitto image and source builds
# put the dynamic-security plugin.
_DYNSEC_PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)


def find_dynsec_plugin(env: Mapping[str, str] | None = None) -> Path:
    """Return Mosquitto's dynamic-security plugin (``CITYANCHOR_MOSQUITTO_DYNSEC`` wins).

    Raises:
        ServiceError: ``binary_missing``.
    """
    env = os.environ if env is None else env
    override = env.get("CITYANCHOR_MOSQUITTO_DYNSEC")
    candidates = (override,) if override else _DYNSEC_PLUGIN_PATHS
    for candidate in candidates:
        if Path(candidate).is_file():
            return Path(candidate)
    raise ServiceError(
        f"Mosquitto's dynamic-security plugin is not in {', '.join(candidates)}; it ships with "
        f"the {_MOSQUITTO_PACKAGE} package (2.0 or later), or set CITYANCHOR_MOSQUITTO_DYNSEC",
        reason=Reason.BINARY_MISSING,
    )


def _find_passwd_tool() -> Path | None:
    found = shutil.which("mosquitto_passwd")
    return Path(found) if found else None


class MosquittoServer(SpawnedServer):
    """A private Mosquitto (MQTT v5, 3.1.1) broker in ``base_dir``, listening on 127.0.0.1 only.

    :meth:`start` writes the configuration, starts ``mosquitto -c`` and waits until the port
    accepts connections.

    Persistence is on, in ``base_dir/persistence/``, so QoS 1 messages queued for persistent
    sessions survive a clean broker restart (Mosquitto writes its database at shutdown and every
    ``autosave_interval`` seconds; a *crash* loses what arrived since the last save). With
    ``autosave_changes`` N it saves instead after every N changes (messages queued,
    subscriptions, retained messages). Every save rewrites the whole database, so a change-count
    setting costs in proportion to the backlog per N readings received: with N=1 and an
    ingestor behind, the broker spends its time saving (bench/broker_persistence.py, issue 11);
    ``cityanchor up`` saves every second instead. Mosquitto 2.0.11 never restores a ``$share``
    subscription from its database, even after a clean stop: see ``anchor.cli.up_broker`` for how
    devices are kept out until an ingestor has subscribed again.

    ``die_with_parent`` (Linux): the broker gets SIGTERM when the thread that started it dies,
    so a supervisor killed with SIGKILL leaves no broker behind (it saves its database on the
    way out). :meth:`stop_stale` stops a broker left on this ``base_dir`` by an owner that died.

    ``max_queued_messages`` is generous because Mosquitto *drops* QoS 1 messages for a client
    whose queue is full, after it PUBACKed them (``up`` raises it to 1,000,000);
    ``max_inflight_messages`` must be at least the ingestor's batch size, since the ingestor
    acknowledges only after its batch is committed.

    With ``users`` (``{username: password}``) and ``acl`` (Mosquitto ACL file text) the broker
    requires logins; ``allow_anonymous`` defaults to True only when no users are given. An ACL
    file cannot refuse a SUBSCRIBE in Mosquitto 2.0 (it grants every filter and only filters
    delivery), so where clients are untrusted use ``dynsec`` instead: the dynamic-security
    plugin's configuration (JSON, see :func:`anchor.broker.logins.dynsec_config`), written to
    ``base_dir/dynsec.json`` at every start; then logins, roles and client-id bindings come from
    it alone and change at run time through its ``$CONTROL`` topic (the plugin rewrites the
    file; a SIGHUP does not reload it).

    ``session_expiry_cap_h`` bounds every session's expiry interval, whatever the client asks
    (``persistent_client_expiration``; Mosquitto 2.0 applies it to MQTT v5 sessions too).
    """

    _NOUN = "broker"
    _PROGRAM = "mosquitto"
    _POLL_S = 0.02

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        allow_anonymous: bool | None = None,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        dynsec: Mapping[str, Any] | None = None,
        session_expiry_cap_h: int = 14 * 24,
        max_inflight_messages: int = 10_000,
        max_queued_messages: int = 100_000,
        autosave_interval: int = 60,
        autosave_changes: int | None = None,
        die_with_parent: bool = False,
        binary: Path | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.conf_path = self.base_dir / "mosquitto.conf"
        self.password_path = self.base_dir / "passwords"
        self.acl_path = self.base_dir / "acl"
        self.dynsec_path = self.base_dir / "dynsec.json"
        self.persistence_dir = self.base_dir / "persistence"
        self.log_path = self.base_dir / "mosquitto.log"
        self.stderr_path = self.base_dir / "mosquitto.stderr"
        if dynsec is not None and (users is not None or acl is not None):
            raise ServiceError(
                "dynsec replaces users and acl: give one or the other", reason=Reason.USAGE
            )
        no_logins = users is None and dynsec is None
        self.allow_anonymous = no_logins if allow_anonymous is None else allow_anonymous
        self._dynsec = dict(dynsec) if dynsec is not None else None
        if session_expiry_cap_h < 1:
            raise ServiceError("session_expiry_cap_h must be at least 1", reason=Reason.USAGE)
        self.session_expiry_cap_h = session_expiry_cap_h
        self.max_inflight_messages = max_inflight_messages
        self.max_queued_messages = max_queued_messages
        self.autosave_interval = autosave_interval
        if autosave_changes is not None and autosave_changes < 1:
            raise ServiceError("autosave_changes must be at least 1", reason=Reason.USAGE)
        self.autosave_changes = autosave_changes
        self.die_with_parent = die_with_parent
        self.start_timeout = start_timeout
        self._users = dict(users) if users is not None else None
        self._hashed = False
        self._acl = acl
        self._validate_users(self._users)
        self._requested_port = port
        self._port: int | None = port
        self._binary = binary
        self._exe = binary or Path("mosquitto")  # resolved at each start
        self._proc: subprocess.Popen[bytes] | None = None
        self._output_path = self.stderr_path

    # -- public properties ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://{LOOPBACK}:{self.port}"

    # -- lifecycle (start, stop, kill, stop_stale: see SpawnedServer) ----------------------

    def _prepare(self) -> None:
        self._exe = self._binary or find_mosquitto()
        self._prepare_dirs()

    def _before_spawn(self) -> None:
        self._write_files()

    def _command(self) -> list[str]:
        return [str(self._exe), "-c", str(self.conf_path)]

    def _ready(self) -> bool:
        return _accepts(LOOPBACK, self.port)

    def _log_paths(self) -> tuple[Path, ...]:
        return (self.stderr_path, self.log_path)

    def _stale_marker(self) -> Path:
        # Only a broker started on this base_dir's configuration has it in its argv.
        return self.conf_path

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its configuration, password and ACL files."""
        if self._proc is None or self._proc.poll() is not None:
            raise ServiceError("the broker is not running", reason=Reason.USAGE)
        self._proc.send_signal(signal.SIGHUP)

    def set_auth(
        self,
        users: Mapping[str, str],
        acl: str | None = None,
        *,
        allow_anonymous: bool | None = None,
    ) -> None:
        """Replace the logins and ACL and, when the broker runs, reload them (SIGHUP).

        The reload is asynchronous: the broker applies it within moments, not before return.
        ``allow_anonymous`` None keeps the current setting.
        """
        new_users = dict(users)
        self._validate_users(new_users)
        self._users = new_users
        self._hashed = False
        self._acl = acl
        if allow_anonymous is not None:
            self.allow_anonymous = allow_anonymous
        if self._port is not None:
            self._write_files()
        if self.running:
            self.reload()

    def set_hashed_auth(self, hashed_users: Mapping[str, str], acl: str | None = None) -> None:
        """Like :meth:`set_auth`, with ``{username: "$7$..." hash}`` as stored in a registry, so
        plaintext passwords never have to exist on this side."""
        for name, hashed in hashed_users.items():
            self._validate_users({name: hashed})
            if not hashed.startswith("$7$"):
                raise ServiceError(
                    f"{name!r}: not a $7$ password hash", reason=Reason.CONFIG_INVALID
                )
        self._users = dict(hashed_users)
        self._hashed = True
        self._acl = acl
        self.allow_anonymous = False
        if self._port is not None:
            self._write_files()
        if self.running:
            self.reload()

    def set_dynsec(self, config: Mapping[str, Any]) -> None:
        """Replace the dynamic-security configuration used from the broker's next start.

        A running broker is not changed (the plugin owns its file while it runs and ignores
        SIGHUP): change it through ``$CONTROL/dynamic-security/v1``
        (:class:`anchor.broker.logins.BrokerAdmin`), or restart it.
        """
        if self._dynsec is None:
            raise ServiceError("this broker was not started with dynsec", reason=Reason.USAGE)
        self._dynsec = dict(config)

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _validate_users(users: Mapping[str, str] | None) -> None:
        for name, password in (users or {}).items():
            if not _MQTT_USER.fullmatch(name):
                raise ServiceError(
                    f"MQTT username {name!r} is empty or has ':' or whitespace",
                    reason=Reason.CONFIG_INVALID,
                )
            if "\n" in password or "\r" in password or not password:
                raise ServiceError(
                    f"password of {name!r} is empty or has a line break",
                    reason=Reason.CONFIG_INVALID,
                )

    def _owner(self) -> pwd.struct_passwd | None:
        return system_user(_MOSQUITTO_USER, _MOSQUITTO_PACKAGE) if is_root() else None

    def _prepare_dirs(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.persistence_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.base_dir, 0o700)
        owner = self._owner()
        if owner is not None:
            check_traversable(self.base_dir, owner)

    def _config_text(self) -> str:
        lines = [
            "# Generated by anchor.local.mosquitto at every start; edits are overwritten.",
            "per_listener_settings false",
            f"listener {self.port} {LOOPBACK}",
            "protocol mqtt",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence true",
            # The trailing slash matters: Mosquitto concatenates location and file name.
            f"persistence_location {self.persistence_dir}/",
            "persistence_file mosquitto.db",
            *(
                [f"autosave_interval {self.autosave_interval}"]
                if self.autosave_changes is None
                else ["autosave_on_changes true", f"autosave_interval {self.autosave_changes}"]
            ),
            # An upper bound on every session's expiry, MQTT v5 clients' requests included
            # (Mosquitto 2.0 keeps the smaller of the two).
            f"persistent_client_expiration {self.session_expiry_cap_h}h",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"max_queued_messages {self.max_queued_messages}",
            "max_queued_bytes 0",
            "queue_qos0_messages false",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if is_root():
            lines.append(f"user {_MOSQUITTO_USER}")
        if self._dynsec is not None:
            lines.append(f"plugin {find_dynsec_plugin()}")
            lines.append(f"plugin_opt_config_file {self.dynsec_path}")
        if self._users is not None:
            lines.append(f"password_file {self.password_path}")
        if self._acl is not None:
            lines.append(f"acl_file {self.acl_path}")
        return "\n".join(lines) + "\n"

    def _write_files(self) -> None:
        owner = self._owner()
        self._write(self.conf_path, self._config_text(), owner)
        if self._dynsec is not None and not self.running:
            # Only before a start: while it runs, the plugin owns (and rewrites) this file.
            self._write(self.dynsec_path, json.dumps(self._dynsec, indent=1) + "\n", owner)
        if self._users is not None and self._hashed:
            text = "".join(f"{u}:{h}\n" for u, h in self._users.items())
            self._write(self.password_path, text, owner)
        elif self._users is not None:
            self._write_passwords(self._users, owner)
        if self._acl is not None:
            self._write(
                self.acl_path, self._acl if self._acl.endswith("\n") else self._acl + "\n", owner
            )
        if owner is not None:
            # The broker writes its log and persistence database after dropping to this user.
            chown_tree(self.base_dir, owner)

    @staticmethod
    def _write(path: Path, text: str, owner: pwd.struct_passwd | None) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if owner is not None:
            os.chown(tmp, owner.pw_uid, owner.pw_gid)
        # Atomic replace: a SIGHUP arriving mid-write never sees half a password or ACL file.
        os.replace(tmp, path)

    def _write_passwords(self, users: Mapping[str, str], owner: pwd.struct_passwd | None) -> None:
        tool = _find_passwd_tool()
        tmp = self.password_path.with_name(".passwords.tmp")
        if tool is None:
            text = "".join(f"{u}:{mosquitto_password_hash(p)}\n" for u, p in users.items())
            self._write(self.password_path, text, owner)
            return
        # Plain text hashed in place by `mosquitto_passwd -U`: the passwords never appear on a
        # command line (visible to every local user in ps) and the file is 0600 throughout.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{u}:{p}\n" for u, p in users.items()))
        result = subprocess.run(
            [str(tool), "-U", str(tmp)], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise ServiceError(
                f"mosquitto_passwd -U failed: {result.stdout}{result.stderr}",
                reason=Reason.CONFIG_INVALID,
            )
        os.chmod(tmp, 0o600)
        if owner is not None:
            os.chown(tmp, owner.pw_uid, owner.pw_gid)
        os.replace(tmp, self.password_path)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
