#!/usr/bin/env bash
# picluster datastore-snapshot: a consistent copy of a single K3s server's SQLite datastore
# (kine's /var/lib/rancher/k3s/server/db/state.db), taken while K3s runs, into
# /var/lib/rancher/k3s/server/db/snapshots (0700 root, copies 0600), keeping the newest $RETENTION.
#
# Installed as /usr/local/sbin/picluster-datastore-snapshot by k3s-sqlite-snapshots.sh and run by
# picluster-datastore-snapshot.timer; run it by hand for a snapshot now:
#   sudo systemctl start picluster-datastore-snapshot.service
#
# SQLite's online backup (`sqlite3 .backup`) copies the database page by page under a read lock
# and restarts when a writer changed a page it already copied, so the copy is one consistent
# state of the database even with K3s writing (kine runs SQLite in WAL mode). A plain `cp` of a
# WAL database can miss committed transactions still in state.db-wal.
#
# Input (environment): RETENTION, the number of copies to keep (default 5).
# Output: one line, `picluster datastore-snapshot: saved <file> (kept N, pruned M)`.
set -euo pipefail

readonly DB=/var/lib/rancher/k3s/server/db/state.db
readonly DIR=/var/lib/rancher/k3s/server/db/snapshots
readonly PATTERN='^state-[0-9]{8}T[0-9]{6}Z\.db$'
RETENTION=${RETENTION:-5}

die() { printf 'picluster datastore-snapshot: ERROR: %s\n' "$*" >&2; exit 1; }

main() {
    exec </dev/null
    [[ "$RETENTION" =~ ^[1-9][0-9]*$ ]] || die "RETENTION must be a positive number, not $RETENTION"
    [[ -s "$DB" ]] || die "$DB does not exist: this server does not run K3s on SQLite"
    command -v sqlite3 >/dev/null || die "sqlite3 is not installed (k3s-sqlite-snapshots.sh installs it)"

    umask 077
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    local name check kept old file
    name=state-$(date -u +%Y%m%dT%H%M%SZ).db
    if [[ -e "$DIR/$name" ]]; then
        sleep 1  # two copies within one second: the next second's name
        name=state-$(date -u +%Y%m%dT%H%M%SZ).db
    fi
    tmp="$DIR/.$name.partial"
    trap 'rm -f "$tmp"' EXIT
    # .timeout: wait up to 30 s for K3s's write lock instead of failing at once.
    sqlite3 "$DB" ".timeout 30000" ".backup '$tmp'" || die "the online backup of $DB failed"
    check=$(sqlite3 "$tmp" 'PRAGMA integrity_check;') || die "cannot read the copy $tmp"
    [[ "$check" == ok ]] || die "the copy of $DB failed SQLite's integrity check: $check"
    chmod 600 "$tmp"
    mv -f "$tmp" "$DIR/$name"

    mapfile -t old < <(find "$DIR" -maxdepth 1 -type f -printf '%f\n' | grep -E "$PATTERN" | sort | head -n "-$RETENTION")
    for file in "${old[@]}"; do
        rm -f "${DIR:?}/$file"
    done
    kept=$(find "$DIR" -maxdepth 1 -type f -printf '%f\n' | grep -cE "$PATTERN" || true)
    echo "picluster datastore-snapshot: saved $DIR/$name (kept $kept, pruned ${#old[@]})"
}

main "$@"
