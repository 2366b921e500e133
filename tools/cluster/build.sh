#!/usr/bin/env bash
# Build the real-cluster binaries (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok) from their wrapper Go modules in tools/cluster/modules/, into a cache
# outside the checkout. Only what is missing is built.
#
#   tools/cluster/build.sh [--budget-minutes N] [--list] [--prune] [TARGET...]
#
# TARGET: a binary name (kube-apiserver kube-controller-manager kube-scheduler kubectl etcd
# kwok), a module name (controlplane etcd kwok) or `all` (the default).
#
# Cache: ${PICLUSTER_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/picluster/cluster}
#   <binary>-<version>-<hash>/<binary>   one finished build; <hash> is a short hash of the
#                                        wrapper module folder (go.mod, go.sum, targets, ...)
#   bin/<binary> -> ../<binary>-<version>-<hash>/<binary>   the current version of each
#   logs/<binary>-<version>-<hash>.log   the go build output of the last attempt
# A build goes to a temporary folder that is renamed into place once it succeeded, so a
# killed build never leaves a half binary behind.
#
# --budget-minutes N: before each build, compare its estimated cold build time (the last
# field of its `binary` line in modules/*/targets) with what is left of N minutes; a build that
# would not fit is skipped and said so (exit status stays 0). A failed build exits 1.
# --prune: afterwards, delete the cached builds of the selected binaries that bin/ no longer
# points at (older versions or wrapper hashes).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
modules_dir="$here/modules"
cache="${PICLUSTER_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/picluster/cluster}"
module_order=(etcd kwok controlplane)

usage() {
  sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

budget=""
list_only=0
prune=0
selected=()
while (($#)); do
  case "$1" in
    --budget-minutes)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || { echo "build.sh: --budget-minutes needs a whole number" >&2; exit 2; }
      budget="$2"; shift 2 ;;
    --budget-minutes=*)
      budget="${1#*=}"
      [[ "$budget" =~ ^[0-9]+$ ]] || { echo "build.sh: --budget-minutes needs a whole number" >&2; exit 2; }
      shift ;;
    --list) list_only=1; shift ;;
    --prune) prune=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "build.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) selected+=("$1"); shift ;;
  esac
done
((${#selected[@]})) || selected=(all)

command -v go >/dev/null || { echo "build.sh: no go on PATH (Go 1.22 or newer is needed)" >&2; exit 1; }

# Short hash of a module folder's files, independent of where the checkout lives.
module_hash() {
  (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-10
}

# Read modules/<m>/targets: sets mod_version, mod_ldflags, mod_binaries (NAME PKG MINUTES ...).
read_targets() {
  local file="$modules_dir/$1/targets" key rest
  mod_version="" mod_ldflags="" mod_binaries=()
  while read -r key rest; do
    case "$key" in
      version) mod_version="$rest" ;;
      ldflags) mod_ldflags="$rest" ;;
      binary) mod_binaries+=("$rest") ;;
      ''|'#'*) ;;
      *) echo "build.sh: $file: unknown line '$key'" >&2; exit 1 ;;
    esac
  done <"$file"
  [[ -n "$mod_version" ]] || { echo "build.sh: $file has no version line" >&2; exit 1; }
}

wanted() { # wanted MODULE BINARY
  local s
  for s in "${selected[@]}"; do
    [[ "$s" == all || "$s" == "$1" || "$s" == "$2" ]] && return 0
  done
  return 1
}

# Every selected name must exist.
known=" all "
for m in "${module_order[@]}"; do
  read_targets "$m"
  known+="$m "
  for b in "${mod_binaries[@]}"; do
    [[ "$known" == *" ${b%% *} "* ]] || known+="${b%% *} "
  done
done
for s in "${selected[@]}"; do
  [[ "$known" == *" $s "* ]] || { echo "build.sh: unknown target '$s' (known:$known)" >&2; exit 2; }
done

mkdir -p "$cache/bin" "$cache/logs"
start_all=$SECONDS
failed=0
printf '%-8s %-24s %-9s %6s  %s\n' result binary version seconds note

link_current() { # link_current BINARY DIRNAME
  ln -sfn "../$2/$1" "$cache/bin/.$1.new"
  mv -T "$cache/bin/.$1.new" "$cache/bin/$1"
}

for m in "${module_order[@]}"; do
  read_targets "$m"
  hash="$(module_hash "$modules_dir/$m")"
  for entry in "${mod_binaries[@]}"; do
    read -r name pkg est <<<"$entry"
    wanted "$m" "$name" || continue
    dirname="$name-$mod_version-$hash"
    final="$cache/$dirname"
    if [[ -x "$final/$name" ]]; then
      link_current "$name" "$dirname"
      printf '%-8s %-24s %-9s %6s  %s\n' cached "$name" "$mod_version" 0 "$final"
      continue
    fi
    if ((list_only)); then
      printf '%-8s %-24s %-9s %6s  %s\n' missing "$name" "$mod_version" "~$((est * 60))" "$final"
      continue
    fi
    if [[ -n "$budget" ]]; then
      left=$((budget * 60 - (SECONDS - start_all)))
      if ((est * 60 > left)); then
        printf '%-8s %-24s %-9s %6s  %s\n' skipped "$name" "$mod_version" 0 \
          "estimated ${est} min cold, only $((left > 0 ? left / 60 : 0)) min left of the ${budget}-min budget"
        continue
      fi
    fi
    log="$cache/logs/$dirname.log"
    tmp="$(mktemp -d "$cache/.tmp-$name-XXXXXX")"
    t0=$SECONDS
    if (cd "$modules_dir/$m" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "$mod_ldflags" \
          -o "$tmp/$name" "$pkg") >"$log" 2>&1 && [[ -x "$tmp/$name" ]]; then
      chmod 0755 "$tmp"
      if mv -T "$tmp" "$final" 2>/dev/null; then :; else rm -rf "$tmp"; fi  # lost a race: keep theirs
      link_current "$name" "$dirname"
      printf '%-8s %-24s %-9s %6s  %s\n' built "$name" "$mod_version" "$((SECONDS - t0))" "$final"
    else
      rm -rf "$tmp"
      failed=1
      printf '%-8s %-24s %-9s %6s  %s\n' failed "$name" "$mod_version" "$((SECONDS - t0))" "log: $log"
      tail -n 15 "$log" | sed 's/^/    /' >&2
    fi
  done
done

if ((prune)); then
  for m in "${module_order[@]}"; do
    read_targets "$m"
    for entry in "${mod_binaries[@]}"; do
      name="${entry%% *}"
      wanted "$m" "$name" || continue
      current="$(readlink "$cache/bin/$name" 2>/dev/null || true)"
      for d in "$cache/$name"-v*-*/; do
        [[ -d "$d" ]] || continue
        d="${d%/}"
        [[ "$current" == "../${d##*/}/$name" ]] && continue
        rm -rf "$d"
        echo "pruned   ${d##*/}"
      done
    done
  done
fi
echo "total ${SECONDS}s"
echo "bin: $cache/bin"
exit "$failed"
