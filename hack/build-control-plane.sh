#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, helm and promtool (which checks
# the chart's alerting rules) from the published Go modules into a cache keyed by
# version, once. Later runs find the binaries and exit.
# `node` (not part of `all`) builds what a real node needs (hack/node.sh): kubelet,
# kube-scheduler, containerd v2 + its runc shim + ctr, runc, the loopback CNI plugin.
# Prints the bin directory on its last line.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# Prometheus v3.16's Go module version.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.2.9}"
RUNC_VERSION="${RUNC_VERSION:-v1.4.4}"
CNI_PLUGINS_VERSION="${CNI_PLUGINS_VERSION:-v1.9.1}"
CACHE="${BCO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bitbucket-credentials-operator}"
BIN="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"
mkdir -p "$BIN"
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local

log() { echo "[control-plane] $*" >&2; }

build_etcd() {
  [ -x "$BIN/etcd" ] && return
  log "building etcd $ETCD_VERSION"
  local w; w=$(mktemp -d)
  ( cd "$w" && go mod init etcdwrap >/dev/null 2>&1 \
    && go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null \
    && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3 ) 
  mv "$BIN/etcd.tmp" "$BIN/etcd"; rm -rf "$w"
}

# The wrapper module that builds k8s.io/kubernetes commands (kube_tool CMD... adds them).
kube_ldflags() {
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  echo "$ld"
}

kube_tool() {
  local w="$CACHE/k8s-wrap-$K8S_VERSION"
  mkdir -p "$w"
  local mod; mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local tools=() c
  for c in "$@"; do tools+=("k8s.io/kubernetes/cmd/$c@$K8S_VERSION"); done
  (
    cd "$w"
    [ -f go.mod ] || go mod init k8swrap >/dev/null 2>&1
    # k8s.io/kubernetes replaces its staging modules with ./staging paths; point each
    # at the published module of the matching version instead.
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$mod" | awk '{print $1}' | while read -r m; do
      go mod edit -replace "$m=$m@v0.$minor.${K8S_VERSION##*.}"
    done
    go get -tool "${tools[@]}" >/dev/null
    go get google.golang.org/protobuf@v1.36.12 >/dev/null 2>&1 || true
  )
}

kube_build() { # CMD...
  local w="$CACHE/k8s-wrap-$K8S_VERSION" ld c; ld=$(kube_ldflags)
  for c in "$@"; do
    ( cd "$w" && go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ld" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c" )
    mv "$BIN/$c.tmp" "$BIN/$c"
  done
}

# One go build at a time in the wrapper module (`all` and `node` may run at once).
kube_lock() {
  exec 9>"$CACHE/k8s-wrap-$K8S_VERSION.lock"
  flock 9
}

build_kube() {
  [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && return
  kube_lock
  [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && return
  log "building kube-apiserver and kube-controller-manager $K8S_VERSION (10+ minutes cold)"
  kube_tool kube-apiserver kube-controller-manager
  kube_build kube-apiserver kube-controller-manager
}

build_kubelet() {
  [ -x "$BIN/kubelet" ] && [ -x "$BIN/kube-scheduler" ] && return
  kube_lock
  [ -x "$BIN/kubelet" ] && [ -x "$BIN/kube-scheduler" ] && return
  log "building kubelet and kube-scheduler $K8S_VERSION"
  kube_tool kubelet kube-scheduler
  local c todo=()
  for c in kubelet kube-scheduler; do [ -x "$BIN/$c" ] || todo+=("$c"); done
  kube_build "${todo[@]}"
}

build_containerd() {
  local d="$BIN/containerd-$CONTAINERD_VERSION"
  [ -x "$d/containerd" ] && [ -x "$d/containerd-shim-runc-v2" ] && [ -x "$d/ctr" ] && return
  log "building containerd $CONTAINERD_VERSION (a few minutes cold)"
  local w; w=$(mktemp -d)
  local p=github.com/containerd/containerd/v2
  CGO_ENABLED=0 GOBIN="$w" go install -trimpath -tags no_btrfs,no_devmapper,no_zfs \
    -ldflags "-s -w -X $p/version.Version=$CONTAINERD_VERSION -X $p/version.Revision=module" \
    "$p/cmd/containerd@$CONTAINERD_VERSION" "$p/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "$p/cmd/ctr@$CONTAINERD_VERSION"
  mkdir -p "$d"; mv "$w"/* "$d/"; rm -rf "$w"
}

# runc needs cgo; with libseccomp-dev (pkg-config libseccomp) it gets seccomp support,
# which pods with seccompProfile RuntimeDefault (the chart's default) need.
build_runc() {
  local d="$BIN/runc-$RUNC_VERSION" tags=urfave_cli_no_docs
  local seccomp=false
  pkg-config --exists libseccomp 2>/dev/null && seccomp=true
  if [ -x "$d/runc" ]; then
    # Rebuild a runc built without seccomp once libseccomp-dev is there.
    if ! $seccomp || "$d/runc" --version | grep -q '^libseccomp:'; then return; fi
  fi
  if $seccomp; then tags="seccomp $tags"
  else log "warning: libseccomp-dev missing: runc without seccomp (pods with seccompProfile RuntimeDefault fail)"; fi
  log "building runc $RUNC_VERSION (tags: $tags)"
  local w; w=$(mktemp -d)
  CGO_ENABLED=1 GOBIN="$w" go install -trimpath -buildmode=pie -tags "$tags" \
    -ldflags "-s -w -X main.gitCommit=$RUNC_VERSION" "github.com/opencontainers/runc@$RUNC_VERSION"
  mkdir -p "$d"; mv "$w/runc" "$d/runc"; rm -rf "$w"
}

build_cni() {
  [ -x "$BIN/cni/loopback" ] && [ -f "$BIN/cni/version" ] && [ "$(cat "$BIN/cni/version")" = "$CNI_PLUGINS_VERSION" ] && return
  log "building the loopback CNI plugin $CNI_PLUGINS_VERSION"
  local w; w=$(mktemp -d)
  local p=github.com/containernetworking/plugins
  CGO_ENABLED=0 GOBIN="$w" go install -trimpath \
    -ldflags "-s -w -X $p/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
    "$p/plugins/main/loopback@$CNI_PLUGINS_VERSION"
  mkdir -p "$BIN/cni"; mv "$w/loopback" "$BIN/cni/loopback"; echo "$CNI_PLUGINS_VERSION" >"$BIN/cni/version"; rm -rf "$w"
}

build_helm() {
  [ -x "$BIN/helm" ] && return
  log "building helm $HELM_VERSION"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

build_promtool() {
  [ -x "$BIN/promtool-$PROMETHEUS_VERSION" ] && return
  log "building promtool $PROMETHEUS_VERSION (a few minutes cold)"
  local w; w=$(mktemp -d)
  GOBIN="$w" go install -trimpath -ldflags "-s -w" "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
  mv "$w/promtool" "$BIN/promtool-$PROMETHEUS_VERSION"; rm -rf "$w"
}

case "${1:-all}" in
  etcd) build_etcd ;;
  kube) build_kube ;;
  helm) build_helm ;;
  promtool) build_promtool ;;
  all) build_etcd; build_kube; build_helm; build_promtool ;;
  kubelet) build_kubelet ;;
  containerd) build_containerd ;;
  runc) build_runc ;;
  cni) build_cni ;;
  node) build_containerd; build_runc; build_cni; build_kubelet ;;
  *) echo "usage: $0 [all|etcd|kube|helm|promtool|node|kubelet|containerd|runc|cni]" >&2; exit 2 ;;
esac
echo "$BIN"
