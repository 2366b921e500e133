#!/usr/bin/env bash
# picluster reboot: reboot the node only when a previous step asked for it
# (/var/lib/picluster/reboot-required, written by prepare.sh when cmdline.txt changed).
#
# Inputs (NAME='value' lines on stdin before this script, run as `sudo bash -s`):
#   REBOOT_DELAY_SECONDS  optional, default 2: the reboot is scheduled this far ahead so that
#                         this SSH session ends cleanly; the next step's connection retries
#                         until the node is back.
# Output: last line on stdout: picluster reboot: changed: reboot scheduled | no changes
set -euo pipefail

readonly MARKER=/var/lib/picluster/reboot-required

log() { printf 'picluster reboot: %s\n' "$*" >&2; }
die() { printf 'picluster reboot: ERROR: %s\n' "$*" >&2; exit 1; }

main() {
    exec </dev/null
    : "${REBOOT_DELAY_SECONDS:=2}"
    [[ "$REBOOT_DELAY_SECONDS" =~ ^[0-9]+$ && "$REBOOT_DELAY_SECONDS" -ge 1 ]] ||
        die "REBOOT_DELAY_SECONDS must be a whole number of seconds >= 1, got '$REBOOT_DELAY_SECONDS'"

    if [[ ! -e "$MARKER" ]]; then
        echo "picluster reboot: no changes"
        return 0
    fi

    log "$MARKER present: rebooting in ${REBOOT_DELAY_SECONDS}s"
    if ! systemd-run --quiet --on-active="${REBOOT_DELAY_SECONDS}s" \
        --timer-property=AccuracySec=100ms systemctl reboot >&2; then
        log "systemd-run failed; scheduling with nohup instead"
        nohup sh -c "sleep $REBOOT_DELAY_SECONDS; systemctl reboot" >/dev/null 2>&1 &
    fi
    # Removed only once the reboot is scheduled: a failure above leaves it for the next run.
    rm -f "$MARKER"
    echo "picluster reboot: changed: reboot scheduled"
}

main "$@"
