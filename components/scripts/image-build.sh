#!/usr/bin/env bash
# picluster image-build: build one of the studio's images from its source folder on this machine
# (`bash -s`, run by a local command), and put it where the target pulls it from: the Docker
# daemon the docker target runs on, the in-cluster registry (pushed through an SSH tunnel to the
# first server), or a registry the user names.
#
# Inputs (NAME='value' lines on stdin before this script):
#   MODE               local | tunnel | registry
#   REF                the content-tagged image reference the target runs (its tag is a hash of
#                      the folder, so an existing REF holds exactly this source)
#   CONTEXT            the source folder, absolute or relative to the working directory (the
#                      project's, where Pulumi runs); nothing is ever written into it
#   DOCKERFILE_B64     picluster's generated Dockerfile (base64), or empty: the folder's own
#   IGNORE_B64         the `<Dockerfile>.dockerignore` written next to it (base64), or empty
#   PLATFORMS          comma-separated (linux/arm64,linux/amd64), or empty: the daemon's own
#   BUILDER            a `docker buildx` builder to build on, or empty
#   DOCKER_HOST        local: the daemon of `docker.host` (empty: the docker CLI's default)
#   SSH_HOST, SSH_PORT, SSH_USER, SSH_HOST_KEY, SSH_PRIVATE_KEY
#                      tunnel: the first server (the key is a secret: a 0600 temp file only)
#   REGISTRY_ADDRESS   tunnel: the registry as the server reaches it (default 10.43.0.50:5000)
#   REGISTRY_ID        tunnel: the uid of the registry's claim (not read: a registry created again,
#                      empty, changes the stdin, so the build runs, checks and pushes again)
#   REGISTRY_USERNAME, REGISTRY_PASSWORD
#                      registry: the account (the password is a secret: `--password-stdin`)
# Output: last line on stdout: picluster image-build: <ref> already built | built |
#         already in the registry | pushed
# A `delete` does nothing: images stay on the daemon and in the registry (remove them with
# `docker image rm` / the registry's garbage collection).
set -euo pipefail

WORK=""
TUNNEL_PID=""
log() { printf 'picluster image-build: %s\n' "$*" >&2; }
die() { printf 'picluster image-build: ERROR: %s\n' "$*" >&2; exit 1; }

cleanup() {
    if [[ -n "$TUNNEL_PID" ]]; then
        kill "$TUNNEL_PID" 2>/dev/null || true
        wait "$TUNNEL_PID" 2>/dev/null || true
    fi
    [[ -z "$WORK" ]] || rm -rf "$WORK"
}

# --- which docker client builds with BuildKit -----------------------------------------------
# A client from 23 on hands `DOCKER_BUILDKIT=1 docker build` to the buildx plugin and fails
# without it; an older one (Debian bookworm's 20.10) carries BuildKit itself. Take the first
# `docker` on PATH that can: one with buildx, or one older than 23.
DOCKER=docker
pick_docker() {
    local candidate version
    while IFS= read -r candidate; do
        if "$candidate" buildx version >/dev/null 2>&1; then
            DOCKER="$candidate"
            return 0
        fi
        version=$("$candidate" --version 2>/dev/null | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')
        if [[ -n "$version" && "$version" -lt 23 ]]; then
            DOCKER="$candidate"
            return 0
        fi
    done < <(type -ap docker | awk '!seen[$0]++')
    die "no docker client here builds with BuildKit: install the buildx plugin (README: Building the studio's images)"
}

has_buildx() { "$DOCKER" buildx version >/dev/null 2>&1; }

# --- the build ------------------------------------------------------------------------------
# picluster's Dockerfile and its ignore file go to a temp dir outside the folder: BuildKit reads
# `<Dockerfile>.dockerignore` next to the Dockerfile instead of the folder's `.dockerignore`.
DOCKERFILE=""
write_dockerfile() {
    if [[ -n "$DOCKERFILE_B64" ]]; then
        DOCKERFILE="$WORK/Dockerfile"
        printf '%s' "$DOCKERFILE_B64" | base64 --decode >"$DOCKERFILE"
        printf '%s' "$IGNORE_B64" | base64 --decode >"$WORK/Dockerfile.dockerignore"
    else
        DOCKERFILE="$CONTEXT/Dockerfile"
    fi
}

# build_one TAG PLATFORM: one image for one platform (or the daemon's own), in the local daemon.
build_one() {
    local tag=$1 platform=$2
    local args=(-f "$DOCKERFILE" -t "$tag")
    [[ -z "$platform" ]] || args+=(--platform "$platform")
    # Extra CA certificates for npm behind a TLS-intercepting proxy (the Node.js Dockerfile
    # mounts the optional secret npm-ca): the builder's own NODE_EXTRA_CA_CERTS, as a file.
    if [[ -n "${NODE_EXTRA_CA_CERTS:-}" && -r "${NODE_EXTRA_CA_CERTS:-}" ]]; then
        args+=(--secret "id=npm-ca,src=$NODE_EXTRA_CA_CERTS")
    fi
    log "with $DOCKER ($("$DOCKER" --version)$(has_buildx && printf ', buildx'))"
    if [[ -n "$BUILDER" ]]; then
        has_buildx || die "images.builder is set ($BUILDER) but docker buildx is not installed"
        # --load brings the image back from the builder (a Pi's daemon, a container) to this one.
        "$DOCKER" buildx build --builder "$BUILDER" --load "${args[@]}" "$CONTEXT" >&2
    else
        DOCKER_BUILDKIT=1 "$DOCKER" build "${args[@]}" "$CONTEXT" >&2
    fi
}

# The local image's platform as os/arch, or nothing when the daemon has no such image.
local_platform() {
    "$DOCKER" image inspect --format '{{.Os}}/{{.Architecture}}' "$1" 2>/dev/null || true
}

# ensure_local TAG PLATFORM: TAG in the local daemon for PLATFORM (any, when empty); sets BUILT.
# (Never called as a condition: `set -e` does not apply inside a function that is one.)
BUILT=no
ensure_local() {
    local tag=$1 platform=$2 have
    have=$(local_platform "$tag")
    if [[ -n "$have" && (-z "$platform" || "$have" == "$platform") ]]; then
        log "$tag is already in the daemon${platform:+ for $platform}"
        return 0
    fi
    log "building $tag${platform:+ for $platform} from $CONTEXT"
    build_one "$tag" "$platform"
    [[ -n "$(local_platform "$tag")" ]] || die "the build left no image $tag"
    BUILT=yes
}

# --- registries -----------------------------------------------------------------------------
split_platforms() { tr ',' '\n' <<<"$PLATFORMS" | sed '/^$/d'; }

# `docker` for what talks to a registry (login, push, manifest): with the private DOCKER_CONFIG
# of a named registry's login when there is one. Builds keep the user's own (buildx and its
# builders live there).
REGISTRY_CONFIG=""
rdocker() {
    if [[ -n "$REGISTRY_CONFIG" ]]; then
        DOCKER_CONFIG="$REGISTRY_CONFIG" "$DOCKER" "$@"
    else
        "$DOCKER" "$@"
    fi
}

# push_one LOCAL DEST: push the local image LOCAL as DEST (a registry tag added for the push
# only, unless it is LOCAL itself).
push_one() {
    local source=$1 dest=$2
    [[ "$source" == "$dest" ]] || "$DOCKER" tag "$source" "$dest"
    rdocker push "$dest" >&2
    [[ "$source" == "$dest" ]] || "$DOCKER" image rm "$dest" >/dev/null
}

# push_all DEST INSECURE: build what is missing locally and push it to DEST (repository:tag as
# this machine's daemon reaches it), one image per platform; several platforms become one
# manifest list of per-platform tags `<tag>-<arch>`.
push_all() {
    local dest=$1 insecure=$2 platform arch
    local platforms=() sources=() flags=()
    while IFS= read -r platform; do platforms+=("$platform"); done < <(split_platforms)
    if ((${#platforms[@]} <= 1)); then
        ensure_local "$REF" "${platforms[0]:-}"
        push_one "$REF" "$dest"
        return 0
    fi
    for platform in "${platforms[@]}"; do
        arch=${platform#*/}
        arch=${arch//\//-}
        ensure_local "$REF-$arch" "$platform"
        push_one "$REF-$arch" "$dest-$arch"
        sources+=("$dest-$arch")
    done
    [[ "$insecure" == no ]] || flags+=(--insecure)
    rdocker manifest rm "$dest" >/dev/null 2>&1 || true
    rdocker manifest create ${flags[@]+"${flags[@]}"} "$dest" "${sources[@]}" >&2
    rdocker manifest push ${flags[@]+"${flags[@]}"} --purge "$dest" >&2
}

# The architectures a manifest (or manifest list) names, from `docker manifest inspect -v`
# (a GET of /v2/<name>/manifests/<tag>, and of each platform's manifest).
manifest_arches() {
    local flags=()
    [[ "$2" == no ]] || flags+=(--insecure)
    rdocker manifest inspect -v ${flags[@]+"${flags[@]}"} "$1" 2>/dev/null |
        grep -o '"architecture": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' | sort -u
}

# in_registry DEST INSECURE: the registry has DEST for every platform asked for.
in_registry() {
    local arches platform
    arches=$(manifest_arches "$1" "$2") || true
    [[ -n "$arches" ]] || return 1
    while IFS= read -r platform; do
        grep -qx "${platform#*/}" <<<"$arches" || return 1
    done < <(split_platforms)
    return 0
}

free_port() {
    local port tries
    for tries in $(seq 1 50); do
        port=$((20000 + (RANDOM * 32768 + RANDOM + tries) % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            printf '%s\n' "$port"
            return 0
        fi
    done
    die "no free local port for the SSH tunnel"
}

# open_tunnel: forward a loopback port to the registry through the first server; sets PORT.
open_tunnel() {
    local key="$WORK/ssh/key" known="$WORK/ssh/known_hosts" checking=yes attempt code
    mkdir -m 700 "$WORK/ssh"
    (umask 077 && printf '%s\n' "$SSH_PRIVATE_KEY" >"$key")
    if [[ -n "$SSH_HOST_KEY" ]]; then
        printf 'picluster-first-server %s\n' "$SSH_HOST_KEY" >"$known"
    else
        log "no hostKey for $SSH_HOST: its SSH host key is not checked (set nodes[].hostKey)"
        checking=no
        : >"$known"
    fi
    for attempt in 1 2 3; do
        PORT=$(free_port)
        ssh -N -o BatchMode=yes -o ExitOnForwardFailure=yes -o ConnectTimeout=10 \
            -o ServerAliveInterval=15 -o IdentitiesOnly=yes -o LogLevel=ERROR \
            -o HostKeyAlias=picluster-first-server -o UserKnownHostsFile="$known" \
            -o StrictHostKeyChecking="$checking" -i "$key" -p "$SSH_PORT" \
            -L "127.0.0.1:$PORT:$REGISTRY_ADDRESS" "$SSH_USER@$SSH_HOST" &
        TUNNEL_PID=$!
        for _ in $(seq 1 60); do
            kill -0 "$TUNNEL_PID" 2>/dev/null || break
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/v2/" || true)
            if [[ "$code" == 200 || "$code" == 401 ]]; then
                log "tunnel to the registry $REGISTRY_ADDRESS through $SSH_HOST on 127.0.0.1:$PORT"
                return 0
            fi
            sleep 0.5
        done
        kill "$TUNNEL_PID" 2>/dev/null || true
        wait "$TUNNEL_PID" 2>/dev/null || true
        TUNNEL_PID=""
        log "tunnel attempt $attempt failed"
    done
    die "could not reach the registry $REGISTRY_ADDRESS through $SSH_USER@$SSH_HOST:$SSH_PORT"
}

# --- the three targets ----------------------------------------------------------------------
to_daemon() {
    if [[ -n "$DOCKER_HOST" ]]; then
        export DOCKER_HOST
    else
        unset DOCKER_HOST
    fi
    ensure_local "$REF" "$(split_platforms | head -n 1)"
    if [[ "$BUILT" == yes ]]; then
        RESULT="$REF built"
    else
        RESULT="$REF already built"
    fi
}

# Pushes go through this machine's daemon (DOCKER_HOST as the environment has it): the tunnel's
# end is on this machine's loopback, which Docker trusts as a plain-HTTP registry.
to_tunnel() {
    local dest
    : "${REGISTRY_ADDRESS:=10.43.0.50:5000}"
    open_tunnel
    dest="127.0.0.1:$PORT/${REF#*/}"
    if in_registry "$dest" yes; then
        RESULT="$REF already in the registry"
        return 0
    fi
    push_all "$dest" yes
    in_registry "$dest" yes || die "the registry does not list $REF after the push"
    RESULT="$REF pushed"
}

to_registry() {
    if [[ -n "$REGISTRY_USERNAME" ]]; then
        # A private DOCKER_CONFIG: the login never lands in ~/.docker/config.json.
        REGISTRY_CONFIG="$WORK/docker-config"
        mkdir -m 700 "$REGISTRY_CONFIG"
        printf '%s' "$REGISTRY_PASSWORD" |
            rdocker login --username "$REGISTRY_USERNAME" --password-stdin "${REF%%/*}" >&2
    fi
    # Plain HTTP only to this machine's loopback, as the daemon itself allows (never with a
    # password to anything else).
    local insecure=no
    case "${REF%%/*}" in localhost:* | 127.*) insecure=yes ;; esac
    if in_registry "$REF" "$insecure"; then
        RESULT="$REF already in the registry"
        return 0
    fi
    push_all "$REF" "$insecure"
    in_registry "$REF" "$insecure" || die "the registry does not list $REF after the push"
    RESULT="$REF pushed"
}

main() {
    exec </dev/null
    : "${MODE:?}" "${REF:?}" "${CONTEXT:?}"
    : "${DOCKERFILE_B64:=}" "${IGNORE_B64:=}" "${PLATFORMS:=}" "${BUILDER:=}" "${DOCKER_HOST:=}"
    : "${SSH_HOST:=}" "${SSH_PORT:=22}" "${SSH_USER:=}" "${SSH_HOST_KEY:=}" "${SSH_PRIVATE_KEY:=}"
    : "${REGISTRY_ADDRESS:=}" "${REGISTRY_USERNAME:=}" "${REGISTRY_PASSWORD:=}"
    [[ -d "$CONTEXT" ]] || die "$CONTEXT is not a folder"
    trap cleanup EXIT
    # A cancelled `pulumi up` still removes the key file and the login (through the EXIT trap).
    trap 'exit 130' INT TERM HUP
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/picluster-image-build.XXXXXX")
    pick_docker
    write_dockerfile
    case "$MODE" in
        local) to_daemon ;;
        tunnel) to_tunnel ;;
        registry) to_registry ;;
        *) die "unknown MODE '$MODE' (local, tunnel or registry)" ;;
    esac
    printf 'picluster image-build: %s\n' "$RESULT"
}

main "$@"
