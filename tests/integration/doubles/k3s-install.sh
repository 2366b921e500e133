#!/bin/sh
# TEST DOUBLE standing in for the K3s installer (https://get.k3s.io), which is not reachable from
# the test machines. Used only by tests/integration/test_k3s_scripts.py: it installs no Kubernetes.
#
# Like the real installer it honours INSTALL_K3S_VERSION and INSTALL_K3S_EXEC (server | agent),
# copies K3S_* / CONTAINERD_* environment variables into the unit's .env file, and creates what the
# real one creates: /usr/local/bin/k3s with kubectl/crictl/ctr symlinks, k3s-killall.sh,
# k3s-uninstall.sh or k3s-agent-uninstall.sh, and k3s.service or k3s-agent.service (enabled, and
# restarted only when the binary, unit or .env file changed). Each call is recorded in
# /var/log/picluster-doubles/k3s-install.log: its arguments, the NAMES (never the values) of its
# K3S_* / INSTALL_* environment variables, the version and the exec command.
#
# Stricter than the real one, on purpose: it fails unless /etc/rancher/k3s/config.yaml names a
# `token-file` that exists, is owned by root and has mode 0600 - picluster must write both before
# it installs K3s, and the tests prove that ordering with this check.
#
# One file, several commands (as k3s itself is one binary behind kubectl/crictl/ctr): the installed
# copies are dispatched on their name.
#   k3s --version                       `k3s version <version> (double)` on line 1, like K3s
#   k3s server | agent                  the service: checks its token file, the server writes
#                                       /etc/rancher/k3s/k3s.yaml (write-kubeconfig-mode), then
#                                       both sleep forever
#   k3s kubectl get node NAME           `NAME  Ready ...` for the server's own node-name and for
#                                       names in /etc/rancher/k3s/double-ready-nodes (a line is
#                                       `NAME` or `NAME STATUS`); NotFound otherwise
#   k3s kubectl get --raw /readyz       `ok` once the server runs and k3s.yaml exists
#   k3s kubectl drain NAME ...          logged; cordons NAME (Ready,SchedulingDisabled)
#   k3s kubectl delete node NAME ...    logged; removes NAME
#   k3s-killall.sh, k3s[-agent]-uninstall.sh   as the real scripts (the uninstall removes
#                                       /etc/rancher/k3s entirely, the binary and the scripts)
# shellcheck disable=SC2317 # functions are reached through the name dispatch at the bottom
set -eu

# The installed /usr/local/bin/k3s carries its version here (the installer rewrites this line).
K3S_DOUBLE_VERSION=none

LOG=/var/log/picluster-doubles/k3s-install.log
BIN_DIR=/usr/local/bin
SYSTEMD_DIR=/etc/systemd/system
CONFIG_DIR=/etc/rancher/k3s
CONFIG_FILE=$CONFIG_DIR/config.yaml
KUBECONFIG_FILE=$CONFIG_DIR/k3s.yaml
READY_NODES=$CONFIG_DIR/double-ready-nodes

info() { echo "[INFO]  (k3s-install double) $*"; }
fatal() {
    echo "[ERROR]  (k3s-install double) $*" >&2
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

# Names (not values) of the K3S_* and INSTALL_* environment variables, space separated.
env_names() {
    env | sed -n 's/^\(\(K3S\|INSTALL\)_[A-Za-z0-9_]*\)=.*/\1/p' | sort | tr '\n' ' ' | sed 's/ $//'
}

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
# The real unit is Type=notify; this fake k3s sends no readiness notification.
Type=simple
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
    if [ "$pre_hashes" = "$(installed_hashes)" ]; then
        info "No change detected so skipping service start"
        return 0
    fi
    info "systemd: Starting $system_name"
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
    for cmd in kubectl crictl ctr; do
        if [ -L "$BIN_DIR/$cmd" ]; then
            rm -f "$BIN_DIR/$cmd"
        fi
    done
    rm -rf /etc/rancher/k3s /run/k3s /run/flannel /var/lib/rancher/k3s /var/lib/kubelet
    rm -f "$BIN_DIR/k3s" "$BIN_DIR/k3s-killall.sh"
}

# ---------------------------------------------------------------------------------------------
# The fake k3s binary.

node_name() {
    name=$(config_value node-name)
    echo "${name:-$(hostname)}"
}

write_kubeconfig() {
    mode=$(config_value write-kubeconfig-mode)
    mode=${mode:-0600}
    echo "$mode" | grep -Eqx '0?[0-7]{3}' || fatal "invalid write-kubeconfig-mode $mode"
    tmp=$(mktemp "$CONFIG_DIR/.k3s.yaml.XXXXXX")
    cat >"$tmp" <<'EOF'
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: VEVTVCBET1VCTEUgQ0EK
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

run_service() {
    role=$1
    token_file=$(config_value token-file)
    if [ -n "$token_file" ] && [ ! -s "$token_file" ]; then
        fatal "failed to read token file $token_file"
    fi
    echo "k3s $K3S_DOUBLE_VERSION (double) $role starting as node $(node_name)" >&2
    if [ "$role" = server ]; then
        mkdir -p "$CONFIG_DIR"
        write_kubeconfig
    else
        server=$(config_value server)
        [ -n "${server:-${K3S_URL:-}}" ] || fatal "--server is required"
        echo "agent (double) would connect to ${server:-$K3S_URL}" >&2
    fi
    exec sleep infinity
}

# STATUS of NAME, empty when the node is not registered.
node_status() {
    status=""
    if [ -f "$READY_NODES" ]; then
        status=$(awk -v n="$1" '$1 == n { print ($2 == "" ? "Ready" : $2); exit }' "$READY_NODES")
    fi
    if [ -z "$status" ] && [ "$1" = "$(node_name)" ]; then
        status=Ready
    fi
    echo "$status"
}

not_found() {
    echo "Error from server (NotFound): nodes \"$1\" not found" >&2
    exit 1
}

kubectl() {
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
            case "${1:-}" in node | nodes) ;; *) fatal "the double only gets nodes" ;; esac
            name=${2:-}
            [ -n "$name" ] || fatal "the double needs a node name"
            status=$(node_status "$name")
            [ -n "$status" ] || not_found "$name"
            roles="<none>"
            [ "$name" = "$(node_name)" ] && roles=control-plane,master
            case " $* " in
                *" --no-headers "*) ;;
                *) printf '%-16s %-28s %-22s %-5s %s\n' NAME STATUS ROLES AGE VERSION ;;
            esac
            printf '%-16s %-28s %-22s %-5s %s\n' "$name" "$status" "$roles" 5m "$K3S_DOUBLE_VERSION"
            ;;
        drain)
            name=${1:-}
            [ -n "$(node_status "$name")" ] || not_found "$name"
            record "kubectl drain $*"
            awk -v n="$name" '$1 == n { next } { print }' "$READY_NODES" >"$READY_NODES.tmp" 2>/dev/null || true
            echo "$name Ready,SchedulingDisabled" >>"$READY_NODES.tmp"
            mv -f "$READY_NODES.tmp" "$READY_NODES"
            echo "node/$name cordoned"
            echo "node/$name drained"
            ;;
        delete)
            [ "${1:-}" = node ] || fatal "the double only deletes nodes"
            name=${2:-}
            [ -n "$(node_status "$name")" ] || not_found "$name"
            record "kubectl delete $*"
            awk -v n="$name" '$1 != n' "$READY_NODES" >"$READY_NODES.tmp" 2>/dev/null || true
            mv -f "$READY_NODES.tmp" "$READY_NODES"
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
        server | agent) run_service "$1" ;;
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
    crictl | ctr) fatal "the double does not implement ${0##*/}" ;;
    k3s-killall.sh) killall ;;
    k3s-uninstall.sh) uninstall k3s ;;
    k3s-agent-uninstall.sh) uninstall k3s-agent ;;
    *) install_k3s "$@" ;;
esac
