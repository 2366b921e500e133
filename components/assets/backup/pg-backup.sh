#!/bin/sh
# picluster database backup: one compressed pg_dump, then only the newest $KEEP dumps are kept.
# Runs in the postgres image: as a Kubernetes CronJob, and on Docker from pg-backup-schedule.sh
# in the backup container. PGHOST, PGDATABASE, PGUSER and KEEP come from the environment; the
# password from the file named by DB_PASSWORD_FILE (Kubernetes: the app Secret's key mounted as
# a file; Docker: a secret upload), which reaches libpq through a private pgpass file, never argv.
set -eu

if [ -n "${DB_PASSWORD_FILE:-}" ]; then
    passdir=$(mktemp -d)
    trap 'rm -rf -- "$passdir"' EXIT
    (umask 077 && printf '*:*:*:*:' >"$passdir/pgpass")
    # pgpass escapes `\` and `:` with a backslash.
    sed -e 's/[\\:]/\\&/g' -- "$DB_PASSWORD_FILE" >>"$passdir/pgpass"
    export PGPASSFILE="$passdir/pgpass"
fi

dir=/backups
stamp=$(date -u +%Y%m%dT%H%M%SZ)
target="$dir/$PGDATABASE-$stamp.sql.gz"

# pg_dump compresses plain output itself (gzip), so its exit status is the dump's: a failed dump
# never takes a good one's place (no pipe, whose status would be gzip's).
if ! pg_dump --no-owner --format=plain --compress=9 --file="$target.partial"; then
    rm -f -- "$target.partial"
    echo "picluster backup: pg_dump of $PGDATABASE failed; the existing dumps are untouched" >&2
    exit 1
fi
mv "$target.partial" "$target"
echo "picluster backup: wrote $target ($(du -h "$target" | cut -f1))"

# Names carry a UTC timestamp, so the glob lists the oldest first: drop all but the last $KEEP.
set -- "$dir"/*.sql.gz
excess=$(($# - KEEP))
while [ "$excess" -gt 0 ]; do
    rm -f -- "$1"
    echo "picluster backup: removed $1"
    shift
    excess=$((excess - 1))
done
