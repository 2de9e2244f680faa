#!/usr/bin/env bash
# Container images built offline, without Docker or a registry, as OCI image tarballs that
# `ctr -n k8s.io images import FILE.tar` names localhost/NAME:TAG (hack/oci-image.py).
#
#   hack/build-images.sh operator [BINARY]   the operator image, laid out like the Dockerfile's
#                                             runtime stage; BINARY defaults to a fresh
#                                             `cargo build --release --locked` binary
#                                             -> target/images/operator.tar
#                                             (or BCO_OPERATOR_IMAGE=FILE.tar)
#   hack/build-images.sh git-client           Debian bookworm minbase + git + openssh-client,
#                                             user ci (1000:1000) -> localhost/git-client:1 (cached)
#   hack/build-images.sh pause                static sandbox ("pause") program -> localhost/pause:1 (cached)
#   hack/build-images.sh all [BINARY]         the three, one path per line
#
# The last line of stdout is the tarball's path; status goes to stderr.
# Cached images live in ${BCO_CACHE:-$HOME/.cache/bitbucket-credentials-operator}/images/,
# named by a hash of their recipe; a missing tarball is rebuilt, an existing one reused.
# git-client needs root (debootstrap) and the Debian mirror (BCO_DEBIAN_MIRROR, default: the
# one in /etc/apt/sources.list.d, else http://deb.debian.org/debian); debootstrap is
# installed with apt-get when missing.
#
# The operator image reads USER, ENTRYPOINT, CMD, EXPOSE, LABEL, ENV, WORKDIR and the binary's
# COPY destination from the Dockerfile's last stage, and adds what its base image
# (gcr.io/distroless/cc-debian12:nonroot) provides for this binary: the shared libraries
# `ldd` lists and the dynamic loader, at the paths ldd prints; CA certificates; /etc/passwd
# and /etc/group with root and nonroot (65532); /home/nonroot (0700, 65532); /tmp (1777);
# the base's PATH, SSL_CERT_FILE and WorkingDir. Nothing else: no shell, no package manager.
# Any other instruction in that stage, or another base image, is an error here, so that the
# two cannot drift apart silently.
set -euo pipefail
umask 022

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${BCO_CACHE:-$HOME/.cache/bitbucket-credentials-operator}
images=$cache/images
target=${CARGO_TARGET_DIR:-$root/target}
oci=(python3 "$here/oci-image.py")
bin_name=bitbucket-credentials-operator

log() { echo "build-images: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- the operator ------------------------------------------------------------------------

# The Dockerfile's runtime stage, as shell assignments: df_from, df_copy_src, df_bin_path,
# df_user, df_args (oci-image.py build arguments).
dockerfile_runtime() {
  python3 - "$1" <<'PY'
import json, shlex, sys

BASE = "gcr.io/distroless/cc-debian12:nonroot"
# What the base image's config sets (distroless cc-debian12:nonroot).
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}
BASE_USER, BASE_WORKDIR = "65532", "/home/nonroot"

def fail(msg):
    sys.exit(f"build-images: Dockerfile: {msg} (hack/build-images.sh does not emulate this)")

# Logical lines: continuations joined, comment and blank lines dropped (also inside them).
instrs, cur = [], ""
for raw in open(sys.argv[1]):
    line = raw.rstrip("\n")
    if line.lstrip().startswith("#") or not line.strip():
        continue
    if line.endswith("\\"):
        cur += line[:-1] + " "
        continue
    cur += line
    if cur.strip():
        word, _, rest = cur.strip().partition(" ")
        instrs.append((word.upper(), rest.strip()))
    cur = ""
froms = [i for i, (w, _) in enumerate(instrs) if w == "FROM"]
if not froms:
    fail("no FROM")
stage_from = instrs[froms[-1]][1].split()
image = stage_from[0]
if image.split("@")[0] != BASE:
    fail(f"runtime stage FROM {image}, expected {BASE}")
env, labels, ports = dict(BASE_ENV), {}, []
user, workdir, entrypoint, cmd, copies = BASE_USER, BASE_WORKDIR, None, None, []
for word, rest in instrs[froms[-1] + 1:]:
    if word == "LABEL":
        for tok in shlex.split(rest):
            k, sep, v = tok.partition("=")
            if not sep:
                fail(f"LABEL {tok!r} is not key=value")
            labels[k] = v
    elif word == "USER":
        user = rest
    elif word == "EXPOSE":
        ports += [p if "/" in p else p + "/tcp" for p in rest.split()]
    elif word in ("ENTRYPOINT", "CMD"):
        try:
            v = json.loads(rest)
        except ValueError:
            fail(f"{word} is not in JSON (exec) form")
        if word == "ENTRYPOINT":
            entrypoint, cmd = v, None  # like Docker: ENTRYPOINT resets an inherited CMD
        else:
            cmd = v
    elif word == "ENV":
        toks = shlex.split(rest)
        if toks and "=" not in toks[0]:
            env[toks[0]] = rest.split(None, 1)[1] if len(toks) > 1 else ""
        else:
            for tok in toks:
                k, _, v = tok.partition("=")
                env[k] = v
    elif word == "WORKDIR":
        workdir = rest
    elif word == "COPY":
        toks = shlex.split(rest)
        flags = [t for t in toks if t.startswith("--")]
        args = [t for t in toks if not t.startswith("--")]
        if flags != ["--from=builder"] or len(args) != 2:
            fail(f"COPY {rest}: only `COPY --from=builder SRC DEST` of the binary is supported")
        copies.append(args)
    else:
        fail(f"{word} in the runtime stage")
if len(copies) != 1:
    fail(f"{len(copies)} COPY instructions in the runtime stage, expected the binary only")
src, dest = copies[0]
if not src.endswith("/bitbucket-credentials-operator") or not dest.startswith("/") or dest.endswith("/"):
    fail(f"COPY {src} {dest}: expected the binary copied to an absolute file path")
if not all(p.split("/")[0].isdigit() for p in ports):
    fail(f"EXPOSE {ports}")
uid, _, gid = user.partition(":")
if not uid.isdigit() or (gid and not gid.isdigit()):
    fail(f"USER {user}: only numeric uid[:gid]")
args = ["--user", user, "--workdir", workdir]
for k, v in env.items():
    args += ["--env", f"{k}={v}"]
if entrypoint is not None:
    args += ["--entrypoint", json.dumps(entrypoint)]
if cmd is not None:
    args += ["--cmd", json.dumps(cmd)]
for k, v in labels.items():
    args += ["--label", f"{k}={v}"]
for p in ports:
    args += ["--expose", p]
q = shlex.quote
print(f"df_from={q(image)} df_copy_src={q(src)} df_bin_path={q(dest)} df_user={q(user)}")
print("df_args=(" + " ".join(q(a) for a in args) + ")")
PY
}

crate_version() {
  python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["package"]["version"])' "$root/Cargo.toml"
}

# ldd's resolved paths: every `NAME => /path (addr)` and the loader `/path (addr)`.
shared_libraries() {
  local bin=$1 out
  if ! out=$(ldd "$bin" 2>&1); then
    case $out in
      *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
      *) die "ldd $bin: $out" ;;
    esac
  fi
  if grep -q 'not found' <<<"$out"; then die "ldd $bin: a library is missing: $out"; fi
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out" | sort -u
}

build_operator() {
  local bin=${1:-}
  if [ -z "$bin" ]; then
    log "cargo build --release --locked --bin $bin_name"
    (cd "$root" && cargo build --release --locked --bin "$bin_name") >&2
    bin=$target/release/$bin_name
    # The crash points are for tests only (the `failpoints` feature); a release build has none.
    if grep -q BCO_FAILPOINT "$bin"; then die "$bin was built with the failpoints feature"; fi
  fi
  [ -f "$bin" ] && [ -x "$bin" ] || die "no operator binary at $bin"
  local df_from df_copy_src df_bin_path df_user df_args df
  df=$(dockerfile_runtime "$root/Dockerfile") || die "cannot read the Dockerfile's runtime stage"
  eval "$df"
  local name version out stage lib libs
  libs=$(shared_libraries "$bin") || exit 1
  version=$(crate_version)
  name=localhost/$bin_name:$version
  out=${BCO_OPERATOR_IMAGE:-$target/images/operator.tar}
  mkdir -p "$(dirname "$out")"
  stage=$(mktemp -d "$(dirname "$out")/.operator-rootfs.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$stage'" EXIT
  install -D -m 0755 "$bin" "$stage$df_bin_path"
  while IFS= read -r lib; do
    [ -n "$lib" ] || continue
    # The real file (ldd may print a symlink, e.g. /lib64/ld-linux-x86-64.so.2), at ldd's path.
    install -D -m "$(stat -Lc %a "$lib")" "$lib" "$stage$lib"
  done <<<"$libs"
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$stage/etc/ssl/certs/ca-certificates.crt"
  # distroless cc-debian12:nonroot's accounts (less nobody, which nothing here uses).
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$stage/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$stage/etc/group"
  chmod 0644 "$stage/etc/passwd" "$stage/etc/group"
  mkdir -p -m 0755 "$stage/home"
  mkdir -m 0700 "$stage/home/nonroot"
  mkdir -m 1777 "$stage/tmp"
  log "packing $name from $bin ($(find "$stage" -type f | wc -l) files)"
  "${oci[@]}" build --rootfs "$stage" --name "$name" --out "$out" --owners root \
    --chown home/nonroot=65532:65532 "${df_args[@]}"
  rm -rf "$stage"
  trap - EXIT
  log "$name: $out ($(du -h "$out" | cut -f1))"
  echo "$out"
}

# --- cached images -----------------------------------------------------------------------

# recipe_key TEXT...: 16 hex digits over the texts and hack/oci-image.py.
recipe_key() {
  { printf '%s\n' "$@"; cat "$here/oci-image.py"; } | sha256sum | cut -c1-16
}

# with_lock NAME: serialise builds of one cached image (another shell may be building it).
with_lock() {
  mkdir -p "$images"
  exec 9>"$images/.$1.lock"
  flock 9
}

debian_mirror() {
  if [ -n "${BCO_DEBIAN_MIRROR:-}" ]; then echo "$BCO_DEBIAN_MIRROR"; return; fi
  local m
  m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk 'tolower($1) == "uris:" { u = $2 } tolower($1) == "suites:" && / bookworm( |$)/ && u { print u; exit }') || true
  [ -n "$m" ] || m=$(grep -hE '^deb .* bookworm( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' | head -1) || true
  echo "${m:-http://deb.debian.org/debian}"
}

git_client_suite=bookworm
git_client_include=git,openssh-client,ca-certificates

# unmount_below DIR: whatever debootstrap left mounted inside DIR (on failure), deepest first.
unmount_below() {
  local m
  findmnt -rn -o TARGET | awk -v d="$1/" 'index($0, d) == 1' | sort -r | while IFS= read -r m; do
    umount -l "$m" || true
  done
}

# The git client's root filesystem in $1 (the part of the recipe the cache key covers).
git_client_rootfs() {
  local dir=$1 mirror=$2
  debootstrap --variant=minbase --include="$git_client_include" "$git_client_suite" "$dir" "$mirror" >&2
  # Docs, man pages, locales, package lists and logs: not needed to run git and ssh.
  rm -rf "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
    "$dir"/usr/share/locale/* "$dir"/usr/share/lintian/* "$dir"/var/cache/apt/* \
    "$dir"/var/lib/apt/lists/* "$dir"/var/cache/debconf/*-old "$dir"/var/lib/dpkg/*-old \
    "$dir"/var/cache/ldconfig/aux-cache "$dir"/dev/*
  find "$dir/var/log" -type f -delete
  # The runtime mounts its own; the host's must not end up in the image.
  : >"$dir/etc/resolv.conf"
  echo localhost >"$dir/etc/hostname"
  # The uid the CI pods run as needs a passwd entry: ssh refuses to run without one
  # ("No user exists for uid 1000").
  grep -q '^ci:' "$dir/etc/passwd" || echo 'ci:x:1000:1000:ci:/home/ci:/bin/sh' >>"$dir/etc/passwd"
  grep -q '^ci:' "$dir/etc/group" || echo 'ci:x:1000:' >>"$dir/etc/group"
  grep -q '^ci:' "$dir/etc/shadow" || echo 'ci:!::0:99999:7:::' >>"$dir/etc/shadow"
  [ ! -f "$dir/etc/gshadow" ] || grep -q '^ci:' "$dir/etc/gshadow" || echo 'ci:!::' >>"$dir/etc/gshadow"
  mkdir -p -m 0755 "$dir/home/ci"
  chown 1000:1000 "$dir/home/ci"
}

git_client_image_args=(--name localhost/git-client:1 --user 1000:1000 --cmd '["/bin/sh"]'
  --workdir /home/ci --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)

build_git_client() {
  local key out dir mirror started
  key=$(recipe_key "$(declare -f git_client_rootfs)" "$git_client_suite" "$git_client_include" \
    "${git_client_image_args[*]}")
  out=$images/git-client-$key.tar
  if [ ! -f "$out" ]; then
    with_lock git-client
  fi
  if [ -f "$out" ]; then
    log "localhost/git-client:1: cached $out"
    echo "$out"
    return
  fi
  [ "$(id -u)" -eq 0 ] || die "git-client: debootstrap needs root"
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2 ||
      { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2; } ||
      die "cannot install debootstrap"
  fi
  mirror=$(debian_mirror)
  dir=$(mktemp -d "$images/.git-client-rootfs.XXXXXX")
  # shellcheck disable=SC2064
  trap "unmount_below '$dir'; rm -rf --one-file-system '$dir'" EXIT
  started=$SECONDS
  log "debootstrap --variant=minbase --include=$git_client_include $git_client_suite from $mirror"
  git_client_rootfs "$dir" "$mirror"
  log "rootfs $(du -sh "$dir" | cut -f1) after $((SECONDS - started))s; packing"
  "${oci[@]}" build --rootfs "$dir" --out "$out.tmp" "${git_client_image_args[@]}"
  mv "$out.tmp" "$out"
  unmount_below "$dir"
  rm -rf --one-file-system "$dir"
  trap - EXIT
  log "localhost/git-client:1: $out ($(du -h "$out" | cut -f1), $((SECONDS - started))s)"
  echo "$out"
}

pause_source='/* The sandbox ("pause") container: holds the pod namespaces, reaps the children it
   inherits, and exits 0 on SIGTERM or SIGINT. Built by hack/build-images.sh. */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }
static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop;
  if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL)) return 1;
  sa.sa_handler = on_child;
  sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  if (sigaction(SIGCHLD, &sa, NULL)) return 1;
  for (;;) pause();
}
'
pause_cflags=(-static -Os -s -Wall -Werror)
pause_image_args=(--name localhost/pause:1 --entrypoint '["/pause"]' --user 65535:65535)

build_pause() {
  local key out dir
  command -v gcc >/dev/null || die "pause: gcc is required"
  key=$(recipe_key "$pause_source" "${pause_cflags[*]}" "$(gcc --version | head -1)" "${pause_image_args[*]}")
  out=$images/pause-$key.tar
  [ -f "$out" ] || with_lock pause
  if [ -f "$out" ]; then
    log "localhost/pause:1: cached $out"
    echo "$out"
    return
  fi
  dir=$(mktemp -d "$images/.pause.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$dir'" EXIT
  mkdir -m 0755 "$dir/rootfs"
  printf '%s' "$pause_source" >"$dir/pause.c"
  gcc "${pause_cflags[@]}" -o "$dir/rootfs/pause" "$dir/pause.c" >&2
  chmod 0755 "$dir/rootfs/pause"
  "${oci[@]}" build --rootfs "$dir/rootfs" --out "$out.tmp" --owners root "${pause_image_args[@]}"
  mv "$out.tmp" "$out"
  rm -rf "$dir"
  trap - EXIT
  log "localhost/pause:1: $out ($(du -h "$out" | cut -f1))"
  echo "$out"
}

case ${1:-} in
  operator) shift; build_operator "$@" ;;
  git-client) build_git_client ;;
  pause) build_pause ;;
  all) shift; build_pause; build_git_client; build_operator "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
