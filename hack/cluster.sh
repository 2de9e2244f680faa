#!/usr/bin/env bash
# A real local control plane: etcd + kube-apiserver + kube-controller-manager on
# 127.0.0.1 with random ports, the way envtest runs one.
#   cluster.sh run DIR   start in the foreground; writes DIR/kubeconfig and DIR/ready,
#                        stops everything on SIGTERM/SIGINT or when stdin closes (if
#                        --stdin-lifeline is given)
#   cluster.sh up        start in the background for people: .local/kubeconfig
#   cluster.sh down      stop what `up` started
# With BCO_NODE=1 a real node (hack/node.sh: scheduler, more controllers, containerd,
# kubelet; Node 127.0.0.1) starts after the control plane, the ServiceAccount admission
# plugin stays on (pods get their token), and the node is torn down before the rest.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # url, seconds, curl args...
  local url=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do
    curl -fsS --max-time 2 "$@" "$url" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "timed out waiting for $url" >&2; return 1
}

run() {
  # Global, not local: the EXIT trap that stops everything runs after run() returns.
  dir=$1
  local lifeline=${2:-}
  mkdir -p "$dir/pki" "$dir/logs"
  local bin; bin=$("$here/build-control-plane.sh" all | tail -1)
  pids=()
  node=${BCO_NODE:-}
  [ "$node" = 0 ] && node=
  cleanup() {
    trap - EXIT TERM INT
    if [ -n "$node" ] && [ -d "$dir/node" ]; then bash "$here/node.sh" stop "$dir" || true; fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -f "$dir/ready"
  }
  trap cleanup EXIT
  trap 'exit 0' TERM INT

  local ep=$(free_port) pp=$(free_port) ap=$(free_port)
  "$bin/etcd" --data-dir="$dir/etcd" --listen-client-urls="http://127.0.0.1:$ep" \
    --advertise-client-urls="http://127.0.0.1:$ep" --listen-peer-urls="http://127.0.0.1:$pp" \
    --initial-advertise-peer-urls="http://127.0.0.1:$pp" --initial-cluster="default=http://127.0.0.1:$pp" \
    --unsafe-no-fsync=true --quota-backend-bytes=8589934592 >"$dir/logs/etcd.log" 2>&1 &
  pids+=($!)
  wait_for "http://127.0.0.1:$ep/health" 60

  local token; token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
  local user_token; user_token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
  printf '%s,admin,admin,system:masters\n%s,operator-sa-test,operator-sa-test\n' "$token" "$user_token" >"$dir/tokens.csv"
  printf '%s' "$user_token" >"$dir/user-token"
  [ -f "$dir/sa.key" ] || openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  echo "$ap" >"$dir/apiserver-port"
  echo "$ep" >"$dir/etcd-port"
  local admission=--disable-admission-plugins=ServiceAccount
  [ -n "$node" ] && admission=--enable-admission-plugins=ServiceAccount
  # MutatingAdmissionPolicy is beta and off by default in 1.35 (on in 1.36): enabled, the
  # chart's finalizer policy is exercised as clusters of 1.36 will run it (the tests that
  # delete its binding cover clusters without it).
  start_apiserver() {
    "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$ep" --cert-dir="$dir/pki" \
      --bind-address=127.0.0.1 --secure-port="$ap" --advertise-address=127.0.0.1 \
      --endpoint-reconciler-type=none --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
      --authorization-mode=RBAC "$admission" \
      --feature-gates=MutatingAdmissionPolicy=true --runtime-config=admissionregistration.k8s.io/v1beta1=true \
      --service-account-issuer="https://127.0.0.1:$ap/" --service-account-key-file="$dir/sa.pub" \
      --service-account-signing-key-file="$dir/sa.key" --token-auth-file="$dir/tokens.csv" \
      >>"$dir/logs/kube-apiserver.log" 2>&1 &
    echo $! >"$dir/apiserver.pid"
  }
  start_apiserver
  pids+=($(cat "$dir/apiserver.pid"))
  wait_for "https://127.0.0.1:$ap/readyz" 120 -k -H "Authorization: Bearer $token"

  local ca; ca=$(base64 -w0 "$dir/pki/apiserver.crt")
  cat >"$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:$ap", certificate-authority-data: "$ca"}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: local
  context: {cluster: local, user: admin}
current-context: local
KC
  chmod 600 "$dir/kubeconfig"
  for _ in $(seq 300); do
    kubectl --kubeconfig "$dir/kubeconfig" get namespace default >/dev/null 2>&1 && break
    sleep 0.2
  done

  "$bin/kube-controller-manager" --kubeconfig="$dir/kubeconfig" --leader-elect=false --secure-port=0 \
    --controllers=garbage-collector-controller,namespace-controller,clusterrole-aggregation-controller \
    --use-service-account-credentials=false >"$dir/logs/kube-controller-manager.log" 2>&1 &
  pids+=($!)
  if [ -n "$node" ]; then bash "$here/node.sh" start "$dir"; fi

  local version; version=$(kubectl --kubeconfig "$dir/kubeconfig" version -o json 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')
  echo "control plane ready: kube-apiserver $version on https://127.0.0.1:$ap, kubeconfig $dir/kubeconfig"
  touch "$dir/ready"
  # SIGUSR1 restarts the kube-apiserver with the same arguments (etcd keeps the state):
  # tests use it to check that clients survive an apiserver outage.
  restart_apiserver() {
    local old new i
    old=$(cat "$dir/apiserver.pid")
    # SIGTERM, then SIGKILL: a graceful shutdown waits a minute for open watches.
    kill "$old" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$old" 2>/dev/null || true
    wait "$old" 2>/dev/null || true
    start_apiserver
    new=$(cat "$dir/apiserver.pid")
    for i in "${!pids[@]}"; do
      if [ "${pids[$i]}" = "$old" ]; then pids[i]=$new; fi
    done
    wait_for "https://127.0.0.1:$ap/readyz" 120 -k -H "Authorization: Bearer $token" || true
    echo "kube-apiserver restarted (pid $new)"
  }
  trap restart_apiserver USR1
  if [ -n "$lifeline" ]; then
    # Tests hold our stdin open; when the test process dies, stdin closes and we stop.
    # `cat` runs in the background so that signal traps run while we wait for it.
    exec 3<&0
    cat <&3 >/dev/null &
    local cat_pid=$!
    exec 3<&-
    pids+=("$cat_pid")
    while kill -0 "$cat_pid" 2>/dev/null; do wait "$cat_pid" || true; done
  else
    # A short foreground sleep: the TERM trap runs as soon as it returns, and the
    # cleanup's `wait` has no long-lived child to wait for.
    while true; do sleep 1; done
  fi
}

case "${1:-}" in
  run) run "$2" "${3:-}" ;;
  up)
    dir="$root/.local/cluster"
    if [ -f "$root/.local/cluster.pid" ] && kill -0 "$(cat "$root/.local/cluster.pid")" 2>/dev/null; then
      echo "already running: $root/.local/kubeconfig"; exit 0
    fi
    rm -rf "$dir"; mkdir -p "$dir"
    setsid "$0" run "$dir" >"$root/.local/cluster.log" 2>&1 < /dev/null &
    echo $! >"$root/.local/cluster.pid"
    for _ in $(seq 1200); do [ -f "$dir/ready" ] && break; sleep 0.5
      kill -0 "$(cat "$root/.local/cluster.pid")" 2>/dev/null || { cat "$root/.local/cluster.log"; exit 1; }; done
    cp "$dir/kubeconfig" "$root/.local/kubeconfig"
    tail -1 "$root/.local/cluster.log"
    echo "export KUBECONFIG=$root/.local/kubeconfig"
    ;;
  down)
    if [ -f "$root/.local/cluster.pid" ]; then
      kill "$(cat "$root/.local/cluster.pid")" 2>/dev/null || true
      # Up to a minute: with BCO_NODE=1 the node drains its pods first.
      for _ in $(seq 300); do kill -0 "$(cat "$root/.local/cluster.pid")" 2>/dev/null || break; sleep 0.2; done
      rm -f "$root/.local/cluster.pid" "$root/.local/kubeconfig"
    fi
    echo "control plane stopped"
    ;;
  *) echo "usage: $0 run DIR [--stdin-lifeline] | up | down" >&2; exit 2 ;;
esac
