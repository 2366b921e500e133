#!/usr/bin/env bash
# Make `docker compose` work for the tests of `bin/picluster compose` (README: "A
# docker-compose.yml for the local twin"): install the compose CLI plugin, built from the Go module
# proxy into a cache keyed by its version, when the `docker` on PATH has none. Debian bookworm
# packages only the old Python docker-compose 1.x, which knows neither `configs: content:` nor
# `service_completed_successfully`.
# Prints the plugin's path. A second run with the plugin in place changes nothing and says so.
set -euo pipefail

version=v2.32.1 # the release of the pinned images' time (December 2024); `configs: content:` needs 2.23+
cache="${PICLUSTER_COMPOSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/picluster/compose}/$version"
plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

if docker compose version >/dev/null 2>&1; then
  echo "build.sh: docker compose is already there ($(docker compose version)), nothing to do" >&2
  exit 0
fi
if [[ ! -x "$cache/docker-compose" ]]; then
  command -v go >/dev/null 2>&1 || { echo "build.sh: go is not on PATH" >&2; exit 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # The module has no replace directives, so `go install module@version` builds it as released;
  # the ldflag makes `docker compose version` name it, as the released binaries do.
  GOBIN="$work/bin" GOFLAGS=-trimpath go install \
    -ldflags "-X github.com/docker/compose/v2/internal.Version=$version" \
    "github.com/docker/compose/v2/cmd@$version"
  mkdir -p "$cache"
  mv "$work/bin/cmd" "$cache/docker-compose"
  echo "build.sh: built compose $version into $cache" >&2
fi
mkdir -p "$plugins"
ln -sfn "$cache/docker-compose" "$plugins/docker-compose"
docker compose version >/dev/null
echo "build.sh: installed $plugins/docker-compose ($(docker compose version))" >&2
echo "$plugins/docker-compose"
