#!/usr/bin/env bash
# picluster facts: preflight for a Raspberry Pi node. Changes nothing; fails on an unsupported OS.
#
# Inputs (NAME='value' lines on stdin before this script, run as `sudo bash -s`):
#   NODE_NAME               node name from the stack config (only used in messages)
#   EXPECTED_ARCH           optional, default arm64 (64-bit Raspberry Pi OS)
#   DEVICE_TREE_MODEL_FILE  optional, default /proc/device-tree/model (tests)
#   CPUINFO_FILE            optional, default /proc/cpuinfo (tests)
# Prints one line: picluster facts: arch=... os=... model="..." memory_mb=... page_size=... hostname=...
set -euo pipefail

log() { printf 'picluster facts: %s\n' "$*" >&2; }
warn() { printf 'picluster facts: WARNING: %s\n' "$*" >&2; }
die() { printf 'picluster facts: ERROR: %s\n' "$*" >&2; exit 1; }

# A fact value goes into a key=value line: drop quotes, NULs and control characters.
clean() { tr -d '"\000-\037' | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//'; }
# Quote only values with spaces, so the line splits with shlex.
fact() { if [[ "$2" == *" "* ]]; then printf '%s="%s"' "$1" "$2"; else printf '%s=%s' "$1" "$2"; fi; }

detect_model() {
    local model=""
    if [[ -r "$DEVICE_TREE_MODEL_FILE" ]]; then
        model=$(clean <"$DEVICE_TREE_MODEL_FILE")
    fi
    # No device tree (containers, some kernels): k3s-ansible reads /proc/cpuinfo the same way.
    if [[ -z "$model" && -r "$CPUINFO_FILE" ]]; then
        model=$(sed -n 's/^Model[[:space:]]*:[[:space:]]*//p' "$CPUINFO_FILE" | head -n 1 | clean)
        if [[ -z "$model" ]]; then
            model=$(sed -n 's/^Hardware[[:space:]]*:[[:space:]]*//p' "$CPUINFO_FILE" | head -n 1 | clean)
        fi
    fi
    printf '%s' "${model:-unknown}"
}

check_os() {
    [[ -r /etc/os-release ]] || die "no /etc/os-release: cannot tell which OS this is; supported: Raspberry Pi OS / Debian 11 (bullseye), 12 (bookworm) or newer"
    local ID="" ID_LIKE="" VERSION_ID="" VERSION_CODENAME=""
    # shellcheck disable=SC1091
    . /etc/os-release
    local major=${VERSION_ID%%.*}
    OS="${ID:-unknown}-${VERSION_ID:-unknown}${VERSION_CODENAME:+-$VERSION_CODENAME}"
    case "$ID" in
        debian | raspbian)
            # Debian testing/sid have no VERSION_ID: newer than any release, so fine.
            if [[ -n "$major" && "$major" =~ ^[0-9]+$ && "$major" -lt 11 ]]; then
                die "$ID $VERSION_ID (${VERSION_CODENAME:-?}) is too old; supported: Raspberry Pi OS / Debian 11 (bullseye), 12 (bookworm) or newer"
            fi
            ;;
        *)
            if [[ " $ID_LIKE " != *" debian "* ]]; then
                die "unsupported OS '$ID' (ID_LIKE='$ID_LIKE'); supported: Raspberry Pi OS / Debian 11 (bullseye), 12 (bookworm) or newer"
            fi
            warn "$ID $VERSION_ID is Debian-based but not Debian or Raspberry Pi OS: not tested"
            ;;
    esac
}

main() {
    exec </dev/null
    : "${NODE_NAME:?NODE_NAME is required}"
    : "${EXPECTED_ARCH:=arm64}"
    : "${DEVICE_TREE_MODEL_FILE:=/proc/device-tree/model}"
    : "${CPUINFO_FILE:=/proc/cpuinfo}"

    local arch model memory_kb memory_mb page_size host
    arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
    if [[ "$arch" != "$EXPECTED_ARCH" ]]; then
        warn "expected $EXPECTED_ARCH (64-bit Raspberry Pi OS); this host is $arch: K3s and the images picluster deploys must match it (node $NODE_NAME)"
    fi

    OS=unknown
    check_os

    model=$(detect_model)
    [[ "$model" == unknown ]] && warn "no Raspberry Pi model found in $DEVICE_TREE_MODEL_FILE or $CPUINFO_FILE"

    page_size=$(getconf PAGESIZE)
    if [[ "$page_size" == 16384 ]]; then
        warn "kernel uses 16K pages (Raspberry Pi 5 kernel_2712.img); some software (e.g. jemalloc in older images) breaks: set kernel=kernel8.img in /boot/firmware/config.txt for 4K pages, then reboot"
    fi

    memory_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
    memory_mb=$((memory_kb / 1024))
    host=$(hostname)
    log "node $NODE_NAME: $arch, $OS, $model, ${memory_mb} MB, page size $page_size"

    printf 'picluster facts: %s %s %s %s %s %s\n' \
        "$(fact arch "$arch")" "$(fact os "$OS")" "$(fact model "$model")" \
        "$(fact memory_mb "$memory_mb")" "$(fact page_size "$page_size")" "$(fact hostname "$host")"
}

main "$@"
