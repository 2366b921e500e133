#!/bin/sh
# TEST DOUBLE standing in for the K3s installer (https://get.k3s.io) and the K3s binary, which are
# not reachable from the test machines. Used only by the simulated-Pi tests: it installs no
# Kubernetes, but it behaves like K3s where picluster's scripts depend on it, each behaviour
# citing the K3s source (k3s-io/k3s) or documentation (k3s-io/docs) it mirrors.
#
# The installer (install.sh):
#   - honours INSTALL_K3S_VERSION, INSTALL_K3S_EXEC (server | agent), INSTALL_K3S_SKIP_START and
#     copies K3S_* / CONTAINERD_* environment variables into the unit's .env file;
#   - creates /usr/local/bin/k3s with kubectl/crictl/ctr symlinks, k3s-killall.sh,
#     k3s-uninstall.sh or k3s-agent-uninstall.sh, and k3s.service or k3s-agent.service;
#   - the unit is `Type=notify` with `TimeoutStartSec=0` (install.sh create_systemd_service_file),
#     and unless INSTALL_K3S_SKIP_START=true the installer runs `systemctl restart`, which blocks
#     until K3s reports READY - forever when it never does (install.sh systemd_start);
#   - installing the other role next to an installed one creates a second service beside the
#     first, and the uninstall script then skips the cleanup ("Additional k3s services installed",
#     install.sh create_uninstall).
# Each call is recorded in /var/log/picluster-doubles/k3s-install.log: its arguments, the NAMES
# (never the values) of its K3S_* / INSTALL_* environment variables, the version and the exec.
#
# Stricter than the real one, on purpose: it fails unless /etc/rancher/k3s/config.yaml names a
# `token-file` that exists, is owned by root and has mode 0600 - picluster must write both before
# it installs K3s, and the tests prove that ordering with this check.
#
# The K3s binary (`k3s server | agent`), reading config.yaml and config.yaml.d/*.yaml:
#   - READY (sd_notify) only once the node really joined: a server after its datastore accepted
#     the token, an agent after the server accepted its token and node password; until then it
#     retries, as K3s does (pkg/agent/run.go, "Waiting to retrieve agent configuration").
#   - The token is bound to the datastore: a server restarted with another token fails with
#     "bootstrap data already found and encrypted with different token" (pkg/cluster/storage.go)
#     and systemd restarts it in a loop (Restart=always).
#   - A full token `K10<sha256 of the CA>::server:<password>` makes a joiner check the CA it
#     downloads from /cacerts before it sends credentials (pkg/clientaccess/token.go; k3s-io/docs
#     cli/token.md "Secure" format); a short token skips that check.
#   - Node passwords: an agent keeps /etc/rancher/node/password; the server rejects a known node
#     name with another password ("Node password rejected", pkg/nodepassword).
#   - node-label and node-taint apply only when a node registers; a restart with other values
#     leaves the Node as it is (kubelet registers a Node once; k3s-io/docs advanced.md "Node
#     Labels and Taints": "only add labels and/or taints at registration time").
#   - Secrets encryption cannot simply be switched off: a server whose datastore holds encrypted
#     Secrets and starts without secrets-encryption cannot read them (k3s-io/docs
#     security/secrets-encryption.md: disabling is `k3s secrets-encrypt disable`, then a restart,
#     then `reencrypt`); the double fails to start then.
#   - The server writes /etc/rancher/k3s/k3s.yaml (write-kubeconfig-mode) whose CA is the server
#     CA file, and /var/lib/rancher/k3s/server/token holding the full token.
#   - /etc/rancher/k3s/registries.yaml is read only when K3s starts (rancher/wharfie
#     pkg/registries GetPrivateRegistries logs "Using registry config file at <path>"), and K3s
#     renders containerd's hosts.toml files from it then (k3s-io/k3s pkg/agent/containerd/
#     config.go writeContainerdHosts), removing those of registries no longer in it. The double's
#     stand-in for those files: a copy of what it read, /var/lib/rancher/k3s/agent/etc/
#     double-registries.yaml (0600, as it may hold a password), removed when there is none.
# Where the double has to differ from K3s, it says so: it speaks plain HTTP (not TLS) for
# /cacerts and node registration, on the server URL's port + 1 (6444 for K3s's 6443, which stays
# free for a real API server), served through systemd socket activation (double-k3s-api.socket),
# since no TLS server can run in the simulated Pi; and its unit sets NotifyAccess=all, since a
# shell cannot send READY from its main process.
# With a real control plane (the end-to-end tests put its admin kubeconfig at
# /etc/rancher/k3s/double-real-apiserver.yaml and a kubectl at /usr/local/bin/kubectl-real on the
# first server), the server writes that kubeconfig as its k3s.yaml, its server CA is that
# kubeconfig's CA (so /cacerts and the full token's hash match k3s.yaml, as in K3s), and
# `k3s kubectl` is the real kubectl against the real API server.
#
# `k3s kubectl` on a server answers from the node registry the registrations above fill
# (/var/lib/rancher/k3s/server/double-nodes), plus /etc/rancher/k3s/double-ready-nodes (`NAME` or
# `NAME STATUS` per line) where a test sets a status by hand:
#   get node NAME [--no-headers] [-o go-template=...]   status, labels, annotations or taints
#   get --raw /readyz                                   `ok` once the server is READY
#   get pv -o custom-columns=...                        the volumes a test lists in double-pvs
#   get nodes -o go-template=...   `NAME KUBELET-VERSION UNSCHEDULABLE READY` per node
#   get pods -A --field-selector spec.nodeName=NAME -o go-template=...   the node's pods
#   label | annotate | taint node NAME ARGS [--overwrite]
#   cordon | uncordon NAME      sets or clears the node's spec.unschedulable
#   drain NAME [--force] [--delete-emptydir-data] ...   cordons, then evicts the node's pods;
#                               refuses (evicting nothing) pods without a controller unless --force
#                               (a test lists them in the node's `unmanaged-pods` file) and pods
#                               with an emptyDir volume unless --delete-emptydir-data
#   delete node NAME            (with --server https://OTHER:6443: on that server, through its API)
#   -n kube-system delete secret NAME.node-password.k3s   forgets the node's password (below)
# The datastore and its snapshots (picluster's snapshot and restore drill):
#   - The datastore is a real SQLite file (needs the sqlite3 CLI on the Pi): kine's
#     server/db/state.db on a single server (K3s's default without cluster-init), and for
#     embedded etcd (cluster-init, or a server that joined one) server/db/etcd/double-etcd.db,
#     standing in for etcd's member database. Objects live there under kine's keys
#     (/registry/<resource>/<namespace>/<name>), in WAL mode as kine runs SQLite; writes leave
#     their pages in state.db-wal (`.dbconfig no_ckpt_on_close`), as kine, keeping the database
#     open, leaves them until SQLite's automatic checkpoint.
#     `k3s kubectl create configmap|deployment NAME [-n NS] [--from-literal=K=V|--image=I]`,
#     `get configmaps|deployments [-n NS] -o name` and `delete configmap|deployment NAME [-n NS]`
#     read and write them. (Nodes stay in the registry above, outside the datastore.)
#   - `k3s etcd-snapshot save` (embedded etcd only, with the server running) writes
#     server/db/snapshots/on-demand-<node>-<unix time>, a consistent copy of the database (the
#     double's stand-in for etcd's snapshot API; pkg/etcd/snapshot.go names on-demand snapshots
#     so); `k3s etcd-snapshot ls` (the server running too) lists them, and with `etcd-s3: true` in config.yaml the objects
#     of the bucket too (Location s3://BUCKET/NAME). The double cannot reach S3: the bucket is
#     the directory /var/lib/picluster-doubles/s3/<etcd-s3-bucket> a test fills. Scheduled etcd
#     snapshots are K3s's own cron and are not simulated.
#   - `k3s server --cluster-reset --cluster-reset-restore-path=P`: refused on SQLite and while the
#     server runs; otherwise the etcd database is replaced by the snapshot P (with `etcd-s3: true`
#     in config.yaml and no --etcd-s3=false, P names an object of the bucket above; none of that
#     name fails), the members reset to this server, and it exits 0 printing K3s's "Managed etcd
#     cluster membership has been reset, restart without --cluster-reset flag now" (pkg/etcd/
#     etcd.go). As K3s, it moves server/db/etcd to server/db/etcd-old-<unix time> before it
#     restores (rancher/rke2 docs/backup_restore.md), so a snapshot that is not one (corrupt)
#     fails with no server/db/etcd left. A server with `server:` whose server/db/etcd is gone
#     joins again when it starts, as K3s's rejoin after `rm -rf server/db` (k3s-io/docs
#     datastore/backup-restore.md). The members (server/db/etcd/double-members on the first
#     server) are the first server, then every server that joins it (K3s's join adds it to the
#     etcd cluster, pkg/etcd/etcd.go "Adding member"), until a --cluster-reset leaves only the
#     server it ran on.
#
# Each node's kubelet version is the version of the K3s that last registered it, as a kubelet
# reports its own version in status.nodeInfo.kubeletVersion every time it starts (kubernetes
# pkg/kubelet/nodestatus/setters.go, VersionInfo): so after an upgrade the node shows the new
# version only once its restarted K3s is back. The double's deviation: a joining node tells the
# server its version in its registration (K3s-Node-Version), having no API client of its own;
# with a real control plane, the server then writes it into the real Node's status.
# Pods on a node (for drain) are lines `NAMESPACE/NAME [TAG...]` of the node's `pods` file in the
# registry, a test's stand-in for the scheduler. Tag `pdb`: the pod's PodDisruptionBudget allows
# no disruption now, so its eviction is refused with 429; kubectl drain retries it every 5 s
# until --timeout, then fails naming it and leaves the node cordoned (kubectl pkg/drain/drain.go
# evictPods; pkg/cmd/drain/drain.go RunDrain). The double does not wait: it fails at once, as
# kubectl does when --timeout has passed, with the timeout it was given. Tag `emptydir`: the pod
# has an emptyDir volume, which kubectl refuses to evict without --delete-emptydir-data
# (pkg/drain/filters.go localStorageFilter).
# A test makes one request fail as an API server that errs would (`Error from server`): lines of
# the node's `api-errors` file in the registry, `annotation KEY` (reading that annotation) or
# `uncordon`.
# The first server's log records cordon, eviction, uncordon and each (re)registration with its
# version, in order, so a test can assert the order of a rolling upgrade.
# k3s-killall.sh and the uninstall scripts behave as the real ones: the uninstall removes
# /etc/rancher/k3s, /var/lib/rancher/k3s, the binary and the scripts.
# shellcheck disable=SC2317 # functions are reached through the name dispatch at the bottom
set -eu

# The installed /usr/local/bin/k3s carries its version here (the installer rewrites this line).
K3S_DOUBLE_VERSION=none

LOG=/var/log/picluster-doubles/k3s-install.log
BIN_DIR=/usr/local/bin
SYSTEMD_DIR=/etc/systemd/system
CONFIG_DIR=/etc/rancher/k3s
CONFIG_FILE=$CONFIG_DIR/config.yaml
DROPIN_DIR=$CONFIG_DIR/config.yaml.d
KUBECONFIG_FILE=$CONFIG_DIR/k3s.yaml
REGISTRIES_FILE=$CONFIG_DIR/registries.yaml
READY_NODES=$CONFIG_DIR/double-ready-nodes
DATA_DIR=/var/lib/rancher/k3s
SERVER_DIR=$DATA_DIR/server
CA_FILE=$SERVER_DIR/tls/server-ca.crt
BOOTSTRAP=$SERVER_DIR/cred/double-bootstrap
ENCRYPTED=$SERVER_DIR/cred/double-encrypted-secrets
SERVER_TOKEN=$SERVER_DIR/token
REGISTRY=$SERVER_DIR/double-nodes
PVS=$SERVER_DIR/double-pvs
NODE_PASSWORD=/etc/rancher/node/password
API_PORT=6444
REAL_KUBECONFIG=$CONFIG_DIR/double-real-apiserver.yaml
REAL_KUBECTL=$BIN_DIR/kubectl-real

info() { echo "[INFO]  (k3s double) $*"; }
fatal() {
    echo "[ERROR]  (k3s double) $*" >&2
    exit 1
}
record() {
    mkdir -p "${LOG%/*}"
    printf '%s\n' "$*" >>"$LOG"
}

# A top-level scalar of config.yaml as yaml.safe_dump writes it (surrounding quotes removed).
config_value() {
    [ -f "$CONFIG_FILE" ] || return 0
    sed -n "s/^$1: *//p" "$CONFIG_FILE" | head -n 1 | sed "s/^'\\(.*\\)'\$/\\1/; s/^\"\\(.*\\)\"\$/\\1/"
}

# The items of a top-level list, one per line, from config.yaml and its drop-ins (K3s merges
# config.yaml.d/*.yaml after config.yaml).
config_list() {
    for file in "$CONFIG_FILE" "$DROPIN_DIR"/*.yaml; do
        [ -f "$file" ] || continue
        awk -v key="$1:" '
            $0 == key { inside = 1; next }
            inside && /^- / { sub(/^- /, ""); gsub(/^'\''|'\''$/, ""); print; next }
            { inside = 0 }
        ' "$file"
    done
}

# Names (not values) of the K3S_* and INSTALL_* environment variables, space separated.
env_names() {
    env | sed -n 's/^\(\(K3S\|INSTALL\)_[A-Za-z0-9_]*\)=.*/\1/p' | sort | tr '\n' ' ' | sed 's/ $//'
}

sha256() { sha256sum | cut -d' ' -f1; }

check_token_file() {
    token_file=$(config_value token-file)
    [ -n "$token_file" ] || fatal "$CONFIG_FILE is missing or names no token-file (picluster writes both before installing)"
    [ -f "$token_file" ] || fatal "token-file $token_file does not exist"
    [ -s "$token_file" ] || fatal "token-file $token_file is empty"
    perms=$(stat -c '%a %U:%G' "$token_file")
    [ "$perms" = "600 root:root" ] || fatal "token-file $token_file is $perms, not 600 root:root"
}

# ---------------------------------------------------------------------------------------------
# The installer (the file run as `sh k3s-install.XXXXXX`).

installed_hashes() {
    sha256sum "$BIN_DIR/k3s" "$unit_file" "$env_file" 2>&1 || true
}

install_api_socket() {
    # The double's stand-in for the server's supervisor port (see the header).
    cat >"$SYSTEMD_DIR/double-k3s-api.socket" <<EOF
[Unit]
Description=K3s TEST DOUBLE: /cacerts and node registration on port $API_PORT (plain HTTP)

[Socket]
ListenStream=$API_PORT
Accept=yes
EOF
    cat >"$SYSTEMD_DIR/double-k3s-api@.service" <<EOF
[Unit]
Description=K3s TEST DOUBLE: one API request

[Service]
ExecStart=$BIN_DIR/k3s-double-api
StandardInput=socket
StandardOutput=socket
StandardError=journal
EOF
    ln -sf k3s "$BIN_DIR/k3s-double-api"
}

install_k3s() {
    args="$*"
    exec_value=${INSTALL_K3S_EXEC:-}
    record "install args=[$args] env=[$(env_names)] version=${INSTALL_K3S_VERSION:-} exec=$exec_value"
    [ "$(id -u)" -eq 0 ] || fatal "run as root"
    [ -f "$0" ] || fatal "run this double from a file (sh k3s-install.sh), not from a pipe"

    version=${INSTALL_K3S_VERSION:-}
    # The real installer asks the release channel when no version is given: unreachable here.
    [ -n "$version" ] || fatal "INSTALL_K3S_VERSION is required (the release channel is not reachable)"
    echo "$version" | grep -Eqx 'v[0-9]+\.[0-9]+\.[0-9]+\+k3s[0-9]+' ||
        fatal "no such K3s release: $version"

    # As the real installer: INSTALL_K3S_EXEC then the arguments; the first word, unless it is a
    # flag, is the command (default: agent when K3S_URL is set, else server).
    # shellcheck disable=SC2086 # split INSTALL_K3S_EXEC into words, as the real installer does
    set -- $exec_value "$@"
    case "${1:-}" in
        -* | "") if [ -n "${K3S_URL:-}" ]; then k3s_command=agent; else k3s_command=server; fi ;;
        *) k3s_command=$1 && shift ;;
    esac
    case "$k3s_command" in
        server) system_name=k3s ;;
        agent) system_name=k3s-agent ;;
        *) fatal "the double supports server and agent, not $k3s_command" ;;
    esac
    check_token_file

    unit_file=$SYSTEMD_DIR/$system_name.service
    env_file=$unit_file.env
    pre_hashes=$(installed_hashes)

    info "Using $version as release"
    new_bin=$(mktemp "$BIN_DIR/.k3s.XXXXXX")
    sed "s/^K3S_DOUBLE_VERSION=.*/K3S_DOUBLE_VERSION=$version/" "$0" >"$new_bin"
    chmod 755 "$new_bin"
    if [ -x "$BIN_DIR/k3s" ] && cmp -s "$new_bin" "$BIN_DIR/k3s"; then
        info "Skipping binary downloaded, installed k3s matches hash"
        rm -f "$new_bin"
    else
        info "Installing k3s to $BIN_DIR/k3s"
        mv -f "$new_bin" "$BIN_DIR/k3s"
    fi

    for cmd in kubectl crictl ctr; do
        if [ ! -e "$BIN_DIR/$cmd" ] && [ -z "$(command -v "$cmd" 2>/dev/null || true)" ]; then
            info "Creating $BIN_DIR/$cmd symlink to k3s"
            ln -sf k3s "$BIN_DIR/$cmd"
        fi
    done
    info "Creating killall script $BIN_DIR/k3s-killall.sh"
    cp "$0" "$BIN_DIR/k3s-killall.sh"
    chmod 755 "$BIN_DIR/k3s-killall.sh"
    info "Creating uninstall script $BIN_DIR/$system_name-uninstall.sh"
    cp "$0" "$BIN_DIR/$system_name-uninstall.sh"
    chmod 755 "$BIN_DIR/$system_name-uninstall.sh"
    [ "$k3s_command" = server ] && install_api_socket

    systemctl disable "$system_name" >/dev/null 2>&1 || true
    rm -f "$unit_file" "$env_file"
    info "env: Creating environment file $env_file"
    touch "$env_file"
    chmod 0600 "$env_file"
    env | grep -E '^(K3S|CONTAINERD)_' >"$env_file" || true
    info "systemd: Creating service file $unit_file"
    # Written like the real installer's `tee`: the mode follows the caller's umask.
    cat >"$unit_file" <<EOF
[Unit]
Description=Lightweight Kubernetes (TEST DOUBLE from tests/integration/doubles/k3s-install.sh)
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
# The double's deviation: its READY comes from systemd-notify, a child of the main process.
NotifyAccess=all
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-$env_file
KillMode=process
User=root
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStart=$BIN_DIR/k3s $k3s_command $*
EOF

    info "systemd: Enabling $system_name unit"
    systemctl enable "$unit_file" >/dev/null 2>&1
    systemctl daemon-reload >/dev/null
    if [ "${INSTALL_K3S_SKIP_START:-}" = true ]; then
        return 0
    fi
    if [ "$pre_hashes" = "$(installed_hashes)" ]; then
        info "No change detected so skipping service start"
        return 0
    fi
    info "systemd: Starting $system_name"
    # Blocks until READY, as the real installer's does (Type=notify, TimeoutStartSec=0).
    systemctl restart "$system_name"
}

# ---------------------------------------------------------------------------------------------
# The scripts the installer leaves behind.

killall() {
    for service in "$SYSTEMD_DIR"/k3s*.service; do
        if [ -s "$service" ]; then
            systemctl stop "${service##*/}"
        fi
    done
    systemctl stop double-k3s-api.socket >/dev/null 2>&1 || true
    rm -rf /run/k3s
}

uninstall() {
    system_name=$1
    record "uninstall $system_name"
    "$BIN_DIR/k3s-killall.sh"
    systemctl disable "$system_name" || true
    systemctl reset-failed "$system_name" || true
    systemctl daemon-reload
    rm -f "$SYSTEMD_DIR/$system_name.service" "$SYSTEMD_DIR/$system_name.service.env"
    trap 'rm -f "$BIN_DIR/$system_name-uninstall.sh"' EXIT
    for service in "$SYSTEMD_DIR"/k3s*.service; do
        if [ -e "$service" ]; then
            echo 'Additional k3s services installed, skipping uninstall of k3s'
            exit 0
        fi
    done
    for cmd in kubectl crictl ctr k3s-double-api; do
        if [ -L "$BIN_DIR/$cmd" ]; then
            rm -f "$BIN_DIR/$cmd"
        fi
    done
    rm -f "$SYSTEMD_DIR/double-k3s-api.socket" "$SYSTEMD_DIR/double-k3s-api@.service"
    systemctl daemon-reload
    rm -rf /etc/rancher/k3s /run/k3s /run/flannel "$DATA_DIR" /var/lib/kubelet
    rm -f "$BIN_DIR/k3s" "$BIN_DIR/k3s-killall.sh"
}

# ---------------------------------------------------------------------------------------------
# The node registry (what the API server knows about nodes), on servers.

node_name() {
    name=$(config_value node-name)
    echo "${name:-$(hostname)}"
}

arch() {
    case "$(uname -m)" in
        aarch64 | arm64) echo arm64 ;;
        x86_64 | amd64) echo amd64 ;;
        *) uname -m ;;
    esac
}

# register NAME PASSWORD ROLE LABELS TAINTS VERSION (LABELS and TAINTS comma separated): 0
# registered or already known with that password, 2 another password (K3s: "Node password
# rejected").
register() {
    dir=$REGISTRY/$1
    if [ -d "$dir" ]; then
        # A known node's password must match, unless its node-password Secret was deleted: then
        # the new password is kept (pkg/nodepassword Ensure: verify the Secret if it exists,
        # otherwise create it).
        if [ -f "$dir/password" ]; then
            [ "$(cat "$dir/password")" = "$2" ] || return 2
        else
            printf '%s\n' "$2" >"$dir/password"
        fi
        # Known node: labels and taints stay as registered (kubelet registers a Node once), and
        # so does a cordon (spec.unschedulable); the kubelet reports its (new) version.
        echo Ready >"$dir/status"
        report_version "$1" "$6"
        record "register $1 again version=$6"
        return 0
    fi
    mkdir -p "$dir"
    printf '%s\n' "$2" >"$dir/password"
    {
        echo "kubernetes.io/arch=$(arch)"
        echo "kubernetes.io/hostname=$1"
        echo "kubernetes.io/os=linux"
        [ "$3" = server ] && echo "node-role.kubernetes.io/control-plane=true"
        printf '%s' "$4" | tr ',' '\n' | sed '/^$/d'
    } | sort >"$dir/labels"
    printf '%s' "$5" | tr ',' '\n' | sed '/^$/d' | sed 's/^\([^=:]*\):/\1=:/' >"$dir/taints"
    : >"$dir/annotations"
    echo Ready >"$dir/status"
    report_version "$1" "$6"
    record "register $1 role=$3"
}

# The kubelet's version in the node's status (see the header); with a real control plane, in the
# real Node object too.
report_version() {
    [ -n "$2" ] || return 0
    echo "$2" >"$REGISTRY/$1/version"
    if [ -s "$REAL_KUBECONFIG" ] && [ -x "$REAL_KUBECTL" ]; then
        "$REAL_KUBECTL" --kubeconfig "$REAL_KUBECONFIG" patch node "$1" --subresource=status \
            --type=merge -p "{\"status\":{\"nodeInfo\":{\"kubeletVersion\":\"$2\"}}}" >/dev/null ||
            echo "could not report the kubelet version of $1 to the real API server" >&2
    fi
}

# ---------------------------------------------------------------------------------------------
# The double's API (one request per connection, on stdin and stdout; see the header).

respond() {
    code=$1 body_file=$2
    printf 'HTTP/1.0 %s double\r\nContent-Type: text/plain\r\nContent-Length: %s\r\nConnection: close\r\n\r\n' \
        "$code" "$(wc -c <"$body_file")"
    cat "$body_file"
}

respond_text() {
    tmp=$(mktemp)
    printf '%s\n' "$2" >"$tmp"
    respond "$1" "$tmp"
    rm -f "$tmp"
}

# 0 when the Basic credentials `node:<password>` carry the password the datastore was made with.
authorized() {
    encoded=${1#Basic }
    [ "$encoded" != "$1" ] || return 1
    credentials=$(printf '%s' "$encoded" | base64 -d 2>/dev/null) || return 1
    secret=${credentials#node:}
    [ -f "$BOOTSTRAP" ] && [ "$(printf '%s' "$secret" | sha256)" = "$(cat "$BOOTSTRAP")" ]
}

api() {
    cr=$(printf '\r')
    IFS=' ' read -r method path _ || exit 0
    auth="" name="" node_password="" labels="" taints="" role=agent version=""
    while IFS= read -r line; do
        line=${line%"$cr"}
        [ -n "$line" ] || break
        value=${line#*: }
        case "$(printf '%s' "${line%%:*}" | tr '[:upper:]' '[:lower:]')" in
            authorization) auth=$value ;;
            k3s-node-name) name=$value ;;
            k3s-node-password) node_password=$value ;;
            k3s-node-labels) labels=$value ;;
            k3s-node-taints) taints=$value ;;
            k3s-node-role) role=$value ;;
            k3s-node-version) version=$value ;;
        esac
    done
    case "$method $path" in
        "GET /cacerts")
            [ -f "$CA_FILE" ] || { respond_text 503 "server is not ready"; exit 0; }
            respond 200 "$CA_FILE"
            ;;
        "POST /v1-k3s/register")
            if ! authorized "$auth"; then
                record "register refused $name: token"
                respond_text 401 "Unauthorized"
                exit 0
            fi
            status=0
            register "$name" "$node_password" "$role" "$labels" "$taints" "$version" || status=$?
            [ "$status" -ne 0 ] || [ "$role" != server ] || add_member "$name"
            if [ "$status" -eq 2 ]; then
                record "register refused $name: node password"
                respond_text 403 "Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' may not match server node-passwd entry, try enabling a unique node name with the --with-node-id flag"
                exit 0
            fi
            respond_text 200 "registered $name"
            ;;
        "DELETE /v1-double/nodes/"*)
            name=${path#/v1-double/nodes/}
            if ! authorized "$auth"; then
                respond_text 401 "Unauthorized"
            elif [ -n "$name" ] && [ -d "$REGISTRY/$name" ]; then
                rm -rf "${REGISTRY:?}/$name"
                if [ -f "$READY_NODES" ]; then
                    awk -v n="$name" '$1 != n' "$READY_NODES" >"$READY_NODES.tmp"
                    mv -f "$READY_NODES.tmp" "$READY_NODES"
                fi
                record "kubectl delete node $name (from another server)"
                respond_text 200 "node \"$name\" deleted"
            else
                respond_text 404 "nodes \"$name\" not found"
            fi
            ;;
        *) respond_text 404 "the double serves /cacerts, /v1-k3s/register and node deletion only" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# The fake k3s binary.

write_kubeconfig() {
    mode=$(config_value write-kubeconfig-mode)
    mode=${mode:-0600}
    echo "$mode" | grep -Eqx '0?[0-7]{3}' || fatal "invalid write-kubeconfig-mode $mode"
    tmp=$(mktemp "$CONFIG_DIR/.k3s.yaml.XXXXXX")
    if [ -s "$REAL_KUBECONFIG" ]; then
        cp "$REAL_KUBECONFIG" "$tmp"
        chmod "$mode" "$tmp"
        mv -f "$tmp" "$KUBECONFIG_FILE"
        echo "Wrote kubeconfig $KUBECONFIG_FILE (mode $mode) for the real API server" >&2
        return 0
    fi
    ca_data=$(base64 -w0 <"$CA_FILE")
    cat >"$tmp" <<EOF
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: $ca_data
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: VEVTVCBET1VCTEUgQ0xJRU5UIENFUlQK
    client-key-data: VEVTVCBET1VCTEUgQ0xJRU5UIEtFWQo=
EOF
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$KUBECONFIG_FILE"
    echo "Wrote kubeconfig $KUBECONFIG_FILE (mode $mode)" >&2
}

# The token's parts: TOKEN_CA_HASH (empty for a short token) and TOKEN_PASSWORD.
parse_token() {
    token_file=$(config_value token-file)
    if [ -n "$token_file" ] && [ ! -s "$token_file" ]; then
        fatal "failed to read token file $token_file"
    fi
    token=$(cat "$token_file")
    TOKEN_CA_HASH="" TOKEN_PASSWORD=$token
    case "$token" in
        K10*::*)
            TOKEN_CA_HASH=${token#K10}
            TOKEN_CA_HASH=${TOKEN_CA_HASH%%::*}
            TOKEN_PASSWORD=${token#*::}
            TOKEN_PASSWORD=${TOKEN_PASSWORD#*:}
            ;;
    esac
}

# The double's API for a K3s server URL: https://HOST:PORT -> http://HOST:PORT+1.
double_api_url() {
    hostport=${1#https://}
    hostport=${hostport%%/*}
    port=${hostport##*:}
    [ "$port" != "$hostport" ] || port=6443
    echo "http://${hostport%:*}:$((port + 1))"
}

# join SERVER_URL ROLE: /cacerts (checked against the token's CA hash), then registration with
# the token and the node password. Retries until it succeeds, as K3s does; never gives up.
join() {
    url=$(double_api_url "$1")
    mkdir -p /run/k3s "${NODE_PASSWORD%/*}"
    if [ ! -s "$NODE_PASSWORD" ]; then
        (umask 077 && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$NODE_PASSWORD")
    fi
    headers=/run/k3s/double-join-headers
    (
        umask 077
        printf 'Authorization: Basic %s\n' "$(printf 'node:%s' "$TOKEN_PASSWORD" | base64 -w0)"
        printf 'K3s-Node-Name: %s\n' "$(node_name)"
        printf 'K3s-Node-Password: %s\n' "$(cat "$NODE_PASSWORD")"
        printf 'K3s-Node-Role: %s\n' "$2"
        printf 'K3s-Node-Version: %s\n' "$K3S_DOUBLE_VERSION"
        printf 'K3s-Node-Labels: %s\n' "$(config_list node-label | paste -sd, -)"
        printf 'K3s-Node-Taints: %s\n' "$(config_list node-taint | paste -sd, -)"
    ) >"$headers"
    while true; do
        if ! curl -sf --max-time 5 -o /run/k3s/double-cacerts "$url/cacerts"; then
            echo "Waiting to retrieve agent configuration; server is not ready: failed to get CA certs from $1" >&2
        elif [ -n "$TOKEN_CA_HASH" ] && [ "$(sha256 </run/k3s/double-cacerts)" != "$TOKEN_CA_HASH" ]; then
            echo "failed to validate token: token CA hash does not match the Cluster CA certificate hash" >&2
        else
            code=$(curl -s --max-time 5 -o /run/k3s/double-register -w '%{http_code}' -X POST \
                -H @"$headers" "$url/v1-k3s/register" || true)
            case "$code" in
                200)
                    cp /run/k3s/double-cacerts /run/k3s/double-cluster-ca
                    # What K3s keeps once the node joined (its kubelet's client certificate).
                    mkdir -p "$DATA_DIR/agent"
                    cp /run/k3s/double-cacerts "$DATA_DIR/agent/server-ca.crt"
                    echo "client certificate of $(node_name) (double)" >"$DATA_DIR/agent/client-kubelet.crt"
                    return 0
                    ;;
                401) echo "Failed to validate connection to cluster at $1: token is not valid (401 Unauthorized)" >&2 ;;
                403) cat /run/k3s/double-register >&2 ;;
                *) echo "Waiting to retrieve agent configuration; server is not ready: register returned ${code:-nothing}" >&2 ;;
            esac
        fi
        sleep 2
    done
}

# The datastore file: etcd's stand-in for embedded etcd, kine's state.db for SQLite.
datastore() {
    if [ "$(config_value cluster-init)" = true ] || [ -n "$(config_value server)" ]; then
        echo "$SERVER_DIR/db/etcd/double-etcd.db"
    else
        echo "$SERVER_DIR/db/state.db"
    fi
}

need_sqlite3() {
    command -v sqlite3 >/dev/null 2>&1 || fatal "the double keeps its datastore in SQLite: install sqlite3 on this Pi"
}

init_datastore() {
    db=$(datastore)
    mkdir -p "${db%/*}"
    command -v sqlite3 >/dev/null 2>&1 || return 0  # the tests that never store an object
    sqlite3 "$db" 'PRAGMA journal_mode=WAL;' 'CREATE TABLE IF NOT EXISTS kine (name TEXT PRIMARY KEY, value TEXT);' >/dev/null
    chmod 600 "$db"
    # The first server of embedded etcd is its first member.
    case "$db" in
        */etcd/*) [ -n "$(config_value server)" ] || [ -s "${db%/*}/double-members" ] || node_name >"${db%/*}/double-members" ;;
    esac
}

# add_member NAME: a server joined this one; with embedded etcd, it is a member from now on.
add_member() {
    db=$(datastore)
    case "$db" in
        */etcd/*) ;;
        *) return 0 ;;
    esac
    members=${db%/*}/double-members
    grep -qx "$1" "$members" 2>/dev/null || echo "$1" >>"$members"
}

# The double's stand-in for the S3 bucket of config.yaml (see the header).
s3_bucket_dir() { echo "/var/lib/picluster-doubles/s3/$(config_value etcd-s3-bucket)"; }

# kine_sql SQL: one statement on the datastore $db, leaving its WAL as kine's open connection
# does (without no_ckpt_on_close, the last connection to close checkpoints and deletes it).
kine_sql() {
    sqlite3 "$db" ".timeout 5000" ".output /dev/null" ".dbconfig no_ckpt_on_close on" ".output stdout" "$1"
}

# Quote a value for an SQL string literal.
sql_quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"; }

# objects VERB ARGS...: create | get | delete of configmaps and deployments in the datastore.
objects() {
    need_sqlite3
    verb=$1 && shift
    kind=${1:-} && shift
    case "$kind" in
        configmap | configmaps | cm) resource=configmaps single=configmap ;;
        deployment | deployments | deploy) resource=deployments single=deployment.apps ;;
        *) fatal "the double stores configmaps and deployments only, not $kind" ;;
    esac
    namespace=default name="" value=""
    while [ $# -gt 0 ]; do
        case "$1" in
            -n | --namespace) namespace=$2 && shift 2 ;;
            --from-literal=* | --image=*) value="$value${value:+,}${1#--*=}" && shift ;;
            -o) shift 2 ;;
            -*) shift ;;
            *) name=$1 && shift ;;
        esac
    done
    db=$(datastore)
    [ -s "$db" ] || fatal "no datastore at $db"
    prefix="/registry/$resource/$namespace/"
    case "$verb" in
        create)
            [ -n "$name" ] || fatal "the double needs a name"
            if [ -n "$(kine_sql "SELECT name FROM kine WHERE name = $(sql_quote "$prefix$name");")" ]; then
                echo "Error from server (AlreadyExists): $resource \"$name\" already exists" >&2
                exit 1
            fi
            kine_sql "INSERT INTO kine (name, value) VALUES ($(sql_quote "$prefix$name"), $(sql_quote "$value"));" >/dev/null
            echo "$single/$name created"
            ;;
        get)
            kine_sql "SELECT name FROM kine WHERE name LIKE $(sql_quote "$prefix%") ORDER BY name;" |
                sed "s|^$prefix|$single/|"
            ;;
        delete)
            if [ -z "$(kine_sql "SELECT name FROM kine WHERE name = $(sql_quote "$prefix$name");")" ]; then
                echo "Error from server (NotFound): $resource \"$name\" not found" >&2
                exit 1
            fi
            kine_sql "DELETE FROM kine WHERE name = $(sql_quote "$prefix$name");" >/dev/null
            echo "$single \"$name\" deleted"
            ;;
    esac
}

etcd_snapshot() {
    db=$(datastore)
    case "$db" in
        */etcd/*) ;;
        *) fatal "etcd datastore disabled (this server runs SQLite: K3s snapshots embedded etcd only)" ;;
    esac
    need_sqlite3
    dir=$SERVER_DIR/db/snapshots
    case "${1:-save}" in
        save)
            systemctl is-active --quiet k3s || fatal "the K3s server is not running"
            mkdir -p "$dir"
            name=on-demand-$(node_name)-$(date +%s)
            (umask 077 && sqlite3 "$db" ".timeout 10000" ".backup '$dir/$name'")
            record "etcd-snapshot save $name"
            echo "Snapshot $name saved."
            ;;
        ls | list)
            # K3s's etcd-snapshot commands ask the running server (k3s-io/k3s#10513).
            systemctl is-active --quiet k3s || fatal "the K3s server is not running"
            printf '%-45s %-70s %-10s %s\n' Name Location Size Created
            for file in "$dir"/*; do
                [ -f "$file" ] || continue
                printf '%-45s %-70s %-10s %s\n' "${file##*/}" "file://$file" "$(stat -c %s "$file")" \
                    "$(date -u -d "@$(stat -c %Y "$file")" +%Y-%m-%dT%H:%M:%SZ)"
            done
            if [ "$(config_value etcd-s3)" = true ]; then
                bucket=$(s3_bucket_dir)
                for file in "$bucket"/*; do
                    [ -f "$file" ] || continue
                    printf '%-45s %-70s %-10s %s\n' "${file##*/}" "s3://${bucket##*/}/${file##*/}" \
                        "$(stat -c %s "$file")" "$(date -u -d "@$(stat -c %Y "$file")" +%Y-%m-%dT%H:%M:%SZ)"
                done
            fi
            ;;
        *) fatal "the double implements etcd-snapshot save and ls only" ;;
    esac
}

cluster_reset() {
    restore_path="" s3=$(config_value etcd-s3)
    for arg in "$@"; do
        case "$arg" in
            --cluster-reset-restore-path=*) restore_path=${arg#*=} ;;
            --etcd-s3=false) s3=false ;;
        esac
    done
    db=$(datastore)
    case "$db" in
        */etcd/*) ;;
        *) fatal "--cluster-reset is for embedded etcd; this server runs SQLite" ;;
    esac
    systemctl is-active --quiet k3s && fatal "K3s is running: stop it before --cluster-reset (the ports are in use)"
    parse_token
    if [ ! -f "$BOOTSTRAP" ] || [ "$(cat "$BOOTSTRAP")" != "$(printf '%s' "$TOKEN_PASSWORD" | sha256)" ]; then
        fatal "bootstrap data already found and encrypted with different token"
    fi
    if [ -n "$restore_path" ]; then
        if [ "$s3" = true ]; then
            [ -s "$(s3_bucket_dir)/$restore_path" ] ||
                fatal "failed to get snapshot $restore_path from S3: NoSuchKey: The specified key does not exist."
            echo "level=info msg=\"Retrieving etcd snapshot $restore_path from S3\"" >&2
            restore_path=$(s3_bucket_dir)/$restore_path
        fi
        [ -s "$restore_path" ] || fatal "failed to restore snapshot: $restore_path: no such file"
        need_sqlite3
        mv "${db%/*}" "${db%/*}-old-$(date +%s)"
        mkdir -p "${db%/*}"
        (umask 077 && sqlite3 "$restore_path" ".backup '$db'") 2>/dev/null || {
            rm -rf "${db%/*}"
            fatal "failed to restore snapshot $restore_path: it is not a snapshot (corrupt)"
        }
        record "cluster-reset restored $restore_path"
    else
        record "cluster-reset"
    fi
    node_name >"${db%/*}/double-members"
    # shellcheck disable=SC2016 # K3s prints ${datadir} literally
    echo 'level=info msg="Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. Backup and delete ${datadir}/server/db on each peer etcd server and rejoin the nodes"' >&2
    exit 0
}

run_server() {
    parse_token
    mkdir -p "$SERVER_DIR/tls" "$SERVER_DIR/cred" "$SERVER_DIR/db" "$REGISTRY"
    password_hash=$(printf '%s' "$TOKEN_PASSWORD" | sha256)
    server=$(config_value server)
    if [ -f "$BOOTSTRAP" ] && [ "$(cat "$BOOTSTRAP")" != "$password_hash" ]; then
        echo 'level=fatal msg="starting kubernetes: preparing server: failed to bootstrap cluster data: bootstrap data already found and encrypted with different token"' >&2
        exit 1
    fi
    if [ -n "$server" ]; then
        # A joining server takes the cluster's CA and bootstrap data from the server it joins;
        # and at every start its kubelet reports to the cluster's API (its version), which for
        # the double is the registry of the server it joined.
        join "$server" server
    fi
    if [ ! -f "$BOOTSTRAP" ]; then
        if [ -n "$server" ]; then
            cp /run/k3s/double-cluster-ca "$CA_FILE"
        elif [ -s "$REAL_KUBECONFIG" ]; then
            # The server CA is the real API server's: K3s's k3s.yaml carries the very bytes of
            # server-ca.crt, which /cacerts serves and the full token hashes.
            sed -n 's/^ *certificate-authority-data: *//p' "$REAL_KUBECONFIG" | head -n 1 |
                base64 -d >"$CA_FILE"
        else
            {
                echo "-----BEGIN CERTIFICATE-----"
                head -c 48 /dev/urandom | base64
                echo "-----END CERTIFICATE-----"
            } >"$CA_FILE"
        fi
        echo "$password_hash" >"$BOOTSTRAP"
    elif [ -n "$server" ] && [ ! -d "$SERVER_DIR/db/etcd" ]; then
        # Its etcd data was deleted (a restore's rejoin): it joined again above, as a new member.
        record "rejoined $server"
    fi
    if [ "$(config_value secrets-encryption)" = true ]; then
        : >"$ENCRYPTED"
    elif [ -f "$ENCRYPTED" ]; then
        echo 'level=fatal msg="the datastore holds Secrets encrypted at rest, and this server starts without secrets-encryption: they cannot be read (k3s secrets-encrypt disable, then reencrypt)"' >&2
        exit 1
    fi
    init_datastore
    (umask 077 && printf 'K10%s::server:%s\n' "$(sha256 <"$CA_FILE")" "$TOKEN_PASSWORD" >"$SERVER_TOKEN")
    if [ ! -s "$NODE_PASSWORD" ]; then
        mkdir -p "${NODE_PASSWORD%/*}"
        (umask 077 && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$NODE_PASSWORD")
    fi
    register "$(node_name)" "$(cat "$NODE_PASSWORD")" server \
        "$(config_list node-label | paste -sd, -)" "$(config_list node-taint | paste -sd, -)" \
        "$K3S_DOUBLE_VERSION" ||
        fatal "Node password rejected for $(node_name)"
    systemctl start --no-block double-k3s-api.socket
    write_kubeconfig
}

# What containerd pulls with until the next start (see the header).
load_registries() {
    loaded=$DATA_DIR/agent/etc/double-registries.yaml
    mkdir -p "${loaded%/*}"
    if [ -f "$REGISTRIES_FILE" ]; then
        echo "level=info msg=\"Using registry config file at $REGISTRIES_FILE\"" >&2
        (umask 077 && cp "$REGISTRIES_FILE" "$loaded")
    else
        rm -f "$loaded"
    fi
}

run_service() {
    role=$1
    echo "k3s $K3S_DOUBLE_VERSION (double) $role starting as node $(node_name)" >&2
    load_registries
    if [ "$role" = server ]; then
        run_server
    else
        parse_token
        server=$(config_value server)
        [ -n "${server:-${K3S_URL:-}}" ] || fatal "--server is required"
        join "${server:-$K3S_URL}" agent
        echo "agent (double) joined ${server:-$K3S_URL} as $(node_name)" >&2
    fi
    systemd-notify --ready
    exec sleep infinity
}

# STATUS of NAME, empty when the node is not registered.
node_status() {
    status=""
    if [ -f "$READY_NODES" ]; then
        status=$(awk -v n="$1" '$1 == n { print ($2 == "" ? "Ready" : $2); exit }' "$READY_NODES")
    fi
    if [ -z "$status" ] && [ -f "$REGISTRY/$1/status" ]; then
        status=$(cat "$REGISTRY/$1/status")
    fi
    # kubectl prints a cordoned node as Ready,SchedulingDisabled.
    if [ "$status" = Ready ] && [ -f "$REGISTRY/$1/unschedulable" ]; then
        status=Ready,SchedulingDisabled
    fi
    echo "$status"
}

# The kubelet version of NAME: the one it last registered with, else this binary's.
node_version() {
    if [ -s "$REGISTRY/$1/version" ]; then
        cat "$REGISTRY/$1/version"
    else
        echo "$K3S_DOUBLE_VERSION"
    fi
}

# Every node the API server knows, one name per line.
node_names() {
    {
        [ ! -f "$READY_NODES" ] || awk '{ print $1 }' "$READY_NODES"
        [ ! -d "$REGISTRY" ] || ls -1 "$REGISTRY"
    } | sed '/^$/d' | sort -u
}

# `get nodes -o go-template=...`: NAME KUBELET-VERSION UNSCHEDULABLE READY TAINTED per node, as
# the template k3s-drain.sh uses prints them (true/false, the Ready condition's status, then
# whether a taint other than PreferNoSchedule is set).
list_nodes() {
    case " $* " in
        *" -o go-template="*"kubeletVersion"*".spec.taints"*) ;;
        *) fatal "the double lists nodes only with the drain script's go-template (kubeletVersion, taints)" ;;
    esac
    for name in $(node_names); do
        status=$(node_status "$name")
        [ -n "$status" ] || continue
        unschedulable=false
        [ ! -f "$REGISTRY/$name/unschedulable" ] || unschedulable=true
        ready=False
        case "$status" in Ready | Ready,*) ready=True ;; esac
        # The template's last field: a taint other than PreferNoSchedule (KEY=VALUE:EFFECT lines).
        tainted=false
        ! grep -Eq ':(NoSchedule|NoExecute)$' "$REGISTRY/$name/taints" 2>/dev/null || tainted=true
        echo "$name $(node_version "$name") $unschedulable $ready $tainted"
    done
}

# `get pods -A --field-selector spec.nodeName=NAME -o go-template=...`: NAMESPACE/NAME per line.
list_pods() {
    node=$(printf '%s' "$*" | sed -n 's/.*spec\.nodeName=\([^ ]*\).*/\1/p')
    [ -n "$node" ] || fatal "the double lists pods only with --field-selector spec.nodeName=NAME"
    [ ! -f "$REGISTRY/$node/pods" ] || awk '{ print $1 }' "$REGISTRY/$node/pods"
}

not_found() {
    echo "Error from server (NotFound): nodes \"$1\" not found" >&2
    exit 1
}

# The node's registry entry, made when a test registered it through double-ready-nodes.
node_dir() {
    [ -n "$(node_status "$1")" ] || not_found "$1"
    dir=$REGISTRY/$1
    if [ ! -d "$dir" ]; then
        mkdir -p "$dir"
        printf 'kubernetes.io/hostname=%s\n' "$1" >"$dir/labels"
        : >"$dir/taints"
        : >"$dir/annotations"
    fi
    echo "$dir"
}

# set_pairs FILE KEY=VALUE...|KEY-: labels or annotations, as `kubectl label|annotate --overwrite`.
set_pairs() {
    file=$1
    shift
    for pair in "$@"; do
        case "$pair" in
            --overwrite) continue ;;
            *-) key=${pair%-} && awk -v k="$key" 'index($0, k "=") != 1' "$file" >"$file.tmp" ;;
            *=*) key=${pair%%=*} && { awk -v k="$key" 'index($0, k "=") != 1' "$file"; echo "$pair"; } >"$file.tmp" ;;
            *) fatal "kubectl (double): cannot parse $pair" ;;
        esac
        sort "$file.tmp" >"$file" && rm -f "$file.tmp"
    done
}

# set_taints FILE KEY=VALUE:EFFECT|KEY:EFFECT-...: as `kubectl taint --overwrite`.
set_taints() {
    file=$1
    shift
    for taint in "$@"; do
        case "$taint" in
            --overwrite) continue ;;
            *-)
                taint=${taint%-}
                key=${taint%%:*} && key=${key%%=*} && effect=${taint##*:}
                awk -v k="$key" -v e="$effect" '!(index($0, k "=") == 1 && $0 ~ ":" e "$")' "$file" >"$file.tmp"
                ;;
            *:*)
                key=${taint%%:*} && key=${key%%=*} && effect=${taint##*:}
                case "$taint" in *=*) value=${taint#*=} && value=${value%:*} ;; *) value="" ;; esac
                {
                    awk -v k="$key" -v e="$effect" '!(index($0, k "=") == 1 && $0 ~ ":" e "$")' "$file"
                    echo "$key=$value:$effect"
                } >"$file.tmp"
                ;;
            *) fatal "kubectl (double): cannot parse taint $taint" ;;
        esac
        sort "$file.tmp" >"$file" && rm -f "$file.tmp"
    done
}

# api_error NODE REQUEST WHAT: fail as the API server does when REQUEST is listed in the node's
# `api-errors` file (see the header).
api_error() {
    if [ -f "$REGISTRY/$1/api-errors" ] && grep -qxF "$2" "$REGISTRY/$1/api-errors"; then
        echo "Error from server (InternalError): an error on the server (\"\") has prevented the request from succeeding ($3)" >&2
        exit 1
    fi
}

get_node() {
    name=${1:-}
    [ -n "$name" ] || fatal "the double needs a node name"
    shift
    status=$(node_status "$name")
    [ -n "$status" ] || not_found "$name"
    case " $* " in
        *" -o go-template="*".metadata.labels"*)
            cat "$(node_dir "$name")/labels"
            return 0
            ;;
        *" -o go-template="*".spec.taints"*)
            cat "$(node_dir "$name")/taints"
            return 0
            ;;
        *" -o go-template="*".status.nodeInfo.kubeletVersion"*)
            node_version "$name"
            return 0
            ;;
        *" -o go-template="*".metadata.annotations"*)
            key=$(printf '%s' "$*" | sed -n 's/.*index \.metadata\.annotations "\([^"]*\)".*/\1/p')
            api_error "$name" "annotation $key" "get nodes $name"
            value=$(sed -n "s|^$key=||p" "$(node_dir "$name")/annotations")
            echo "${value:-<no value>}"
            return 0
            ;;
        *" -o "*) fatal "the double does not implement that output: $*" ;;
    esac
    roles="<none>"
    [ "$name" = "$(node_name)" ] && roles=control-plane,master
    case " $* " in
        *" --no-headers "*) ;;
        *) printf '%-16s %-28s %-22s %-5s %s\n' NAME STATUS ROLES AGE VERSION ;;
    esac
    printf '%-16s %-28s %-22s %-5s %s\n' "$name" "$status" "$roles" 5m "$(node_version "$name")"
}

# `kubectl --server https://OTHER:6443 delete node NAME`: the double reaches another server's
# registry through its API, with this server's credentials (the token secret).
remote_kubectl() {
    server=$1
    shift
    [ "${1:-} ${2:-}" = "delete node" ] || fatal "the double only deletes nodes on another server"
    name=${3:-}
    secret=$(sed 's/^K10[^:]*::[^:]*://' "$SERVER_TOKEN" 2>/dev/null) || fatal "no $SERVER_TOKEN"
    headers=$(mktemp)
    printf 'Authorization: Basic %s\n' "$(printf 'node:%s' "$secret" | base64 -w0)" >"$headers"
    code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -X DELETE -H @"$headers" \
        "$(double_api_url "$server")/v1-double/nodes/$name" || true)
    rm -f "$headers"
    case "$code" in
        200) echo "node \"$name\" deleted" ;;
        404) case " $* " in *" --ignore-not-found "*) ;; *) not_found "$name" ;; esac ;;
        *) fatal "the server at $server answered ${code:-nothing}" ;;
    esac
}

# `kubectl -n kube-system delete secret NODE.node-password.k3s` (the namespace before the verb or
# after the name): K3s keeps each node's password as that Secret (pkg/nodepassword); deleting it
# lets a re-flashed Pi with a new password register under the known name, the Node (its labels
# and annotations) staying as it is. The double's other Secrets are not modelled.
delete_node_password() {
    ns=$1 name=${3:-}
    [ "${4:-}" != -n ] || ns=${5:-}
    node=${name%.node-password.k3s}
    if [ "$ns" != kube-system ] || [ "$node" = "$name" ] || [ ! -f "$REGISTRY/$node/password" ]; then
        echo "Error from server (NotFound): secrets \"$name\" not found" >&2
        exit 1
    fi
    rm -f "$REGISTRY/$node/password"
    record "kubectl delete secret $name"
    echo "secret \"$name\" deleted"
}

kubectl() {
    if [ -s "$REAL_KUBECONFIG" ] && [ -x "$REAL_KUBECTL" ]; then
        case " $* " in
            *" --server "*) exec "$REAL_KUBECTL" "$@" ;;  # another server's API: not this one's
        esac
        systemctl is-active --quiet k3s ||
            fatal "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?"
        exec "$REAL_KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"
    fi
    server="" namespace=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --kubeconfig) shift 2 ;;
            --server) server=$2 && shift 2 ;;
            -n | --namespace) namespace=$2 && shift 2 ;;
            *) break ;;
        esac
    done
    case "$server" in
        "" | https://127.0.0.1:*) ;;
        *)
            remote_kubectl "$server" "$@"
            return 0
            ;;
    esac
    if [ ! -s "$KUBECONFIG_FILE" ] || ! systemctl is-active --quiet k3s; then
        echo "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?" >&2
        exit 1
    fi

    verb=${1:-}
    [ $# -gt 0 ] && shift
    case "$verb" in
        get)
            if [ "${1:-}" = --raw ]; then
                [ "${2:-}" = /readyz ] || fatal "the double only serves /readyz"
                echo ok
                return 0
            fi
            case "${1:-}" in
                nodes)
                    shift
                    list_nodes "$@"
                    ;;
                node)
                    shift
                    get_node "$@"
                    ;;
                configmap* | cm | deployment* | deploy) objects get "$@" ;;
                pods)
                    shift
                    list_pods "$@"
                    ;;
                pv)
                    # PersistentVolumes a test lists in $PVS: `NAME NODE NAMESPACE CLAIM PHASE
                    # RECLAIM` lines,
                    # printed as the custom columns picluster asks for.
                    case " $* " in *" -o custom-columns="*) ;; *) fatal "the double lists pv with custom-columns only" ;; esac
                    [ ! -f "$PVS" ] || cat "$PVS"
                    ;;
                *) fatal "the double only gets nodes, pods, pv, configmaps and deployments" ;;
            esac
            ;;
        label | annotate | taint)
            [ "${1:-}" = node ] || fatal "the double only ${verb}s nodes"
            name=${2:-}
            shift 2
            dir=$(node_dir "$name")
            record "kubectl $verb node $name $*"
            case "$verb" in
                label) set_pairs "$dir/labels" "$@" ;;
                annotate) set_pairs "$dir/annotations" "$@" ;;
                taint) set_taints "$dir/taints" "$@" ;;
            esac
            echo "node/$name ${verb}ed"
            ;;
        cordon | uncordon)
            name=${1:-}
            dir=$(node_dir "$name")
            api_error "$name" "$verb" "patch nodes $name"
            record "kubectl $verb $name"
            if [ "$verb" = cordon ]; then
                if [ -f "$dir/unschedulable" ]; then
                    echo "node/$name already cordoned"
                else
                    : >"$dir/unschedulable"
                    echo "node/$name cordoned"
                fi
            elif [ -f "$dir/unschedulable" ]; then
                rm -f "$dir/unschedulable"
                echo "node/$name uncordoned"
            else
                echo "node/$name already uncordoned"
            fi
            ;;
        drain)
            name=${1:-}
            dir=$(node_dir "$name")
            record "kubectl drain $*"
            # kubectl drain cordons first, then lists the pods to evict and refuses them all when
            # one may not go (pkg/cmd/drain/drain.go RunDrain; pkg/drain/filters.go).
            if [ -f "$dir/unschedulable" ]; then
                echo "node/$name already cordoned"
            else
                : >"$dir/unschedulable"
                echo "node/$name cordoned"
            fi
            refused=""
            if [ -s "$dir/unmanaged-pods" ]; then
                case " $* " in
                    *" --force "*) ;;
                    *) refused="cannot delete Pods that declare no controller (use --force to override): $(paste -sd, "$dir/unmanaged-pods" | sed 's/,/, /g')" ;;
                esac
            fi
            local_storage=""
            [ ! -f "$dir/pods" ] || local_storage=$(awk '/ emptydir( |$)/ { print $1 }' "$dir/pods" | paste -sd, - | sed 's/,/, /g')
            if [ -n "$local_storage" ]; then
                case " $* " in
                    *" --delete-emptydir-data "*) ;;
                    *) refused="${refused:+$refused, }cannot delete Pods with local storage (use --delete-emptydir-data to override): $local_storage" ;;
                esac
            fi
            if [ -n "$refused" ]; then
                record "kubectl drain $name refused"
                echo "error: unable to drain node \"$name\" due to error: $refused, continuing command..." >&2
                exit 1
            fi
            timeout=$(printf '%s' " $* " | sed -n 's/.* --timeout=\([^ ]*\) .*/\1/p')
            blocked=""
            if [ -f "$dir/pods" ]; then
                while read -r pod tags; do
                    [ -n "$pod" ] || continue
                    case " $tags " in
                        *" pdb "*)
                            # The eviction API answers 429 while the budget allows no disruption;
                            # kubectl retries every 5 s until --timeout (pkg/drain/drain.go); the
                            # double fails at once, as kubectl does when the timeout has passed.
                            echo "error when evicting pods/\"${pod#*/}\" -n \"${pod%%/*}\" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget." >&2
                            blocked="${blocked:+$blocked, }$pod"
                            ;;
                        *)
                            echo "evicting pod $pod"
                            record "kubectl drain $name evicted $pod"
                            ;;
                    esac
                done <"$dir/pods"
                awk '/ pdb( |$)/' "$dir/pods" >"$dir/pods.tmp" && mv -f "$dir/pods.tmp" "$dir/pods"
            fi
            if [ -n "$blocked" ]; then
                record "kubectl drain $name timed out on $blocked"
                # The node stays cordoned: kubectl drain does not undo its cordon.
                first=${blocked%%,*}
                echo "There are pending pods in node \"$name\" when an error occurred: error when evicting pods/\"${first#*/}\" -n \"${first%%/*}\": global timeout reached: ${timeout:-0s}" >&2
                echo "error: unable to drain node \"$name\" due to error: error when evicting pods/\"${first#*/}\" -n \"${first%%/*}\": global timeout reached: ${timeout:-0s}, continuing command..." >&2
                exit 1
            fi
            echo "node/$name drained"
            ;;
        create) objects create "$@" ;;
        delete)
            if [ "${1:-}" = secret ]; then
                delete_node_password "$namespace" "$@"
                return 0
            fi
            [ "${1:-}" = node ] || { objects delete "$@"; return 0; }
            name=${2:-}
            [ -n "$(node_status "$name")" ] || not_found "$name"
            record "kubectl delete $*"
            if [ -f "$READY_NODES" ]; then
                awk -v n="$name" '$1 != n' "$READY_NODES" >"$READY_NODES.tmp"
                mv -f "$READY_NODES.tmp" "$READY_NODES"
            fi
            rm -rf "${REGISTRY:?}/$name"
            echo "node \"$name\" deleted"
            ;;
        *) fatal "the double does not implement kubectl $verb" ;;
    esac
}

k3s() {
    case "${1:-}" in
        --version | -v | version)
            echo "k3s version $K3S_DOUBLE_VERSION (double)"
            echo "go version go1.22.9 (double)"
            ;;
        server)
            case " $* " in *" --cluster-reset "*) shift && cluster_reset "$@" ;; esac
            run_service server
            ;;
        agent) run_service agent ;;
        etcd-snapshot)
            shift
            etcd_snapshot "$@"
            ;;
        kubectl)
            shift
            kubectl "$@"
            ;;
        *) fatal "the double does not implement k3s ${1:-}" ;;
    esac
}

case "${0##*/}" in
    k3s) k3s "$@" ;;
    kubectl) kubectl "$@" ;;
    k3s-double-api) api ;;
    crictl | ctr) fatal "the double does not implement ${0##*/}" ;;
    k3s-killall.sh) killall ;;
    k3s-uninstall.sh) uninstall k3s ;;
    k3s-agent-uninstall.sh) uninstall k3s-agent ;;
    *) install_k3s "$@" ;;
esac
