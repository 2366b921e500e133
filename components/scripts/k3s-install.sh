#!/usr/bin/env bash
# picluster k3s-install: install or upgrade K3s to a pinned release as a server or an agent, with
# the join token in a root-only file and /etc/rancher/k3s/config.yaml written only when it changed.
# `bash -s -- delete` uninstalls K3s instead (the node's `pulumi destroy`).
#
# Inputs (NAME='value' lines on stdin before this script, run as `sudo bash -s`):
#   ROLE             server | agent
#   NODE_NAME        this node's Kubernetes name
#   K3S_VERSION      pinned release, e.g. v1.31.4+k3s1
#   K3S_TOKEN        the cluster token (secret: written to TOKEN_FILE, never printed or in argv)
#   CONFIG_YAML_B64  base64 of the config.yaml picluster built for this node
#   K3S_INSTALL_URL  the installer (default https://get.k3s.io; tests point it at a double)
#   READY_TIMEOUT    seconds to wait for the node to be Ready (server) or the agent to run
# Output: progress on stderr; last line on stdout: picluster k3s-install: no changes | changed: ...
set -euo pipefail

readonly CONFIG_DIR=/etc/rancher/k3s
readonly CONFIG_FILE=$CONFIG_DIR/config.yaml
readonly TOKEN_FILE=$CONFIG_DIR/picluster-token

CHANGED=()
log() { printf 'picluster k3s-install: %s\n' "$*" >&2; }
die() { printf 'picluster k3s-install: ERROR: %s\n' "$*" >&2; exit 1; }

service_name() {
    if [[ "$ROLE" == server ]]; then echo k3s; else echo k3s-agent; fi
}

# A node installed in the other role: K3s would run both services side by side (fighting over
# ports and /var/lib/rancher/k3s), and its uninstall script then skips the cleanup. Refuse before
# anything on the node changes.
refuse_role_change() {
    local other=k3s-agent other_role=agent
    [[ "$ROLE" == agent ]] && other=k3s other_role=server
    if [[ -e "/etc/systemd/system/$other.service" ]]; then
        die "$NODE_NAME runs K3s as $other_role, not $ROLE; to change its role, remove the node from picluster:nodes and run pulumi up (drains it and uninstalls K3s), then add it back as $ROLE"
    fi
}

# Install $2 (a temporary file) as $1 with mode 0600 when the content differs; 0 = replaced.
# Called as an `if` condition, where `set -e` does not apply: every step checks for itself.
install_private() {
    local target=$1 new=$2
    chmod 600 "$new" || die "chmod $new failed"
    if [[ -e "$target" ]] && cmp -s "$new" "$target"; then
        rm -f "$new"
        chmod 600 "$target" || die "chmod $target failed"
        return 1
    fi
    if [[ -e "$target" && ! -e "$target.picluster.bak" ]]; then
        cp -p "$target" "$target.picluster.bak" || die "could not back up $target"
    fi
    mv -f "$new" "$target" || die "could not write $target"
    return 0
}

installed_version() {
    if command -v k3s >/dev/null 2>&1; then
        k3s --version 2>/dev/null | awk 'NR == 1 { print $3 }'
    fi
}

write_files() {
    # Root-only from creation, but only here: the installer run later would write its systemd
    # unit 0600 under this umask (systemd warns about world-inaccessible units).
    local tmp old_umask
    old_umask=$(umask)
    umask 077
    mkdir -p "$CONFIG_DIR"
    tmp=$(mktemp "$CONFIG_DIR/.token.XXXXXX")
    printf '%s\n' "$K3S_TOKEN" >"$tmp"
    if install_private "$TOKEN_FILE" "$tmp"; then
        CHANGED+=(token)
    fi
    tmp=$(mktemp "$CONFIG_DIR/.config.XXXXXX")
    base64 -d <<<"$CONFIG_YAML_B64" >"$tmp" || die "CONFIG_YAML_B64 is not base64"
    if install_private "$CONFIG_FILE" "$tmp"; then
        CHANGED+=(config)
    fi
    umask "$old_umask"
}

# Called as an `&&` operand, where `set -e` does not apply: every step checks for itself.
install_k3s() {
    local current
    current=$(installed_version)
    if [[ "$current" == "$K3S_VERSION" && -e "/etc/systemd/system/$(service_name).service" ]]; then
        return 1
    fi
    log "installing K3s $K3S_VERSION as $ROLE (installed: ${current:-none})"
    local installer
    installer=$(mktemp /tmp/k3s-install.XXXXXX) || die "mktemp failed"
    # shellcheck disable=SC2064 # expand now: the path is fixed
    trap "rm -f '$installer'" EXIT
    curl -sfL --retry 3 --connect-timeout 20 --max-time 300 "$K3S_INSTALL_URL" -o "$installer" ||
        die "could not download the K3s installer from $K3S_INSTALL_URL"
    # The token reaches K3s through token-file in config.yaml, never through the installer's
    # environment, which it would copy into a systemd .env file.
    INSTALL_K3S_VERSION=$K3S_VERSION INSTALL_K3S_EXEC=$ROLE \
        sh "$installer" >&2 || die "the K3s installer failed"
    CHANGED+=("k3s $K3S_VERSION")
    return 0
}

ensure_running() {
    local service
    service=$(service_name)
    systemctl enable "$service" >/dev/null 2>&1 || true
    if ! systemctl is-active --quiet "$service"; then
        log "starting $service"
        systemctl start "$service" || die "$service did not start: see journalctl -u $service"
        CHANGED+=(started)
    fi
}

wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT)) service
    service=$(service_name)
    while ((SECONDS < deadline)); do
        if [[ "$ROLE" == server ]]; then
            # A cordoned node (upgrades are often done drained) is `Ready,SchedulingDisabled`.
            if k3s kubectl get node "$NODE_NAME" --no-headers 2>/dev/null | awk '{ print $2 }' |
                grep -Eqx 'Ready(,.*)?'; then
                return 0
            fi
        elif systemctl is-active --quiet "$service"; then
            return 0
        fi
        sleep 3
    done
    die "$NODE_NAME was not ready after ${READY_TIMEOUT}s: see journalctl -u $service"
}

uninstall() {
    local script=/usr/local/bin/k3s-uninstall.sh file removed=()
    [[ "$ROLE" == agent ]] && script=/usr/local/bin/k3s-agent-uninstall.sh
    if [[ -x "$script" ]]; then
        log "uninstalling K3s ($script)"
        "$script" >&2 || die "$script failed"
        removed+=(uninstalled)
    fi
    # Also when K3s never got installed (a failed first run): the token must not stay behind.
    for file in "$TOKEN_FILE" "$TOKEN_FILE.picluster.bak" "$CONFIG_FILE" "$CONFIG_FILE.picluster.bak"; do
        if [[ -e "$file" ]]; then
            rm -f "$file"
            [[ " ${removed[*]-} " == *" uninstalled "* ]] || removed+=("removed ${file##*/}")
        fi
    done
    if ((${#removed[@]} == 0)); then
        echo "picluster k3s-install: no changes (K3s is not installed)"
    else
        local IFS=,
        echo "picluster k3s-install: changed: ${removed[*]}" | sed 's/,/, /g'
    fi
}

# K3s binds the token to its datastore: a server restarted with another token fails ("bootstrap
# data already found and encrypted with different token") and restarts in a loop, and an agent
# with a token its servers do not know cannot rejoin. Refuse before anything on the node changes.
refuse_token_change() {
    [[ -e "$TOKEN_FILE" ]] || return 0
    [[ -e /etc/systemd/system/k3s.service || -e /etc/systemd/system/k3s-agent.service ]] || return 0
    if [[ "$(<"$TOKEN_FILE")" != "$K3S_TOKEN" ]]; then
        die "picluster:k3sToken is not the token $NODE_NAME joined with; K3s keeps its datastore encrypted with that one and cannot switch by a restart; set picluster:k3sToken back to its earlier value (README: Rotate the K3s token)"
    fi
}

main() {
    exec </dev/null
    : "${ROLE:?ROLE is required}" "${NODE_NAME:?NODE_NAME is required}"
    [[ "$ROLE" == server || "$ROLE" == agent ]] || die "ROLE must be server or agent, not $ROLE"
    if [[ "${1:-}" == delete ]]; then
        uninstall
        return 0
    fi
    : "${K3S_VERSION:?K3S_VERSION is required}" "${K3S_TOKEN:?K3S_TOKEN is required}"
    : "${CONFIG_YAML_B64:?CONFIG_YAML_B64 is required}"
    K3S_INSTALL_URL=${K3S_INSTALL_URL:-https://get.k3s.io}
    READY_TIMEOUT=${READY_TIMEOUT:-300}

    refuse_role_change
    refuse_token_change
    write_files
    local installed=0
    install_k3s && installed=1
    # A new config or token takes effect on restart; a fresh install has just started with it.
    if ((installed == 0)) && [[ " ${CHANGED[*]-} " == *" config "* || " ${CHANGED[*]-} " == *" token "* ]] &&
        systemctl is-active --quiet "$(service_name)"; then
        log "restarting $(service_name) for the new configuration"
        systemctl restart "$(service_name)"
        CHANGED+=(restarted)
    fi
    ensure_running
    wait_ready

    if ((${#CHANGED[@]} == 0)); then
        echo "picluster k3s-install: no changes"
    else
        local IFS=,
        echo "picluster k3s-install: changed: ${CHANGED[*]}" | sed 's/,/, /g'
    fi
}

main "$@"
