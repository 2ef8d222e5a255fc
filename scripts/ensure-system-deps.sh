#!/bin/sh
# Make the system binaries the integration tests and the demo need available: the PostgreSQL
# server (initdb, pg_ctl, postgres, psql under /usr/lib/postgresql/*/bin), the Mosquitto
# broker, and Node.js/npm (for the pinned anvil and solc npm packages). Idempotent and quick when everything is present. It only installs packages: the
# services the packages may start or enable are left as the machine has them, because cityanchor
# never uses them (anchor/local/ starts private servers on free loopback ports).
set -eu

missing=""
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    missing="$missing postgresql"
fi
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    missing="$missing mosquitto"
fi
# Node.js and npm install the pinned anvil node and solc compiler (package.json).
if ! command -v npm >/dev/null 2>&1; then
    missing="$missing nodejs npm"
fi
# Chromium runs the proof explorer's browser test (driven by the npm playwright-core package).
if [ ! -x /usr/bin/chromium ]; then
    missing="$missing chromium"
fi
# wrk is bench/api.py's load generator (it falls back to a slower Python client without it).
if ! command -v wrk >/dev/null 2>&1; then
    missing="$missing wrk"
fi
# mosquitto_passwd hashes MQTT passwords; anchor.local can hash them itself, so it is not
# required, only installed alongside the broker when the broker itself is missing.
case "$missing" in *mosquitto*) missing="$missing mosquitto-clients" ;; esac

if [ -z "$missing" ]; then
    echo "ensure-system-deps: PostgreSQL, Mosquitto, npm and Chromium already installed; nothing to do."
    exit 0
fi

cmd="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-system-deps: missing:$missing" >&2
    echo "ensure-system-deps: run as root:" >&2
    echo "    sudo sh -c 'apt-get update && DEBIAN_FRONTEND=noninteractive $cmd'" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-system-deps: missing:$missing, and this is not a Debian/Ubuntu system;" >&2
    echo "ensure-system-deps: install the PostgreSQL server and Mosquitto with your package manager," >&2
    echo "ensure-system-deps: or set CITYANCHOR_PG_BINDIR / CITYANCHOR_MOSQUITTO." >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Update the package lists only when they are absent (a fresh container) or the install fails
# with stale ones; a present, recent cache makes the common case quick.
if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
    echo "ensure-system-deps: apt-get update (no package lists yet)"
    apt-get update -q
fi
echo "ensure-system-deps: installing:$missing"
if ! $cmd; then
    echo "ensure-system-deps: install failed; retrying after apt-get update"
    apt-get update -q
    $cmd
fi
echo "ensure-system-deps: installed:$missing"
