#!/usr/bin/env bash
# picluster k3s-install: install or upgrade K3s to a pinned release as a server or an agent, with
# the join token in a root-only file and /etc/rancher/k3s/config.yaml and registries.yaml written
# only when they changed.
# `bash -s -- delete` uninstalls K3s instead (the node's `pulumi destroy`).
#
# Inputs (NAME='value' lines on stdin before this script, run as `sudo bash -s`):
#   ROLE             server | agent
#   NODE_NAME        this node's Kubernetes name
#   K3S_VERSION      pinned release, e.g. v1.31.4+k3s1
#   K3S_TOKEN        the cluster token (secret: written to TOKEN_FILE, never printed or in argv)
#   CONFIG_YAML_B64  base64 of the config.yaml picluster built for this node
#   REGISTRATION_YAML_B64  base64 of the keys K3s reads only when the node registers (node-taint),
#                    written to a config.yaml.d drop-in; a change there does not restart K3s
#   REGISTRIES_YAML_B64  base64 of the registries.yaml picluster built (mirrors, and registry
#                    credentials: secret, written 0600 only); empty: none, and one picluster wrote
#                    earlier is removed (a file without picluster's first line is left alone)
#   K3S_INSTALL_URL  the installer (default https://get.k3s.io; tests point it at a double)
#   READY_TIMEOUT    seconds to wait for the node to be Ready (server) or the agent to join
#   CLOCK_TIMEOUT    seconds to wait for the clock to be synchronised (default 180)
# Output: progress on stderr; on stdout one line:
# picluster k3s-install: no changes | changed: ...
#
# K3s's unit is Type=notify with TimeoutStartSec=0: `systemctl restart` would block until K3s is
# READY, forever for an agent with a wrong token or an unreachable server. So the installer never
# starts it (INSTALL_K3S_SKIP_START=true), the start is non-blocking, and every wait is bounded
# and says what to check when it times out.
set -euo pipefail

readonly CONFIG_DIR=/etc/rancher/k3s
readonly CONFIG_FILE=$CONFIG_DIR/config.yaml
readonly REGISTRATION_FILE=$CONFIG_DIR/config.yaml.d/50-picluster-registration.yaml
readonly TOKEN_FILE=$CONFIG_DIR/picluster-token
readonly REGISTRIES_FILE=$CONFIG_DIR/registries.yaml
readonly REGISTRIES_BACKUP=$REGISTRIES_FILE.picluster.bak
# The first line of every registries.yaml picluster writes (components/registries.py).
readonly REGISTRIES_MARK='# picluster: written by K3sCluster; pulumi up rewrites or removes it'

CHANGED=()
PREVIOUS_INVOCATION=""
log() { printf 'picluster k3s-install: %s\n' "$*" >&2; }
die() { printf 'picluster k3s-install: ERROR: %s\n' "$*" >&2; exit 1; }
# drop_and_die FILE MESSAGE: remove a temp file, then die.
drop_and_die() {
    rm -f "$1"
    die "$2"
}

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

# A release's sort key: v1.31.10+k3s2 -> 00001 00031 00010 00002 (fixed-width, compared as text).
version_key() {
    [[ "$1" =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)(\+k3s([0-9]+))?$ ]] || return 1
    printf '%05d%05d%05d%05d' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}" \
        "${BASH_REMATCH[5]:-0}"
}

# K3s does not support a downgrade (k3s-io/k3s#7537: its own k3s-upgrade image bails out of one):
# the newer release may have migrated the datastore and written state the older cannot read.
# Refuse before anything on the node changes; the first server's drain step refuses first.
refuse_downgrade() {
    local current current_key target_key
    current=$(installed_version)
    [[ -n "$current" ]] || return 0
    current_key=$(version_key "$current") || return 0
    target_key=$(version_key "$K3S_VERSION") || die "K3S_VERSION $K3S_VERSION is not a K3s release"
    if [[ "$current_key" > "$target_key" ]]; then
        die "refusing to downgrade K3s on $NODE_NAME from $current to $K3S_VERSION: K3s cannot go back in place; set picluster:k3s.version back to $current, or go back through a datastore snapshot (README: Datastore snapshots and restore)"
    fi
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
    INSTALL_K3S_VERSION=$K3S_VERSION INSTALL_K3S_EXEC=$ROLE INSTALL_K3S_SKIP_START=true \
        sh "$installer" >&2 || die "the K3s installer failed"
    CHANGED+=("k3s $K3S_VERSION")
    return 0
}

# The unit's current start (empty when it never started): wait_ready waits for a newer one.
invocation() {
    systemctl show -p InvocationID --value "$(service_name)" 2>/dev/null || true
}

# Start or restart without waiting for READY (see the header); wait_ready bounds the wait.
start_service() {
    local service
    service=$(service_name)
    PREVIOUS_INVOCATION=$(invocation)
    systemctl enable "$service" >/dev/null 2>&1 || true
    if [[ "$1" == restart ]]; then
        log "restarting $service"
        systemctl restart --no-block "$service" || die "could not restart $service"
        # A new install reports `k3s <version>`; the restart is part of it.
        [[ "${2:-}" == installed ]] || CHANGED+=(restarted)
    elif ! systemctl is-active --quiet "$service"; then
        log "starting $service"
        systemctl start --no-block "$service" || die "could not start $service"
        CHANGED+=(started)
    else
        PREVIOUS_INVOCATION=""  # running and untouched: the current start is the one to check
    fi
}

# 0 once the unit runs a start newer than the one before start_service (a restart queued with
# --no-block leaves the old process "active" for a moment) and has reported READY.
started_and_ready() {
    local current
    [[ "$(systemctl is-active "$(service_name)" 2>/dev/null)" == active ]] || return 1
    current=$(invocation)
    [[ -n "$current" && "$current" != "$PREVIOUS_INVOCATION" ]] || [[ -z "$PREVIOUS_INVOCATION" ]]
}

wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT)) service server
    service=$(service_name)
    while ((SECONDS < deadline)); do
        # READY (sd_notify) of the new start: the node has joined (an agent: its server accepted
        # it; a server: its datastore took the token).
        if started_and_ready; then
            [[ "$ROLE" == agent ]] && return 0
            # A cordoned node (upgrades are often done drained) is `Ready,SchedulingDisabled`.
            if k3s kubectl get node "$NODE_NAME" --no-headers 2>/dev/null | awk '{ print $2 }' |
                grep -Eqx 'Ready(,.*)?'; then
                return 0
            fi
        fi
        sleep 2
    done
    server=$(sed -n 's/^server: *//p' "$CONFIG_FILE" | tr -d "'\"")
    log "last lines of journalctl -u $service:"
    journalctl -u "$service" -n 15 --no-pager -o cat >&2 2>/dev/null || true
    if [[ -n "$server" ]]; then
        die "$NODE_NAME did not join within ${READY_TIMEOUT}s; check: the token (picluster:k3sToken, or K3s's own in /var/lib/rancher/k3s/server/token on the first server), that $server answers from this Pi (port 6443 open), and after a re-flash the node password: kubectl -n kube-system delete secret $NODE_NAME.node-password.k3s; details: journalctl -u $service"
    fi
    die "$NODE_NAME was not ready after ${READY_TIMEOUT}s; see journalctl -u $service (a token other than the datastore's makes K3s restart in a loop)"
}

# A server that joined another one leaves the cluster itself: K3s stopped first, then its Node
# deleted through the server it joined (with its own admin credentials), so it cannot register
# again in between; K3s removes its etcd member with the Node. (The first server's node step only
# drained it.)
leave_cluster() {
    local server
    [[ "$ROLE" == server && -s "$CONFIG_FILE" && -s "$CONFIG_DIR/k3s.yaml" ]] || return 0
    server=$(sed -n 's/^server: *//p' "$CONFIG_FILE" | tr -d "'\"")
    [[ -n "$server" ]] || return 0
    log "stopping K3s, then deleting node $NODE_NAME through $server"
    systemctl stop k3s || die "could not stop k3s"
    k3s kubectl --kubeconfig "$CONFIG_DIR/k3s.yaml" --server "$server" delete node "$NODE_NAME" \
        --ignore-not-found --timeout=60s >&2 ||
        die "could not delete node $NODE_NAME through $server; K3s is stopped here, nothing is uninstalled yet: delete the node by hand (kubectl delete node $NODE_NAME), then run pulumi up again"
    removed+=("left the cluster")
}

uninstall() {
    local script=/usr/local/bin/k3s-uninstall.sh file removed=()
    [[ "$ROLE" == agent ]] && script=/usr/local/bin/k3s-agent-uninstall.sh
    if [[ -x "$script" ]]; then
        leave_cluster
        log "uninstalling K3s ($script)"
        "$script" >&2 || die "$script failed"
        removed+=(uninstalled)
    fi
    # Also when K3s never got installed (a failed first run): the token and a registry password
    # must not stay behind.
    if drop_registries; then
        [[ " ${removed[*]-} " == *" uninstalled "* ]] || removed+=("removed registries.yaml")
    fi
    for file in "$TOKEN_FILE" "$TOKEN_FILE.picluster.bak" "$CONFIG_FILE" "$CONFIG_FILE.picluster.bak" \
        "$REGISTRATION_FILE" "$REGISTRATION_FILE.picluster.bak"; do
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
# The secret part of a token: a full `K10<ca hash>::<user>:<password>` token's password, or the
# token itself (a short token).
token_secret() {
    local token=$1
    if [[ "$token" == K10*::* ]]; then
        token=${token#*::}
        token=${token#*:}
    fi
    printf '%s' "$token"
}

refuse_token_change() {
    [[ -e "$TOKEN_FILE" ]] || return 0
    # Only once the node has joined (a datastore, or the kubelet's client certificate): before
    # that, a corrected token is just what it needs.
    [[ -e /var/lib/rancher/k3s/server/db || -e /var/lib/rancher/k3s/agent/client-kubelet.crt ]] ||
        return 0
    # A short token becoming the full one (the same secret with the CA hash) is no change of token.
    if [[ "$(token_secret "$(<"$TOKEN_FILE")")" != "$(token_secret "$K3S_TOKEN")" ]]; then
        die "picluster:k3sToken is not the token $NODE_NAME joined with; K3s keeps its datastore encrypted with that one and cannot switch by a restart; set picluster:k3sToken back to its earlier value (README: Rotate the K3s token)"
    fi
}

# Secrets encrypted at rest cannot be read by a server started without secrets-encryption; turning
# it off is `k3s secrets-encrypt disable`, a restart, then `reencrypt` (k3s-io/docs
# security/secrets-encryption.md). Refuse before anything on the node changes.
refuse_encryption_off() {
    [[ "$ROLE" == server && -e /etc/systemd/system/k3s.service && -e "$CONFIG_FILE" ]] || return 0
    grep -qx 'secrets-encryption: true' "$CONFIG_FILE" || return 0
    if ! base64 -d <<<"$CONFIG_YAML_B64" | grep -qx 'secrets-encryption: true'; then
        die "picluster:k3s.secretsEncryption cannot be turned off by a restart: the Secrets already in the datastore are encrypted and K3s could not read them; set it back to true (README: What the node steps refuse, and why)"
    fi
}

# A Pi has no real-time clock: until NTP has set it, the time may be days behind (fake-hwclock)
# or in 1970, and certificates K3s makes then break later. Wait (bounded) for the sync: the
# kernel's flag (timedatectl), or the mark systemd-timesyncd leaves at its first sync of a boot.
clock_synchronised() {
    [[ -e /run/systemd/timesync/synchronized ]] ||
        [[ "$(timedatectl show -p NTPSynchronized --value 2>/dev/null)" == yes ]]
}

wait_for_clock() {
    local deadline=$((SECONDS + CLOCK_TIMEOUT))
    until clock_synchronised; do
        if ((SECONDS >= deadline)); then
            die "the clock of $NODE_NAME is not synchronised after ${CLOCK_TIMEOUT}s (timedatectl: NTPSynchronized=no), and certificates made with a wrong clock break K3s later; check: systemctl status systemd-timesyncd, that the Pi reaches an NTP server (UDP 123), timedatectl timesync-status"
        fi
        sleep 2
    done
}

# The keys K3s reads only at registration, in their own drop-in: a change is written for the next
# registration but restarts nothing (picluster applies label and taint changes through the API).
write_registration() {
    local tmp
    if [[ -z "${REGISTRATION_YAML_B64:-}" ]]; then
        if [[ -e "$REGISTRATION_FILE" ]]; then
            rm -f "$REGISTRATION_FILE"
            CHANGED+=(registration)
        fi
        return 0
    fi
    mkdir -p "${REGISTRATION_FILE%/*}"
    tmp=$(mktemp "${REGISTRATION_FILE%/*}/.registration.XXXXXX")
    base64 -d <<<"$REGISTRATION_YAML_B64" >"$tmp" || die "REGISTRATION_YAML_B64 is not base64"
    if install_private "$REGISTRATION_FILE" "$tmp"; then
        CHANGED+=(registration)
    fi
}

# 0 when K3s reads something that changed only when it starts: config.yaml (with its drop-ins,
# read together), registries.yaml (K3s renders containerd's hosts.toml from it at start:
# k3s-io/k3s pkg/agent/containerd/config.go) or the token.
restart_needed() {
    local item
    for item in config registries token; do
        [[ " ${CHANGED[*]-} " == *" $item "* ]] && return 0
    done
    return 1
}

picluster_wrote() {
    [[ "$(head -n 1 "$1" 2>/dev/null)" == "$REGISTRIES_MARK" ]]
}

# registries.yaml: written 0600 root:root (it may hold a registry password) only when its content
# differs. A registries.yaml picluster did not write is kept as registries.yaml.picluster.bak
# (once) before picluster's replaces it, and put back when picluster's goes.
write_registries() {
    local tmp
    if [[ -z "${REGISTRIES_YAML_B64:-}" ]]; then
        remove_registries
        return 0
    fi
    mkdir -p "$CONFIG_DIR"
    # mktemp creates the file 0600: the password is never readable by anyone but root.
    tmp=$(mktemp "$CONFIG_DIR/.registries.XXXXXX")
    # From here every failure removes the temp file (it may hold a registry password).
    base64 -d <<<"$REGISTRIES_YAML_B64" >"$tmp" || drop_and_die "$tmp" "REGISTRIES_YAML_B64 is not base64"
    picluster_wrote "$tmp" ||
        drop_and_die "$tmp" "REGISTRIES_YAML_B64 does not start with picluster's mark"
    chown root:root "$tmp" || drop_and_die "$tmp" "chown $tmp failed"
    chmod 600 "$tmp" || drop_and_die "$tmp" "chmod $tmp failed"
    if [[ -e "$REGISTRIES_FILE" ]] && cmp -s "$tmp" "$REGISTRIES_FILE"; then
        rm -f "$tmp"
        { chown root:root "$REGISTRIES_FILE" && chmod 600 "$REGISTRIES_FILE"; } ||
            die "could not make $REGISTRIES_FILE root-only"
        return 0
    fi
    if [[ -e "$REGISTRIES_FILE" ]] && ! picluster_wrote "$REGISTRIES_FILE"; then
        if [[ -e "$REGISTRIES_BACKUP" ]]; then
            log "replacing $REGISTRIES_FILE, which picluster did not write ($REGISTRIES_BACKUP already holds an earlier one)"
        else
            cp -p "$REGISTRIES_FILE" "$REGISTRIES_BACKUP" ||
                drop_and_die "$tmp" "could not back up $REGISTRIES_FILE"
            log "replacing $REGISTRIES_FILE, which picluster did not write: kept as $REGISTRIES_BACKUP"
        fi
    fi
    mv -f "$tmp" "$REGISTRIES_FILE" || drop_and_die "$tmp" "could not write $REGISTRIES_FILE"
    CHANGED+=(registries)
}

# The stack has no registries.yaml (any more): remove the one picluster wrote, putting back the
# file it replaced, if any. Prints what it did (for the uninstall's summary); 1 = nothing.
drop_registries() {
    [[ -e "$REGISTRIES_FILE" ]] || return 1
    if ! picluster_wrote "$REGISTRIES_FILE"; then
        log "left $REGISTRIES_FILE alone: picluster did not write it (its first line is not picluster's mark)"
        return 1
    fi
    if [[ -e "$REGISTRIES_BACKUP" ]]; then
        mv -f "$REGISTRIES_BACKUP" "$REGISTRIES_FILE" || die "could not put back $REGISTRIES_BACKUP"
        log "put back the $REGISTRIES_FILE picluster had replaced"
    else
        rm -f "$REGISTRIES_FILE" || die "could not remove $REGISTRIES_FILE"
    fi
    return 0
}

remove_registries() {
    if drop_registries; then
        CHANGED+=(registries)
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
    CLOCK_TIMEOUT=${CLOCK_TIMEOUT:-180}

    # Everything that refuses does so before the node changes.
    refuse_role_change
    refuse_downgrade
    refuse_token_change
    refuse_encryption_off
    write_files
    write_registration
    write_registries
    local installed=0
    if [[ "$(installed_version)" != "$K3S_VERSION" ||
        ! -e "/etc/systemd/system/$(service_name).service" ]] ||
        restart_needed; then
        wait_for_clock
    fi
    install_k3s && installed=1
    # A new binary, config, registries or token takes effect on restart: the installer starts
    # nothing.
    if ((installed)); then
        start_service restart installed
    elif restart_needed; then
        start_service restart
    else
        start_service start
    fi
    wait_ready

    if ((${#CHANGED[@]} == 0)); then
        echo "picluster k3s-install: no changes"
    else
        local IFS=,
        echo "picluster k3s-install: changed: ${CHANGED[*]}" | sed 's/,/, /g'
    fi
}

main "$@"
