#!/usr/bin/env bash
# Start a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler) plus kwok, which plays the kubelets of the nodes named on the command line,
# as background processes of this machine. Binaries come from build.sh's cache.
#
#   tools/cluster/up.sh [--state DIR] [--port N] [--san ADDR]... [--bind ADDR]
#                       [--bin DIR] [--timeout SECONDS] [--no-local-path] NODE[:server|:agent]...
#
#   --state DIR    where certificates, kubeconfigs, etcd data, logs and pids go
#                  (default ${PICLUSTER_CLUSTER_STATE:-/tmp/picluster-cluster-$UID}); made 0700
#   --port N       the API server's secure port (default: a free port)
#   --san ADDR     an extra IP or DNS name on the API server certificate, e.g. the Docker
#                  bridge gateway 172.17.0.1 through which the simulated Pis reach this host;
#                  for each IP SAN an admin kubeconfig pointing at it is written too
#   --bind ADDR    the API server's listen address (default 127.0.0.1, or 0.0.0.0 when an IP
#                  SAN other than loopback is given, so that address can reach it)
#   --bin DIR      where the binaries are (default: build.sh's cache bin/)
#   --timeout S    upper bound of each wait (default 120)
#   --no-local-path  leave out what K3s has for storage: the default StorageClass `local-path`
#                  (rancher.io/local-path, WaitForFirstConsumer) and ./local-path-provisioner,
#                  which makes a hostPath PersistentVolume on the node the scheduler picked
#   NODE           a node for kwok to play; `name:server` gets the K3s server role labels,
#                  `name:agent` none; with no suffix a name containing "server" is a server
#
# Prints the admin kubeconfig path (client certificate in system:masters, mode 0600) and the
# seconds it took. State DIR/cluster.env holds KUBECONFIG, the API URL and the ports.
# Stop everything with tools/cluster/down.sh --state DIR.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${PICLUSTER_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/picluster/cluster}"
state="${PICLUSTER_CLUSTER_STATE:-/tmp/picluster-cluster-$UID}"
bin="$cache/bin"
api_port=""
bind=""
timeout=120
local_path=1
sans=()
nodes=()

usage() { sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "up.sh: $*" >&2; exit 1; }

while (($#)); do
  case "$1" in
    --state) state="${2:?--state needs a directory}"; shift 2 ;;
    --port) api_port="${2:?--port needs a number}"; shift 2 ;;
    --san) sans+=("${2:?--san needs an address}"); shift 2 ;;
    --bind) bind="${2:?--bind needs an address}"; shift 2 ;;
    --bin) bin="${2:?--bin needs a directory}"; shift 2 ;;
    --timeout) timeout="${2:?--timeout needs seconds}"; shift 2 ;;
    --no-local-path) local_path=0; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option $1" ;;
    *) nodes+=("$1"); shift ;;
  esac
done
((${#nodes[@]})) || { usage >&2; die "name at least one node"; }
[[ "$timeout" =~ ^[0-9]+$ ]] || die "--timeout needs whole seconds"
[[ -z "$api_port" || "$api_port" =~ ^[0-9]+$ ]] || die "--port needs a number"
for n in "${nodes[@]}"; do
  [[ "${n%%:*}" =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || die "'${n%%:*}' is not a valid node name"
  [[ "$n" != *:* || "${n#*:}" == server || "${n#*:}" == agent ]] || die "'$n': the role is :server or :agent"
done
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
  [[ -x "$bin/$b" ]] || die "no $bin/$b: run tools/cluster/build.sh first"
done
command -v openssl >/dev/null || die "openssl is needed"
command -v curl >/dev/null || die "curl is needed"
command -v python3 >/dev/null || die "python3 is needed"

is_ip() { [[ "$1" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || "$1" == *:* ]]; }
if [[ -z "$bind" ]]; then
  bind=127.0.0.1
  for s in "${sans[@]}"; do
    if is_ip "$s" && [[ "$s" != 127.* && "$s" != ::1 ]]; then bind=0.0.0.0; fi
  done
fi

umask 077
mkdir -p "$state"
chmod 0700 "$state"
state="$(cd "$state" && pwd)"
pki="$state/pki" logs="$state/logs" pids="$state/pids"
mkdir -p "$pki" "$logs" "$pids"

# ours NAME PID: PID is alive and runs the program NAME (argv[0], or argv[1] of an interpreter)
ours() {
  local argv=()
  [[ -r "/proc/$2/cmdline" ]] && mapfile -d '' -t argv <"/proc/$2/cmdline" 2>/dev/null || return 1
  [[ "${argv[0]:-}" == */"$1" || "${argv[1]:-}" == */"$1" ]]
}
running() { # running NAME: its pidfile names a live process of that program
  [[ -f "$pids/$1.pid" ]] && ours "$1" "$(cat "$pids/$1.pid")"
}
for p in etcd kube-apiserver kube-controller-manager kube-scheduler kwok local-path-provisioner; do
  running "$p" && die "$p is already running from $state (pid $(cat "$pids/$p.pid")): run down.sh --state $state first"
done

t_start=$SECONDS
# A start that fails half-way stops what it started (logs stay in the state directory).
started=0
on_exit() {
  local rc=$?
  if ((rc != 0 && started)); then
    echo "up.sh: failed; stopping what was started (logs in $logs)" >&2
    "$here/down.sh" --state "$state" >&2 || true
  fi
}
trap on_exit EXIT
deadline_msg() { echo "up.sh: $1 not ready within ${timeout}s; last lines of $2:" >&2; tail -n 20 "$2" >&2 || true; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
port_free() {
  python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2])))' "$1" "$2" 2>/dev/null
}
if [[ -n "$api_port" ]]; then
  port_free "$bind" "$api_port" || die "port $api_port is taken on $bind"
else
  # A restart keeps the port of the last start while it is free, so kubeconfigs stay valid.
  api_port="$(sed -n 's/^PICLUSTER_CLUSTER_API_PORT=//p' "$state/cluster.env" 2>/dev/null || true)"
  if [[ -z "$api_port" ]] || ! port_free "$bind" "$api_port"; then api_port="$(free_port)"; fi
fi
etcd_port="$(free_port)"
etcd_peer_port="$(free_port)"
cm_port="$(free_port)"
sched_port="$(free_port)"
kwok_port="$(free_port)"

# --- certificates (ECDSA P-256), made once per state directory -------------------------
new_key() { [[ -f "$pki/$1.key" ]] || openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$1.key" 2>/dev/null; }
# sign NAME SUBJECT EXTENSIONS [CA]: a certificate for NAME.key signed by CA (default: the cluster CA)
sign() {
  local name="$1" subj="$2" ext="$3" ca="${4:-ca}"
  new_key "$name"
  printf '%s\n' "$ext" >"$pki/$name.ext"
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr"
}
new_ca() { # new_ca NAME CN
  [[ -f "$pki/$1.crt" ]] && return
  new_key "$1"
  openssl req -x509 -new -key "$pki/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki/$1.crt" 2>/dev/null
}
new_ca ca picluster-cluster-ca
# The aggregation layer's request-header CA, as K3s sets it up (kube-apiserver proxies to
# extension API servers such as metrics-server with this client certificate).
new_ca front-proxy-ca picluster-front-proxy-ca
san_list="IP:127.0.0.1,IP:10.43.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default"
san_list+=",DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
for s in "${sans[@]}"; do
  if is_ip "$s"; then san_list+=",IP:$s"; else san_list+=",DNS:$s"; fi
done
client_ext=$'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
# The serving certificate is signed again at each start: the SANs may differ.
sign apiserver "/CN=kube-apiserver" \
  $'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n'"subjectAltName=$san_list"
[[ -f "$pki/admin.crt" ]] || sign admin "/O=system:masters/CN=picluster-admin" "$client_ext"
[[ -f "$pki/controller-manager.crt" ]] || sign controller-manager "/CN=system:kube-controller-manager" "$client_ext"
[[ -f "$pki/scheduler.crt" ]] || sign scheduler "/CN=system:kube-scheduler" "$client_ext"
# kwok writes node and pod status for every managed node: system:masters keeps it simple.
[[ -f "$pki/kwok.crt" ]] || sign kwok "/O=system:masters/CN=kwok" "$client_ext"
[[ -f "$pki/front-proxy-client.crt" ]] || sign front-proxy-client "/CN=front-proxy-client" "$client_ext" front-proxy-ca
[[ -f "$pki/local-path.crt" ]] || sign local-path "/O=system:masters/CN=local-path-provisioner" "$client_ext"
if [[ ! -f "$pki/sa.key" ]]; then
  new_key sa
  openssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
fi

# --- kubeconfigs ----------------------------------------------------------------------
b64() { base64 -w0 <"$1"; }
# kubeconfig FILE SERVER USER
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: picluster
  cluster:
    server: $2
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $(b64 "$pki/$3.crt")
    client-key-data: $(b64 "$pki/$3.key")
contexts:
- name: picluster
  context: {cluster: picluster, user: $3}
current-context: picluster
EOF
  chmod 0600 "$1"
}
api_url="https://127.0.0.1:$api_port"
kubeconfig "$state/admin.kubeconfig" "$api_url" admin
kubeconfig "$state/controller-manager.kubeconfig" "$api_url" controller-manager
kubeconfig "$state/scheduler.kubeconfig" "$api_url" scheduler
kubeconfig "$state/kwok.kubeconfig" "$api_url" kwok
extra_kubeconfigs=()
for s in "${sans[@]}"; do
  if is_ip "$s" && [[ "$s" != 127.* ]]; then
    kubeconfig "$state/admin@$s.kubeconfig" "https://$s:$api_port" admin
    extra_kubeconfigs+=("$state/admin@$s.kubeconfig")
  fi
done

# --- processes ------------------------------------------------------------------------
# start NAME ARGS...: $bin/NAME in the background, in its own session, log and pid in the
# state dir (start_cmd NAME COMMAND ARGS... for a command from elsewhere)
start_cmd() {
  local name="$1"; shift
  echo "=== $(date -Is) $*" >>"$logs/$name.log"
  setsid "$@" >>"$logs/$name.log" 2>&1 </dev/null &
  local pid=$! tries=0
  echo "$pid" >"$pids/$name.pid"
  started=1
  # Until the forked shell has exec'd the program, its pid still shows this script's command
  # line, and `running` would report the program gone: wait (bounded) for the exec.
  until ours "$name" "$pid" || ! kill -0 "$pid" 2>/dev/null || ((tries++ >= 50)); do
    sleep 0.1
  done
}
start() { start_cmd "$1" "$bin/$1" "${@:2}"; }
# wait_for WHAT LOG COMMAND...: run COMMAND each second until it succeeds, at most $timeout s
wait_for() {
  local what="$1" log="$2" proc="$3" t0=$SECONDS; shift 3
  until "$@" >/dev/null 2>&1; do
    if ! running "$proc"; then
      echo "up.sh: $proc exited; last lines of $log:" >&2; tail -n 20 "$log" >&2; exit 1
    fi
    if ((SECONDS - t0 >= timeout)); then deadline_msg "$what" "$log"; exit 1; fi
    sleep 1
  done
  printf '  %-34s ready after %3ss (%ss since start)\n' "$what" "$((SECONDS - t0))" "$((SECONDS - t_start))"
}
kcurl() {
  curl -sf --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$@"
}

start etcd --name picluster --data-dir "$state/etcd-data" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "picluster=http://127.0.0.1:$etcd_peer_port" \
  --quota-backend-bytes 2147483648 --log-level warn
wait_for etcd "$logs/etcd.log" etcd curl -sf --max-time 2 "http://127.0.0.1:$etcd_port/health"

# Flags as K3s v1.31 passes them where they matter to a deployment (service CIDR, issuer,
# audiences, NodeRestriction, no anonymous requests); admission plugins otherwise the
# defaults, so PodSecurity admission is on.
start kube-apiserver \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address "$bind" --secure-port "$api_port" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --authorization-mode Node,RBAC --anonymous-auth=false \
  --enable-admission-plugins NodeRestriction \
  --allow-privileged=true \
  --service-cluster-ip-range 10.43.0.0/16 --service-node-port-range 30000-32767 \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --api-audiences https://kubernetes.default.svc.cluster.local,k3s \
  --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" \
  --requestheader-client-ca-file "$pki/front-proxy-ca.crt" \
  --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
  --cert-dir "$state/apiserver-certs" \
  --profiling=false --v 1
wait_for "kube-apiserver /readyz" "$logs/kube-apiserver.log" kube-apiserver kcurl "$api_url/readyz"
t_api=$((SECONDS - t_start))

start kube-controller-manager \
  --kubeconfig "$state/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$state/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$state/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$cm_port" \
  --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --allocate-node-cidrs=true --cluster-cidr 10.42.0.0/16 --service-cluster-ip-range 10.43.0.0/16 \
  --controllers '*,tokencleaner' --profiling=false --v 1
start kube-scheduler \
  --kubeconfig "$state/scheduler.kubeconfig" \
  --authentication-kubeconfig "$state/scheduler.kubeconfig" \
  --authorization-kubeconfig "$state/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$sched_port" \
  --leader-elect=false --profiling=false --v 1
# kwok manages only Node objects carrying its annotation, so a real kubelet could join too. Its
# pod stages are its defaults plus a failing command's double (kwok-stages.yaml says why).
start kwok \
  --kubeconfig "$state/kwok.kubeconfig" \
  --config "$here/kwok-stages.yaml" \
  --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
  --cidr 10.42.0.0/16 --node-ip 192.0.2.10 \
  --server-address "127.0.0.1:$kwok_port" \
  --node-lease-duration-seconds 40
wait_for kube-controller-manager "$logs/kube-controller-manager.log" kube-controller-manager \
  curl -skf --max-time 2 "https://127.0.0.1:$cm_port/healthz"
wait_for kube-scheduler "$logs/kube-scheduler.log" kube-scheduler \
  curl -skf --max-time 2 "https://127.0.0.1:$sched_port/healthz"

if ((local_path)); then
  sc_json='{"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
    "metadata": {"name": "local-path", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
    "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer", "reclaimPolicy": "Delete"}'
  code="$(kcurl -o "$logs/storageclass.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    -X POST "$api_url/apis/storage.k8s.io/v1/storageclasses" --data-binary "$sc_json" || true)"
  [[ "$code" == 201 || "$code" == 409 ]] || { cat "$logs/storageclass.json" >&2; die "creating StorageClass local-path: HTTP $code"; }
  start_cmd local-path-provisioner python3 "$here/local-path-provisioner" --api "$api_url" \
    --ca "$pki/ca.crt" --cert "$pki/local-path.crt" --key "$pki/local-path.key"
  echo "  StorageClass local-path (default) + local-path-provisioner"
fi

# --- nodes: Node objects as a K3s v1.31.4 node on a Raspberry Pi registers them ------------
# Node addresses come from TEST-NET-1 (192.0.2.0/24, never routed): not loopback, which the
# endpoints controllers refuse, so the hostNetwork pods of a DaemonSet (node-exporter) get
# endpoints as on real Pis.
node_json() { # node_json NAME ROLE ADDRESS
  local name="$1" role="$2" address="$3" role_labels=""
  if [[ "$role" == server ]]; then
    role_labels='"node-role.kubernetes.io/control-plane": "true", "node-role.kubernetes.io/master": "true", "node-role.kubernetes.io/etcd": "true",'
  fi
  cat <<EOF
{"apiVersion": "v1", "kind": "Node",
 "metadata": {"name": "$name",
   "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
   "labels": {$role_labels
     "kubernetes.io/hostname": "$name", "kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64",
     "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "arm64",
     "node.kubernetes.io/instance-type": "k3s", "type": "kwok"}},
 "spec": {},
 "status": {
   "capacity": {"cpu": "4", "memory": "8009856Ki", "pods": "110", "ephemeral-storage": "30Gi"},
   "allocatable": {"cpu": "4", "memory": "8009856Ki", "pods": "110", "ephemeral-storage": "29Gi"},
   "addresses": [{"type": "InternalIP", "address": "$address"}, {"type": "Hostname", "address": "$name"}],
   "nodeInfo": {"architecture": "arm64", "operatingSystem": "linux",
     "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.6.51+rpt-rpi-v8",
     "kubeletVersion": "v1.31.4+k3s1", "kubeProxyVersion": "v1.31.4+k3s1",
     "containerRuntimeVersion": "containerd://1.7.23-k3s2",
     "machineID": "", "systemUUID": "", "bootID": ""}}}
EOF
}
node_names=()
for n in "${nodes[@]}"; do
  name="${n%%:*}" role=agent
  if [[ "$n" == *:server ]]; then role=server
  elif [[ "$n" != *:* && "$name" == *server* ]]; then role=server
  fi
  node_names+=("$name")
  code="$(node_json "$name" "$role" "192.0.2.$((10 + ${#node_names[@]}))" | kcurl -o "$logs/node-$name.json" -w '%{http_code}' \
    -H 'Content-Type: application/json' -X POST --data-binary @- "$api_url/api/v1/nodes" || true)"
  [[ "$code" == 201 || "$code" == 409 ]] || { cat "$logs/node-$name.json" >&2; die "creating node $name: HTTP $code"; }
  echo "  node $name ($role)"
done

nodes_ready() {
  kcurl "$api_url/api/v1/nodes" | python3 -c '
import json, sys
want = set(sys.argv[1:])
ready = {n["metadata"]["name"] for n in json.load(sys.stdin)["items"]
         if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))}
sys.exit(0 if want <= ready else 1)' "${node_names[@]}"
}
wait_for "nodes Ready (${#node_names[@]})" "$logs/kwok.log" kwok nodes_ready
# Pods need the namespace's default ServiceAccount, made by the controller-manager.
wait_for "default ServiceAccount" "$logs/kube-controller-manager.log" kube-controller-manager \
  kcurl "$api_url/api/v1/namespaces/default/serviceaccounts/default"

cat >"$state/cluster.env" <<EOF
KUBECONFIG=$state/admin.kubeconfig
PICLUSTER_CLUSTER_API=$api_url
PICLUSTER_CLUSTER_API_PORT=$api_port
PICLUSTER_CLUSTER_ETCD=http://127.0.0.1:$etcd_port
PICLUSTER_CLUSTER_BIN=$bin
PICLUSTER_CLUSTER_NODES="${node_names[*]}"
EOF
echo "up: control plane in $((SECONDS - t_start))s (API ready after ${t_api}s)"
echo "api: $api_url (listening on $bind:$api_port)"
echo "kubeconfig: $state/admin.kubeconfig"
for k in "${extra_kubeconfigs[@]}"; do echo "kubeconfig: $k"; done
echo "stop: $here/down.sh --state $state"
