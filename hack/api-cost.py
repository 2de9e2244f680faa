#!/usr/bin/env python3
"""The API server's CPU time per request, by kind of request: what each request an access
key costs the control plane (docs/performance.md, "What each request costs").

    bash hack/with-cluster.sh python3 hack/api-cost.py [N]

Needs a fresh control plane to itself (KUBECONFIG, HELM as hack/with-cluster.sh sets
them): applies crds/ and the chart's finalizer policy (bound to one namespace), then makes
N requests of each kind, 16 at a time, as the admin, and prints the kube-apiserver's CPU
time (utime + stime from /proc) per request. The machine's other load counts too: compare
rows of one run, not runs.
"""
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
import urllib3
import yaml

urllib3.disable_warnings()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
GV = "bitbucket.credentials.dev/v1alpha1"
G = f"/apis/{GV}"

kubeconfig = yaml.safe_load(open(os.environ["KUBECONFIG"]))
server = kubeconfig["clusters"][0]["cluster"]["server"]
session = requests.Session()
session.trust_env = False
session.verify = False
session.headers["Authorization"] = "Bearer " + kubeconfig["users"][0]["user"]["token"]
session.mount("https://", requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=16))
apiserver = int(subprocess.check_output(["pgrep", "-n", "kube-apiserver"]).split()[0])


def cpu_seconds():
    fields = open(f"/proc/{apiserver}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ok(r):
    assert r.status_code < 300 or r.status_code == 404, r.text
    return r


def apply(path, body, manager="api-cost"):
    return ok(session.patch(server + path, params={"fieldManager": manager, "force": "true"}, data=json.dumps(body),
                            headers={"Content-Type": "application/apply-patch+yaml"}))


def key(ns, name):
    return {"apiVersion": GV, "kind": "BitbucketAccessKey", "metadata": {"name": name, "namespace": ns},
            "spec": {"workspaceRef": {"name": "acme"}, "repositories": ["api"]}}


def status(ns, name):
    return {"apiVersion": GV, "kind": "BitbucketAccessKey", "metadata": {"name": name, "namespace": ns}, "status": {
        "fingerprint": "SHA256:" + "x" * 43, "publicKey": "ssh-ed25519 " + "A" * 68, "secretName": name, "observedGeneration": 1,
        "registrations": [{"repository": "api", "id": 1}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Registered", "message": "registered on acme/api",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}}


def secret(ns, name):
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "type": "kubernetes.io/ssh-auth",
            "stringData": {"ssh-privatekey": "x" * 400, "known_hosts": "x" * 100}}


def event(ns, i):
    return {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": f"e{i}", "namespace": ns},
            "eventTime": "2026-12-07T00:00:00.000000Z", "reportingController": "api-cost", "reportingInstance": "api-cost",
            "action": "Registered", "reason": "Registered", "type": "Normal", "note": "registered on acme/api",
            "regarding": {"apiVersion": GV, "kind": "BitbucketAccessKey", "name": f"k{i}", "namespace": ns}}


def measure(label, request):
    before, started = cpu_seconds(), time.time()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(request, range(N)))
    spent = cpu_seconds() - before
    print(f"{label:62s} {1000 * spent / N:6.2f} ms  ({time.time() - started:.1f}s)", flush=True)


def watch(path, accept=None):
    def run():
        headers = {"Accept": accept} if accept else {}
        with session.get(server + path, params={"watch": "1"}, headers=headers, stream=True, timeout=3600) as r:
            for _ in r.iter_lines():
                pass
    threading.Thread(target=run, daemon=True).start()
    time.sleep(1)


def trio(ns):
    def run(i):
        apply(f"{G}/namespaces/{ns}/bitbucketaccesskeys/k{i}", key(ns, f"k{i}"))
        apply(f"/api/v1/namespaces/{ns}/secrets/k{i}", secret(ns, f"k{i}"))
        apply(f"{G}/namespaces/{ns}/bitbucketaccesskeys/k{i}/status", status(ns, f"k{i}"))
    return run


def main():
    subprocess.run(["kubectl", "apply", "--server-side", "-f", f"{ROOT}/crds/"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["kubectl", "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"], check=True, stdout=subprocess.DEVNULL)
    namespaces = ["plain", "policy", "w0", "w1", "w2", "w3"]
    for ns in namespaces:
        ok(session.post(server + "/api/v1/namespaces", json={"metadata": {"name": ns}}))
    policy = subprocess.run([os.environ.get("HELM", "helm"), "template", "api-cost", f"{ROOT}/charts/bitbucket-credentials-operator",
                             "--kube-version", "1.35.0", "--show-only", "templates/finalizer-policy.yaml",
                             "--api-versions", "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy",
                             "--set-json", 'watchNamespaces=["policy"]'], check=True, capture_output=True, text=True).stdout
    subprocess.run(["kubectl", "apply", "-f", "-"], input=policy, text=True, check=True, stdout=subprocess.DEVNULL)
    # The policy needs the kind's schema (read every 5 s) and its own informer to catch up.
    for _ in range(120):
        r = session.post(server + f"{G}/namespaces/policy/bitbucketaccesskeys", params={"dryRun": "All"}, json=key("policy", "probe"))
        if r.status_code < 300 and r.json()["metadata"].get("finalizers"):
            break
        time.sleep(0.5)
    else:
        sys.exit("the finalizer policy never applied")
    print(f"kube-apiserver CPU per request ({N} requests of each kind, 16 at a time)")
    measure("access key create (apply), no finalizer policy", lambda i: apply(f"{G}/namespaces/plain/bitbucketaccesskeys/k{i}", key("plain", f"k{i}")))
    measure("access key create (apply), finalizer policy bound", lambda i: apply(f"{G}/namespaces/policy/bitbucketaccesskeys/k{i}", key("policy", f"k{i}")))
    cleanup = json.dumps([{"op": "add", "path": "/metadata/finalizers", "value": ["bitbucket.credentials.dev/cleanup"]}])
    measure("finalizer JSON patch", lambda i: ok(session.patch(server + f"{G}/namespaces/plain/bitbucketaccesskeys/k{i}", data=cleanup,
                                                               headers={"Content-Type": "application/json-patch+json"})))
    measure("Secret GET answered 404", lambda i: ok(session.get(server + f"/api/v1/namespaces/plain/secrets/missing{i}")))
    measure("Secret apply (create)", lambda i: apply(f"/api/v1/namespaces/plain/secrets/k{i}", secret("plain", f"k{i}")))
    measure("status apply", lambda i: apply(f"{G}/namespaces/plain/bitbucketaccesskeys/k{i}/status", status("plain", f"k{i}")))
    measure("Event POST (events.k8s.io)", lambda i: ok(session.post(server + "/apis/events.k8s.io/v1/namespaces/plain/events", json=event("plain", i))))
    print("the baseline's three requests per object (create, Secret, status), by watches open on the namespace")
    measure("no watch", trio("w0"))
    watch(f"{G}/namespaces/w1/bitbucketaccesskeys")
    measure("one watch of access keys", trio("w1"))
    watch(f"{G}/namespaces/w2/bitbucketaccesskeys")
    watch(f"{G}/namespaces/w2/bitbucketaccesskeys")
    measure("two watches of access keys", trio("w2"))
    watch(f"{G}/namespaces/w3/bitbucketaccesskeys")
    watch("/api/v1/namespaces/w3/secrets", "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
    measure("one watch of access keys, one metadata watch of Secrets", trio("w3"))


main()
