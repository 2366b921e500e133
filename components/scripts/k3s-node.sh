#!/usr/bin/env bash
# picluster k3s-node: on the first server, wait until a node has joined and is Ready.
# `bash -s -- delete` drains the node and removes it from the cluster (before its K3s is
# uninstalled), so its pods move elsewhere first.
#
# Inputs (NAME='value' lines on stdin before this script, run as `sudo bash -s`):
#   NODE_NAME      the node to wait for or remove
#   READY_TIMEOUT  seconds to wait for Ready (default 300)
# Output: progress on stderr; last line on stdout: picluster k3s-node: no changes | changed: ...
set -euo pipefail

log() { printf 'picluster k3s-node: %s\n' "$*" >&2; }
die() { printf 'picluster k3s-node: ERROR: %s\n' "$*" >&2; exit 1; }

node_status() {
    k3s kubectl get node "$NODE_NAME" --no-headers 2>/dev/null | awk '{ print $2 }'
}

# 0 when the node is registered, 1 when the API server says it is not; waits (bounded) while the
# API server does not answer, then fails: "no answer" must never pass for "not in the cluster".
node_registered() {
    local deadline=$((SECONDS + READY_TIMEOUT)) err
    while true; do
        if err=$(k3s kubectl get node "$NODE_NAME" --no-headers 2>&1 >/dev/null); then
            return 0
        fi
        [[ "$err" == *NotFound* ]] && return 1
        ((SECONDS < deadline)) ||
            die "the API server did not answer within ${READY_TIMEOUT}s, so $NODE_NAME was not drained: ${err:-no error text}"
        sleep 3
    done
}

wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT)) status=""
    while ((SECONDS < deadline)); do
        status=$(node_status || true)
        # A cordoned node is `Ready,SchedulingDisabled`: joined and Ready all the same.
        if [[ "$status" == Ready || "$status" == Ready,* ]]; then
            echo "picluster k3s-node: no changes ($NODE_NAME is Ready)"
            return 0
        fi
        sleep 3
    done
    die "$NODE_NAME is not Ready after ${READY_TIMEOUT}s (status: ${status:-not registered}); on the node: journalctl -u k3s-agent"
}

remove() {
    if ! command -v k3s >/dev/null 2>&1 || ! node_registered; then
        echo "picluster k3s-node: no changes ($NODE_NAME is not in the cluster)"
        return 0
    fi
    log "draining $NODE_NAME"
    k3s kubectl drain "$NODE_NAME" --ignore-daemonsets --delete-emptydir-data --timeout=180s >&2 ||
        log "drain did not finish cleanly; removing the node anyway"
    k3s kubectl delete node "$NODE_NAME" --timeout=60s >&2 || die "could not delete node $NODE_NAME"
    echo "picluster k3s-node: changed: drained, removed $NODE_NAME"
}

main() {
    exec </dev/null
    : "${NODE_NAME:?NODE_NAME is required}"
    READY_TIMEOUT=${READY_TIMEOUT:-300}
    if [[ "${1:-}" == delete ]]; then
        remove
    else
        wait_ready
    fi
}

main "$@"
