#!/usr/bin/env bash
# picluster cgroup-gate: stop before K3s when the memory cgroup controller is not active
# (K3s's kubelet refuses to start without it). Changes nothing.
#
# Inputs (NAME='value' lines on stdin before this script, run as `sudo bash -s`), for tests:
#   CGROUP_CONTROLLERS_FILE  optional, default /sys/fs/cgroup/cgroup.controllers (cgroup v2)
#   PROC_CGROUPS_FILE        optional, default /proc/cgroups (cgroup v1)
#   BOOT_DIR                 optional: where cmdline.txt lives (default: autodetect)
# Output: last line on stdout: picluster cgroup-gate: no changes (memory controller active, ...)
# Exit 1, with what to do on stderr, when the controller is not active.
set -euo pipefail

readonly FLAGS="cgroup_memory=1 cgroup_enable=memory"

log() { printf 'picluster cgroup-gate: %s\n' "$*" >&2; }

cmdline_file() {
    if [[ -n "$BOOT_DIR" ]]; then
        printf '%s' "$BOOT_DIR/cmdline.txt"
    elif [[ -f /boot/firmware/cmdline.txt ]]; then
        printf '%s' /boot/firmware/cmdline.txt
    elif [[ -f /boot/cmdline.txt ]]; then
        printf '%s' /boot/cmdline.txt
    else
        printf '%s' "/boot/firmware/cmdline.txt (Bookworm) or /boot/cmdline.txt (older)"
    fi
}

fail() {
    local version=$1 detail=$2 file
    file=$(cmdline_file)
    {
        echo "picluster cgroup-gate: ERROR: the memory cgroup controller is not active ($version: $detail)."
        echo "K3s needs it. To fix:"
        echo "  1. add '$FLAGS' to the end of the single line in $file"
        echo "     (keep it one line; prepare.sh does this)"
        echo "  2. reboot the node (reboot.sh does this when prepare.sh changed cmdline.txt)"
        echo "  current /proc/cmdline: $(cat /proc/cmdline 2>/dev/null || echo '(unreadable)')"
    } >&2
    exit 1
}

main() {
    exec </dev/null
    : "${CGROUP_CONTROLLERS_FILE:=/sys/fs/cgroup/cgroup.controllers}"
    : "${PROC_CGROUPS_FILE:=/proc/cgroups}"
    : "${BOOT_DIR:=}"

    if [[ -f "$CGROUP_CONTROLLERS_FILE" ]]; then
        # cgroup v2 (Raspberry Pi OS Bookworm): the root lists the available controllers.
        if ! tr ' ' '\n' <"$CGROUP_CONTROLLERS_FILE" | grep -qx memory; then
            fail "cgroup v2" "'memory' missing from $CGROUP_CONTROLLERS_FILE: $(cat "$CGROUP_CONTROLLERS_FILE")"
        fi
        log "memory controller listed in $CGROUP_CONTROLLERS_FILE"
        echo "picluster cgroup-gate: no changes (memory controller active, cgroup v2)"
        return 0
    fi

    # cgroup v1: /proc/cgroups columns are subsys_name hierarchy num_cgroups enabled.
    [[ -r "$PROC_CGROUPS_FILE" ]] ||
        fail "no cgroups" "neither $CGROUP_CONTROLLERS_FILE nor $PROC_CGROUPS_FILE exists"
    local enabled
    enabled=$(awk '$1 == "memory" { print $4 }' "$PROC_CGROUPS_FILE")
    if [[ "$enabled" != 1 ]]; then
        fail "cgroup v1" "memory row of $PROC_CGROUPS_FILE has enabled=${enabled:-absent}"
    fi
    log "memory enabled in $PROC_CGROUPS_FILE"
    echo "picluster cgroup-gate: no changes (memory controller active, cgroup v1)"
}

main "$@"
