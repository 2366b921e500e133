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
#                      tunnel: the first server (the key is a secret: a 0600 temp file only;
#                      empty with SSH_AGENT when the agent alone signs in)
#   SSH_KEY_PASSPHRASE tunnel: the key's passphrase, or empty (a secret: a 0600 temp file that an
#                      SSH_ASKPASS helper prints to ssh, deleted with the key)
#   SSH_AGENT          tunnel: 1 to sign in with the agent at the caller's SSH_AUTH_SOCK too
#   REGISTRY_ADDRESS   tunnel: the registry as the server reaches it (default 10.43.0.50:5000)
#   REGISTRY_ID        tunnel: the uid of the registry's claim (not read: a registry created again,
#                      empty, changes the stdin, so the build runs, checks and pushes again)
#   REGISTRY_USERNAME, REGISTRY_PASSWORD
#                      registry: the account (the password is a secret: written only into a
#                      0600 `config.json` of a private DOCKER_CONFIG, from printf and base64's
#                      stdin, never on a command line; no `docker login`, which may hand it to
#                      the platform's credential helper)
# Every name is in the header (empty when unused), so nothing exported in the caller's shell
# changes a build; DOCKER_HOST only for `local` (a push goes through the caller's own daemon).
# Output on stdout: for a push, `picluster image-build: digest sha256:...`, the manifest's (or
# the manifest list's) digest as the registry serves it (`Docker-Content-Digest`), which the
# pods pin; then, last: picluster image-build: <ref> already built | built |
#         already in the registry | pushed
# A `delete` does nothing: images stay on the daemon and in the registry (remove them with
# `docker image rm` / the registry's garbage collection).
set -euo pipefail

WORK=""
TUNNEL_PID=""
# fd 9: the write end of the tunnel's stdin (open_tunnel). Only this bash holds it: every child
# that could outlive a moment gets `9>&-`, so when this bash dies (SIGKILL included: a
# cancelled `pulumi up` kills only bash, and no trap runs) ssh reads EOF and exits.
log() { printf 'picluster image-build: %s\n' "$*" >&2; }
die() { printf 'picluster image-build: ERROR: %s\n' "$*" >&2; exit 1; }

cleanup() {
    exec 9>&-
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
        DOCKER_CONFIG="$REGISTRY_CONFIG" "$DOCKER" "$@" 9>&-
    else
        "$DOCKER" "$@" 9>&-
    fi
}

# push_one LOCAL DEST: push the local image LOCAL as DEST (a registry tag added for the push
# only, unless it is LOCAL itself).
push_one() {
    local source=$1 dest=$2
    [[ "$source" == "$dest" ]] || "$DOCKER" tag "$source" "$dest" 9>&-
    rdocker push "$dest" >&2
    [[ "$source" == "$dest" ]] || "$DOCKER" image rm "$dest" >/dev/null 9>&-
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

# --- the digest the pods pin ---------------------------------------------------------------
# Tags in a registry can be overwritten (the in-cluster one takes pushes from inside the
# cluster); a digest cannot. The digest is asked of the registry itself: the
# `Docker-Content-Digest` of a HEAD on the manifest, accepting a list (several platforms) or a
# single image, the way containerd asks before it pulls.
ACCEPT=(
    -H "Accept: application/vnd.docker.distribution.manifest.list.v2+json"
    -H "Accept: application/vnd.oci.image.index.v1+json"
    -H "Accept: application/vnd.docker.distribution.manifest.v2+json"
    -H "Accept: application/vnd.oci.image.manifest.v1+json"
)
REGISTRY_AUTH=""

# registry_head URL [AUTHORIZATION]: the response headers of a HEAD on URL. The Authorization
# value (a password or a token) reaches curl in its config on stdin, never on its command line.
# --noproxy: an http_proxy in the environment must not take the loopback tunnel or the registry.
registry_head() {
    { [[ -z "${2:-}" ]] || printf 'header = "Authorization: %s"\n' "$2"; } |
        curl --noproxy '*' -sS -I --max-time 30 -K - "${ACCEPT[@]}" "$1" 9>&- || true
}

# bearer_token CHALLENGE: a registry token for the `WWW-Authenticate: Bearer ...` CHALLENGE
# (distribution's token auth, as Docker Hub or ghcr.io use), with the account when there is one.
challenge_param() { sed -n "s/.*[ ,]$1=\"\([^\"]*\)\".*/\1/p" <<<" ${2#* }"; }
bearer_token() {
    local challenge=$1 realm service scope
    realm=$(challenge_param realm "$challenge")
    service=$(challenge_param service "$challenge")
    scope=$(challenge_param scope "$challenge")
    [[ -n "$realm" ]] || return 0
    { [[ -z "$REGISTRY_AUTH" ]] || printf 'header = "Authorization: Basic %s"\n' "$REGISTRY_AUTH"; } |
        curl --noproxy '*' -sS -G --max-time 30 -K - \
            ${service:+--data-urlencode "service=$service"} \
            ${scope:+--data-urlencode "scope=$scope"} "$realm" 9>&- |
        grep -o '"\(access_\)\{0,1\}token": *"[^"]*"' | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/' || true
}

# manifest_digest DEST INSECURE: the digest the registry serves for DEST (host/name:tag), or
# nothing.
manifest_digest() {
    local dest=$1 scheme=https rest url headers challenge token=""
    [[ "$2" == no ]] || scheme=http
    rest=${dest#*/}
    url="$scheme://${dest%%/*}/v2/${rest%:*}/manifests/${rest##*:}"
    headers=$(registry_head "$url" "${REGISTRY_AUTH:+Basic $REGISTRY_AUTH}" | tr -d '\r')
    challenge=$(sed -n 's/^[Ww][Ww][Ww]-[Aa]uthenticate: *//p' <<<"$headers" | head -n 1)
    if [[ "$challenge" == [Bb]earer* ]]; then
        token=$(bearer_token "$challenge")
        [[ -z "$token" ]] || headers=$(registry_head "$url" "Bearer $token" | tr -d '\r')
    fi
    sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *\(sha256:[0-9a-f]\{64\}\)$/\1/p' <<<"$headers" |
        head -n 1
}

# pin DEST INSECURE: sets DIGEST, or stops.
DIGEST=""
pin() {
    DIGEST=$(manifest_digest "$1" "$2")
    [[ -n "$DIGEST" ]] || die "the registry gave no digest for $REF"
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
# Cancel-safe without traps. pulumi-command runs `/bin/sh -c 'bash -s'` with
# exec.CommandContext, whose cancel SIGKILLs that process only, and its Wait returns only once
# every holder of the stdout/stderr pipes closed them (provider/pkg/provider/local/
# commandOutputs.go). So: the key file is deleted as soon as the tunnel answers (ssh read it
# when it connected); ssh writes to no pipe of the provider's (its output goes to a file) and
# runs `cat >/dev/null` on the server with its stdin from fd 9, a pipe only this bash holds, so
# it exits when this bash does, however it ends. `-F /dev/null`: the user's ~/.ssh/config
# (ControlMaster, ProxyCommand, another IdentityFile) never changes this connection.
# Sign-in as pulumi-command's: the key (with its passphrase), and with SSH_AGENT the agent's keys.
# A passphrase reaches ssh only through SSH_ASKPASS (forced: no terminal here), a helper that
# prints a 0600 file; BatchMode is then off (it skips encrypted keys), and only public-key
# authentication is allowed, so the helper is never asked for anything but the passphrase.
SSH_AUTH=()
tunnel_auth() {
    local key="$WORK/ssh/key" askpass="$WORK/ssh/askpass"
    SSH_AUTH=(-o PreferredAuthentications=publickey -o NumberOfPasswordPrompts=1)
    if [[ -n "$SSH_AGENT" ]]; then
        [[ -n "${SSH_AUTH_SOCK:-}" ]] ||
            die "ssh.agent is set but SSH_AUTH_SOCK is not: run pulumi from a shell with your ssh-agent"
        SSH_AUTH+=(-o IdentitiesOnly=no)
    else
        SSH_AUTH+=(-o IdentitiesOnly=yes)
    fi
    if [[ -n "$SSH_PRIVATE_KEY" ]]; then
        (umask 077 && printf '%s\n' "$SSH_PRIVATE_KEY" >"$key")
        SSH_AUTH+=(-i "$key")
    fi
    if [[ -n "$SSH_KEY_PASSPHRASE" ]]; then
        (umask 077 && printf '%s\n' "$SSH_KEY_PASSPHRASE" >"$WORK/ssh/passphrase")
        # shellcheck disable=SC2016 # expanded by the helper, when ssh runs it
        (umask 077 && printf '#!/bin/sh\nexec cat "${0%%/*}/passphrase"\n' >"$askpass")
        chmod 700 "$askpass"
        SSH_AUTH+=(-o BatchMode=no)
    else
        SSH_AUTH+=(-o BatchMode=yes)
    fi
}

# The key and its passphrase go as soon as the tunnel answers (ssh has read them).
forget_secrets() { rm -f "$WORK/ssh/key" "$WORK/ssh/passphrase"; }

open_tunnel() {
    local known="$WORK/ssh/known_hosts" fifo="$WORK/ssh/stdin"
    local checking=yes attempt code
    mkdir -m 700 "$WORK/ssh"
    tunnel_auth
    if [[ -n "$SSH_HOST_KEY" ]]; then
        printf 'picluster-first-server %s\n' "$SSH_HOST_KEY" >"$known"
    else
        log "no hostKey for $SSH_HOST: its SSH host key is not checked (set nodes[].hostKey)"
        checking=no
        : >"$known"
    fi
    for attempt in 1 2 3; do
        PORT=$(free_port)
        rm -f "$fifo"
        mkfifo -m 600 "$fifo"
        SSH_ASKPASS="$WORK/ssh/askpass" SSH_ASKPASS_REQUIRE=force \
            ssh -F /dev/null -T -o ExitOnForwardFailure=yes -o ConnectTimeout=10 \
            -o ServerAliveInterval=15 -o LogLevel=ERROR "${SSH_AUTH[@]}" \
            -o HostKeyAlias=picluster-first-server -o UserKnownHostsFile="$known" \
            -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking="$checking" \
            -p "$SSH_PORT" -L "127.0.0.1:$PORT:$REGISTRY_ADDRESS" \
            "$SSH_USER@$SSH_HOST" 'cat >/dev/null' <"$fifo" >/dev/null 2>"$WORK/ssh.err" &
        TUNNEL_PID=$!
        exec 9>"$fifo"
        rm -f "$fifo"
        for _ in $(seq 1 60); do
            kill -0 "$TUNNEL_PID" 2>/dev/null || break
            code=$(curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 5 \
                "http://127.0.0.1:$PORT/v2/" 9>&- || true)
            if [[ "$code" == 200 || "$code" == 401 ]]; then
                forget_secrets
                log "tunnel to the registry $REGISTRY_ADDRESS through $SSH_HOST on 127.0.0.1:$PORT"
                return 0
            fi
            sleep 0.5 9>&-
        done
        exec 9>&-
        kill "$TUNNEL_PID" 2>/dev/null || true
        wait "$TUNNEL_PID" 2>/dev/null || true
        TUNNEL_PID=""
        log "tunnel attempt $attempt failed${code:+ (registry answered ${code})}"
        [[ ! -s "$WORK/ssh.err" ]] || log "ssh: $(tr '\n' ' ' <"$WORK/ssh.err")"
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
    else
        push_all "$dest" yes
        in_registry "$dest" yes || die "the registry does not list $REF after the push"
        RESULT="$REF pushed"
    fi
    pin "$dest" yes
}

to_registry() {
    if [[ -n "$REGISTRY_USERNAME" ]]; then
        # A private DOCKER_CONFIG holding the account in its `auths`: never in
        # ~/.docker/config.json, never in a credential helper (`docker login` picks the
        # platform's keychain when the config names none), never on a command line (printf is a
        # builtin; base64 reads its stdin).
        REGISTRY_CONFIG="$WORK/docker-config"
        mkdir -m 700 "$REGISTRY_CONFIG"
        REGISTRY_AUTH=$(printf '%s:%s' "$REGISTRY_USERNAME" "$REGISTRY_PASSWORD" | base64 | tr -d '\n')
        (umask 077 && printf '{"auths":{"%s":{"auth":"%s"}}}\n' "${REF%%/*}" "$REGISTRY_AUTH" \
            >"$REGISTRY_CONFIG/config.json")
    fi
    # Plain HTTP only to this machine's loopback, as the daemon itself allows (never with a
    # password to anything else).
    local insecure=no
    case "${REF%%/*}" in localhost:* | 127.*) insecure=yes ;; esac
    if in_registry "$REF" "$insecure"; then
        RESULT="$REF already in the registry"
    else
        push_all "$REF" "$insecure"
        in_registry "$REF" "$insecure" || die "the registry does not list $REF after the push"
        RESULT="$REF pushed"
    fi
    pin "$REF" "$insecure"
}

main() {
    exec </dev/null
    : "${MODE:?}" "${REF:?}" "${CONTEXT:?}"
    : "${DOCKERFILE_B64:=}" "${IGNORE_B64:=}" "${PLATFORMS:=}" "${BUILDER:=}" "${DOCKER_HOST:=}"
    : "${SSH_HOST:=}" "${SSH_PORT:=22}" "${SSH_USER:=}" "${SSH_HOST_KEY:=}" "${SSH_PRIVATE_KEY:=}"
    : "${SSH_KEY_PASSPHRASE:=}" "${SSH_AGENT:=}"
    : "${REGISTRY_ADDRESS:=}" "${REGISTRY_USERNAME:=}" "${REGISTRY_PASSWORD:=}"
    [[ -d "$CONTEXT" ]] || die "$CONTEXT is not a folder"
    trap cleanup EXIT
    # An interrupted run removes its work directory (the EXIT trap). A cancelled `pulumi up`
    # SIGKILLs bash (pulumi-command), where no trap runs: open_tunnel is safe without one.
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
    [[ -z "$DIGEST" ]] || printf 'picluster image-build: digest %s\n' "$DIGEST"
    printf 'picluster image-build: %s\n' "$RESULT"
}

main "$@"
