#!/usr/bin/env bash
# picluster k3s-sqlite-snapshots: scheduled copies of a single K3s server's SQLite datastore. K3s
# snapshots only embedded etcd (`k3s etcd-snapshot`), so on a one-server cluster picluster installs
# a systemd timer running datastore-snapshot.sh (an online SQLite backup of state.db). Each file is
# written only when it changed; `bash -s -- delete` removes the timer, the service and the copy
# script, and keeps the copies already taken.
#
# Inputs (NAME='value' lines on stdin before this script, run as `sudo bash -s`):
#   ENABLED          1: timer installed and enabled; 0: timer removed (copies kept)
#   ON_CALENDAR      systemd OnCalendar= of the schedule (from picluster:k3s.snapshots.schedule)
#   RETENTION        copies to keep
#   COPY_SCRIPT_B64  base64 of datastore-snapshot.sh
# Output: progress on stderr; the last line on stdout:
# picluster k3s-sqlite-snapshots: no changes | changed: ...
set -euo pipefail

readonly COPY_SCRIPT=/usr/local/sbin/picluster-datastore-snapshot
readonly SERVICE=/etc/systemd/system/picluster-datastore-snapshot.service
readonly TIMER=/etc/systemd/system/picluster-datastore-snapshot.timer

CHANGED=()
log() { printf 'picluster k3s-sqlite-snapshots: %s\n' "$*" >&2; }
die() { printf 'picluster k3s-sqlite-snapshots: ERROR: %s\n' "$*" >&2; exit 1; }

# Install the content of $2 (a temporary file) as $1 with mode $3 when it differs; 0 = replaced.
# Called as an `if` condition, where `set -e` does not apply: every step checks for itself.
install_file() {
    local target=$1 new=$2 mode=$3
    chmod "$mode" "$new" || die "chmod $new failed"
    if [[ -e "$target" ]] && cmp -s "$new" "$target"; then
        rm -f "$new"
        return 1
    fi
    mv -f "$new" "$target" || die "could not write $target"
    return 0
}

ensure_sqlite3() {
    command -v sqlite3 >/dev/null && return 0
    log "installing sqlite3 (the online backup of state.db)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends sqlite3 >&2; then
        apt-get update >&2 || die "apt-get update failed"
        apt-get install -y --no-install-recommends sqlite3 >&2 || die "could not install sqlite3"
    fi
    CHANGED+=(sqlite3)
}

write_units() {
    local tmp units_changed=0
    tmp=$(mktemp)
    base64 -d <<<"$COPY_SCRIPT_B64" >"$tmp" || die "COPY_SCRIPT_B64 is not base64"
    if install_file "$COPY_SCRIPT" "$tmp" 755; then CHANGED+=(copy-script); fi
    tmp=$(mktemp)
    cat >"$tmp" <<UNIT
[Unit]
Description=picluster: a copy of K3s's SQLite datastore (state.db)
ConditionPathExists=/var/lib/rancher/k3s/server/db/state.db

[Service]
Type=oneshot
Environment=RETENTION=$RETENTION
ExecStart=$COPY_SCRIPT
UNIT
    if install_file "$SERVICE" "$tmp" 644; then CHANGED+=(service) && units_changed=1; fi
    tmp=$(mktemp)
    cat >"$tmp" <<UNIT
[Unit]
Description=picluster: scheduled copies of K3s's SQLite datastore

[Timer]
OnCalendar=$ON_CALENDAR
# On time, as K3s's cron is (systemd's default lets a run slip by up to a minute).
AccuracySec=1s
Persistent=true

[Install]
WantedBy=timers.target
UNIT
    if install_file "$TIMER" "$tmp" 644; then CHANGED+=(timer) && units_changed=1; fi
    if ((units_changed)); then
        systemctl daemon-reload || die "systemctl daemon-reload failed"
        # A timer picks up a new OnCalendar on restart.
        if systemctl is-active --quiet picluster-datastore-snapshot.timer; then
            systemctl restart picluster-datastore-snapshot.timer || die "could not restart the timer"
        fi
    fi
    if ! systemctl is-enabled --quiet picluster-datastore-snapshot.timer ||
        ! systemctl is-active --quiet picluster-datastore-snapshot.timer; then
        systemctl enable --now picluster-datastore-snapshot.timer >&2 2>/dev/null ||
            die "could not enable picluster-datastore-snapshot.timer"
        CHANGED+=(enabled)
    fi
}

remove_units() {
    if [[ -e "$TIMER" ]]; then
        systemctl disable --now picluster-datastore-snapshot.timer >/dev/null 2>&1 || true
    fi
    local file removed=0
    for file in "$TIMER" "$SERVICE" "$COPY_SCRIPT"; do
        if [[ -e "$file" ]]; then
            rm -f "$file"
            removed=1
        fi
    done
    if ((removed)); then
        systemctl daemon-reload || die "systemctl daemon-reload failed"
        CHANGED+=("timer removed (copies kept)")
    fi
}

main() {
    exec </dev/null
    if [[ "${1:-}" == delete || "${ENABLED:-1}" == 0 ]]; then
        remove_units
    else
        : "${ON_CALENDAR:?ON_CALENDAR is required}" "${RETENTION:?RETENTION is required}"
        : "${COPY_SCRIPT_B64:?COPY_SCRIPT_B64 is required}"
        [[ "$RETENTION" =~ ^[1-9][0-9]*$ ]] || die "RETENTION must be a positive number"
        systemd-analyze calendar "$ON_CALENDAR" >/dev/null 2>&1 ||
            die "OnCalendar=$ON_CALENDAR is not a schedule systemd understands"
        ensure_sqlite3
        write_units
    fi
    if ((${#CHANGED[@]} == 0)); then
        echo "picluster k3s-sqlite-snapshots: no changes"
    else
        local IFS=,
        echo "picluster k3s-sqlite-snapshots: changed: ${CHANGED[*]}" | sed 's/,/, /g'
    fi
}

main "$@"
