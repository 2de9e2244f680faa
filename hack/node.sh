#!/usr/bin/env bash
# A real node for the test control plane of hack/cluster.sh (see shared/NODE.md):
# kube-scheduler, a second kube-controller-manager (deployments, replica sets, service
# accounts, node lifecycle), containerd v2 + runc and a kubelet, all on 127.0.0.1.
#   node.sh start DIR           DIR from `cluster.sh run DIR`; state in DIR/node, logs in
#                               DIR/logs; waits until Node 127.0.0.1 is Ready
#   node.sh import DIR TARBALL  imports an image tarball into containerd's k8s.io namespace
#   node.sh stop DIR            tears everything down (pods, kubelet, sandboxes, containerd,
#                               shims, scheduler, controllers, mounts, cgroups, outside files)
#   node.sh check-clean DIR     fails and lists what is left after stop
#   node.sh helm-values DIR     the chart values an operator release on this node needs
#                               (local image, host network on 127.0.0.1 with free ports,
#                               the API server's address): helm install -f <(node.sh ...)
# Pods must use hostNetwork: true and images localhost/NAME:TAG with imagePullPolicy Never.
# The sandbox image localhost/pause:1 comes from $BCO_PAUSE_IMAGE (a tarball) or
# `hack/build-images.sh pause` (its last line is the tarball path).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

log() { echo "[node] $*" >&2; }
die() { log "$*"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Paths outside DIR that a kubelet or containerd may create. Those absent at start are
# removed by stop (only when no other kubelet/containerd is running) and reported by
# check-clean.
OUTSIDE=(/var/lib/kubelet /var/lib/kubelet/device-plugins /var/log/containers /var/log/pods
  /run/containerd /run/containerd/s /run/containerd/fifo /run/containerd/runc
  /var/lib/containerd /var/lib/cni /etc/cni /opt/cni /run/nri /var/run/nri /run/netns
  /etc/containerd /var/lib/nri)
CGROUP_V1=(cpu cpuacct cpuset memory devices freezer blkio pids systemd)

setup() { # DIR
  [ -n "${1:-}" ] || die "usage: $0 start|import|stop|check-clean DIR"
  [ -d "$1" ] || die "no such directory: $1"
  dir=$(cd "$1" && pwd -P)
  nd="$dir/node"
  sock="$nd/containerd.sock"
  kubectl_() { kubectl --kubeconfig "$dir/kubeconfig" "$@"; }
  # A cgroup root unique per DIR (and stable, so stop finds it).
  cgname="bco-$(printf '%s' "$dir" | sha256sum | cut -c1-12)"
}

bins() {
  bin=$("$here/build-control-plane.sh" all | tail -1)
  "$here/build-control-plane.sh" node >/dev/null
  ctrd_dir=$(ls -d "$bin"/containerd-v* | sort -V | tail -1)
  runc_bin=$(ls -d "$bin"/runc-v* | sort -V | tail -1)/runc
  [ -x "$ctrd_dir/containerd" ] && [ -x "$runc_bin" ] && [ -x "$bin/kubelet" ] || die "node binaries missing in $bin"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_bg() { # NAME LOG CMD... : own session (Ctrl-C in a terminal does not reach it)
  local name=$1 logf=$2; shift 2
  setsid "$@" >>"$logf" 2>&1 </dev/null &
  echo $! >"$nd/$name.pid"
}

wait_until() { # SECONDS DESCRIPTION CMD...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { log "timed out after ${secs}s waiting for $what"; return 1; }
    sleep 0.2
  done
}

snapshot_outside() {
  local p
  for p in "${OUTSIDE[@]}"; do [ -e "$p" ] || [ -L "$p" ] && echo "$p"; done
  # Existing /var/log/containers entries (links the kubelet makes for its containers).
  if [ -d /var/log/containers ]; then find /var/log/containers -mindepth 1 -maxdepth 1 | sed 's/^/entry /'; fi
  true
}

make_cgroups() {
  local h
  for h in "${CGROUP_V1[@]}"; do
    [ -d "/sys/fs/cgroup/$h" ] || continue
    mkdir -p "/sys/fs/cgroup/$h/$cgname"
    if [ "$h" = cpuset ]; then
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$cgname/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$cgname/cpuset.mems"
    fi
  done
  # The unified hierarchy (hybrid mode) too, when it is there.
  [ -d /sys/fs/cgroup/unified ] && mkdir -p "/sys/fs/cgroup/unified/$cgname" || true
}

write_containerd_config() {
  mkdir -p "$nd/cni/bin" "$nd/cni/conf" "$nd/containerd/root" "$nd/containerd/state" "$nd/opt" "$nd/runc"
  cp "$bin/cni/loopback" "$nd/cni/bin/loopback"
  printf '%s\n' '{"cniVersion":"1.0.0","name":"loopback-only","plugins":[{"type":"loopback"}]}' \
    >"$nd/cni/conf/10-loopback.conflist"
  cat >"$nd/containerd.toml" <<EOF
version = 3
root = "$nd/containerd/root"
state = "$nd/containerd/state"
temp = "$nd/containerd/tmp"
imports = []
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$sock"

[ttrpc]
  address = "$sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "$nd/opt"

  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = "$nd/image-verifier"

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "localhost/pause:1"

  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    restrict_oom_score_adj = true
    enable_cdi = false
    cdi_spec_dirs = []
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$runc_bin"
          Root = "$nd/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["$nd/cni/bin"]
      conf_dir = "$nd/cni/conf"
      max_conf_num = 1

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
EOF
}

write_kubelet_config() {
  local port hport; port=$(free_port); hport=$(free_port)
  mkdir -p "$nd/kubelet" "$nd/kubelet-pki" "$nd/volume-plugins" "$nd/pod-logs"
  cat >"$nd/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$cgname
address: 127.0.0.1
port: $port
healthzBindAddress: 127.0.0.1
healthzPort: $hport
readOnlyPort: 0
containerRuntimeEndpoint: unix://$sock
podLogsDir: $nd/pod-logs
volumePluginDir: $nd/volume-plugins
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
serializeImagePulls: false
registerNode: true
EOF
  echo "$hport" >"$nd/kubelet-healthz-port"
}

node_ready() {
  [ "$(kubectl_ get node 127.0.0.1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

cmd_start() {
  setup "$1"
  [ -f "$dir/kubeconfig" ] && [ -f "$dir/sa.key" ] && [ -f "$dir/pki/apiserver.crt" ] \
    || die "$dir is not a control-plane dir from cluster.sh run (kubeconfig, sa.key, pki/apiserver.crt)"
  local f
  for f in "$nd"/*.pid; do
    if pid_alive "$f"; then die "a node already runs for $dir ($(basename "$f" .pid)): stop it first"; fi
  done
  [ ${#sock} -lt 100 ] || die "containerd socket path too long for a unix socket: $sock"
  local t0=$SECONDS
  bins
  mkdir -p "$nd" "$dir/logs"
  # A start that fails half way stops what it started.
  trap 'rc=$?; trap - EXIT; if [ $rc != 0 ]; then log "start failed: stopping"; bash "$here/node.sh" stop "$dir" || true; fi; exit $rc' EXIT
  [ -f "$nd/outside-before" ] || snapshot_outside >"$nd/outside-before"
  echo "$cgname" >"$nd/cgroup-name"

  # Controllers the node needs, and the scheduler.
  start_bg controller-manager "$dir/logs/node-kube-controller-manager.log" \
    "$bin/kube-controller-manager" --kubeconfig="$dir/kubeconfig" --leader-elect=false --secure-port=0 \
    --cert-dir="$nd/kcm-certs" \
    --controllers=deployment-controller,replicaset-controller,serviceaccount-token-controller,serviceaccount-controller,node-lifecycle-controller,root-ca-certificate-publisher-controller \
    --service-account-private-key-file="$dir/sa.key" --root-ca-file="$dir/pki/apiserver.crt" \
    --use-service-account-credentials=false
  start_bg scheduler "$dir/logs/kube-scheduler.log" \
    "$bin/kube-scheduler" --kubeconfig="$dir/kubeconfig" --leader-elect=false --secure-port=0 --cert-dir="$nd/scheduler-certs"

  # containerd v2, its shim first in PATH.
  write_containerd_config
  start_bg containerd "$dir/logs/containerd.log" \
    env PATH="$ctrd_dir:$PATH" "$ctrd_dir/containerd" --config "$nd/containerd.toml"
  wait_until 60 "containerd on $sock" "$ctrd_dir/ctr" -a "$sock" version \
    || { tail -20 "$dir/logs/containerd.log" >&2; exit 1; }

  # The sandbox image, before the kubelet asks for it.
  local pause=${BCO_PAUSE_IMAGE:-}
  if [ -z "$pause" ]; then
    [ -x "$here/build-images.sh" ] || [ -f "$here/build-images.sh" ] || die "no BCO_PAUSE_IMAGE and no hack/build-images.sh"
    pause=$(bash "$here/build-images.sh" pause | tail -1)
  fi
  import_image "$pause"

  make_cgroups
  write_kubelet_config
  # A Node left by an earlier start would look Ready before this kubelet reports.
  kubectl_ delete node 127.0.0.1 --ignore-not-found --wait=false >/dev/null
  start_bg kubelet "$dir/logs/kubelet.log" \
    "$bin/kubelet" --config="$nd/kubelet.yaml" --kubeconfig="$dir/kubeconfig" --root-dir="$nd/kubelet" \
    --cert-dir="$nd/kubelet-pki" --hostname-override=127.0.0.1
  local t1; t1=$(date +%s.%N)
  if ! wait_until 120 "Node 127.0.0.1 Ready" node_ready; then
    tail -30 "$dir/logs/kubelet.log" >&2; exit 1
  fi
  local ready; ready=$(python3 -c "import time; print(f'{time.time()-$t1:.1f}')")
  wait_until 60 "ServiceAccount default/default" kubectl_ get serviceaccount default -n default
  trap - EXIT
  echo "node ready: Node 127.0.0.1 Ready ${ready}s after kubelet start, $((SECONDS - t0))s in all (containerd $sock)"
}

import_image() { # TARBALL
  local tar=$1
  [ -f "$tar" ] || die "no such image tarball: $tar"
  # (without ctr's notice that containerd deprecates cgroup v1)
  "$ctrd_dir/ctr" -a "$sock" -n k8s.io images import --local "$tar" 2>&1 >&2 \
    | { grep -v 'DEPRECATION: The support for cgroup v1' || true; } >&2
}

cmd_import() {
  setup "$1"
  [ -n "${2:-}" ] || die "usage: $0 import DIR TARBALL"
  bin=$("$here/build-control-plane.sh" all | tail -1)
  ctrd_dir=$(ls -d "$bin"/containerd-v* | sort -V | tail -1)
  import_image "$2"
}

# Pids whose command line names one of the given strings, except ours: this script's
# ancestors and its process group (the node's processes run in sessions of their own).
procs_naming() {
  python3 - "$@" <<'EOF'
import os, sys
needles = sys.argv[1:]
def stat(p):
    return open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
skip = set()
p = os.getpid()
while p > 1:
    skip.add(p)
    try:
        p = int(stat(p)[1])
    except Exception:
        break
pgid = os.getpgid(0)
for d in os.listdir("/proc"):
    if not d.isdigit() or int(d) in skip:
        continue
    try:
        if int(stat(d)[2]) == pgid:
            continue
    except Exception:
        continue
    try:
        cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
    except Exception:
        continue
    if cmd and any(n in cmd for n in needles):
        print(d, cmd)
EOF
}

# Processes the node started: those naming DIR/node or the socket, plus node binaries
# naming DIR (the scheduler and the node's controller manager use DIR/kubeconfig).
node_procs() {
  procs_naming "$nd/" "$sock" "$dir/" | while read -r pid cmd; do
    case "$cmd" in
      *"$nd/"*|*"$sock"*) echo "$pid $cmd" ;;
      *kube-scheduler*|*kubelet*|*containerd*|*runc*|*node-lifecycle-controller*) echo "$pid $cmd" ;;
    esac
  done
}

kill_wait() { # SECONDS PID...: TERM, wait, then KILL
  local secs=$1 p; shift
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null || true
  for _ in $(seq $((secs * 10))); do
    local alive=
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ -n "$alive" ] || return 0
    sleep 0.1
  done
  kill -9 "$@" 2>/dev/null || true
  for _ in $(seq 50); do
    local alive=
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ -n "$alive" ] || return 0
    sleep 0.1
  done
}

stop_pid() { # SECONDS NAME...: the processes of DIR/node/NAME.pid, together
  local secs=$1 n pids=(); shift
  for n in "$@"; do
    pid_alive "$nd/$n.pid" && pids+=("$(cat "$nd/$n.pid")")
  done
  kill_wait "$secs" "${pids[@]}"
  for n in "$@"; do rm -f "$nd/$n.pid"; done
}

other_node_running() { # another kubelet or containerd on this machine (not ours)
  local mine; mine=$(node_procs | awk '{print $1}')
  local p
  for p in $(pgrep -x kubelet; pgrep -x containerd); do
    grep -qx "$p" <<<"$mine" || return 0
  done
  return 1
}

our_cgroup_dirs() {
  local h
  for h in "${CGROUP_V1[@]}" unified; do
    [ -d "/sys/fs/cgroup/$h/$cgname" ] && echo "/sys/fs/cgroup/$h/$cgname"
  done
  true
}

our_mounts() { # mount points under DIR, deepest first
  python3 - "$dir" <<'EOF'
import sys
d = sys.argv[1].rstrip("/") + "/"
pts = []
for line in open("/proc/self/mountinfo"):
    mp = line.split()[4].encode().decode("unicode_escape")
    if mp.startswith(d):
        pts.append(mp)
for mp in sorted(set(pts), key=lambda m: (-m.count("/"), -len(m))):
    print(mp)
EOF
}

cmd_stop() {
  setup "$1"
  [ -d "$nd" ] || { log "no node in $dir"; return 0; }
  local t0=$SECONDS
  bin=$("$here/build-control-plane.sh" all | tail -1)
  ctrd_dir=$(ls -d "$bin"/containerd-v* 2>/dev/null | sort -V | tail -1)
  local ctr=("$ctrd_dir/ctr" -a "$sock" -n k8s.io)
  # No new pods get bound while we drain (the replica set controller recreates deleted
  # pods: without the scheduler they stay Pending, unbound). The node's controller
  # manager goes with it: nothing below needs it.
  stop_pid 10 scheduler controller-manager
  if pid_alive "$nd/kubelet.pid" && kubectl_ get --raw /readyz >/dev/null 2>&1; then
    # A short graceful delete, then grace 0 for what is left.
    kubectl_ delete pods --all -A --grace-period="${BCO_NODE_GRACE:-2}" --wait=false >/dev/null 2>&1 || true
    for _ in $(seq 50); do
      [ -z "$(kubectl_ get pods -A -o name --field-selector spec.nodeName=127.0.0.1 2>/dev/null)" ] && break
      sleep 0.2
    done
    kubectl_ delete pods --all -A --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
    # Give the kubelet a moment to stop what it still runs.
    for _ in $(seq 25); do
      [ -z "$("${ctr[@]}" tasks ls -q 2>/dev/null | grep .)" ] && break; sleep 0.2
    done
  fi
  stop_pid 15 kubelet
  # A stopped node is no node (a stale Ready Node would take pods it never runs).
  kubectl_ delete node 127.0.0.1 --ignore-not-found --wait=false --request-timeout=5s >/dev/null 2>&1 || true
  # Pod sandboxes and containers the kubelet left behind.
  if [ -S "$sock" ] && "${ctr[@]}" version >/dev/null 2>&1; then
    local c
    for c in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
      "${ctr[@]}" tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    done
    for c in $("${ctr[@]}" containers ls -q 2>/dev/null); do
      "${ctr[@]}" tasks delete -f "$c" >/dev/null 2>&1 || true
      "${ctr[@]}" containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  stop_pid 15 containerd
  # Shims of this containerd (their command line names its address).
  local pids; pids=$(procs_naming "$sock" | awk '{print $1}')
  # shellcheck disable=SC2086
  kill_wait 5 $pids
  stop_pid 10 scheduler controller-manager
  # Anything still in our cgroups (a container process whose shim is gone).
  local cg
  for cg in $(our_cgroup_dirs); do
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  done
  # Mounts under DIR, deepest first.
  local m
  for m in $(our_mounts); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"; done
  for cg in $(our_cgroup_dirs); do
    for _ in 1 2 3 4 5; do
      find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$cg" ] || break; sleep 0.5
    done
    [ -d "$cg" ] && log "cannot remove cgroup $cg"
  done
  cleanup_outside
  log "node stopped in $((SECONDS - t0))s"
}

cleanup_outside() {
  local before="$nd/outside-before"
  [ -f "$before" ] || return 0
  # The kubelet's /var/log/containers links into our pod logs.
  if [ -d /var/log/containers ]; then
    local l
    for l in /var/log/containers/*; do
      [ -L "$l" ] || continue
      case "$(readlink "$l")" in "$nd/"*) rm -f "$l" ;; esac
    done
  fi
  other_node_running && { log "another kubelet/containerd runs: leaving shared outside paths"; return 0; }
  local p
  # Deepest first; only what was absent before start; shared dirs only when empty.
  for p in /var/lib/kubelet/device-plugins /run/containerd/s /run/containerd/fifo /run/containerd/runc \
           /var/log/containers /var/log/pods /run/containerd /var/lib/kubelet /run/nri /var/run/nri; do
    grep -qx "$p" "$before" && continue
    [ -e "$p" ] || continue
    case "$p" in
      /var/lib/kubelet/device-plugins)
        # Only the kubelet's own socket and notice; a device plugin's socket stays.
        rm -f "$p/kubelet.sock" "$p/DEPRECATION"; rmdir "$p" 2>/dev/null || true ;;
      /run/containerd/s)
        # Shim sockets whose shim is gone.
        local s
        for s in "$p"/*; do [ -S "$s" ] && rm -f "$s"; done
        rmdir "$p" 2>/dev/null || true ;;
      *) rmdir "$p" 2>/dev/null || true ;;
    esac
  done
}

cmd_check_clean() {
  setup "$1"
  local bad=0 out
  out=$(node_procs)
  local f
  for f in "$nd"/*.pid; do
    if pid_alive "$f" && ! grep -q "^$(cat "$f") " <<<"$out"; then
      out+=$'\n'"$(cat "$f") (from $(basename "$f"))"
    fi
  done
  out=$(sed '/^$/d' <<<"$out")
  [ -n "$out" ] && { echo "processes left:"; sed 's/^/  /' <<<"$out"; bad=1; }
  out=$(our_mounts)
  [ -n "$out" ] && { echo "mounts left:"; sed 's/^/  /' <<<"$out"; bad=1; }
  out=$(our_cgroup_dirs)
  [ -n "$out" ] && { echo "cgroups left:"; sed 's/^/  /' <<<"$out"; bad=1; }
  if [ -f "$nd/outside-before" ]; then
    out=$(comm -13 <(sort "$nd/outside-before") <(snapshot_outside | sort))
    [ -n "$out" ] && { echo "outside paths that were not there before start:"; sed 's/^/  /' <<<"$out"; bad=1; }
  else
    echo "no $nd/outside-before: outside paths not checked"
  fi
  if [ $bad = 0 ]; then echo "clean: nothing left of the node for $dir"; fi
  return $bad
}

cmd_helm_values() {
  local dir=$1 root version
  root=$(cd "$here/.." && pwd)
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
  cat <<YAML
image: {repository: localhost/bitbucket-credentials-operator, tag: "$version", pullPolicy: Never}
# No Pod network: the host's, on loopback, with ports nobody else holds.
hostNetwork: true
listenAddress: 127.0.0.1
metrics: {port: $(free_port)}
health: {port: $(free_port)}
# No Service network either: the API server where the kubelet reaches it.
extraEnv:
  - {name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}
  - {name: KUBERNETES_SERVICE_PORT, value: "$(cat "$dir/apiserver-port")"}
YAML
}

case "${1:-}" in
  start) cmd_start "${2:-}" ;;
  helm-values) cmd_helm_values "${2:-}" ;;
  import) cmd_import "${2:-}" "${3:-}" ;;
  stop) cmd_stop "${2:-}" ;;
  check-clean) cmd_check_clean "${2:-}" ;;
  *) echo "usage: $0 start DIR | import DIR TARBALL | stop DIR | check-clean DIR" >&2; exit 2 ;;
esac
