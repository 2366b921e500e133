#!/usr/bin/env bash
# Stop what up.sh started in a state directory: each process by the pid it recorded, only
# if that pid still runs the same binary; TERM first, KILL after a bounded wait.
#
#   tools/cluster/down.sh [--state DIR] [--purge]
#
#   --state DIR  as given to up.sh (default ${PICLUSTER_CLUSTER_STATE:-/tmp/picluster-cluster-$UID})
#   --purge      also delete the state directory (etcd data, certificates, kubeconfigs, logs)
set -euo pipefail

state="${PICLUSTER_CLUSTER_STATE:-/tmp/picluster-cluster-$UID}"
purge=0
while (($#)); do
  case "$1" in
    --state) state="${2:?--state needs a directory}"; shift 2 ;;
    --purge) purge=1; shift ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "down.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
pids="$state/pids"

# ours NAME PID: PID is alive and runs the program NAME (argv[0], or argv[1] of an interpreter)
ours() {
  local argv=()
  [[ -r "/proc/$2/cmdline" ]] && mapfile -d '' -t argv <"/proc/$2/cmdline" 2>/dev/null || return 1
  [[ "${argv[0]:-}" == */"$1" || "${argv[1]:-}" == */"$1" ]]
}

stopped=0
# Clients first, etcd last.
for name in local-path-provisioner kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
  f="$pids/$name.pid"
  [[ -f "$f" ]] || continue
  pid="$(cat "$f")"
  if ours "$name" "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do ours "$name" "$pid" || break; sleep 0.1; done
    if ours "$name" "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      echo "down: $name (pid $pid) killed after 10s"
    else
      echo "down: $name (pid $pid) stopped"
    fi
    stopped=$((stopped + 1))
  fi
  rm -f "$f"
done
((stopped)) || echo "down: nothing of $state was running"
if ((purge)) && [[ -d "$state" ]]; then
  rm -rf "$state"
  echo "down: removed $state"
fi
