#!/usr/bin/env bash
# make demo: the whole product on one machine. Builds what is needed, starts a real
# control plane, bitbucket-sim, a real sshd git endpoint and the operator, applies
# examples/, shows the result and clones a repository with the generated key.
#   hack/demo.sh        start (or restart) the demo
#   hack/demo.sh node   the same on a real node (hack/node.sh): the operator runs as a Pod
#                       installed with Helm from its image, the clone runs in a Pod
#   hack/demo.sh down   stop it
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.local/demo"
cd "$root"

stop() {
  for p in "$state"/*.pid; do
    [ -f "$p" ] || continue
    kill "$(cat "$p")" 2>/dev/null || true
    rm -f "$p"
  done
}

if [ "${1:-}" = down ]; then
  stop
  bash hack/cluster.sh down >/dev/null 2>&1 || true
  echo "demo stopped"
  exit 0
fi

on_node=""
[ "${1:-}" = node ] && on_node=1
step() { printf '\n==> %s\n' "$*"; }
stop
rm -rf "$state" && mkdir -p "$state"

step "building the control plane (first run: ~10 min, cached afterwards) and the binaries"
bash hack/build-control-plane.sh all >/dev/null
cargo build --quiet --bins
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || {
  echo "installing openssh-server"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null; }

if [ -n "$on_node" ]; then
  step "building the node (kubelet, kube-scheduler, containerd, runc; first run: a few minutes)"
  bash hack/build-control-plane.sh node >/dev/null
  step "starting a local control plane and a node (Node 127.0.0.1, host network only)"
  BCO_NODE=1 bash hack/cluster.sh up
else
  step "starting a local control plane (etcd + kube-apiserver + kube-controller-manager)"
  bash hack/cluster.sh up
fi
export KUBECONFIG="$root/.local/kubeconfig"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null

step "starting bitbucket-sim (a faithful Bitbucket Cloud API simulator)"
./target/debug/bitbucket-sim --config tests/fixtures/demo-sim.yaml --state "$state/sim-state.json" >"$state/sim.out" 2>"$state/sim.log" &
echo $! >"$state/sim.pid"
for _ in $(seq 50); do [ -s "$state/sim.out" ] && break; sleep 0.1; done
sim=$(head -1 "$state/sim.out" | sed 's/^listening on //')
echo "bitbucket-sim at $sim"

step "starting the git endpoint (real OpenSSH sshd serving acme/api, acme/web, acme/tools)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
hack/git-endpoint/run "$state/git" "$sim" "$port" acme/api acme/web acme/tools >"$state/git.log" 2>&1 &
echo $! >"$state/git.pid"
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

# The simulator is plain http on loopback: allowed explicitly, as Bitbucket Cloud's own
# URLs are by default.
if [ -n "$on_node" ]; then
  step "building the operator image and a git client image offline, importing them into the node"
  for image in "operator $root/target/debug/bitbucket-credentials-operator" git-client; do
    bash hack/node.sh import "$root/.local/cluster" "$(bash hack/build-images.sh $image | tail -1)"
  done
  step "helm install: the operator as a Pod from its image"
  bash hack/node.sh helm-values "$root/.local/cluster" >"$state/node-values.yaml"
  "$(bash hack/build-control-plane.sh helm | tail -1)/helm" install bco charts/bitbucket-credentials-operator \
    -n bitbucket-credentials-operator --create-namespace --wait --timeout 180s -f "$state/node-values.yaml" \
    --set clusterName=demo --set clusterResourceNamespace=default --set "allowedBitbucketUrls={$sim}"
  kubectl wait pod -n bitbucket-credentials-operator -l app.kubernetes.io/instance=bco --for=condition=Ready --timeout=120s >/dev/null
  kubectl get pods -n bitbucket-credentials-operator -o wide
else
  step "starting the operator"
  ./target/debug/bitbucket-credentials-operator run --cluster-name demo --cluster-resource-namespace default \
    --allowed-bitbucket-urls "$sim" \
    --metrics-addr 127.0.0.1:0 --health-addr 127.0.0.1:0 >"$state/operator.log" 2>&1 &
  echo $! >"$state/operator.pid"
fi

step "applying examples/ (workspaces pointed at the simulator and the git endpoint)"
kubectl delete namespace ci --ignore-not-found --wait=true >/dev/null
kubectl delete clusterbitbucketworkspace acme --ignore-not-found >/dev/null
kubectl create secret generic bb-consumer -n default --from-literal=key=ck --from-literal=secret=cs \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f examples/ >/dev/null
known=$(cut -d' ' -f2,3 "$state/git/known_hosts")
for ws in "bitbucketworkspace acme -n ci" "clusterbitbucketworkspace acme"; do
  kubectl patch $ws --type merge -p "{\"spec\":{\"apiURL\":\"$sim/2.0\",\"siteURL\":\"$sim\",\"sshHost\":\"127.0.0.1:$port\",\"knownHosts\":\"127.0.0.1 $known\"}}" >/dev/null
done
kubectl wait -n ci --for=condition=Ready bitbucketaccesskey/teamcity-clone bitbucketoauthconsumer/teamcity-token --timeout=120s >/dev/null

step "the objects"
kubectl get bbws,bbak,bboc -n ci
kubectl get cbbws

step "the Secrets (keys only; the private key never leaves the cluster)"
kubectl get secret teamcity-clone -n ci -o jsonpath='{range .data}{end}' >/dev/null
kubectl get secret teamcity-clone -n ci -o go-template='teamcity-clone ({{.type}}):{{range $k, $v := .data}} {{$k}}{{end}}{{"\n"}}'
kubectl get secret teamcity-token -n ci -o go-template='teamcity-token ({{.type}}):{{range $k, $v := .data}} {{$k}}{{end}}{{"\n"}}'
echo "access keys in Bitbucket:"
curl -s "$sim/_sim/keys" | python3 -c 'import json,sys; [print("  ", k["target"], k["fingerprint"], k["label"]) for k in json.load(sys.stdin)]'

if [ -n "$on_node" ]; then
  step "cloning acme/api in a Pod that mounts the Secret (docs/ci/pods.md's Job, git client image)"
  python3 hack/test-node.py docs-clone-pod docs/ci/pods.md clone-api clone-api ci teamcity-clone \
    git@bitbucket.org:acme/api.git "ssh://git@127.0.0.1:$port/acme/api.git" | kubectl apply -f - >/dev/null
  for _ in $(seq 240); do
    phase=$(kubectl get pod clone-api -n ci -o jsonpath='{.status.phase}')
    case "$phase" in Succeeded | Failed) break ;; esac
    sleep 0.5
  done
  kubectl logs clone-api -n ci
  echo "pod clone-api: $phase"
  cat <<MSG

The demo is running on a node. Try:
  export KUBECONFIG=$root/.local/kubeconfig
  kubectl get pods -A -o wide
  kubectl logs -n bitbucket-credentials-operator deploy/bco-bitbucket-credentials-operator
Stop everything with: make demo-down   (or: bash hack/demo.sh down)
MSG
  exit 0
fi

step "cloning acme/api with nothing but the Secret's ssh-privatekey and known_hosts"
mnt="$state/mount" && mkdir -p "$mnt"
kubectl get secret teamcity-clone -n ci -o jsonpath='{.data.ssh-privatekey}' | base64 -d >"$mnt/ssh-privatekey"
kubectl get secret teamcity-clone -n ci -o jsonpath='{.data.known_hosts}' | base64 -d >"$mnt/known_hosts"
chmod 400 "$mnt/ssh-privatekey"
rm -rf "$state/api"
GIT_SSH_COMMAND="ssh -F /dev/null -i $mnt/ssh-privatekey -o IdentitiesOnly=yes -o UserKnownHostsFile=$mnt/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes" \
  git clone "ssh://git@127.0.0.1:$port/acme/api.git" "$state/api"
git -C "$state/api" log --oneline -1
rm -f "$mnt/ssh-privatekey"

cat <<MSG

The demo is running. Try:
  export KUBECONFIG=$root/.local/kubeconfig
  kubectl annotate bbak teamcity-clone -n ci bitbucket.credentials.dev/rotate=\$(date +%s) --overwrite
  kubectl get bbak -n ci -w
Logs: $state/operator.log, $state/sim.log
Stop everything with: make demo-down   (or: bash hack/demo.sh down)
MSG
