#!/usr/bin/env bash
# Builds the Pulumi engine binaries (CLI, Python language host, provider plugins) from Go modules
# into a cache outside the checkout, one directory per binary set and version, and keeps a `bin`
# directory of symlinks to the current builds. Only what is missing is built.
#
#   tools/engine/build.sh [--budget-minutes N] [--cache DIR] [TARGET...]
#
# TARGETs: pulumi (CLI + pulumi-language-python + pulumi-language-python-exec), kubernetes,
# command, random, docker. Default: all of them. See tools/engine/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${PICLUSTER_ENGINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/picluster/engine}"
BUDGET_MINUTES=""
ALL_TARGETS=(pulumi kubernetes command random docker)

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

TARGETS=()
while (($#)); do
  case "$1" in
    --budget-minutes)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || { echo "build.sh: --budget-minutes needs a whole number" >&2; exit 2; }
      BUDGET_MINUTES="$2"; shift 2 ;;
    --budget-minutes=*)
      BUDGET_MINUTES="${1#*=}"
      [[ "$BUDGET_MINUTES" =~ ^[0-9]+$ ]] || { echo "build.sh: --budget-minutes needs a whole number" >&2; exit 2; }
      shift ;;
    --cache) [[ $# -ge 2 ]] || { echo "build.sh: --cache needs a directory" >&2; exit 2; }
      CACHE="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    pulumi|kubernetes|command|random|docker) TARGETS+=("$1"); shift ;;
    *) echo "build.sh: unknown argument '$1' (targets: ${ALL_TARGETS[*]})" >&2; exit 2 ;;
  esac
done
((${#TARGETS[@]})) || TARGETS=("${ALL_TARGETS[@]}")

command -v go >/dev/null || { echo "build.sh: go is not on PATH" >&2; exit 1; }
mkdir -p "$CACHE/bin"
CACHE="$(cd "$CACHE" && pwd)"
case "$CACHE/" in
  "$(cd "$HERE/../.." && pwd)"/*) echo "build.sh: the cache must be outside the checkout ($CACHE)" >&2; exit 2 ;;
esac

# One build at a time per cache (a second caller waits, then finds the binaries cached).
exec 9>"$CACHE/.lock"
flock 9

GO_VERSION="$(go env GOVERSION)"
# Reproducible: module versions come from the committed go.mod/go.sum (-mod=mod only lets go
# record checksums for wrappers whose go.sum could not be completed, see README), paths trimmed.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
export CGO_ENABLED=0

# --- what each target is -------------------------------------------------------------------------
# version: what the binary reports; dirs: wrapper modules (under tools/engine) whose contents key
# the cache; estimate: cold build minutes on 2 cores (measured here where built, see README);
# probe: the module@version that must be served before a build is tried.
# command is a TEST DOUBLE written here (command/*.go, on sdk/v3 + x/crypto/ssh): the proxy refuses
# github.com/pulumi/pulumi-command/provider, see command/README.md; it reports 1.2.1, the version
# it mirrors, so the engine matches what the pulumi-command 1.2.1 SDK asks for.
declare -A VERSION=(
  [pulumi]=v3.274.1 [kubernetes]=4.25.0 [command]=1.2.1 [random]=4.21.1 [docker]=5.1.0)
declare -A DIRS=(
  [pulumi]="pulumi language-python" [kubernetes]=kubernetes [command]=command [random]=random
  [docker]=docker)
declare -A ESTIMATE=([pulumi]=18 [kubernetes]=12 [command]=3 [random]=10 [docker]=12)
declare -A PROBE=(
  [pulumi]="github.com/pulumi/pulumi/pkg/v3@v3.274.1"
  [kubernetes]="github.com/pulumi/pulumi-kubernetes/provider/v4@v4.0.0-20260115033456-f47bc2d6f199"
  [command]="github.com/pulumi/pulumi/sdk/v3@v3.274.1"
  [random]="github.com/pulumi/pulumi-random/provider/v4@v4.0.0-20260722185042-f2d8b029d0f7"
  [docker]="github.com/pulumi/pulumi-docker/provider/v5@v5.0.0-20260626165050-e944612c4c97")
declare -A BINARIES=(
  [pulumi]="pulumi pulumi-language-python pulumi-language-python-exec"
  [kubernetes]=pulumi-resource-kubernetes [command]=pulumi-resource-command
  [random]=pulumi-resource-random [docker]=pulumi-resource-docker)

# Cache key: version plus a short hash of the wrapper sources, this recipe and the Go version.
key_of() {
  local t="$1" d
  {
    echo "recipe=${VERSION[$t]} ${PROBE[$t]} go=$GO_VERSION"
    sed -n '/^build_'"$t"'()/,/^}/p' "${BASH_SOURCE[0]}"
    for d in ${DIRS[$t]}; do
      (cd "$HERE/$d" && find . -maxdepth 2 -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) \
        -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    done
  } | sha256sum | cut -c1-10
}

# Copies a wrapper module into the build's scratch dir, so go.sum updates and files copied in
# from other modules never touch the checkout.
stage() { mkdir -p "$2"; cp -R "$HERE/$1/." "$2/"; }
module_dir() { go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'; }

build_pulumi() {
  local out="$1" src="$2"
  stage pulumi "$src/pulumi"
  stage language-python "$src/language-python"
  go build -C "$src/pulumi" -trimpath -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v3.274.1" \
    -o "$out/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
  go build -C "$src/language-python" -trimpath -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v3.274.1" \
    -o "$out/pulumi-language-python" .
  local sdk
  sdk="$(cd "$src/pulumi" && module_dir github.com/pulumi/pulumi/sdk/v3@v3.274.1)"
  install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$out/pulumi-language-python-exec"
}

build_kubernetes() {
  local out="$1" src="$2" mod
  stage kubernetes "$src/k"
  mod="$(cd "$src/k" && module_dir github.com/pulumi/pulumi-kubernetes/provider/v4@v4.0.0-20260115033456-f47bc2d6f199)"
  install -m 0644 "$mod/cmd/pulumi-resource-kubernetes/schema.json" \
    "$mod/cmd/pulumi-resource-kubernetes/terraform-mapping.json" "$src/k/"
  go build -C "$src/k" -trimpath -ldflags "-s -w -X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=4.25.0" \
    -o "$out/pulumi-resource-kubernetes" .
}

build_command() { # a test double of pulumi-command 1.2.1's plugin, see command/README.md
  local out="$1" src="$2"
  stage command "$src/c"
  go build -C "$src/c" -trimpath -ldflags "-s -w -X main.version=1.2.1" \
    -o "$out/pulumi-resource-command" .
}

build_random() {
  local out="$1" src="$2"
  stage random "$src/r"
  go build -C "$src/r" -trimpath -ldflags "-s -w -X github.com/pulumi/pulumi-random/provider/v4/pkg/version.Version=4.21.1" \
    -o "$out/pulumi-resource-random" github.com/pulumi/pulumi-random/provider/v4/cmd/pulumi-resource-random
}

build_docker() {
  local out="$1" src="$2"
  stage docker "$src/d"
  go build -C "$src/d" -trimpath -ldflags "-s -w -X github.com/pulumi/pulumi-docker/provider/v5/pkg/version.Version=5.1.0" \
    -o "$out/pulumi-resource-docker" github.com/pulumi/pulumi-docker/provider/v5/cmd/pulumi-resource-docker
}

build_one() {
  case "$1" in
    pulumi) build_pulumi "$2" "$3" ;;
    kubernetes) build_kubernetes "$2" "$3" ;;
    command) build_command "$2" "$3" ;;
    random) build_random "$2" "$3" ;;
    docker) build_docker "$2" "$3" ;;
  esac
}

# --- run -----------------------------------------------------------------------------------------
START=$SECONDS
declare -A STATUS SECS NOTE
LOGDIR="$CACHE/logs"
mkdir -p "$LOGDIR"

link_bin() { # atomic symlink swap: bin/NAME -> ../DIR/NAME
  local dir="$1" b
  for b in ${BINARIES[$2]}; do
    ln -sfn "../$dir/$b" "$CACHE/bin/.$b.new"
    mv -Tf "$CACHE/bin/.$b.new" "$CACHE/bin/$b"
  done
}

for t in "${TARGETS[@]}"; do
  dir="$t-${VERSION[$t]}-$(key_of "$t")"
  t0=$SECONDS
  if [[ -f "$CACHE/$dir/.complete" ]]; then
    STATUS[$t]=cached; SECS[$t]=0; link_bin "$dir" "$t"; continue
  fi
  log="$LOGDIR/$dir.log"
  # Is the source module served at all? (seconds; a refusal is final, no point in budgeting for it)
  if ! (cd "$HERE/${DIRS[$t]%% *}" && go mod download -json "${PROBE[$t]}") >"$log" 2>&1; then
    STATUS[$t]=failed; SECS[$t]=$((SECONDS - t0))
    why="$(grep -o -E '[0-9]{3} [A-Z][a-zA-Z ]+|server response: [^"\\]*|Could not resolve host[^"\\]*' "$log" \
      | sort -u | paste -sd ' ' | cut -c1-120 || true)"
    NOTE[$t]="not served: ${PROBE[$t]} (${why:-see $log})"
    continue
  fi
  if [[ -n "$BUDGET_MINUTES" ]]; then
    left=$((BUDGET_MINUTES * 60 - (SECONDS - START)))
    if ((ESTIMATE[$t] * 60 > left)); then
      STATUS[$t]=skipped; SECS[$t]=0
      NOTE[$t]="estimated ${ESTIMATE[$t]} min, ${left}s of the budget left"
      echo "build.sh: skipping $t: ${NOTE[$t]}" >&2
      continue
    fi
  fi
  echo "build.sh: building $t ${VERSION[$t]} -> $CACHE/$dir (log: $log)" >&2
  tmp="$(mktemp -d "$CACHE/.tmp-$t-XXXXXX")"
  mkdir -p "$tmp/out" "$tmp/src"
  if (set -euo pipefail; build_one "$t" "$tmp/out" "$tmp/src") >>"$log" 2>&1; then
    secs=$((SECONDS - t0))
    {
      echo "target=$t version=${VERSION[$t]} source=${PROBE[$t]}"
      echo "go=$GO_VERSION built=$(date -u +%Y-%m-%dT%H:%M:%SZ) seconds=$secs"
    } >"$tmp/out/BUILDINFO"
    touch "$tmp/out/.complete"
    chmod -R a+rX "$tmp/out"
    rm -rf "${CACHE:?}/${dir:?}"     # an incomplete leftover of an interrupted build, if any
    mv -T "$tmp/out" "$CACHE/$dir"   # atomic: the directory appears whole or not at all
    link_bin "$dir" "$t"
    STATUS[$t]=built; SECS[$t]=$secs
  else
    STATUS[$t]=failed; SECS[$t]=$((SECONDS - t0))
    NOTE[$t]="$(grep -m1 -E 'error|cannot|not available|missing' "$log" | cut -c1-160 || true) (log: $log)"
  fi
  chmod -R u+w "$tmp" 2>/dev/null || true
  rm -rf "$tmp"
done

echo
echo "Pulumi engine binaries (cache: $CACHE)"
rc=0
for t in "${TARGETS[@]}"; do
  printf '  %-11s %-8s %5ss  %s  %s\n' "$t" "${STATUS[$t]}" "${SECS[$t]}" "${VERSION[$t]}" \
    "${NOTE[$t]:-${BINARIES[$t]}}"
  [[ "${STATUS[$t]}" != failed ]] || rc=1
done
echo "Put on PATH: export PATH=\"$CACHE/bin:\$PATH\""
exit "$rc"
