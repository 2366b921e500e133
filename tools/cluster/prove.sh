#!/usr/bin/env bash
# Show, against a cluster started by up.sh with nodes pi-server-1 pi-agent-1 pi-agent-2, that
# workloads become Ready on the kwok nodes, what a local-path claim needs, that PodSecurity
# refuses a non-compliant pod and that --validate=strict refuses an unknown field.
#
#   tools/cluster/prove.sh [--state DIR]
#
# Every wait is bounded (kubectl --timeout). Leaves the `proof` namespace in place; exits 1 at
# the first expectation that does not hold.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${PICLUSTER_CLUSTER_STATE:-/tmp/picluster-cluster-$UID}"
if [[ "${1:-}" == --state ]]; then state="${2:?--state needs a directory}"; fi
[[ -f "$state/cluster.env" ]] || { echo "prove.sh: no $state/cluster.env: run up.sh first" >&2; exit 1; }
kubeconfig="$(sed -n 's/^KUBECONFIG=//p' "$state/cluster.env")"
bin="$(sed -n 's/^PICLUSTER_CLUSTER_BIN=//p' "$state/cluster.env")"
[[ -x "$bin/kubectl" ]] || { echo "prove.sh: no $bin/kubectl: run build.sh kubectl" >&2; exit 1; }
k() { "$bin/kubectl" --kubeconfig "$kubeconfig" --request-timeout 20s "$@"; }
m="$here/proof"
step() { printf '\n### %s\n' "$*"; }
fail() { echo "PROOF FAILED: $*" >&2; exit 1; }
t0=$SECONDS

step "versions and nodes"
k version
k get nodes -L kubernetes.io/arch,node-role.kubernetes.io/control-plane -o wide

step "workloads in a namespace enforcing restricted"
k apply -f "$m/10-workloads.yaml"
k -n proof rollout status deployment/web --timeout 90s
k -n proof rollout status daemonset/node-agent --timeout 90s
k -n proof create job manual-tick --from cronjob/tick
k -n proof wait job/manual-tick --for condition=Complete --timeout 90s
k -n proof get deployment,daemonset,cronjob,job,service,endpointslices
k -n proof get pods -o wide

step "StatefulSet with a local-path claim template, no StorageClass and no provisioner"
k apply -f "$m/20-statefulset.yaml"
sleep 5
k -n proof get pvc,pods -l app=db -o wide 2>/dev/null || true
k -n proof get pvc data-db-0 -o wide
k -n proof get events --field-selector involvedObject.name=data-db-0 -o custom-columns=REASON:.reason,MESSAGE:.message
k -n proof get events --field-selector involvedObject.name=db-0 -o custom-columns=REASON:.reason,MESSAGE:.message
[[ "$(k -n proof get pvc data-db-0 -o jsonpath='{.status.phase}')" == Pending ]] || fail "claim not Pending"

step "the same with K3s's local-path StorageClass (WaitForFirstConsumer) but no provisioner"
k apply -f "$m/30-local-path-class.yaml"
sleep 8
k -n proof get pvc data-db-0 -o wide
k -n proof get pvc data-db-0 -o jsonpath='{.metadata.annotations}'; echo
k -n proof get events --field-selector involvedObject.name=data-db-0 -o custom-columns=REASON:.reason,MESSAGE:.message
k -n proof get pod db-0 -o wide
[[ "$(k -n proof get pvc data-db-0 -o jsonpath='{.status.phase}')" == Pending ]] || fail "claim not Pending"

step "a static PV of class local-path pinned to pi-agent-1: the claim binds, the pod runs there"
k apply -f "$m/40-static-pv.yaml"
k -n proof rollout status statefulset/db --timeout 120s
k -n proof get pvc data-db-0 -o wide
k get pv static-pi-agent-1-0
k -n proof get pod db-0 -o wide
[[ "$(k -n proof get pod db-0 -o jsonpath='{.spec.nodeName}')" == pi-agent-1 ]] || fail "db-0 not on pi-agent-1"

step "every pod Running and Ready, on which node"
k -n proof get pods -o 'custom-columns=POD:.metadata.name,NODE:.spec.nodeName,PHASE:.status.phase,READY:.status.conditions[?(@.type=="Ready")].status,IP:.status.podIP' 

step "PodSecurity refuses a privileged pod in the restricted namespace"
if out="$(k apply -f "$m/50-non-compliant-pod.yaml" 2>&1)"; then
  echo "$out"; fail "the privileged pod was admitted"
fi
echo "$out"
grep -q 'violates PodSecurity "restricted' <<<"$out" || fail "refused, but not by PodSecurity"

step "--validate=strict (server-side field validation) refuses an unknown field"
if out="$(k apply --validate=strict -f "$m/60-unknown-field.yaml" 2>&1)"; then
  echo "$out"; fail "the unknown field was accepted"
fi
echo "$out"
grep -q 'unknown field' <<<"$out" || fail "refused, but not for the unknown field"

step "the CronJob fires by itself within its minute"
for _ in $(seq 1 40); do
  [[ -n "$(k -n proof get cronjob tick -o jsonpath='{.status.lastSuccessfulTime}')" ]] && break
  sleep 3
done
k -n proof get cronjob tick -o jsonpath='lastScheduleTime={.status.lastScheduleTime} lastSuccessfulTime={.status.lastSuccessfulTime}{"\n"}'
k -n proof get jobs
echo
echo "proof: all expectations held in $((SECONDS - t0))s"
