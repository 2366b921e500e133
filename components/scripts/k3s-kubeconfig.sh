#!/usr/bin/env bash
# picluster k3s-kubeconfig: print the cluster's admin kubeconfig once the API server answers.
# stdout carries the kubeconfig and nothing else (the caller keeps it secret and does not log
# it); progress and the summary line go to stderr.
#
# Inputs (NAME='value' lines on stdin before this script, run as `sudo bash -s`):
#   READY_TIMEOUT  seconds to wait for the API server (default 300)
set -euo pipefail

readonly KUBECONFIG_FILE=/etc/rancher/k3s/k3s.yaml

log() { printf 'picluster k3s-kubeconfig: %s\n' "$*" >&2; }
die() { printf 'picluster k3s-kubeconfig: ERROR: %s\n' "$*" >&2; exit 1; }

main() {
    exec </dev/null
    READY_TIMEOUT=${READY_TIMEOUT:-300}
    local deadline=$((SECONDS + READY_TIMEOUT))
    until [[ -s "$KUBECONFIG_FILE" ]] && k3s kubectl get --raw /readyz >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "the API server did not answer within ${READY_TIMEOUT}s"
        sleep 3
    done
    [[ "$(stat -c %a "$KUBECONFIG_FILE")" == 600 ]] ||
        log "warning: $KUBECONFIG_FILE is not mode 0600 (write-kubeconfig-mode)"
    # A failed command's error text carries its whole stdout, so every check comes before the
    # kubeconfig is printed, and printing it is the last thing this script does: nothing can
    # fail after the credentials are on stdout.
    local kubeconfig
    kubeconfig=$(<"$KUBECONFIG_FILE") || die "could not read $KUBECONFIG_FILE"
    [[ "$kubeconfig" == *"clusters:"* ]] || die "$KUBECONFIG_FILE holds no clusters"
    log "no changes (kubeconfig read)"
    printf '%s\n' "$kubeconfig" || true
    exit 0
}

main "$@"
