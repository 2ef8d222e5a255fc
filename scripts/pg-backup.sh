#!/bin/sh
# pg-backup.sh: a consistent logical backup of the cityanchor database (pg_dump, custom format).
#
#   pg-backup.sh DIR                    # one dump into DIR, then prune
#   pg-backup.sh --every SECONDS DIR    # the same, forever (the compose "backup" service)
#   pg-backup.sh --check SECONDS DIR    # exit 0 if DIR's newest dump is younger (healthcheck)
#
# Connection: the libpq variables PGHOST, PGPORT, PGUSER, PGDATABASE and PGPASSWORD, or
# PGPASSWORD_FILE (a file holding the password, e.g. a compose secret; read here, never put on
# a command line). The role needs only to read the database: its owner (cityanchor) will do.
# BACKUP_KEEP (default 14): how many dumps to keep; older ones are deleted after a good dump.
#
# pg_dump reads everything in ONE snapshot (repeatable read), so the batches, readings, log
# nodes, checkpoints and anchors of a dump agree with each other while the ingestors keep
# writing. A dump is written under a temporary name, checked with `pg_restore --list`, then
# renamed: DIR never holds a partial cityanchor-*.dump. Restore and the drill that proves a
# dump restores: docs/operator-guide.md, "Backup and restore" (scripts/restore-drill.py).
set -eu

if [ "${1:-}" = "--check" ]; then
    max_age="${2:?--check needs SECONDS}"
    dir="${3:?usage: pg-backup.sh --check SECONDS DIR}"
    newest="$(ls -1 "$dir" 2>/dev/null | grep -E '^cityanchor-[0-9]{8}T[0-9]{6}Z\.dump$' | sort | tail -n 1)"
    if [ -z "$newest" ]; then
        echo "pg-backup: no dump in $dir"
        exit 1
    fi
    age=$(($(date +%s) - $(stat -c %Y "$dir/$newest")))
    if [ "$age" -gt "$max_age" ]; then
        echo "pg-backup: newest dump $newest is ${age}s old (more than ${max_age}s)"
        exit 1
    fi
    echo "pg-backup: newest dump $newest is ${age}s old"
    exit 0
fi

every=""
if [ "${1:-}" = "--every" ]; then
    every="${2:?--every needs SECONDS}"
    shift 2
fi
dir="${1:?usage: pg-backup.sh [--every SECONDS] DIR}"
keep="${BACKUP_KEEP:-14}"
case "$keep" in '' | *[!0-9]* | 0) echo "pg-backup: BACKUP_KEEP must be a positive integer" >&2; exit 2 ;; esac
if [ -n "${PGPASSWORD_FILE:-}" ]; then
    PGPASSWORD="$(cat "$PGPASSWORD_FILE")"
    export PGPASSWORD
fi
umask 077

one() {
    stamp="$(date -u +%Y%m%dT%H%M%SZ)"
    final="$dir/cityanchor-$stamp.dump"
    partial="$dir/.cityanchor-$stamp.dump.partial"
    if ! pg_dump --format=custom --compress=6 --no-password --file="$partial"; then
        rm -f "$partial"
        echo "pg-backup: pg_dump failed" >&2
        return 1
    fi
    if ! pg_restore --list "$partial" >/dev/null; then
        rm -f "$partial"
        echo "pg-backup: the dump does not read back" >&2
        return 1
    fi
    mv "$partial" "$final"
    echo "pg-backup: wrote $final ($(wc -c <"$final") bytes)"
    # Names sort by time; keep the newest $keep.
    ls -1 "$dir" | grep -E '^cityanchor-[0-9]{8}T[0-9]{6}Z\.dump$' | sort | head -n "-$keep" |
        while read -r old; do rm -f "$dir/$old"; done
}

mkdir -p "$dir"
if [ -z "$every" ]; then
    one
    exit $?
fi
while :; do
    # A failed dump is reported and retried at the next period; the service's healthcheck
    # (the age of the newest dump) turns unhealthy when dumps keep failing.
    one || true
    sleep "$every"
done
