#!/usr/bin/env bash
# Runs a command with KUBECONFIG pointing at a fresh control plane, stopped afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
bash "$here/cluster.sh" run "$dir" >"$dir.log" 2>&1 &
cluster=$!
trap 'kill $cluster 2>/dev/null; wait $cluster 2>/dev/null; rm -rf "$dir" "$dir.log"' EXIT
for _ in $(seq 1800); do
  [ -f "$dir/ready" ] && break
  kill -0 $cluster 2>/dev/null || { cat "$dir.log"; exit 1; }
  sleep 0.5
done
tail -1 "$dir.log"
export KUBECONFIG="$dir/kubeconfig"
HELM="$(bash "$here/build-control-plane.sh" helm | tail -1)/helm"
export HELM
"$@"
