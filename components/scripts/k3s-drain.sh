#!/usr/bin/env bash
# picluster k3s-drain: on the first server, before a node's K3s is upgraded, cordon the node and
# drain it (through the eviction API, so PodDisruptionBudgets are respected), marking it as
# cordoned by picluster so that its `-join` step uncordons it once it is Ready on the new version.
# A node the user cordoned stays cordoned (it is drained all the same, and not marked).
#
# Refuses a downgrade (any node's kubelet newer than the target) before it touches anything: K3s
# does not support one (k3s-io/k3s#7537; a datastore migrated by the newer release stays
# migrated); the way back is a snapshot restore.
#
# Nothing to do, and says so: K3s is not on this server yet (the cluster's first `up`), the node
# has not joined yet, the node already runs the target version, or it is the only schedulable node
# (draining it would leave its pods Pending until it is back, longer than K3s's restart, which
# leaves running containers alone). In the last two cases a node that still carries picluster's
# mark is uncordoned (and unmarked): it was cordoned for an upgrade that did not happen (its
# install failed, then the version was set back), and only this step re-runs then, not its `-join`.
#
# Inputs (NAME='value' lines on stdin before this script, run as `sudo bash -s`):
#   NODE_NAME      the node about to be upgraded
#   K3S_VERSION    the release it is about to be upgraded to, e.g. v1.31.5+k3s1
#   DRAIN_TIMEOUT  seconds the drain may take (kubectl drain --timeout) before it gives up
#   READY_TIMEOUT  seconds to wait for the API server to answer (default 300)
# Output: progress on stderr; last line on stdout: picluster k3s-drain: no changes (...) | changed: ...
set -euo pipefail

readonly CORDONED_ANNOTATION=picluster.io/cordoned-for-upgrade

log() { printf 'picluster k3s-drain: %s\n' "$*" >&2; }
die() { printf 'picluster k3s-drain: ERROR: %s\n' "$*" >&2; exit 1; }

# A release's sort key: v1.31.10+k3s2 -> 00001 00031 00010 00002 (fixed-width, compared as text).
version_key() {
    [[ "$1" =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)(\+k3s([0-9]+))?$ ]] || return 1
    printf '%05d%05d%05d%05d' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}" \
        "${BASH_REMATCH[5]:-0}"
}

# 0 when the node is registered, 1 when the API server says it is not; waits (bounded) while the
# API server does not answer (the server before this node may still be restarting).
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

# `NAME KUBELET-VERSION UNSCHEDULABLE READY TAINTED` for every node (true/false,
# True/False/Unknown, true/false: a NoSchedule or NoExecute taint).
# shellcheck disable=SC2016 # `$tainted` is a go-template variable, not the shell's
nodes() {
    k3s kubectl get nodes -o 'go-template={{range .items}}{{.metadata.name}} {{.status.nodeInfo.kubeletVersion}} {{if .spec.unschedulable}}true{{else}}false{{end}} {{range .status.conditions}}{{if eq .type "Ready"}}{{.status}}{{end}}{{end}} {{$tainted := false}}{{range .spec.taints}}{{if ne .effect "PreferNoSchedule"}}{{$tainted = true}}{{end}}{{end}}{{$tainted}}{{"\n"}}{{end}}'
}

# Refuse before anything changes when a node runs a newer release than the target.
refuse_downgrade() {
    local target newer=() name version key _
    target=$(version_key "$K3S_VERSION") || die "K3S_VERSION $K3S_VERSION is not a K3s release"
    while read -r name version _; do
        [[ -n "$name" ]] || continue
        key=$(version_key "$version") || continue
        [[ "$key" > "$target" ]] && newer+=("$name ($version)")
    done <<<"$NODES"
    if ((${#newer[@]})); then
        local IFS=,
        local listed="${newer[*]}"
        die "refusing to downgrade K3s to $K3S_VERSION: ${listed//,/, } already run(s) a newer release, and K3s cannot go back in place; set picluster:k3s.version back to the newest of them, or go back through a datastore snapshot (README: Datastore snapshots and restore)"
    fi
}

# Other nodes that are Ready, schedulable and without a NoSchedule or NoExecute taint: where the
# drained pods can go (the app's pods tolerate no taint; a server tainted CriticalAddonsOnly, say,
# takes none of them).
schedulable_elsewhere() {
    awk -v n="$NODE_NAME" '$1 != n && $3 != "true" && $4 == "True" && $5 != "true"' <<<"$NODES" | wc -l
}

# picluster's mark on the node ("" when it has none). Call it only in a plain assignment
# (`mark=$(annotation)`): inside `[[ ]]` or an `if`, the `die` of the subshell would not stop the
# script, and a failed read would pass for "no mark".
annotation() {
    local value
    value=$(k3s kubectl get node "$NODE_NAME" \
        -o "go-template={{index .metadata.annotations \"$CORDONED_ANNOTATION\"}}" 2>/dev/null) ||
        die "could not read $CORDONED_ANNOTATION of $NODE_NAME"
    [[ "$value" == "<no value>" ]] && value=""
    printf '%s' "$value"
}

# An early exit (nothing to drain): says why, and uncordons a node picluster cordoned for an
# upgrade that did not happen, removing the mark.
nothing_to_drain() {
    local why=$1 mark
    mark=$(annotation)
    if [[ -z "$mark" ]]; then
        echo "picluster k3s-drain: no changes ($why)"
        return 0
    fi
    k3s kubectl uncordon "$NODE_NAME" >&2 || die "could not uncordon $NODE_NAME"
    k3s kubectl annotate node "$NODE_NAME" "$CORDONED_ANNOTATION-" >&2 ||
        die "could not remove $CORDONED_ANNOTATION from $NODE_NAME"
    log "$NODE_NAME was cordoned by picluster for an upgrade to $mark that did not happen: schedulable again"
    echo "picluster k3s-drain: changed: uncordoned ($why)"
}

# Pods still on the node that a drain has to move (not DaemonSet pods, not finished ones).
pods_left() {
    # shellcheck disable=SC2016 # a Go template's variables, not the shell's
    k3s kubectl get pods -A --field-selector "spec.nodeName=$NODE_NAME" -o 'go-template={{range .items}}{{$ds := false}}{{range .metadata.ownerReferences}}{{if eq .kind "DaemonSet"}}{{$ds = true}}{{end}}{{end}}{{if and (not $ds) (ne .status.phase "Succeeded") (ne .status.phase "Failed")}}{{.metadata.namespace}}/{{.metadata.name}}{{"\n"}}{{end}}{{end}}' 2>/dev/null |
        paste -sd, - | sed 's/,/, /g'
}

main() {
    exec </dev/null
    : "${NODE_NAME:?NODE_NAME is required}" "${K3S_VERSION:?K3S_VERSION is required}"
    : "${DRAIN_TIMEOUT:?DRAIN_TIMEOUT is required}"
    READY_TIMEOUT=${READY_TIMEOUT:-300}

    if ! command -v k3s >/dev/null 2>&1; then
        echo "picluster k3s-drain: no changes (K3s is not on this server yet: nothing to drain)"
        return 0
    fi
    if ! node_registered; then
        echo "picluster k3s-drain: no changes ($NODE_NAME has not joined the cluster yet)"
        return 0
    fi
    NODES=$(nodes) || die "could not list the nodes"
    refuse_downgrade
    local current unschedulable
    read -r _ current unschedulable _ < <(awk -v n="$NODE_NAME" '$1 == n' <<<"$NODES") ||
        die "$NODE_NAME is registered but not in the node list (kubectl get nodes), so it was not drained: was it deleted meanwhile? run pulumi up again"
    if [[ "$current" == "$K3S_VERSION" ]]; then
        nothing_to_drain "$NODE_NAME already runs $K3S_VERSION"
        return 0
    fi
    if (($(schedulable_elsewhere) == 0)); then
        nothing_to_drain "$NODE_NAME is the only schedulable node (the others are cordoned, not Ready or tainted NoSchedule/NoExecute): not drained, its pods stay through the restart"
        return 0
    fi

    local changed=() mark ours=true
    mark=$(annotation)
    # Marked before it is cordoned: a run that stops in between leaves the mark, so the node's
    # `-join` step still uncordons it. A node the user cordoned is not marked.
    if [[ "$unschedulable" == true && -z "$mark" ]]; then
        ours=false
        log "$NODE_NAME was cordoned by hand: it stays cordoned after its upgrade"
    else
        if [[ -z "$mark" ]]; then
            k3s kubectl annotate node "$NODE_NAME" --overwrite \
                "$CORDONED_ANNOTATION=$K3S_VERSION" >&2 || die "could not annotate $NODE_NAME"
        fi
        if [[ "$unschedulable" != true ]]; then
            k3s kubectl cordon "$NODE_NAME" >&2 || die "could not cordon $NODE_NAME"
            changed+=(cordoned)
        fi
    fi
    log "draining $NODE_NAME before its upgrade ($current -> $K3S_VERSION, at most ${DRAIN_TIMEOUT}s)"
    # Evictions (never plain deletes): a PodDisruptionBudget that cannot be met holds the drain
    # until the timeout. No --force: a pod without a controller would be gone for good.
    if ! k3s kubectl drain "$NODE_NAME" --ignore-daemonsets --delete-emptydir-data \
        --timeout="${DRAIN_TIMEOUT}s" >&2; then
        local left after
        left=$(pods_left || true)
        if [[ "$ours" != true ]]; then
            after="it stays cordoned, as it was cordoned by hand"
        elif k3s kubectl uncordon "$NODE_NAME" >&2; then
            after="it is schedulable again as before"
            k3s kubectl annotate node "$NODE_NAME" "$CORDONED_ANNOTATION-" >&2 ||
                log "could not remove $CORDONED_ANNOTATION from $NODE_NAME (the next pulumi up does)"
        else
            after="it could not be uncordoned and stays cordoned (kubectl uncordon $NODE_NAME; else the next pulumi up does, its $CORDONED_ANNOTATION stays)"
        fi
        die "could not drain $NODE_NAME within ${DRAIN_TIMEOUT}s, so its upgrade (and every node after it) did not start; $after; pods that stayed: ${left:-none listed}; a PodDisruptionBudget that cannot be met (kubectl get pdb -A), or a pod without a controller (delete or move it), or give the drain more time: picluster:k3s.drainTimeout"
    fi
    changed+=(drained)
    log "$NODE_NAME is drained: its K3s goes to $K3S_VERSION next"
    local IFS=,
    echo "picluster k3s-drain: changed: ${changed[*]}" | sed 's/,/, /g'
}

main "$@"
