#!/usr/bin/env bash
# Runs .ci/run the way a fresh machine would: from a clean clone of the committed HEAD, with
# an empty CARGO_HOME, an empty Go module and build cache and an empty cache folder for the
# control plane, all in one temporary directory. A step that only works because this
# machine was used before (a crate, a Go module or a binary already cached) fails here
# before CI hides it. The toolchains themselves (rustup's, Go) and Debian packages are what
# a fresh machine has too, so they stay.
#
#   hack/test-fresh.sh            clone HEAD of this checkout (commit first)
#   KEEP=1 hack/test-fresh.sh     keep the temporary directory for a look afterwards
#
# Expect the cold time: the control plane is built from Go modules (~10 minutes on 2
# cores) and the crate from an empty registry.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
fresh=$(mktemp -d "${TMPDIR:-/tmp}/bco-fresh.XXXXXX")
cleanup() {
  if [ -n "${KEEP:-}" ]; then echo "[test-fresh] kept $fresh" >&2; else rm -rf "$fresh"; fi
}
trap cleanup EXIT
if [ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ]; then
  echo "[test-fresh] note: uncommitted changes are not in the clone; it tests HEAD $(git -C "$root" rev-parse --short HEAD)" >&2
fi
git clone -q --no-local "$root" "$fresh/src"
mkdir -p "$fresh/cargo" "$fresh/gopath" "$fresh/gocache" "$fresh/cache" "$fresh/tmp"
# mktemp makes the directory 0700; the git endpoint's sshd serves as user `git`, which
# must reach files under TMPDIR, as under /tmp on a fresh machine.
chmod 755 "$fresh" && chmod 1777 "$fresh/tmp"
start=$SECONDS
set +e
(
  cd "$fresh/src"
  # rustup keeps its toolchains in RUSTUP_HOME (~/.rustup), so an empty CARGO_HOME still
  # finds cargo; it only loses the registry and the git checkouts.
  exec env CI=true CARGO_HOME="$fresh/cargo" GOPATH="$fresh/gopath" GOMODCACHE="$fresh/gopath/pkg/mod" \
    GOCACHE="$fresh/gocache" BCO_CACHE="$fresh/cache" XDG_CACHE_HOME="$fresh/cache" TMPDIR="$fresh/tmp" \
    bash .ci/run </dev/null
)
rc=$?
set -e
echo "[test-fresh] .ci/run exited $rc after $((SECONDS - start)) s (fresh clone of $(git -C "$root" rev-parse --short HEAD))" >&2
# The Go module cache is written read-only; make it removable.
chmod -R u+w "$fresh/gopath" 2>/dev/null || true
exit $rc
