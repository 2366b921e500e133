#!/bin/sh
# picluster database backup: one compressed pg_dump, then only the newest $KEEP dumps are kept.
# Runs in the postgres image as a Kubernetes CronJob; PGHOST, PGDATABASE, PGUSER, PGPASSWORD and
# KEEP come from the job's environment.
set -eu

dir=/backups
stamp=$(date -u +%Y%m%dT%H%M%SZ)
target="$dir/$PGDATABASE-$stamp.sql.gz"

pg_dump --no-owner --format=plain | gzip -9 >"$target.partial"
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
