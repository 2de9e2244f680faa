#!/usr/bin/env bash
# Node tests: the operator runs as a Pod from its own image, installed with Helm, on a real
# kubelet + containerd node (hack/node.sh), and CI Pods clone with the Secrets it writes.
#
#   make test-node      (BCO_NODE=1 hack/with-cluster.sh bash hack/test-node.sh)
#
# Needs a control plane started with BCO_NODE=1 (node up, ServiceAccount admission on),
# KUBECONFIG pointing at it and HELM. Builds (or takes from the cache) the operator image
# from BCO_OPERATOR_BIN (default: the release binary), the git client image and the pause
# image, and imports them. Everything listens on and talks to 127.0.0.1 only: the Pods
# use the host's network (there is no Pod network), the operator Pod reaches the API
# server through KUBERNETES_SERVICE_HOST=127.0.0.1.
# Each check prints `ok - NAME` or `not ok - NAME` with its output; the last check stops
# the node and proves that nothing is left behind.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
chart=$root/charts/bitbucket-credentials-operator
: "${KUBECONFIG:?run under BCO_NODE=1 hack/with-cluster.sh}" "${HELM:?}"
cluster=$(dirname "$KUBECONFIG")   # the folder of hack/cluster.sh run DIR
work=$(mktemp -d)
chmod 755 "$work" # the git endpoint's forced command runs as the user git and reads its state
. "$here/checks.sh"
started_all=$SECONDS

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
k() { kubectl "$@"; }
pids=()
finish() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap finish EXIT

ns=ci                       # the CI namespace of docs/ and examples/
op_ns=bco-system            # the release namespace
rel=bco
sim_bin=${BCO_SIM_BIN:-$root/target/debug/bitbucket-sim}
api_port=$(cat "$cluster/apiserver-port")

# --- the world outside the cluster: bitbucket-sim and the sshd git endpoint ----------

"$sim_bin" --config "$root/tests/fixtures/demo-sim.yaml" --state "$work/sim-state.json" >"$work/sim.out" 2>"$work/sim.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/sim.out" ] && break; sleep 0.1; done
sim=$(head -1 "$work/sim.out" | sed 's/^listening on //')
git_port=$(free_port)
"$here/git-endpoint/run" "$work/git" "$sim" "$git_port" acme/api acme/web acme/tools >"$work/git.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$git_port") 2>/dev/null && break; sleep 0.1; done
http_port=$(free_port)
"$here/git-endpoint/http" "$work/git" "$sim" "$http_port" >"$work/git-http.log" 2>&1 &
pids+=($!)
site="http://127.0.0.1:$http_port" # the HTTP git endpoint, standing as a workspace's siteURL
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$http_port") 2>/dev/null && break; sleep 0.1; done
echo "# bitbucket-sim at $sim, git endpoints at 127.0.0.1:$git_port (ssh) and $site, API server at 127.0.0.1:$api_port"

# --- helpers -------------------------------------------------------------------------

# A Pod phase that is final: Succeeded or Failed (POD NAMESPACE SECONDS).
wait_done() {
  local pod=$1 n=$2 secs=${3:-120} phase
  for _ in $(seq $((secs * 2))); do
    phase=$(k get pod "$pod" -n "$n" -o jsonpath='{.status.phase}' 2>/dev/null)
    case "$phase" in Succeeded | Failed) echo "$phase"; return 0 ;; esac
    sleep 0.5
  done
  echo "timeout (phase ${phase:-none})"; k describe pod "$pod" -n "$n" | tail -20
}

# The documented clone Job of docs/ci/pods.md, as a Pod on this node: the docs' Pod spec
# with the local git client image, the local git endpoint and the host's network.
# clone_pod NAME SECRET [python expression editing `spec`]
clone_pod() {
  local name=$1 secret=$2 edit=${3:-}
  python3 "$here/test-node.py" docs-clone-pod "$root/docs/ci/pods.md" clone-api "$name" "$ns" "$secret" \
    git@bitbucket.org:acme/api.git "ssh://git@127.0.0.1:$git_port/acme/api.git" "$edit" >"$work/$name.json" &&
    k apply -f "$work/$name.json" >/dev/null
}

# The running operator Pod of the release (not one that is shutting down).
operator_pod() {
  k get pods -n "$op_ns" -l app.kubernetes.io/instance="$rel" --field-selector=status.phase=Running \
    -o custom-columns=NAME:.metadata.name,DELETING:.metadata.deletionTimestamp --no-headers | awk '$2 == "<none>" {print $1}'
}

# Seconds since the `date +%s.%N` stamp T, to a tenth.
since() { python3 -c "import time; print(round(time.time() - $1, 1))"; }

lease_holder() { k get lease bitbucket-credentials-operator -n "$op_ns" -o jsonpath='{.spec.holderIdentity}'; }

# Polls the Lease for up to a minute until TEST (a shell condition on $holder) holds.
wait_holder() {
  for _ in $(seq 240); do
    holder=$(lease_holder)
    eval "$1" && return 0
    sleep 0.25
  done
  return 1
}

# A new access key NAME on REPO becomes Ready: whoever leads now reconciles.
reconciles_new_key() {
  k apply -f - >/dev/null <<YAML || return 1
apiVersion: bitbucket.credentials.dev/v1alpha1
kind: BitbucketAccessKey
metadata: {name: $1, namespace: $ns}
spec: {workspaceRef: {name: acme}, repositories: [$2]}
YAML
  k wait -n "$ns" --for=condition=Ready "bitbucketaccesskey/$1" --timeout=90s
}

# The host PID of a Pod's first container, from containerd's task list.
container_pid() {
  local id ctr
  id=$(k get pod "$1" -n "$2" -o jsonpath='{.status.containerStatuses[0].containerID}') &&
    ctr=$(ls -d "$(bash "$here/build-control-plane.sh" node | tail -1)"/containerd-v*/ctr | tail -1) || return 1
  "$ctr" -a "$cluster/node/containerd.sock" -n k8s.io tasks ls | awk -v id="${id#containerd://}" '$1 == id {print $2}'
}

# --- checks --------------------------------------------------------------------------

images() {
  local t op git started=$SECONDS
  op=$(bash "$here/build-images.sh" operator "${BCO_OPERATOR_BIN:-}" | tail -1) &&
    git=$(bash "$here/build-images.sh" git-client | tail -1) || return 1
  for t in "$op" "$git"; do bash "$here/node.sh" import "$cluster" "$t" || return 1; done
  echo "built and imported in $((SECONDS - started))s"
}
check "the operator image and the git client image are built offline and imported into the node" images

install() {
  local started=$SECONDS
  k create namespace "$ns" >/dev/null && k apply -f "$root/examples/01-workspace.yaml" >/dev/null &&
    k patch bitbucketworkspace acme -n "$ns" --type merge \
      -p "{\"spec\":{\"apiURL\":\"$sim/2.0\",\"siteURL\":\"$sim\",\"sshHost\":\"127.0.0.1:$git_port\",\"knownHosts\":\"$(cat "$work/git/known_hosts")\"}}" >/dev/null &&
    bash "$here/node.sh" helm-values "$cluster" >"$work/node-values.yaml" &&
    "$HELM" install "$rel" "$chart" -n "$op_ns" --create-namespace --wait --timeout 180s \
      -f "$work/node-values.yaml" --set clusterName=node-test \
      --set "allowedBitbucketUrls={$sim,$site}" --set "watchNamespaces={$ns}" \
      --set readinessProbe.initialDelaySeconds=1 --set readinessProbe.periodSeconds=2 || return 1
  hp=$(sed -n 's/^health: {port: \(.*\)}/\1/p' "$work/node-values.yaml")
  mp=$(sed -n 's/^metrics: {port: \(.*\)}/\1/p' "$work/node-values.yaml")
  echo "helm install --wait returned after $((SECONDS - started))s"
  # helm's --wait can return before the ReplicaSet's Pod exists: the Pod's own Ready.
  k wait pod -n "$op_ns" -l app.kubernetes.io/instance="$rel" --for=condition=Ready --timeout=120s &&
    k get pods -n "$op_ns" -o wide && echo "the Pod Ready $((SECONDS - started))s after helm install started"
}
check "helm install: the operator Pod starts from the local image and becomes Ready through the kubelet's readiness probe" install

security() {
  local pid errors=0
  pid=$(container_pid "$(operator_pod)" "$op_ns")
  [ -n "$pid" ] || { echo "no operator process on the node"; return 1; }
  echo "pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
  python3 "$here/test-node.py" process-confinement "$pid" 65532
}
check "the Pod runs confined: uid/gid 65532, no capabilities, no new privileges, seccomp, read-only root" security

probes() {
  local pod restarts unhealthy
  sleep "${BCO_NODE_LIVENESS_WAIT:-35}" # past the liveness probe's initial delay and first periods
  pod=$(operator_pod)
  restarts=$(k get pod "$pod" -n "$op_ns" -o jsonpath='{.status.containerStatuses[0].restartCount}')
  unhealthy=$(k get events -n "$op_ns" --field-selector "involvedObject.name=$pod,reason=Unhealthy" -o name | wc -l)
  echo "pod $pod: restarts $restarts, Unhealthy events $unhealthy, /healthz $(curl -s "http://127.0.0.1:$hp/healthz"), /readyz $(curl -s "http://127.0.0.1:$hp/readyz")"
  [ "$restarts" = 0 ] && [ "$unhealthy" = 0 ] && curl -fsS "http://127.0.0.1:$mp/metrics" | grep -q '^bitbucket_credentials_operator_build_info'
}
check "liveness and readiness probes pass through the kubelet (no restart, no Unhealthy event); metrics served" probes

reconciles() {
  python3 "$here/test-node.py" docs-object "$root/docs/ci/pods.md" BitbucketAccessKey build-clone | k apply -f - >/dev/null &&
    k wait -n "$ns" --for=condition=Ready bitbucketaccesskey/build-clone --timeout=90s &&
    k get secret build-clone -n "$ns" -o jsonpath='{.type}{"\n"}'
}
check "the operator Pod reconciles under its ServiceAccount's RBAC: docs/ci/pods.md's key becomes Ready" reconciles

clone_ok() {
  local phase
  clone_pod clone-api build-clone && phase=$(wait_done clone-api "$ns") || return 1
  k logs clone-api -n "$ns"
  [ "$phase" = Succeeded ]
}
check "docs/ci/pods.md's clone Job (non-root, fsGroup, defaultMode 0400) clones in a Pod from the git client image" clone_ok

modes() {
  local phase
  clone_pod modes build-clone 'spec["containers"][0]["command"]=["sh","-c","ls -ln /etc/git-secret/ /etc/git-secret/..data/"]' &&
    phase=$(wait_done modes "$ns") && k logs modes -n "$ns" && [ "$phase" = Succeeded ] &&
    k logs modes -n "$ns" | grep -E '^-r--r----- +1 0 65534 .* ssh-privatekey$'
}
check "file modes inside the Pod: the key is 0440 root:65534 (fsGroup), readable by the CI user only through its group" modes

no_fsgroup() {
  local phase
  clone_pod no-fsgroup build-clone 'spec["securityContext"].pop("fsGroup")' &&
    phase=$(wait_done no-fsgroup "$ns") || return 1
  k logs no-fsgroup -n "$ns"
  # ssh reads known_hosts first: without the group both files are unreadable to the CI user.
  [ "$phase" = Failed ] && k logs no-fsgroup -n "$ns" | grep -Eq 'Permission denied|Host key verification failed'
}
check "the failure mode the docs warn of: the same Job without fsGroup cannot read the Secret's files" no_fsgroup

# A key in every layout that a Pod can use as a plain file; one Pod clones with each file.
layouts() {
  local phase
  k apply -f - >/dev/null <<YAML || return 1
apiVersion: bitbucket.credentials.dev/v1alpha1
kind: BitbucketAccessKey
metadata: {name: all-layouts, namespace: $ns}
spec:
  workspaceRef: {name: acme}
  repositories: [api]
  secret: {formats: [ssh-auth, flux, jenkins, argocd]}
YAML
  k wait -n "$ns" --for=condition=Ready bitbucketaccesskey/all-layouts --timeout=90s >/dev/null || return 1
  clone_pod layouts all-layouts 'spec["containers"][0]["command"]=["sh","-c",
    "set -e; for f in ssh-privatekey identity privateKey sshPrivateKey; do"
    " GIT_SSH_COMMAND=\"ssh -i /etc/git-secret/$f -o UserKnownHostsFile=/etc/git-secret/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes\""
    " git clone -q $0 /workspace/$f && echo cloned with $f; done"]' || return 1
  phase=$(wait_done layouts "$ns") && k logs layouts -n "$ns" && [ "$phase" = Succeeded ] &&
    [ "$(k logs layouts -n "$ns" | grep -c '^cloned with')" = 4 ]
}
check "every file layout a Pod can mount (ssh-auth, Flux identity, Jenkins privateKey, Argo CD sshPrivateKey) clones" layouts

# docs/ci/pods.md's OAuth consumer and its tag-release Job: clone and push over HTTP with
# git's store helper reading the mounted .git-credentials.
https_token() {
  local phase
  k get bitbucketworkspace acme -n "$ns" -o json | python3 -c '
import json, sys
ws = json.load(sys.stdin)
meta = ws["metadata"]
ws["metadata"] = {"name": "acme-https", "namespace": meta["namespace"]}
ws["spec"]["siteURL"] = sys.argv[1]
ws.pop("status", None)
print(json.dumps(ws))' "$site" | k apply -f - >/dev/null || return 1
  python3 "$here/test-node.py" docs-object "$root/docs/ci/pods.md" Secret ci-oauth-consumer |
    sed -e 's/REPLACE_WITH_CONSUMER_KEY/ck/' -e 's/REPLACE_WITH_CONSUMER_SECRET/cs/' | k apply -f - >/dev/null &&
    python3 "$here/test-node.py" docs-object "$root/docs/ci/pods.md" BitbucketOAuthConsumer build-token |
    sed 's/"name": "acme"/"name": "acme-https"/' | k apply -f - >/dev/null &&
    k wait -n "$ns" --for=condition=Ready bitbucketoauthconsumer/build-token --timeout=90s >/dev/null || return 1
  python3 "$here/test-node.py" docs-clone-pod "$root/docs/ci/pods.md" tag-release tag-release "$ns" build-token \
    https://bitbucket.org "$site" >"$work/tag-release.json" && k apply -f "$work/tag-release.json" >/dev/null &&
    phase=$(wait_done tag-release "$ns") || return 1
  k logs tag-release -n "$ns"
  echo "tags pushed: $(git -C "$work/git/repos/acme/api.git" tag | tr '\n' ' ')"
  [ "$phase" = Succeeded ] && git -C "$work/git/repos/acme/api.git" tag | grep -q '^build-' &&
    ! grep -q "$(k get secret build-token -n "$ns" -o jsonpath='{.data.token}' | base64 -d)" "$work/git-http.log"
}
check "docs/ci/pods.md's OAuth token Job clones and pushes a tag over HTTP with the mounted .git-credentials" https_token

# Rotation, part 1: a running Pod waits for its mounted key to change; the old key is kept
# on the side; the rotation is triggered. Part 2 (after the operator checks below, while
# the kubelet syncs the volume) collects the results.
grace=20
rotate_start() {
  k apply -f - >/dev/null <<YAML || return 1
apiVersion: bitbucket.credentials.dev/v1alpha1
kind: BitbucketAccessKey
metadata: {name: rotating, namespace: $ns}
spec:
  workspaceRef: {name: acme}
  repositories: [api]
  rotation: {period: 2160h, gracePeriod: ${grace}s}
YAML
  k wait -n "$ns" --for=condition=Ready bitbucketaccesskey/rotating --timeout=90s >/dev/null &&
    k get secret rotating -n "$ns" -o jsonpath='{.data.ssh-privatekey}' | base64 -d >"$work/old-key" &&
    chmod 600 "$work/old-key" && old_fp=$(k get bitbucketaccesskey rotating -n "$ns" -o jsonpath='{.status.fingerprint}') &&
    clone_pod watcher rotating 'spec["containers"][0]["command"]=["sh","-c",
      "k=/etc/git-secret/ssh-privatekey; old=$(sha256sum $k); echo watching;"
      " while [ \"$(sha256sum $k)\" = \"$old\" ]; do sleep 1; done; echo seen-at $(date +%s.%N);"
      " git clone -q $0 /workspace/api && echo cloned with the rotated key"]' || return 1
  for _ in $(seq 120); do k logs watcher -n "$ns" 2>/dev/null | grep -q watching && break; sleep 0.5; done
  k logs watcher -n "$ns" | grep -q watching || { echo "the watcher Pod did not start"; return 1; }
  old_clone || { echo "the current key does not clone"; return 1; }
  rotated_at=$(date +%s.%N)
  k annotate bitbucketaccesskey rotating -n "$ns" bitbucket.credentials.dev/rotate="$(date +%s)" --overwrite >/dev/null
  for _ in $(seq 120); do
    new_fp=$(k get bitbucketaccesskey rotating -n "$ns" -o jsonpath='{.status.fingerprint}')
    [ "$new_fp" != "$old_fp" ] && break; sleep 0.5
  done
  echo "rotated: $old_fp -> $new_fp in $(since "$rotated_at")s"
  [ "$new_fp" != "$old_fp" ]
}
old_clone() { # clones with the key the Secret held before the rotation, from the host
  rm -rf "$work/old-clone"
  GIT_SSH_COMMAND="ssh -F /dev/null -i $work/old-key -o IdentitiesOnly=yes -o UserKnownHostsFile=$work/git/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes" \
    git clone -q "ssh://git@127.0.0.1:$git_port/acme/api.git" "$work/old-clone" 2>"$work/old-clone.err"
}
check "rotation starts: a Pod watches its mounted key, the old key clones, the rotate annotation is honoured" rotate_start

rotate_new_pod() {
  local phase
  clone_pod after-rotation rotating && phase=$(wait_done after-rotation "$ns") && k logs after-rotation -n "$ns" &&
    [ "$phase" = Succeeded ]
}
check "after the rotation a new Pod clones with the new key" rotate_new_pod

rotate_old_key() {
  local t
  for t in $(seq $((grace + 60))); do
    old_clone || break
    sleep 1
  done
  cat "$work/old-clone.err"
  echo "the old key was refused $(since "$rotated_at")s after the rotation (grace period ${grace}s)"
  ! old_clone && grep -q 'not registered\|Permission denied\|forbidden' "$work/old-clone.err"
}
check "the old key stops working after the grace period" rotate_old_key

handover() {
  local leader holder t0
  leader=$(lease_holder)
  [ -n "$leader" ] || { echo "no leader"; return 1; }
  t0=$(date +%s.%N)
  k delete pod "$leader" -n "$op_ns" --wait=false >/dev/null || return 1
  wait_holder '[ -n "$holder" ] && [ "$holder" != "$leader" ]'
  echo "leader $leader deleted; $holder holds the Lease $(since "$t0")s later"
  [ -n "$holder" ] && [ "$holder" != "$leader" ] && reconciles_new_key after-handover web
}
check "leader handover: the leader Pod is deleted, its replacement takes the Lease and reconciles" handover

# Two operator Pods competing for the Lease, as replicas: 2 would run them. Two Pods of one
# Deployment cannot share the node's ports (host network), so the second Pod comes from a
# second release in the same namespace (same Lease, other ports).
standby() {
  local leader holder t0 b_pod b_health
  bash "$here/node.sh" helm-values "$cluster" >"$work/node-values-b.yaml" &&
    "$HELM" install "$rel-b" "$chart" -n "$op_ns" --wait --timeout 180s -f "$work/node-values-b.yaml" \
      --set clusterName=node-test --set "allowedBitbucketUrls={$sim,$site}" --set "watchNamespaces={$ns}" \
      --set readinessProbe.initialDelaySeconds=1 --set readinessProbe.periodSeconds=2 >/dev/null &&
    k wait pod -n "$op_ns" -l app.kubernetes.io/instance="$rel-b" --for=condition=Ready --timeout=120s >/dev/null || return 1
  b_pod=$(k get pods -n "$op_ns" -l app.kubernetes.io/instance="$rel-b" -o jsonpath='{.items[0].metadata.name}')
  b_health=$(sed -n 's/^health: {port: \(.*\)}/\1/p' "$work/node-values-b.yaml")
  leader=$(lease_holder)
  echo "leader $leader; $b_pod is Ready through the kubelet's probe, /readyz: $(curl -s "http://127.0.0.1:$b_health/readyz")"
  [ "$leader" != "$b_pod" ] && curl -s "http://127.0.0.1:$b_health/readyz" | grep -q standby || return 1
  # The leader's Deployment scaled to 0 deletes its Pod and brings no replacement that
  # could win the Lease instead of the standby.
  t0=$(date +%s.%N)
  k scale deployment -n "$op_ns" "$rel-bitbucket-credentials-operator" --replicas=0 >/dev/null || return 1
  wait_holder '[ "$holder" = "$b_pod" ]'
  echo "the standby $b_pod holds the Lease $(since "$t0")s after the leader Pod was deleted (its Deployment scaled to 0)"
  k scale deployment -n "$op_ns" "$rel-bitbucket-credentials-operator" --replicas=1 >/dev/null
  [ "$holder" = "$b_pod" ] && reconciles_new_key after-standby web &&
    "$HELM" uninstall "$rel-b" -n "$op_ns" --wait --timeout 120s >/dev/null &&
    k wait --for=delete pod -n "$op_ns" -l app.kubernetes.io/instance="$rel-b" --timeout=60s >/dev/null
}
check "two operator Pods, one Lease: the standby Pod is Ready, takes over when the leader Pod is deleted, and reconciles" standby

upgrade() {
  local old new helm_pid
  k rollout status deployment "$rel-bitbucket-credentials-operator" -n "$op_ns" --timeout=120s >/dev/null &&
    old=$(operator_pod) && [ -n "$old" ] || { echo "no running operator Pod before the upgrade"; return 1; }
  "$HELM" upgrade "$rel" "$chart" -n "$op_ns" --reuse-values --set logFormat=text --wait --timeout 180s >"$work/upgrade.log" 2>&1 &
  helm_pid=$!
  sleep 1 # an object created while the Pod rolls
  k apply -f - >/dev/null <<YAML || return 1
apiVersion: bitbucket.credentials.dev/v1alpha1
kind: BitbucketAccessKey
metadata: {name: during-upgrade, namespace: $ns}
spec: {workspaceRef: {name: acme}, repositories: [tools]}
YAML
  wait "$helm_pid" || { cat "$work/upgrade.log"; return 1; }
  # helm's --wait may look before the Deployment controller has started the roll.
  k rollout status deployment "$rel-bitbucket-credentials-operator" -n "$op_ns" --timeout=120s >/dev/null || return 1
  new=$(operator_pod)
  echo "operator Pod $old -> $new"
  [ -n "$new" ] && [ "$new" != "$old" ] &&
    k wait -n "$ns" --for=condition=Ready bitbucketaccesskey --all --timeout=90s
}
check "helm upgrade rolls the Pod; every object, one created during the roll included, is Ready afterwards" upgrade

rotate_running_pod() {
  local phase seen
  [ -n "${rotated_at:-}" ] || { echo "the rotation did not start"; return 1; }
  phase=$(wait_done watcher "$ns" 180) && k logs watcher -n "$ns" || return 1
  seen=$(k logs watcher -n "$ns" | sed -n 's/^seen-at //p')
  echo "a running Pod saw the rotated key $(python3 -c "print(round($seen - $rotated_at, 1))")s after the rotation"
  [ "$phase" = Succeeded ]
}
check "a running Pod sees the rotated key in its volume after the kubelet's sync, and clones with it" rotate_running_pod

uninstall() {
  "$HELM" uninstall "$rel" -n "$op_ns" --wait --timeout 120s &&
    k wait --for=delete pod -n "$op_ns" -l app.kubernetes.io/instance="$rel" --timeout=60s || return 1
  local left
  left=$(k get deployment,replicaset,pod,serviceaccount,service,role,rolebinding -n "$op_ns" -l app.kubernetes.io/instance="$rel" -o name)
  left+=$(k get clusterrole,clusterrolebinding -l app.kubernetes.io/instance="$rel" -o name)
  echo "left: ${left:-nothing}"
  [ -z "$left" ] && k get secret build-clone -n "$ns" >/dev/null
}
check "helm uninstall removes the operator and its RBAC; the Secrets CI Pods use stay" uninstall

total=$((SECONDS - started_all))
node_stop() {
  bash "$here/node.sh" stop "$cluster" && bash "$here/node.sh" check-clean "$cluster"
}
check "node teardown leaves no process, mount, cgroup or file outside the project's folders" node_stop
echo "# node tests: ${total}s before teardown, $((SECONDS - started_all))s in all"
summary
