#!/usr/bin/env bash
# Make `DOCKER_BUILDKIT=1 docker build` work: install the buildx CLI plugin, built from the Go
# module proxy into a cache keyed by its version, when the `docker` on PATH has none.
# A Docker client from 23 on hands BuildKit builds to buildx and fails without it ("BuildKit is
# enabled but the buildx component is missing"); Debian bookworm packages no buildx, and the
# client some machines put first on PATH (/usr/local/bin/docker) comes without it. Debian's own
# 20.10 client builds with the daemon's built-in BuildKit and needs none.
# Prints the plugin's path. A second run with the plugin in place changes nothing and says so.
set -euo pipefail

version=v0.19.3 # the release of the pinned images' time (December 2024); the daemon's docker driver
cache="${PICLUSTER_BUILDX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/picluster/buildx}/$version"
plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

if docker buildx version >/dev/null 2>&1; then
  echo "build.sh: docker buildx is already there ($(docker buildx version)), nothing to do" >&2
  exit 0
fi
if [[ ! -x "$cache/docker-buildx" ]]; then
  command -v go >/dev/null 2>&1 || { echo "build.sh: go is not on PATH" >&2; exit 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # The module has no replace directives, so `go install module@version` builds it as released;
  # the ldflag makes `docker buildx version` name it, as the released binaries do.
  GOBIN="$work/bin" GOFLAGS=-trimpath go install \
    -ldflags "-X github.com/docker/buildx/version.Version=$version" \
    "github.com/docker/buildx/cmd/buildx@$version"
  mkdir -p "$cache"
  mv "$work/bin/buildx" "$cache/docker-buildx"
  echo "build.sh: built buildx $version into $cache" >&2
fi
mkdir -p "$plugins"
ln -sfn "$cache/docker-buildx" "$plugins/docker-buildx"
docker buildx version >/dev/null
echo "build.sh: installed $plugins/docker-buildx ($(docker buildx version))" >&2
echo "$plugins/docker-buildx"
