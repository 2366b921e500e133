#!/usr/bin/env bash
# picluster k3s-datastore-restore: one server's part of a datastore restore, driven server by
# server by bin/restore-datastore (README: Datastore snapshots and restore). Not a Pulumi step.
#
# Inputs (NAME='value' lines on stdin before this script, run as `sudo bash -s`):
#   ACTION         list | check | stop | restore | rejoin | resume | start
#   DATASTORE      sqlite (one server, kine's state.db) | etcd (embedded etcd)
#   SNAPSHOT       the snapshot's file name (check, restore): a file in SNAPSHOT_DIR, or with
#                  `etcd-s3: true` in config.yaml and no such file, an object K3s fetches from
#                  the bucket
#   NODE_NAME      this node's Kubernetes name (start waits until it is Ready)
#   READY_TIMEOUT  seconds start waits for K3s (default 300)
# Actions:
#   list     the snapshots this server has, on stdout; changes nothing (etcd: K3s's list, with
#            the bucket's; with K3s down, the files in SNAPSHOT_DIR)
#   check    K3s is installed and the snapshot exists: a file in SNAPSHOT_DIR or, etcd, a name in
#            `k3s etcd-snapshot ls` (with S3, the bucket's too), asked while K3s still runs;
#            changes nothing
#   stop     stop K3s
#   restore  (first server, K3s stopped) sqlite: the current state.db is moved aside, the copy
#            put in its place; etcd: `k3s server --cluster-reset --cluster-reset-restore-path`,
#            which restores the snapshot as a new one-member etcd cluster (k3s-io/docs
#            datastore/backup-restore.md)
#   rejoin   (other servers, K3s stopped) their old etcd data moved aside, so they join the
#            restored cluster as new members when K3s starts
#   resume   start K3s without waiting (after a failed restore, every stopped server first)
#   start    start K3s and wait (bounded) until it is ready
# Whatever is moved aside goes to /var/lib/rancher/k3s/server/db-before-restore-<UTC time>/.
# The token is never needed on a command line: `k3s server` reads token-file from config.yaml.
# Output: progress on stderr; the last line on stdout:
# picluster k3s-datastore-restore: no changes | changed: ...
set -euo pipefail

readonly SERVER_DIR=/var/lib/rancher/k3s/server
readonly DB_DIR=$SERVER_DIR/db
readonly SNAPSHOT_DIR=$DB_DIR/snapshots
readonly CONFIG_FILE=/etc/rancher/k3s/config.yaml

CHANGED=()
RESTORE_PATH=""
RESTORE_FLAGS=()
log() { printf 'picluster k3s-datastore-restore: %s\n' "$*" >&2; }
die() { printf 'picluster k3s-datastore-restore: ERROR: %s\n' "$*" >&2; exit 1; }

s3_enabled() { grep -qx 'etcd-s3: true' "$CONFIG_FILE" 2>/dev/null; }

# The snapshot K3s restores: a file in SNAPSHOT_DIR, or with `etcd-s3: true` in config.yaml and
# no such local file, the bucket's object of that name. Sets RESTORE_PATH and RESTORE_FLAGS.
snapshot_path() {
    [[ "$SNAPSHOT" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
        die "SNAPSHOT must be a snapshot's file name (as in the list), not $SNAPSHOT"
    RESTORE_FLAGS=()
    if [[ -s "$SNAPSHOT_DIR/$SNAPSHOT" ]]; then
        RESTORE_PATH=$SNAPSHOT_DIR/$SNAPSHOT
        # With S3 configured K3s would look the path up in the bucket; a local file needs
        # --etcd-s3=false (k3s-io/docs datastore/backup-restore.md).
        if [[ "$DATASTORE" == etcd ]] && s3_enabled; then RESTORE_FLAGS=(--etcd-s3=false); fi
        return 0
    fi
    if [[ "$DATASTORE" == etcd ]] && s3_enabled; then
        # K3s downloads the object of that name from the configured bucket (pkg/etcd/etcd.go:
        # "Retrieving etcd snapshot %s from S3") and restores it; `check` made sure it is there.
        RESTORE_PATH=$SNAPSHOT
        return 0
    fi
    die "no snapshot $SNAPSHOT in $SNAPSHOT_DIR on $NODE_NAME; available: $(find "$SNAPSHOT_DIR" -maxdepth 1 -type f -printf '%f ' 2>/dev/null)"
}

require_stopped() {
    if systemctl is-active --quiet k3s; then
        die "K3s is running on $NODE_NAME; stop it first (bin/restore-datastore stops every server)"
    fi
}

aside_dir() {
    local dir
    dir=$SERVER_DIR/db-before-restore-$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$dir" && chmod 700 "$dir"
    printf '%s' "$dir"
}

check() {
    [[ -e /etc/systemd/system/k3s.service ]] || die "$NODE_NAME runs no K3s server"
    if [[ -z "${SNAPSHOT:-}" ]]; then
        return 0  # another server: it only needs K3s
    fi
    snapshot_path
    if [[ "$DATASTORE" == etcd && "$RESTORE_PATH" != /* ]]; then
        # Not on this server: the bucket must have it, asked now, while K3s still runs, so that
        # a misspelt name never stops the control plane.
        local listing
        listing=$(k3s etcd-snapshot ls 2>/dev/null) ||
            die "k3s etcd-snapshot ls failed on $NODE_NAME (is K3s running?), so $SNAPSHOT cannot be looked up in the S3 bucket; start K3s, or copy the snapshot into $SNAPSHOT_DIR"
        awk -v n="$SNAPSHOT" 'NR > 1 && $1 == n { found = 1 } END { exit !found }' <<<"$listing" ||
            die "no snapshot $SNAPSHOT on $NODE_NAME nor in the S3 bucket; k3s etcd-snapshot ls lists: $(awk 'NR > 1 { printf "%s ", $1 }' <<<"$listing")"
        log "$SNAPSHOT is not on $NODE_NAME: K3s fetches it from the S3 bucket"
    fi
    if [[ "$DATASTORE" == sqlite ]]; then
        command -v sqlite3 >/dev/null || die "sqlite3 is not installed on $NODE_NAME"
        [[ "$(sqlite3 "$RESTORE_PATH" 'PRAGMA integrity_check;')" == ok ]] ||
            die "$RESTORE_PATH fails SQLite's integrity check"
    fi
    log "$NODE_NAME: snapshot $RESTORE_PATH"
}

# The snapshots this server has (etcd: K3s's list, with the bucket's when S3 is configured).
list() {
    if [[ "$DATASTORE" == etcd ]] && systemctl is-active --quiet k3s; then
        k3s etcd-snapshot ls || die "k3s etcd-snapshot ls failed on $NODE_NAME"
    elif [[ "$DATASTORE" == etcd ]]; then
        log "K3s is not running on $NODE_NAME: the snapshots in $SNAPSHOT_DIR only (not the S3 bucket's)"
        printf '%s\t%s\t%s\n' Name Size Modified
        find "$SNAPSHOT_DIR" -maxdepth 1 -type f -printf '%f\t%s\t%TY-%Tm-%Td %TH:%TM\n' 2>/dev/null | sort
    else
        find "$SNAPSHOT_DIR" -maxdepth 1 -type f -name 'state-*.db' -printf '%f\t%s\t%TY-%Tm-%Td %TH:%TM\n' 2>/dev/null | sort
    fi
}

stop() {
    if systemctl is-active --quiet k3s; then
        log "stopping K3s on $NODE_NAME"
        systemctl stop k3s || die "could not stop k3s"
        CHANGED+=(stopped)
    fi
}

restore_sqlite() {
    local aside file
    snapshot_path
    # The copy first, beside the datastore: a failed copy leaves state.db as it was.
    install -m 600 -o root -g root "$RESTORE_PATH" "$DB_DIR/state.db.restoring" ||
        die "could not copy $RESTORE_PATH to $DB_DIR (state.db is untouched)"
    aside=$(aside_dir)
    # The old WAL and shared memory go with the old state.db: left beside the copy, SQLite would
    # replay the old WAL into it.
    for file in state.db state.db-wal state.db-shm; do
        if [[ -e "$DB_DIR/$file" ]]; then
            mv "$DB_DIR/$file" "$aside/" || die "could not move $DB_DIR/$file aside"
        fi
    done
    mv -f "$DB_DIR/state.db.restoring" "$DB_DIR/state.db" ||
        die "could not put the copy in place: it is $DB_DIR/state.db.restoring, the old datastore in $aside"
    CHANGED+=("restored $SNAPSHOT (the datastore before it is in $aside)")
}

restore_etcd() {
    local out aside=""
    snapshot_path
    # Kept for a look back, and so that a restore never destroys the only copy of anything.
    if [[ -d "$DB_DIR/etcd" ]]; then
        aside=$(aside_dir)
        cp -a "$DB_DIR/etcd" "$aside/" || die "could not copy $DB_DIR/etcd aside"
    fi
    log "k3s server --cluster-reset --cluster-reset-restore-path=$RESTORE_PATH ${RESTORE_FLAGS[*]-}"
    out=$(mktemp)
    if ! timeout "$READY_TIMEOUT" k3s server --cluster-reset \
        --cluster-reset-restore-path="$RESTORE_PATH" "${RESTORE_FLAGS[@]}" >"$out" 2>&1; then
        tail -n 20 "$out" >&2
        rm -f "$out"
        # K3s moves server/db/etcd away before it restores: a failed restore can leave none,
        # and K3s started so would make a new, empty cluster. The copy goes back in its place.
        if [[ -n "$aside" ]]; then
            if [[ -e "$DB_DIR/etcd" ]]; then mv "$DB_DIR/etcd" "$aside/etcd-after-failed-reset"; fi
            cp -a "$aside/etcd" "$DB_DIR/" || die "could not put the etcd data back from $aside/etcd"
        fi
        die "k3s server --cluster-reset failed on $NODE_NAME (the output above); its etcd data is as before the restore (a copy in ${aside:-nowhere: there was none})"
    fi
    # K3s exits after the reset and says so (pkg/cluster/..., "Managed etcd cluster membership
    # has been reset, restart without --cluster-reset flag now").
    grep -q 'restart without --cluster-reset' "$out" || {
        tail -n 20 "$out" >&2
        rm -f "$out"
        die "k3s server --cluster-reset ended without resetting the cluster"
    }
    rm -f "$out"
    CHANGED+=("restored $SNAPSHOT as a new one-member etcd cluster")
}

rejoin() {
    local aside
    if [[ -d "$DB_DIR" ]]; then
        aside=$(aside_dir)
        mv "$DB_DIR" "$aside/db" || die "could not move $DB_DIR aside"
        # Its own etcd snapshots stay where K3s lists them.
        if [[ -d "$aside/db/snapshots" ]]; then
            mkdir -p "$DB_DIR"
            cp -a "$aside/db/snapshots" "$DB_DIR/"
        fi
        CHANGED+=("old etcd data moved to $aside/db")
    fi
}

resume() {
    if ! systemctl is-active --quiet k3s; then
        log "starting K3s on $NODE_NAME"
        systemctl start --no-block k3s || die "could not start k3s"
        CHANGED+=(started)
    fi
}

start() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    resume
    while ((SECONDS < deadline)); do
        if systemctl is-active --quiet k3s &&
            k3s kubectl get node "$NODE_NAME" --no-headers 2>/dev/null | awk '{ print $2 }' |
            grep -Eqx 'Ready(,.*)?'; then
            return 0
        fi
        sleep 2
    done
    journalctl -u k3s -n 15 --no-pager -o cat >&2 2>/dev/null || true
    die "K3s on $NODE_NAME was not ready after ${READY_TIMEOUT}s; see journalctl -u k3s"
}

main() {
    exec </dev/null
    : "${ACTION:?ACTION is required}" "${DATASTORE:?DATASTORE is required}"
    : "${NODE_NAME:?NODE_NAME is required}"
    [[ "$DATASTORE" == sqlite || "$DATASTORE" == etcd ]] ||
        die "DATASTORE must be sqlite or etcd, not $DATASTORE"
    READY_TIMEOUT=${READY_TIMEOUT:-300}
    case "$ACTION" in
        check) check ;;
        list) list ;;
        stop) stop ;;
        restore)
            : "${SNAPSHOT:?SNAPSHOT is required}"
            require_stopped
            if [[ "$DATASTORE" == sqlite ]]; then restore_sqlite; else restore_etcd; fi
            ;;
        rejoin)
            [[ "$DATASTORE" == etcd ]] || die "rejoin is for the other servers of embedded etcd"
            require_stopped
            rejoin
            ;;
        resume) resume ;;
        start) start ;;
        *) die "ACTION must be list, check, stop, restore, rejoin, resume or start, not $ACTION" ;;
    esac
    if ((${#CHANGED[@]} == 0)); then
        echo "picluster k3s-datastore-restore: no changes"
    else
        local IFS=,
        echo "picluster k3s-datastore-restore: changed: ${CHANGED[*]}" | sed 's/,/, /g'
    fi
}

main "$@"
