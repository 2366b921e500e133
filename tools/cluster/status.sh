#!/usr/bin/env bash
# Show what up.sh started in a state directory: pid, resident memory (RSS) and command of each
# process, and whether the API server answers /readyz.
#
#   tools/cluster/status.sh [--state DIR]
set -euo pipefail

state="${PICLUSTER_CLUSTER_STATE:-/tmp/picluster-cluster-$UID}"
if [[ "${1:-}" == --state ]]; then state="${2:?--state needs a directory}"; fi
[[ -d "$state/pids" ]] || { echo "status: no cluster state in $state" >&2; exit 1; }

total=0
printf '%-24s %8s %10s\n' process pid rss_MiB
for name in etcd kube-apiserver kube-controller-manager kube-scheduler kwok local-path-provisioner; do
  f="$state/pids/$name.pid"
  pid="$(cat "$f" 2>/dev/null || echo -)"
  rss="$(ps -o rss= -p "$pid" 2>/dev/null | tr -d ' ' || true)"
  if [[ -n "$rss" ]]; then
    total=$((total + rss))
    printf '%-24s %8s %10s\n' "$name" "$pid" "$((rss / 1024))"
  else
    printf '%-24s %8s %10s\n' "$name" "$pid" "not running"
  fi
done
printf '%-24s %8s %10s\n' total "" "$((total / 1024))"
if [[ -f "$state/cluster.env" ]]; then
  api="$(sed -n 's/^PICLUSTER_CLUSTER_API=//p' "$state/cluster.env")"
  if curl -sf --max-time 5 --cacert "$state/pki/ca.crt" --cert "$state/pki/admin.crt" \
      --key "$state/pki/admin.key" "$api/readyz" >/dev/null; then
    echo "readyz: ok ($api)"
  else
    echo "readyz: no answer ($api)"
  fi
fi
