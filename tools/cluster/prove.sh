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
k -n proof delete job manual-tick --ignore-not-found --wait=true --timeout 30s
k -n proof create job manual-tick --from cronjob/tick
k -n proof wait job/manual-tick --for condition=Complete --timeout 90s
k -n proof get deployment,daemonset,cronjob,job,service,endpointslices
k -n proof get pods -o wide

events() { k -n proof get events --field-selector "involvedObject.name=$1" -o custom-columns=REASON:.reason,MESSAGE:.message; }
if [[ -f "$state/pids/local-path-provisioner.pid" ]]; then
  step "StatefulSet with a local-path claim template (up.sh's local-path StorageClass and provisioner)"
  k get storageclass
  k apply -f "$m/20-statefulset.yaml"
  k -n proof rollout status statefulset/db --timeout 90s
  k -n proof get pvc data-db-0 -o wide
  k get pv
  k -n proof get pod db-0 -o wide
  tail -n 3 "$state/logs/local-path-provisioner.log"
  [[ "$(k -n proof get pvc data-db-0 -o jsonpath='{.status.phase}')" == Bound ]] || fail "claim not Bound"

  step "a bigger storage request on local-path is refused (the class has no allowVolumeExpansion, as on K3s)"
  if out="$(k -n proof patch pvc data-db-0 -p '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}' 2>&1)"; then
    echo "$out"; fail "the resize was accepted"
  fi
  echo "$out"
  grep -q 'must support resize' <<<"$out" || fail "refused, but not for expansion"
else
  step "StatefulSet with a local-path claim template, no StorageClass and no provisioner (up.sh --no-local-path)"
  k apply -f "$m/20-statefulset.yaml"
  sleep 5
  k -n proof get pvc,pods -l app=db -o wide
  events data-db-0
  events db-0
  [[ "$(k -n proof get pvc data-db-0 -o jsonpath='{.status.phase}')" == Pending ]] || fail "claim not Pending"

  step "the same once K3s's local-path StorageClass (WaitForFirstConsumer) exists, still no provisioner"
  k apply -f "$m/30-local-path-class.yaml"
  sleep 8
  k -n proof get pvc data-db-0 -o wide
  k -n proof get pvc data-db-0 -o jsonpath='{.metadata.annotations}'; echo
  events data-db-0
  k -n proof get pod db-0 -o wide
  [[ "$(k -n proof get pvc data-db-0 -o jsonpath='{.status.phase}')" == Pending ]] || fail "claim not Pending"

  step "provisioning by hand what local-path-provisioner would: a volume pre-bound to the claim on the selected node"
  node="$(k -n proof get pvc data-db-0 -o jsonpath='{.metadata.annotations.volume\.kubernetes\.io/selected-node}')"
  uid="$(k -n proof get pvc data-db-0 -o jsonpath='{.metadata.uid}')"
  k apply -f - <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: pvc-$uid
  annotations: {pv.kubernetes.io/provisioned-by: rancher.io/local-path}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: local-path
  claimRef: {apiVersion: v1, kind: PersistentVolumeClaim, namespace: proof, name: data-db-0, uid: $uid}
  hostPath: {path: /var/lib/rancher/k3s/storage/pvc-${uid}_proof_data-db-0, type: DirectoryOrCreate}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [$node]}
EOF
  k -n proof rollout status statefulset/db --timeout 90s
  k -n proof get pvc data-db-0 -o wide
  k -n proof get pod db-0 -o wide
  [[ "$(k -n proof get pod db-0 -o jsonpath='{.spec.nodeName}')" == "$node" ]] || fail "db-0 not on $node"
fi

step "a claim of a no-provisioner class with a static volume made beforehand on pi-agent-1"
k apply -f "$m/40-static-pv.yaml"
k -n proof wait pod/cache-reader --for condition=Ready --timeout 90s
k -n proof get pvc cache -o wide
k -n proof get pod cache-reader -o wide
[[ "$(k -n proof get pod cache-reader -o jsonpath='{.spec.nodeName}')" == pi-agent-1 ]] || fail "cache-reader not on pi-agent-1"

step "every pod Running and Ready, on which node"
k -n proof get pods -o 'custom-columns=POD:.metadata.name,NODE:.spec.nodeName,PHASE:.status.phase,READY:.status.conditions[?(@.type=="Ready")].status,IP:.status.podIP' 

step "PodSecurity refuses a privileged pod in the restricted namespace"
if out="$(k apply -f "$m/50-non-compliant-pod.yaml" 2>&1)"; then
  echo "$out"; fail "the privileged pod was admitted"
fi
echo "$out"
grep -q 'violates PodSecurity "restricted' <<<"$out" || fail "refused, but not by PodSecurity"

step "a non-compliant Deployment is accepted (enforce checks pods), but its ReplicaSet gets no pod"
k apply -f "$m/55-non-compliant-deployment.yaml"
for _ in $(seq 1 20); do
  k -n proof get events --field-selector reason=FailedCreate -o jsonpath='{.items[*].message}' | grep rooty >/dev/null && break
  sleep 1
done
k -n proof get deployment rooty
k -n proof get events --field-selector reason=FailedCreate -o custom-columns=OBJECT:.involvedObject.name,REASON:.reason,MESSAGE:.message | cut -c1-220
[[ -z "$(k -n proof get deployment rooty -o jsonpath='{.status.availableReplicas}')" ]] || fail "rooty became available"
k -n proof get events --field-selector reason=FailedCreate -o jsonpath='{.items[*].message}' | grep 'violates PodSecurity' >/dev/null \
  || fail "no FailedCreate event from PodSecurity"
k -n proof delete deployment rooty --wait=false

step "--validate=strict (server-side field validation) refuses an unknown field"
if out="$(k apply --validate=strict -f "$m/60-unknown-field.yaml" 2>&1)"; then
  echo "$out"; fail "the unknown field was accepted"
fi
echo "$out"
grep -q 'unknown field' <<<"$out" || fail "refused, but not for the unknown field"

step "the CronJob fires by itself at the next minute (lastScheduleTime; a manual job sets only lastSuccessfulTime)"
for _ in $(seq 1 45); do
  [[ -n "$(k -n proof get cronjob tick -o jsonpath='{.status.lastScheduleTime}')" ]] && break
  sleep 2
done
scheduled="$(k -n proof get cronjob tick -o jsonpath='{.status.lastScheduleTime}')"
[[ -n "$scheduled" ]] || fail "the CronJob did not fire within 90s"
for _ in $(seq 1 30); do
  k -n proof get jobs -o jsonpath='{range .items[*]}{.metadata.name} {.status.succeeded}{"\n"}{end}' | grep '^tick-[0-9]* 1$' >/dev/null && break
  sleep 1
done
k -n proof get cronjob tick -o jsonpath='lastScheduleTime={.status.lastScheduleTime} lastSuccessfulTime={.status.lastSuccessfulTime}{"\n"}'
k -n proof get jobs
k -n proof get jobs -o jsonpath='{range .items[*]}{.metadata.name} {.status.succeeded}{"\n"}{end}' | grep '^tick-[0-9]* 1$' >/dev/null \
  || fail "the scheduled job did not complete"
echo
echo "proof: all expectations held in $((SECONDS - t0))s"
