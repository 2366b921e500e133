#!/usr/bin/env bash
# picluster prepare: make a Raspberry Pi OS (Debian bookworm/bullseye) host ready for K3s.
# Idempotent: every step checks before it changes, backs a file up once (<file>.picluster.bak)
# before replacing it, and a second run prints "picluster prepare: no changes".
#
# Inputs (NAME='value' lines on stdin before this script, run as `sudo bash -s`):
#   NODE_NAME  hostname to set (and the 127.0.1.1 line of /etc/hosts)
#   UPGRADE    1 to run apt-get upgrade, 0 to only refresh the package lists (default 0)
#   BOOT_DIR   optional: directory whose cmdline.txt gets the cgroup flags (default: autodetect
#              /boot/firmware, then /boot)
#   APT_MAX_AGE_MINUTES  optional, default 60: skip apt-get update (and upgrade) when this script
#              refreshed the package lists less than this long ago; 0 always refreshes
# Output: progress on stderr; last line on stdout: picluster prepare: no changes | changed: a, b
set -euo pipefail

readonly STATE_DIR=/var/lib/picluster
readonly REBOOT_MARKER=$STATE_DIR/reboot-required
readonly APT_STAMP=$STATE_DIR/apt-refreshed
readonly CGROUP_FLAGS=(cgroup_memory=1 cgroup_enable=memory)
readonly SYSCTL_FILE=/etc/sysctl.d/90-picluster-k3s.conf
readonly MODULES_FILE=/etc/modules-load.d/picluster-k3s.conf
readonly MODULES=(br_netfilter overlay)

CHANGED=()
log() { printf 'picluster prepare: %s\n' "$*" >&2; }
die() { printf 'picluster prepare: ERROR: %s\n' "$*" >&2; exit 1; }
changed() { [[ " ${CHANGED[*]-} " == *" $1 "* ]] || CHANGED+=("$1"); }

backup_once() {
    [[ -e "$1" && ! -e "$1.picluster.bak" ]] && cp -p "$1" "$1.picluster.bak"
    return 0
}

# Replace $1 with the content of file $2 when they differ (backup first); 0 = replaced.
replace_if_different() {
    local target=$1 new=$2 mode=$3
    if [[ -e "$target" ]] && cmp -s "$new" "$target"; then
        rm -f "$new"
        return 1
    fi
    backup_once "$target"
    chmod "$mode" "$new"
    mv -f "$new" "$target"
    return 0
}

step_packages() {
    export DEBIAN_FRONTEND=noninteractive
    # A re-run right after a successful refresh (and upgrade, when asked) has nothing to gain
    # from the mirror: the stamp is written only once both succeeded.
    local fresh=""
    if ((APT_MAX_AGE_MINUTES > 0)); then
        fresh=$(find "$APT_STAMP" -mmin "-$APT_MAX_AGE_MINUTES" 2>/dev/null || true)
    fi
    if [[ -n "$fresh" ]] && [[ "$(cat "$APT_STAMP")" == "upgrade=$UPGRADE" || "$UPGRADE" == 0 ]]; then
        log "package lists refreshed less than $APT_MAX_AGE_MINUTES minutes ago; skipping apt-get"
        return 0
    fi
    log "apt-get update"
    apt-get -qq update >&2 || die "apt-get update failed (network or mirror problem?)"
    if [[ "$UPGRADE" != 1 ]]; then
        mkdir -p "$STATE_DIR"
        echo "upgrade=0" >"$APT_STAMP"
        return 0
    fi
    log "apt-get upgrade"
    local out upgraded
    out=$(apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold upgrade 2>&1) ||
        { printf '%s\n' "$out" >&2; die "apt-get upgrade failed"; }
    printf '%s\n' "$out" >&2
    upgraded=$(sed -n 's/^\([0-9][0-9]*\) upgraded,.*/\1/p' <<<"$out" | tail -n 1)
    if [[ "${upgraded:-0}" -gt 0 ]]; then
        log "$upgraded packages upgraded"
        changed "packages upgraded"
    fi
    mkdir -p "$STATE_DIR"
    echo "upgrade=1" >"$APT_STAMP"
}

step_hostname() {
    local current
    current=$(hostname)
    if [[ "$current" != "$NODE_NAME" || "$(cat /etc/hostname 2>/dev/null)" != "$NODE_NAME" ]]; then
        log "hostname: $current -> $NODE_NAME"
        backup_once /etc/hostname
        if ! hostnamectl set-hostname "$NODE_NAME" 2>/dev/null; then
            log "hostnamectl not usable; writing /etc/hostname"
            printf '%s\n' "$NODE_NAME" >/etc/hostname
            hostname "$NODE_NAME"
        fi
        changed hostname
    fi

    # Debian maps the hostname to 127.0.1.1; replace that line (keep everything else).
    local new
    new=$(mktemp /etc/hosts.picluster.XXXXXX)
    awk -v name="$NODE_NAME" '
        $1 == "127.0.1.1" { if (!done) print "127.0.1.1\t" name; done = 1; next }
        { print }
        END { if (!done) print "127.0.1.1\t" name }
    ' /etc/hosts >"$new"
    if replace_if_different /etc/hosts "$new" 0644; then
        log "/etc/hosts: 127.0.1.1 $NODE_NAME"
        changed hostname
    fi
}

find_cmdline() {
    if [[ -n "$BOOT_DIR" ]]; then
        [[ -f "$BOOT_DIR/cmdline.txt" ]] || die "BOOT_DIR=$BOOT_DIR has no cmdline.txt"
        printf '%s' "$BOOT_DIR/cmdline.txt"
        return
    fi
    # Bookworm moved the boot partition to /boot/firmware and left a "DO NOT EDIT" stub behind.
    if [[ -f /boot/firmware/cmdline.txt ]]; then
        printf '%s' /boot/firmware/cmdline.txt
    elif [[ -f /boot/cmdline.txt ]] && ! grep -q 'DO NOT EDIT' /boot/cmdline.txt; then
        printf '%s' /boot/cmdline.txt
    fi
}

step_cmdline() {
    local file line flag new
    file=$(find_cmdline)
    if [[ -z "$file" ]]; then
        log "no Raspberry Pi cmdline.txt (/boot/firmware or /boot): not adding cgroup flags; cgroup-gate.sh checks the memory controller"
        return 0
    fi
    # cmdline.txt is a single line: the kernel ignores anything after the first newline.
    line=$(head -n 1 "$file" | tr -d '\r')
    line=${line%"${line##*[![:space:]]}"}
    new=$line
    for flag in "${CGROUP_FLAGS[@]}"; do
        [[ " $new " == *" $flag "* ]] || new="$new $flag"
    done
    new=${new# }
    if [[ "$new" == "$line" ]]; then
        return 0
    fi
    log "$file: adding ${CGROUP_FLAGS[*]} (takes effect after a reboot)"
    backup_once "$file"
    # Rewrite in place: /boot/firmware is FAT, where a rename-over is no safer.
    printf '%s\n' "$new" >"$file"
    install -d -m 0755 "$STATE_DIR"
    : >"$REBOOT_MARKER"
    chmod 0644 "$REBOOT_MARKER"
    changed cmdline
}

step_swap() {
    if command -v dphys-swapfile >/dev/null; then
        if systemctl is-enabled --quiet dphys-swapfile 2>/dev/null ||
            systemctl is-active --quiet dphys-swapfile 2>/dev/null; then
            log "dphys-swapfile: swapoff, uninstall, disable"
            dphys-swapfile swapoff >&2 || true
            dphys-swapfile uninstall >&2
            systemctl disable --now dphys-swapfile >&2
            changed swap
        fi
        if [[ -f /etc/dphys-swapfile ]] && ! grep -qx 'CONF_SWAPSIZE=0' /etc/dphys-swapfile; then
            log "/etc/dphys-swapfile: CONF_SWAPSIZE=0"
            backup_once /etc/dphys-swapfile
            if grep -q '^[[:space:]]*#\?[[:space:]]*CONF_SWAPSIZE=' /etc/dphys-swapfile; then
                sed -i 's/^[[:space:]]*#\?[[:space:]]*CONF_SWAPSIZE=.*/CONF_SWAPSIZE=0/' /etc/dphys-swapfile
            else
                printf 'CONF_SWAPSIZE=0\n' >>/etc/dphys-swapfile
            fi
            changed swap
        fi
    fi
    # Plain Debian: swap from /etc/fstab. Comment it out rather than masking swap.target.
    if [[ -f /etc/fstab ]] && awk '$1 !~ /^#/ && $3 == "swap" { found = 1 } END { exit !found }' /etc/fstab; then
        log "/etc/fstab: commenting out swap entries"
        backup_once /etc/fstab
        sed -i -E 's/^([^#[:space:]][^[:space:]]*[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]].*)$/# picluster: no swap for K3s: \1/' /etc/fstab
        changed swap
    fi
    # /proc/swaps: a header line, then one line per active swap area.
    if [[ $(wc -l </proc/swaps) -gt 1 ]]; then
        log "swapoff -a"
        swapoff -a
        changed swap
    fi
}

step_modules() {
    local content m
    content="# picluster: kernel modules K3s needs (flannel bridge, containerd overlayfs)"
    for m in "${MODULES[@]}"; do content+=$'\n'"$m"; done
    local new
    install -d -m 0755 "${MODULES_FILE%/*}"
    new=$(mktemp "$MODULES_FILE.XXXXXX")
    printf '%s\n' "$content" >"$new"
    if replace_if_different "$MODULES_FILE" "$new" 0644; then
        log "$MODULES_FILE written"
        changed modules
    fi
    local builtin
    builtin=/lib/modules/$(uname -r)/modules.builtin
    for m in "${MODULES[@]}"; do
        if [[ -d /sys/module/$m ]] || grep -qs "/$m\.ko\$" "$builtin"; then
            continue
        fi
        log "modprobe $m"
        modprobe "$m" || die "modprobe $m failed: K3s needs it (is the kernel complete? try: sudo apt-get install --reinstall raspberrypi-kernel)"
        changed modules
    done
}

step_sysctl() {
    local new key value current apply=0
    install -d -m 0755 "${SYSCTL_FILE%/*}"
    new=$(mktemp "$SYSCTL_FILE.XXXXXX")
    cat >"$new" <<'EOF'
# picluster: kernel settings K3s needs (pod traffic is forwarded and passes iptables)
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
EOF
    if replace_if_different "$SYSCTL_FILE" "$new" 0644; then
        log "$SYSCTL_FILE written"
        apply=1
    fi
    # Also apply when the running kernel drifted from the file (e.g. something reset it).
    while read -r key _ value; do
        [[ -z "$key" || "$key" == \#* ]] && continue
        current=$(sysctl -n "$key" 2>/dev/null || true)
        [[ "$current" == "$value" ]] || apply=1
    done <"$SYSCTL_FILE"
    if [[ "$apply" == 1 ]]; then
        log "sysctl -p $SYSCTL_FILE"
        sysctl -p "$SYSCTL_FILE" >&2 || die "sysctl -p $SYSCTL_FILE failed (is br_netfilter loaded?)"
        changed sysctl
    fi
}

report_iptables() {
    # K3s works with either backend; check, don't force legacy (as k3s-ansible notes, mixing
    # both on one host is what breaks, and Bookworm's default nf_tables is fine).
    local version
    if ! command -v iptables >/dev/null; then
        log "iptables not installed: fine, K3s uses its bundled iptables"
        return 0
    fi
    version=$(iptables --version 2>/dev/null || true)
    case "$version" in
        *nf_tables*) log "iptables backend: nf_tables ($version)" ;;
        *legacy*) log "iptables backend: legacy ($version)" ;;
        *) log "iptables backend: unknown ($version)" ;;
    esac
}

main() {
    exec </dev/null
    : "${NODE_NAME:?NODE_NAME is required}"
    : "${UPGRADE:=0}"
    : "${BOOT_DIR:=}"
    : "${APT_MAX_AGE_MINUTES:=60}"
    [[ "$APT_MAX_AGE_MINUTES" =~ ^[0-9]+$ ]] ||
        die "APT_MAX_AGE_MINUTES must be a whole number of minutes, got '$APT_MAX_AGE_MINUTES'"
    [[ "$UPGRADE" == 0 || "$UPGRADE" == 1 ]] || die "UPGRADE must be 1 or 0, got '$UPGRADE'"
    [[ "$NODE_NAME" =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] ||
        die "NODE_NAME '$NODE_NAME' is not a valid hostname (lowercase letters, digits, '-')"

    step_packages
    step_hostname
    step_cmdline
    step_swap
    step_modules
    step_sysctl
    report_iptables

    if [[ ${#CHANGED[@]} -eq 0 ]]; then
        echo "picluster prepare: no changes"
    else
        local joined
        joined=$(printf '%s, ' "${CHANGED[@]}")
        echo "picluster prepare: changed: ${joined%, }"
    fi
}

main "$@"
