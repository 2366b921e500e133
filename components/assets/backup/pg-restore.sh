#!/bin/sh
# picluster database restore: a pg-backup.sh dump from /backups replaces the database's content.
#
# Usage: pg-restore.sh --list     the dumps, newest first
#        pg-restore.sh [DUMP]     restore DUMP (a file name in /backups), the newest when absent
#
# Runs in the postgres image, the same script on both targets: on Docker in the backup container
# (`docker exec`), on Kubernetes in a Job made from the suspended CronJob `postgres-restore`;
# bin/restore-db does either, and stops the app's writers first. PGHOST, PGPORT, PGDATABASE and
# PGUSER (the database's owner, a superuser in the official image) come from the environment;
# the password from the file named by DB_PASSWORD_FILE (Kubernetes: the app Secret's key mounted as
# a file; Docker: a secret upload), which reaches libpq through a private pgpass file, never argv.
#
# Nothing changes until the dump has proved good: it is checked (gzip -t), then loaded into a
# fresh database, picluster_restoring, in one transaction (ON_ERROR_STOP). Only then, in one
# transaction, does $PGDATABASE become picluster_pre_restore (connections refused, sessions
# ended) and picluster_restoring become $PGDATABASE. A failed restore leaves the database as it
# was; a successful one keeps the previous data as picluster_pre_restore until the next restore.
set -eu

dir=${BACKUP_DIR:-/backups}
restoring=picluster_restoring
previous=picluster_pre_restore

die() {
    echo "picluster restore: $*" >&2
    exit 1
}

if [ -n "${DB_PASSWORD_FILE:-}" ]; then
    passdir=$(mktemp -d)
    trap 'rm -rf -- "$passdir"' EXIT
    (umask 077 && printf '*:*:*:*:' >"$passdir/pgpass")
    # pgpass escapes `\` and `:` with a backslash.
    sed -e 's/[\\:]/\\&/g' -- "$DB_PASSWORD_FILE" >>"$passdir/pgpass"
    export PGPASSFILE="$passdir/pgpass"
fi

# The dumps, newest first: names end in a UTC timestamp, so they sort by time within a database.
dumps() {
    for f in "$dir/$PGDATABASE"-*.sql.gz; do
        [ -f "$f" ] && echo "${f##*/}"
    done | sort -r
}

if [ "${1:-}" = --list ]; then
    found=$(dumps)
    [ -n "$found" ] || die "no dumps of $PGDATABASE in $dir"
    echo "$found" | while read -r name; do
        echo "$name $(du -h -- "$dir/$name" | cut -f1)"
    done
    exit 0
fi

case $PGDATABASE in "$restoring" | "$previous" | postgres | template0 | template1)
    die "refusing to restore into the database $PGDATABASE"
    ;;
esac
dump=${1:-$(dumps | head -n 1)}
[ -n "$dump" ] || die "no dumps of $PGDATABASE in $dir: nothing to restore"
case $dump in */* | .* | *[!A-Za-z0-9._-]*)
    die "'$dump' is not the name of a dump in $dir (see --list)"
    ;;
esac
[ -f "$dir/$dump" ] || die "no dump named $dump in $dir (see --list)"
gzip -t -- "$dir/$dump" || die "$dump is damaged (gzip -t failed); nothing was changed"

sql() {
    psql --no-psqlrc --quiet --no-password --set=ON_ERROR_STOP=1 --set=VERBOSITY=terse "$@"
}

echo "picluster restore: loading $dump into a fresh database $restoring"
sql --dbname=postgres <<SQL
DROP DATABASE IF EXISTS $restoring WITH (FORCE);
CREATE DATABASE $restoring TEMPLATE template0;
SQL
if ! gunzip -c -- "$dir/$dump" | sql --single-transaction --dbname="$restoring" >/dev/null; then
    sql --dbname=postgres -c "DROP DATABASE IF EXISTS $restoring WITH (FORCE)" || :
    die "loading $dump failed; $PGDATABASE is unchanged"
fi

echo "picluster restore: replacing $PGDATABASE (its sessions are ended)"
if ! sql --dbname=postgres --set=db="$PGDATABASE" <<SQL; then
DROP DATABASE IF EXISTS $previous WITH (FORCE);
ALTER DATABASE :"db" WITH ALLOW_CONNECTIONS false;
SELECT count(pg_terminate_backend(pid, 10000)) AS ended FROM pg_stat_activity
    WHERE datname = :'db' AND pid <> pg_backend_pid() \gset
BEGIN;
ALTER DATABASE :"db" RENAME TO $previous;
ALTER DATABASE $restoring RENAME TO :"db";
COMMIT;
SQL
    sql --dbname=postgres --set=db="$PGDATABASE" <<'SQL' || :
ALTER DATABASE :"db" WITH ALLOW_CONNECTIONS true;
SQL
    die "replacing $PGDATABASE failed; it is unchanged, and the restored copy is $restoring"
fi

tables=$(sql --dbname="$PGDATABASE" --tuples-only --no-align -c \
    "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
echo "picluster restore: restored $dump into $PGDATABASE ($tables tables); the data it replaced is kept as the database $previous until the next restore"
