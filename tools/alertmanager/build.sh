#!/usr/bin/env bash
# Build `alertmanager` and `amtool` at the version of the pinned image (components/versions.py)
# from the Go module proxy, into a cache keyed by that version, for the alert-delivery tests.
# Debian bookworm's prometheus-alertmanager is 0.25, which predates the webhook `url_file` that
# keeps secret URLs out of the rendered configuration; the tests check with the pinned version.
# Prints the bin directory. A second run with the binaries in place builds nothing and says so.
set -euo pipefail
cd "$(dirname "$0")/../.."

image="$(sed -n 's/^ALERTMANAGER: Final = "prom\/alertmanager:\(v[0-9.]*\)"$/\1/p' components/versions.py)"
[[ -n "$image" ]] || { echo "build.sh: no prom/alertmanager pin in components/versions.py" >&2; exit 1; }
cache="${PICLUSTER_ALERTMANAGER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/picluster/alertmanager}"
bin="$cache/$image/bin"

built_version() {
  [[ -x "$bin/$1" ]] && "$bin/$1" --version 2>&1 | sed -n '1s/^[a-z]*, version \([0-9.]*\).*/v\1/p'
}
if [[ "$(built_version alertmanager)" == "$image" && "$(built_version amtool)" == "$image" ]]; then
  echo "build.sh: alertmanager and amtool $image already in $bin, nothing to build" >&2
  echo "$bin"
  exit 0
fi

command -v go >/dev/null 2>&1 || { echo "build.sh: go is not on PATH" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The module has no replace directives, so `go install module@version` builds it as released;
# the version ldflag makes `--version` name it, as the released binaries do.
GOBIN="$work/bin" GOFLAGS=-trimpath go install \
  -ldflags "-X github.com/prometheus/common/version.Version=${image#v}" \
  "github.com/prometheus/alertmanager/cmd/alertmanager@$image" \
  "github.com/prometheus/alertmanager/cmd/amtool@$image"
mkdir -p "$bin"
mv "$work/bin/alertmanager" "$work/bin/amtool" "$bin/"
echo "build.sh: built alertmanager and amtool $image into $bin" >&2
echo "$bin"
