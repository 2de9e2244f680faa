#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, helm and promtool (which checks
# the chart's alerting rules) from the published Go modules into a cache keyed by
# version, once. Later runs find the binaries and exit.
# Prints the bin directory on its last line.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# Prometheus v3.16's Go module version.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
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

build_kube() {
  [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && return
  log "building kube-apiserver and kube-controller-manager $K8S_VERSION (10+ minutes cold)"
  local w="$CACHE/k8s-wrap-$K8S_VERSION"
  mkdir -p "$w"
  local mod; mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  (
    cd "$w"
    [ -f go.mod ] || go mod init k8swrap >/dev/null 2>&1
    # k8s.io/kubernetes replaces its staging modules with ./staging paths; point each
    # at the published module of the matching version instead.
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$mod" | awk '{print $1}' | while read -r m; do
      go mod edit -replace "$m=$m@v0.$minor.${K8S_VERSION##*.}"
    done
    go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" \
                 "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" >/dev/null
    go get google.golang.org/protobuf@v1.36.12 >/dev/null 2>&1 || true
    local ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    done
    for c in kube-apiserver kube-controller-manager; do
      go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ld" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c"
      mv "$BIN/$c.tmp" "$BIN/$c"
    done
  )
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
esac
echo "$BIN"
