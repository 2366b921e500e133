#!/usr/bin/env bash
# picluster k3s-node: on the first server, wait until a node has joined and is Ready on the pinned
# K3s release, then make its labels and taints the configured ones through the API (K3s's
# node-label/node-taint act only when a node registers, so a later change must go through the
# API), and uncordon it when picluster cordoned it for its upgrade (k3s-drain.sh).
# `bash -s -- delete` drains the node and removes it from the cluster (before its K3s is
# uninstalled), so its pods move elsewhere first; it refuses while local-path volumes live on the
# node, since their data goes with it.
#
# Inputs (NAME='value' lines on stdin before this script, run as `sudo bash -s`):
#   NODE_NAME      the node to wait for, label, taint or remove
#   READY_TIMEOUT  seconds to wait for Ready (default 300)
#   LABELS         the labels picluster manages on the node, `key=value` per line
#   TAINTS         the taints picluster manages on the node, `key=value:Effect` per line
#   FIRST_SERVER   1 for the first server itself: it leaves the cluster with its uninstall
#   ROLE           server | agent: another server is only drained here; its uninstall stops K3s
#                  and then deletes its Node, so it cannot register again in between
#   K3S_VERSION    the release the node must report (its kubelet version) before it counts as up
# Output: progress on stderr; last line on stdout: picluster k3s-node: no changes | changed: ...
set -euo pipefail

readonly LABELS_ANNOTATION=picluster.io/managed-labels
readonly TAINTS_ANNOTATION=picluster.io/managed-taints
readonly CORDONED_ANNOTATION=picluster.io/cordoned-for-upgrade

CHANGED=()
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

node_version() {
    k3s kubectl get node "$NODE_NAME" -o 'go-template={{.status.nodeInfo.kubeletVersion}}' 2>/dev/null
}

# Ready, and (after an upgrade) on the new release: the kubelet reports its version when it
# starts, so an old version means the node has not come back from its restart yet.
wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT)) status="" version=""
    while ((SECONDS < deadline)); do
        status=$(node_status || true)
        # A cordoned node is `Ready,SchedulingDisabled`: joined and Ready all the same.
        if [[ "$status" == Ready || "$status" == Ready,* ]]; then
            version=$(node_version || true)
            [[ -z "${K3S_VERSION:-}" || "$version" == "$K3S_VERSION" ]] && return 0
        fi
        sleep 3
    done
    if [[ -n "$version" ]]; then
        die "$NODE_NAME is Ready but runs ${version}, not $K3S_VERSION, after ${READY_TIMEOUT}s; it stays cordoned if picluster cordoned it; on the node: k3s --version, journalctl -u k3s-agent (or -u k3s on a server)"
    fi
    die "$NODE_NAME is not Ready after ${READY_TIMEOUT}s (status: ${status:-not registered}); on the node: journalctl -u k3s-agent (or -u k3s on a server)"
}

# Uncordon a node picluster cordoned for its upgrade (k3s-drain.sh marked it); a node cordoned by
# hand carries no mark and stays cordoned.
uncordon() {
    local mark
    # Assigned first: a failed read inside `[[ ]]` would print its error and pass for "no mark".
    mark=$(annotation "$CORDONED_ANNOTATION")
    [[ -n "$mark" ]] || return 0
    k3s kubectl uncordon "$NODE_NAME" >&2 || die "could not uncordon $NODE_NAME"
    k3s kubectl annotate node "$NODE_NAME" "$CORDONED_ANNOTATION-" >&2 ||
        die "could not remove $CORDONED_ANNOTATION from $NODE_NAME"
    CHANGED+=(uncordoned)
}

# Annotation $1 of the node ("" when it has none). Call it only in a plain assignment or a
# pipeline under pipefail, never inside `[[ ]]` or an `if`, where its `die` would not stop us.
annotation() {
    local value
    value=$(k3s kubectl get node "$NODE_NAME" \
        -o "go-template={{index .metadata.annotations \"$1\"}}" 2>/dev/null) ||
        die "could not read $1 of $NODE_NAME"
    [[ "$value" == "<no value>" ]] && value=""
    printf '%s' "$value"
}

# Lines of $1 that are not lines of $2.
missing_from() {
    comm -23 <(printf '%s\n' "$1" | sed '/^$/d' | sort -u) <(printf '%s\n' "$2" | sed '/^$/d' | sort -u)
}

reconcile_labels() {
    local current managed wanted_keys add=() remove=() key
    # shellcheck disable=SC2016 # a Go template's variables, not the shell's
    current=$(k3s kubectl get node "$NODE_NAME" \
        -o 'go-template={{range $k, $v := .metadata.labels}}{{$k}}={{$v}}{{"\n"}}{{end}}') ||
        die "could not read the labels of $NODE_NAME"
    managed=$(annotation "$LABELS_ANNOTATION" | tr ',' '\n')
    wanted_keys=$(printf '%s\n' "$LABELS" | sed '/^$/d; s/=.*//')
    mapfile -t add < <(missing_from "$LABELS" "$current")
    while IFS= read -r key; do
        [[ -n "$key" ]] && grep -q "^${key//./\\.}=" <<<"$current" && remove+=("$key-")
    done < <(missing_from "$managed" "$wanted_keys")
    if ((${#add[@]} + ${#remove[@]})); then
        k3s kubectl label node "$NODE_NAME" "${add[@]}" "${remove[@]}" --overwrite >&2 ||
            die "could not label $NODE_NAME"
        CHANGED+=("labels")
    fi
    if [[ "$(printf '%s\n' "$wanted_keys" | sed '/^$/d' | sort -u | paste -sd, -)" != \
        "$(printf '%s\n' "$managed" | sed '/^$/d' | sort -u | paste -sd, -)" ]]; then
        k3s kubectl annotate node "$NODE_NAME" --overwrite \
            "$LABELS_ANNOTATION=$(printf '%s\n' "$wanted_keys" | sed '/^$/d' | sort -u | paste -sd, -)" >&2 ||
            die "could not annotate $NODE_NAME"
    fi
}

# `key=value:Effect` for every taint, `key=:Effect` when it has no value.
normalise_taints() {
    sed '/^$/d; /=/!s/:/=:/' | sort -u
}

reconcile_taints() {
    local current managed wanted add=() remove=() taint
    current=$(k3s kubectl get node "$NODE_NAME" \
        -o 'go-template={{range .spec.taints}}{{.key}}={{.value}}:{{.effect}}{{"\n"}}{{end}}' |
        normalise_taints) || die "could not read the taints of $NODE_NAME"
    managed=$(annotation "$TAINTS_ANNOTATION" | tr ',' '\n' | normalise_taints)
    wanted=$(printf '%s\n' "$TAINTS" | normalise_taints)
    mapfile -t add < <(missing_from "$wanted" "$current")
    # A managed taint no longer wanted, unless only its value changed (the add overwrites it).
    while IFS= read -r taint; do
        [[ -n "$taint" ]] || continue
        grep -qxF "$taint" <<<"$current" || continue
        grep -q "^${taint%%=*}=.*:${taint##*:}\$" <<<"$wanted" && continue
        remove+=("${taint%%=*}:${taint##*:}-")
    done < <(missing_from "$managed" "$wanted")
    if ((${#add[@]})); then
        k3s kubectl taint node "$NODE_NAME" "${add[@]}" --overwrite >&2 || die "could not taint $NODE_NAME"
    fi
    if ((${#remove[@]})); then
        k3s kubectl taint node "$NODE_NAME" "${remove[@]}" >&2 || die "could not untaint $NODE_NAME"
    fi
    ((${#add[@]} + ${#remove[@]} == 0)) || CHANGED+=("taints")
    if [[ "$(paste -sd, - <<<"$wanted")" != "$(paste -sd, - <<<"$managed")" ]]; then
        k3s kubectl annotate node "$NODE_NAME" --overwrite \
            "$TAINTS_ANNOTATION=$(paste -sd, - <<<"$wanted")" >&2 || die "could not annotate $NODE_NAME"
    fi
}

# local-path volumes (their PersistentVolumes are pinned to one node): NAME NAMESPACE/CLAIM lines.
# A volume whose claim is gone and whose reclaim policy is Delete is being deleted (a destroy
# removes the claims just before the nodes): not data that would be lost.
volumes_on_node() {
    k3s kubectl get pv --no-headers -o \
        'custom-columns=NAME:.metadata.name,NODE:.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0],NS:.spec.claimRef.namespace,CLAIM:.spec.claimRef.name,PHASE:.status.phase,RECLAIM:.spec.persistentVolumeReclaimPolicy' |
        awk -v n="$NODE_NAME" '$2 == n && !(($5 == "Released" || $5 == "Failed") && $6 == "Delete") { print $1, $3 "/" $4 }'
}

remove() {
    if [[ "${FIRST_SERVER:-0}" == 1 ]]; then
        echo "picluster k3s-node: no changes ($NODE_NAME is the first server: it leaves with its uninstall)"
        return 0
    fi
    if ! command -v k3s >/dev/null 2>&1 || ! node_registered; then
        echo "picluster k3s-node: no changes ($NODE_NAME is not in the cluster)"
        return 0
    fi
    local volumes
    volumes=$(volumes_on_node) || die "could not list the volumes on $NODE_NAME"
    if [[ -n "$volumes" ]]; then
        die "$NODE_NAME holds local-path volumes, whose data would go with it: $(paste -sd, - <<<"$volumes" | sed 's/,/, /g'); back them up (README: Backups and restore), delete those claims (or move their workloads: README: Add or remove a node), then run pulumi up again"
    fi
    log "draining $NODE_NAME"
    # --force: pods without a controller would otherwise stop the drain (they are lost anyway
    # once the node goes); PodDisruptionBudgets are still respected within the timeout.
    k3s kubectl drain "$NODE_NAME" --ignore-daemonsets --delete-emptydir-data --force \
        --timeout=180s >&2 || die "could not drain $NODE_NAME within 180s (a PodDisruptionBudget that cannot be met?); it stays cordoned; see kubectl get pods -A -o wide"
    if [[ "${ROLE:-agent}" == server ]]; then
        echo "picluster k3s-node: changed: drained $NODE_NAME (its uninstall deletes the node)"
        return 0
    fi
    k3s kubectl delete node "$NODE_NAME" --timeout=60s >&2 || die "could not delete node $NODE_NAME"
    echo "picluster k3s-node: changed: drained, removed $NODE_NAME"
}

main() {
    exec </dev/null
    : "${NODE_NAME:?NODE_NAME is required}"
    READY_TIMEOUT=${READY_TIMEOUT:-300}
    LABELS=${LABELS:-}
    TAINTS=${TAINTS:-}
    if [[ "${1:-}" == delete ]]; then
        remove
        return 0
    fi
    wait_ready
    reconcile_labels
    reconcile_taints
    uncordon
    if ((${#CHANGED[@]} == 0)); then
        echo "picluster k3s-node: no changes ($NODE_NAME is Ready)"
    else
        log "$NODE_NAME is Ready"
        local IFS=,
        echo "picluster k3s-node: changed: ${CHANGED[*]}" | sed 's/,/, /g'
    fi
}

main "$@"
