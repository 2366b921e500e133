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

# Stop sshd from accepting new connections until the reboot: the next step's connection must not
# slip in before the node goes down, it must wait for the node to come back. Open sessions, this
# one included, live on (Debian's ssh.service stops only the listener, KillMode=process). Should
# the reboot not happen, a timer opens the door again.
close_ssh_until_reboot() {
    local unit
    systemd-run --quiet --on-active=180s systemctl start ssh.service >&2 ||
        log "could not schedule the ssh safety restart"
    for unit in ssh.socket ssh.service sshd.service; do
        if systemctl is-active --quiet "$unit"; then
            systemctl stop "$unit" || log "could not stop $unit"
        fi
    done
}

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
    close_ssh_until_reboot
    echo "picluster reboot: changed: reboot scheduled"
}

main "$@"
