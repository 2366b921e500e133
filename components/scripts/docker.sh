#!/usr/bin/env bash
# picluster docker: install Docker Engine on a node that runs the app with Docker (optional per
# node), the way the seed did: Docker's convenience script from get.docker.com.
#
# Inputs (NAME='value' lines on stdin before this script, run as `sudo bash -s`):
#   DOCKER_INSTALL_URL  optional, default https://get.docker.com (tests point it at a file:// double)
#   DOCKER_USER         optional: user to add to the docker group (the SSH user)
# Output: last line on stdout: picluster docker: no changes | changed: docker installed, ...
set -euo pipefail

CHANGED=()
TMP_DIR=""
log() { printf 'picluster docker: %s\n' "$*" >&2; }
die() { printf 'picluster docker: ERROR: %s\n' "$*" >&2; exit 1; }
cleanup() { [[ -z "$TMP_DIR" ]] || rm -rf "$TMP_DIR"; }

install_docker() {
    if command -v docker >/dev/null; then
        log "docker already installed: $(docker --version 2>/dev/null || echo '?')"
        if systemctl cat docker.service >/dev/null 2>&1 && ! systemctl is-active --quiet docker; then
            log "docker.service not running: enabling and starting it"
            systemctl enable --now docker >&2
            CHANGED+=("docker started")
        fi
        return 0
    fi
    # Download first, then run: a dropped connection must not run half a script.
    TMP_DIR=$(mktemp -d)
    log "downloading $DOCKER_INSTALL_URL"
    curl -fsSL --retry 3 --proto '=https,file' -o "$TMP_DIR/get-docker.sh" "$DOCKER_INSTALL_URL" ||
        die "could not download $DOCKER_INSTALL_URL"
    log "running the Docker install script"
    sh "$TMP_DIR/get-docker.sh" >&2 || die "the Docker install script failed"
    command -v docker >/dev/null || die "the Docker install script finished but there is no docker command"
    CHANGED+=("docker installed")
}

add_user_to_group() {
    [[ -n "$DOCKER_USER" ]] || return 0
    id "$DOCKER_USER" >/dev/null 2>&1 || die "DOCKER_USER '$DOCKER_USER' does not exist on this node"
    if ! getent group docker >/dev/null; then
        groupadd --system docker
    fi
    if id -nG "$DOCKER_USER" | tr ' ' '\n' | grep -qx docker; then
        return 0
    fi
    log "adding $DOCKER_USER to the docker group (effective at the next login)"
    usermod -aG docker "$DOCKER_USER"
    CHANGED+=("$DOCKER_USER in docker group")
}

main() {
    exec </dev/null
    : "${DOCKER_INSTALL_URL:=https://get.docker.com}"
    : "${DOCKER_USER:=}"
    trap cleanup EXIT

    install_docker
    add_user_to_group

    if [[ ${#CHANGED[@]} -eq 0 ]]; then
        echo "picluster docker: no changes"
    else
        local joined
        joined=$(printf '%s, ' "${CHANGED[@]}")
        echo "picluster docker: changed: ${joined%, }"
    fi
}

main "$@"
