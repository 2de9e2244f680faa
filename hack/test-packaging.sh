#!/usr/bin/env bash
# Packaging checks: the Helm chart, the plain manifests in deploy/, the Dockerfile, and the
# chart's RBAC proven against a real kube-apiserver.
#
#   KUBECONFIG=.local/kubeconfig HELM=/path/to/helm hack/test-packaging.sh
#   hack/test-packaging.sh --update-deploy     regenerate deploy/ from the chart, then exit
#
# Each check prints `ok - NAME` or `not ok - NAME` (followed by its output); the last line
# is `N passed, M failed`; the exit status is non-zero when anything failed.
# HELM defaults to `helm` on PATH, else the one hack/build-control-plane.sh builds.
# VERBOSE=1 shows the output of passing checks too (e.g. every `kubectl auth can-i` asked).
# BCO_NO_PYYAML=1 exercises the fallback YAML parser (kubectl) even when PyYAML is installed.
# The last check runs the real operator binary (BCO_OPERATOR_BIN, default target/debug/ or
# target/release/) under the chart's ServiceAccount token and RBAC, against a private control
# plane (hack/cluster.sh) so that it cannot touch anyone else's objects; BCO_SMOKE=0 skips it.
# Every run uses its own release and namespaces and removes them at the end.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
chart=$root/charts/bitbucket-credentials-operator
deploy=$root/deploy
chart_name=bitbucket-credentials-operator
# The namespace and release name of the plain manifests in deploy/.
deploy_namespace=bitbucket-credentials-operator
# `helm template` has no cluster to ask; Helm built without its Makefile's ldflags assumes
# v1.20, which the chart's kubeVersion (>=1.30) refuses.
template_kube_version=${TEMPLATE_KUBE_VERSION:-1.35.0}
# The Lease name is fixed in the operator binary.
lease_name=bitbucket-credentials-operator

if [ -z "${HELM:-}" ]; then
  if command -v helm >/dev/null 2>&1; then
    HELM=$(command -v helm)
  else
    HELM="$("$here/build-control-plane.sh" helm | tail -1)/helm"
  fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/bco-packaging.XXXXXX")

# --- helpers -------------------------------------------------------------------------

cat >"$work/pk.py" <<'PY'
"""Small helpers for test-packaging.sh: YAML/JSON handling and render checks."""
import fnmatch, json, os, sys

def load(path):
    with open(path) as f:
        return [d for d in json.load(f) if d]

def cmd_tojson(src, dst):
    # YAML stream -> JSON list (PyYAML path).
    import yaml
    with open(src) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    with open(dst, "w") as f:
        json.dump(docs, f)

def cmd_stream_tojson(src, dst):
    # Concatenated JSON objects (kubectl -o json of several objects) -> JSON list.
    text = open(src).read()
    dec, i, docs = json.JSONDecoder(), 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        obj, i = dec.raw_decode(text, i)
        docs.extend(obj.get("items", []) if obj.get("kind") == "List" else [obj])
    with open(dst, "w") as f:
        json.dump(docs, f)

def find(docs, kind, name=None, namespace=None):
    return [d for d in docs if d.get("kind") == kind
            and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)]

def grants(rules, group, resource, verb):
    return any(group in r.get("apiGroups", []) and resource in r.get("resources", [])
               and verb in r.get("verbs", []) for r in rules)

def check_workloads(docs, errors):
    """Every container: restricted securityContext, resources, probes."""
    pods = [(d["kind"] + "/" + d["metadata"]["name"], d["spec"]["template"]["spec"])
            for d in docs if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job")]
    if not pods:
        errors.append("no workload rendered")
    for where, pod in pods:
        psc = pod.get("securityContext") or {}
        containers = pod.get("containers", []) + pod.get("initContainers", [])
        if not containers:
            errors.append(f"{where}: no containers")
        for c in containers:
            w = f"{where} container {c['name']}"
            sc = c.get("securityContext") or {}
            eff = lambda k: sc.get(k, psc.get(k))
            if eff("runAsNonRoot") is not True: errors.append(f"{w}: runAsNonRoot is not true")
            if eff("runAsUser") != 65532: errors.append(f"{w}: runAsUser is {eff('runAsUser')!r}, want 65532")
            if sc.get("readOnlyRootFilesystem") is not True: errors.append(f"{w}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False: errors.append(f"{w}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"): errors.append(f"{w}: privileged")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []): errors.append(f"{w}: capabilities.drop lacks ALL")
            if (sc.get("capabilities") or {}).get("add"): errors.append(f"{w}: adds capabilities")
            if ((eff("seccompProfile") or {}).get("type")) != "RuntimeDefault": errors.append(f"{w}: seccompProfile is not RuntimeDefault")
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if not (res.get(kind) or {}).get(r): errors.append(f"{w}: resources.{kind}.{r} missing")
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                hg = (c.get(probe) or {}).get("httpGet") or {}
                if hg.get("path") != path: errors.append(f"{w}: {probe} path is {hg.get('path')!r}, want {path}")
                if hg.get("port") not in ("health", ports.get("health")): errors.append(f"{w}: {probe} is not on the health port")
            env = {e["name"]: e for e in c.get("env", [])}
            for name, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
                got = (((env.get(name) or {}).get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
                if got != field: errors.append(f"{w}: env {name} is not the downward API {field}")
            args = c.get("args", [])
            for a in ("--metrics-addr=0.0.0.0:%s" % ports.get("metrics"), "--health-addr=0.0.0.0:%s" % ports.get("health")):
                if a not in args: errors.append(f"{w}: missing arg {a}")
        if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
            errors.append(f"{where}: uses host namespaces")
        if any("hostPath" in v for v in pod.get("volumes", [])):
            errors.append(f"{where}: mounts a hostPath")

def cmd_check_render(path, mode, release_ns, cr_ns, *watch):
    docs = load(path)
    errors = []
    check_workloads(docs, errors)
    kinds = {d["kind"] for d in docs}
    for k in ("Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service"):
        if k not in kinds: errors.append(f"no {k} rendered")
    if "CustomResourceDefinition" in kinds: errors.append("templates render CRDs (they belong in crds/)")
    dep = find(docs, "Deployment")[0]
    args = dep["spec"]["template"]["spec"]["containers"][0].get("args", [])
    if f"--cluster-resource-namespace={cr_ns}" not in args: errors.append(f"args lack --cluster-resource-namespace={cr_ns}: {args}")
    if "--leader-elect" not in args: errors.append("args lack --leader-elect (default on)")
    sa = find(docs, "ServiceAccount")[0]["metadata"]["name"]
    if dep["spec"]["template"]["spec"].get("serviceAccountName") != sa: errors.append("Deployment does not use the chart's ServiceAccount")
    for d in docs:
        ns = d["metadata"].get("namespace")
        if d["kind"] in ("Deployment", "ServiceAccount", "Service") and ns != release_ns:
            errors.append(f"{d['kind']}/{d['metadata']['name']} is in namespace {ns!r}, want {release_ns}")
        for s in d.get("subjects", []) or []:
            if s.get("kind") == "ServiceAccount" and (s.get("name"), s.get("namespace")) != (sa, release_ns):
                errors.append(f"{d['kind']}/{d['metadata']['name']} binds {s}")
    # The operator's own ClusterRoles; the tenant roles aggregated into edit/view are
    # checked for what they grant on their own.
    def aggregated(c):
        return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in (c["metadata"].get("labels") or {}))
    tenant = [c for c in find(docs, "ClusterRole") if aggregated(c)]
    cr = [c for c in find(docs, "ClusterRole") if not aggregated(c)]
    cluster_rules = [r for c in cr for r in c["rules"]]
    if len(tenant) != 2: errors.append(f"want the two tenant ClusterRoles (edit, view), got {len(tenant)}")
    for c in tenant:
        for r in c["rules"]:
            if r.get("apiGroups") != ["bitbucket.credentials.dev"] or any("/" in x or x.startswith("cluster") for x in r.get("resources", [])):
                errors.append(f"tenant ClusterRole {c['metadata']['name']} grants more than the namespaced custom resources: {r}")
    G = "bitbucket.credentials.dev"
    for res in ("clusterbitbucketworkspaces", "clusterbitbucketworkspaces/status"):
        if not grants(cluster_rules, G, res, "patch"): errors.append(f"ClusterRole cannot patch {res}")
    if not grants(cluster_rules, "", "namespaces", "get"): errors.append("ClusterRole cannot get namespaces")
    for r in cluster_rules + [r for d in find(docs, "Role") for r in d["rules"]]:
        if "update" in r.get("verbs", []) and "leases" not in r.get("resources", []):
            errors.append(f"update granted (every write is a PATCH): {r}")
    if grants(cluster_rules, "apiextensions.k8s.io", "customresourcedefinitions", "get"): errors.append("ClusterRole grants CRD access")
    for r in cluster_rules:
        if "*" in r.get("verbs", []) or "*" in r.get("resources", []) or "*" in r.get("apiGroups", []):
            errors.append(f"wildcard rule: {r}")
    le_rules = [r for d in find(docs, "Role", namespace=release_ns) for r in d["rules"]]
    for v in ("create", "get", "patch"):  # kube-lease-manager creates, reads and PATCHes the Lease
        if not grants(le_rules, "coordination.k8s.io", "leases", v):
            errors.append(f"no Role to {v} the leader-election Lease in the release namespace")
    if mode == "cluster":
        if "--watch-namespaces" in " ".join(args): errors.append("cluster-wide mode passes --watch-namespaces")
        for v in ("get", "list", "watch", "create", "patch", "delete"):
            if not grants(cluster_rules, "", "secrets", v): errors.append(f"ClusterRole cannot {v} secrets")
        for res in ("bitbucketaccesskeys", "bitbucketoauthconsumers", "bitbucketworkspaces"):
            if not grants(cluster_rules, G, res, "watch"): errors.append(f"ClusterRole cannot watch {res}")
    else:
        want = "--watch-namespaces=" + ",".join(watch)
        if want not in args: errors.append(f"args lack {want}: {args}")
        if grants(cluster_rules, "", "secrets", "get"): errors.append("namespaced mode: ClusterRole grants secrets")
        if grants(cluster_rules, "", "events", "create"): errors.append("namespaced mode: ClusterRole grants events")
        if grants(cluster_rules, G, "bitbucketaccesskeys", "get"): errors.append("namespaced mode: ClusterRole grants namespaced CRs")
        for ns in watch:
            roles = find(docs, "Role", namespace=ns)
            rules = [r for x in roles for r in x["rules"]]
            if not find(docs, "RoleBinding", namespace=ns): errors.append(f"no RoleBinding in {ns}")
            for v in ("get", "list", "watch", "create", "patch", "delete"):
                if not grants(rules, "", "secrets", v): errors.append(f"Role in {ns} cannot {v} secrets")
            if not grants(rules, "events.k8s.io", "events", "create"): errors.append(f"Role in {ns} cannot create events")
            for res in ("bitbucketaccesskeys", "bitbucketworkspaces"):
                if not grants(rules, G, res, "patch"): errors.append(f"Role in {ns} cannot patch {res}")
            if not grants(rules, G, "bitbucketoauthconsumers", "watch"): errors.append(f"Role in {ns} cannot watch bitbucketoauthconsumers")
        if cr_ns not in watch:
            rules = [r for x in find(docs, "Role", namespace=cr_ns) for r in x["rules"]]
            if not grants(rules, "", "secrets", "get"): errors.append(f"no read access to secrets in cluster-resource namespace {cr_ns}")
            if grants(rules, "", "secrets", "create") or grants(rules, "", "secrets", "delete"):
                errors.append(f"cluster-resource namespace {cr_ns}: secrets are writable")
    for e in errors:
        print("  " + e)
    sys.exit(1 if errors else 0)

def cmd_check_strategy(path, surge, unavailable, host_network):
    dep = find(load(path), "Deployment")[0]
    strategy, pod = dep["spec"].get("strategy", {}), dep["spec"]["template"]["spec"]
    want = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": int(surge), "maxUnavailable": int(unavailable)}}
    errors = [] if strategy == want else [f"strategy {strategy}, want {want}"]
    if pod.get("hostNetwork", False) != (host_network == "true"):
        errors.append(f"hostNetwork {pod.get('hostNetwork')}, want {host_network}")
    for e in errors:
        print("  " + e)
    sys.exit(1 if errors else 0)

def cmd_check_network(path, configmap, key, chart_configmap, proxy):
    docs, errors = load(path), []
    dep = find(docs, "Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    want = f"/etc/bitbucket-credentials-operator/ca/{key}"
    if env.get("BCO_CA_BUNDLE") != want: errors.append(f"BCO_CA_BUNDLE {env.get('BCO_CA_BUNDLE')}, want {want}")
    mounts = [m for m in c.get("volumeMounts", []) if m["name"] == "ca-bundle"]
    if not mounts or mounts[0]["mountPath"] != "/etc/bitbucket-credentials-operator/ca" or not mounts[0].get("readOnly"):
        errors.append(f"ca-bundle mount {mounts}")
    vols = [v for v in pod["volumes"] if v["name"] == "ca-bundle"]
    cm = vols[0]["configMap"] if vols else {}
    if cm.get("name") != configmap or cm.get("items") != [{"key": key, "path": key}]:
        errors.append(f"ca-bundle volume {cm}, want ConfigMap {configmap} key {key}")
    maps = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-ca-bundle")]
    if chart_configmap == "true":
        if not maps or "-----BEGIN CERTIFICATE-----" not in maps[0]["data"].get("ca.crt", ""):
            errors.append("no ConfigMap with the PEM under ca.crt")
        if "checksum/ca-bundle" not in dep["spec"]["template"]["metadata"].get("annotations", {}):
            errors.append("no checksum annotation: a new bundle would not roll the Pod")
    elif maps:
        errors.append("a chart ConfigMap although an existing one is named")
    if proxy and (env.get("HTTPS_PROXY") != proxy or env.get("NO_PROXY") != ".svc,.cluster.local"):
        errors.append(f"proxy env {env.get('HTTPS_PROXY')} / {env.get('NO_PROXY')}")
    for e in errors:
        print("  " + e)
    sys.exit(1 if errors else 0)

def cmd_check_optional(path, want_replicas):
    docs, errors = load(path), []
    check_workloads(docs, errors)
    if not find(docs, "ServiceMonitor"): errors.append("no ServiceMonitor")
    if not find(docs, "PodDisruptionBudget"): errors.append("no PodDisruptionBudget")
    dep = find(docs, "Deployment")[0]
    if dep["spec"]["replicas"] != int(want_replicas): errors.append(f"replicas {dep['spec']['replicas']}")
    svc = find(docs, "Service")[0]
    sm = find(docs, "ServiceMonitor")[0] if find(docs, "ServiceMonitor") else {"spec": {}}
    if sm["spec"].get("selector", {}).get("matchLabels") != svc["spec"]["selector"]:
        errors.append("ServiceMonitor selector does not match the Service's labels")
    for e in errors:
        print("  " + e)
    sys.exit(1 if errors else 0)

def cmd_check_crds(d):
    import re
    want = {"bitbucketworkspaces": ("BitbucketWorkspace", "Namespaced"),
            "clusterbitbucketworkspaces": ("ClusterBitbucketWorkspace", "Cluster"),
            "bitbucketaccesskeys": ("BitbucketAccessKey", "Namespaced"),
            "bitbucketoauthconsumers": ("BitbucketOAuthConsumer", "Namespaced")}
    errors = []
    files = sorted(f for f in os.listdir(d) if not f.startswith("."))
    if files != sorted(p + ".yaml" for p in want):
        errors.append(f"files are {files}, want one per kind: {sorted(p + '.yaml' for p in want)}")
    for plural, (kind, scope) in want.items():
        p = os.path.join(d, plural + ".yaml")
        if not os.path.exists(p):
            continue
        text = open(p).read()
        if not text.startswith("---\n"): errors.append(f"{p}: does not start with ---")
        if text.count("\n---\n") or text.count("\nkind: CustomResourceDefinition") != 1:
            errors.append(f"{p}: not exactly one CustomResourceDefinition")
        for needle in (f"name: {plural}.bitbucket.credentials.dev", "group: bitbucket.credentials.dev",
                       f"kind: {kind}\n", f"scope: {scope}\n", "name: v1alpha1"):
            if needle not in text: errors.append(f"{p}: lacks {needle.strip()!r}")
    for e in errors:
        print("  " + e)
    sys.exit(1 if errors else 0)

def cmd_alert_rules(path, out_dir, metrics_rs):
    """The PrometheusRule's groups as a rules file for promtool, and the metric names its
    alerts and the dashboard use, checked against those the operator registers."""
    import re
    docs = load(path)
    errors = []
    rules = find(docs, "PrometheusRule")
    if len(rules) != 1: errors.append(f"want one PrometheusRule, got {len(rules)}")
    os.makedirs(out_dir, exist_ok=True)
    groups = rules[0]["spec"]["groups"] if rules else []
    with open(os.path.join(out_dir, "rules.yaml"), "w") as f:
        json.dump({"groups": groups}, f)
    src = open(metrics_rs).read()
    registered = set(re.findall(r'r\.register\(\s*"([a-z_]+)"', src))
    counters = {"bitbucket_requests", "reconciles", "reconcile_errors", "reconcile_panics", "bitbucket_rate_limited"}
    known = {"bitbucket_credentials_operator_" + n for n in registered}
    known |= {"bitbucket_credentials_operator_" + n + "_total" for n in counters & registered}
    exprs = [r["expr"] for g in groups for r in g["rules"]]
    dashboards = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    if len(dashboards) != 1: errors.append(f"want one dashboard ConfigMap, got {len(dashboards)}")
    for d in dashboards:
        for key, text in d["data"].items():
            board = json.loads(text)
            for p in board["panels"]:
                exprs += [t["expr"] for t in p.get("targets", [])]
    for e in exprs:
        for name in re.findall(r"bitbucket_credentials_operator_[a-z_]+", e):
            if name not in known: errors.append(f"{name} (in {e!r}) is not a metric the operator serves")
    for e in errors: print("      " + e)
    sys.exit(1 if errors else 0)

def cmd_print_rules(path, title):
    docs = load(path)
    print(f"# RBAC granted ({title}):")
    for d in docs:
        if d["kind"] not in ("ClusterRole", "Role"):
            continue
        scope = "cluster-wide" if d["kind"] == "ClusterRole" else "namespace " + d["metadata"]["namespace"]
        print(f"#   {d['kind']} {d['metadata']['name']} ({scope}):")
        for r in d["rules"]:
            groups = ",".join(g or '""' for g in r.get("apiGroups", []))
            names = (" resourceNames=" + ",".join(r["resourceNames"])) if r.get("resourceNames") else ""
            print(f"#     [{groups}] {','.join(r['resources'])}{names}: {','.join(r['verbs'])}")
    for d in docs:
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            where = "" if d["kind"] == "ClusterRoleBinding" else " in " + d["metadata"]["namespace"]
            subj = ", ".join(f"{s['kind']} {s.get('namespace', '')}/{s['name']}" for s in d["subjects"])
            print(f"#   {d['kind']} {d['metadata']['name']}{where}: {d['roleRef']['kind']} {d['roleRef']['name']} -> {subj}")

def ignored(rel, patterns):
    """A .dockerignore match, for the simple patterns this repository uses."""
    hit = False
    for neg, pat in patterns:
        pat = pat.strip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        m = any(fnmatch.fnmatch(p, pat) or (pat.startswith("**/") and fnmatch.fnmatch(p.split("/")[-1], pat[3:]))
                for p in prefixes)
        if m:
            hit = not neg
    return hit

def cmd_docker_context(root):
    import tomllib
    errors = []
    pats = []
    for line in open(os.path.join(root, ".dockerignore")):
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append((line.startswith("!"), line.lstrip("!")))
    cargo = tomllib.load(open(os.path.join(root, "Cargo.toml"), "rb"))
    needed = ["Cargo.toml", "Cargo.lock"]
    lib = cargo.get("lib", {})
    needed.append(lib.get("path", "src/lib.rs"))
    for section in ("bin", "test", "bench", "example"):
        for t in cargo.get(section, []):
            if "path" in t:
                needed.append(t["path"])
    build = cargo.get("package", {}).get("build")
    if isinstance(build, str):
        needed.append(build)
    elif os.path.exists(os.path.join(root, "build.rs")) and build is not False:
        needed.append("build.rs")
    for p in needed:
        if not os.path.exists(os.path.join(root, p)):
            errors.append(f"{p} (named by Cargo.toml) does not exist")
        elif ignored(p, pats):
            errors.append(f"{p} is needed by cargo but excluded by .dockerignore")
    for p in ("target", ".git", ".local", "charts", "deploy"):
        if not ignored(p, pats):
            errors.append(f"{p}/ is not excluded by .dockerignore")
    bins = [b["name"] for b in cargo.get("bin", [])]
    if "bitbucket-credentials-operator" not in bins:
        errors.append(f"Cargo.toml has no bin bitbucket-credentials-operator ({bins})")
    df = open(os.path.join(root, "Dockerfile")).read()
    for needle in ("FROM rust:1.95-bookworm AS builder",
                   "cargo build --release --locked --bin bitbucket-credentials-operator",
                   "FROM gcr.io/distroless/cc-debian12:nonroot",
                   "USER 65532",
                   'ENTRYPOINT ["/bitbucket-credentials-operator", "run"]'):
        if needle not in df:
            errors.append(f"Dockerfile lacks {needle!r}")
    for e in errors:
        print("  " + e)
    sys.exit(1 if errors else 0)

def cmd_operator_image(root, image_json, rootfs, binary, ldd_out):
    # The offline image (hack/build-images.sh operator) against the Dockerfile's runtime stage.
    import filecmp, shlex, tomllib
    errors = []
    img = json.load(open(image_json))
    cfg = img["config"]
    lines, cur = [], ""
    for raw in open(os.path.join(root, "Dockerfile")):
        raw = raw.rstrip("\n")
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.endswith("\\"):
            cur += raw[:-1] + " "
            continue
        if (cur + raw).strip():
            lines.append((cur + raw).strip())
        cur = ""
    last_from = max(i for i, l in enumerate(lines) if l.split()[0].upper() == "FROM")
    user, entrypoint, ports, labels = None, None, set(), {}
    for l in lines[last_from + 1:]:
        word, _, rest = l.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "USER":
            user = rest
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "EXPOSE":
            ports |= {p if "/" in p else p + "/tcp" for p in rest.split()}
        elif word == "LABEL":
            labels.update(t.split("=", 1) for t in shlex.split(rest))
    version = tomllib.load(open(os.path.join(root, "Cargo.toml"), "rb"))["package"]["version"]
    want_name = f"localhost/bitbucket-credentials-operator:{version}"
    if img["name"] != want_name:
        errors.append(f"image name {img['name']!r}, expected {want_name!r}")
    if (img.get("architecture"), img.get("os")) != ("amd64", "linux"):
        errors.append(f"platform {img.get('os')}/{img.get('architecture')}, expected linux/amd64")
    if cfg.get("User") != user:
        errors.append(f"User {cfg.get('User')!r}, Dockerfile USER {user!r}")
    if cfg.get("Entrypoint") != entrypoint:
        errors.append(f"Entrypoint {cfg.get('Entrypoint')!r}, Dockerfile ENTRYPOINT {entrypoint!r}")
    if set(cfg.get("ExposedPorts") or {}) != ports:
        errors.append(f"ExposedPorts {sorted(cfg.get('ExposedPorts') or {})}, Dockerfile EXPOSE {sorted(ports)}")
    if (cfg.get("Labels") or {}) != labels:
        errors.append(f"Labels {cfg.get('Labels')!r}, Dockerfile LABEL {labels!r}")
    files = {f["path"]: f for f in img["files"]}
    uid, _, gid = (user or "").partition(":")
    # The user: a passwd entry (ssh and others look the uid up), a group, a home of its own.
    home = None
    for line in open(os.path.join(rootfs, "etc/passwd")):
        f = line.rstrip("\n").split(":")
        if len(f) == 7 and f[2] == uid:
            home = f[5]
            if gid and f[3] != gid:
                errors.append(f"/etc/passwd: uid {uid} has gid {f[3]}, USER says {gid}")
    if home is None:
        errors.append(f"/etc/passwd has no entry for uid {uid}")
    groups = [l.split(":") for l in open(os.path.join(rootfs, "etc/group"))]
    if gid and not any(len(g) >= 3 and g[2] == gid for g in groups):
        errors.append(f"/etc/group has no entry for gid {gid}")
    if home and (files.get(home, {}).get("type") != "dir" or str(files[home]["uid"]) != uid):
        errors.append(f"home {home} is not a directory owned by {uid}: {files.get(home)}")
    if files.get("/tmp", {}).get("type") != "dir" or files["/tmp"]["mode"] != "1777":
        errors.append(f"/tmp is not a 1777 directory: {files.get('/tmp')}")
    # The binary at the entrypoint path, identical to the one given.
    exe = (entrypoint or [""])[0]
    f = files.get(exe)
    if not f or f["type"] != "file" or f["mode"] != "0755":
        errors.append(f"entrypoint {exe}: not a 0755 file: {f}")
    elif not filecmp.cmp(os.path.join(rootfs, exe.lstrip("/")), binary, shallow=False):
        errors.append(f"entrypoint {exe} differs from {binary}")
    ca = "/etc/ssl/certs/ca-certificates.crt"
    if files.get(ca, {}).get("type") != "file" or files[ca]["size"] == 0:
        errors.append(f"{ca} missing or empty")
    for sh in ("/bin/sh", "/usr/bin/sh", "/bin/bash", "/bin/busybox"):
        if sh in files:
            errors.append(f"{sh} present: the runtime image has no shell")
    # Nothing but the binary, its libraries and loader (ldd), CA, accounts, home, /tmp.
    libs = set()
    for line in open(ldd_out):
        t = line.split()
        if len(t) >= 3 and t[1] == "=>" and t[2].startswith("/"):
            libs.add(t[2])
        elif t and t[0].startswith("/"):
            libs.add(t[0])
    for lib in sorted(libs):
        if files.get(lib, {}).get("type") != "file":
            errors.append(f"library {lib} (ldd) missing: {files.get(lib)}")
    allowed = {exe, ca, "/etc/passwd", "/etc/group", "/tmp"} | libs | ({home} if home else set())
    parents = {"/".join(p.split("/")[:i]) for p in allowed for i in range(2, p.count("/") + 1)}
    for path, f in sorted(files.items()):
        if path in allowed or (path in parents and f["type"] == "dir"):
            continue
        errors.append(f"unexpected {f['type']} {path}")
    print(f"  {img['name']}: User {cfg.get('User')}, Entrypoint {cfg.get('Entrypoint')}, "
          f"ports {sorted(cfg.get('ExposedPorts') or {})}, {len(files)} entries, {len(libs)} libraries")
    for e in errors:
        print("  " + e)
    sys.exit(1 if errors else 0)

if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
PY

py() { python3 "$work/pk.py" "$@"; }

if python3 -c 'import yaml' 2>/dev/null && [ -z "${BCO_NO_PYYAML:-}" ]; then
  yaml_parser="python3 + PyYAML"
  to_json() { py tojson "$1" "$2"; }
else
  # No PyYAML: kubectl turns the YAML stream into JSON without contacting a server.
  yaml_parser="kubectl --local -o json"
  to_json() {
    kubectl annotate --local -f "$1" -o json bitbucket.credentials.dev/packaging-test- >"$2.stream" &&
      py stream-tojson "$2.stream" "$2"
  }
fi

. "$here/checks.sh"
# skip NAME REASON: reported as passing, with the reason (TAP's SKIP directive).
skip() {
  echo "ok - $1 # SKIP $2"
  passed=$((passed + 1))
}

template() { # OUT RELEASE NAMESPACE [helm args...]
  local out=$1 rel=$2 ns=$3; shift 3
  "$HELM" template "$rel" "$chart" --namespace "$ns" --kube-version "$template_kube_version" "$@" >"$out"
}

generate_deploy() { # DIR: the plain manifests, from the chart's defaults
  local dir=$1
  rm -rf "$dir" && mkdir -p "$dir/crds" || return 1
  cp "$chart"/crds/*.yaml "$dir/crds/" || return 1
  cat >"$dir/namespace.yaml" <<EOF
# Generated by hack/test-packaging.sh --update-deploy. Do not edit.
apiVersion: v1
kind: Namespace
metadata:
  name: $deploy_namespace
  labels:
    app.kubernetes.io/name: $chart_name
    app.kubernetes.io/part-of: $chart_name
    # The operator's pod meets the restricted Pod Security Standard.
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
EOF
  {
    echo "# Generated by hack/test-packaging.sh --update-deploy from charts/$chart_name with"
    echo "# default values (helm template $chart_name --namespace $deploy_namespace). Do not edit:"
    echo "# change the chart, or patch these objects in a kustomize overlay."
    "$HELM" template "$chart_name" "$chart" --namespace "$deploy_namespace" \
      --kube-version "$template_kube_version"
  } >"$dir/$chart_name.yaml" || return 1
  {
    echo "# Generated by hack/test-packaging.sh --update-deploy. Do not edit."
    echo "# The operator with the Helm chart's default values, as a kustomize base:"
    echo "#   kubectl apply --server-side -k deploy/"
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources:"
    echo "  - namespace.yaml"
    for f in "$dir"/crds/*.yaml; do echo "  - crds/$(basename "$f")"; done
    echo "  - $chart_name.yaml"
  } >"$dir/kustomization.yaml"
}

if [ "${1:-}" = "--update-deploy" ]; then
  generate_deploy "$deploy" && echo "regenerated $deploy"
  rc=$?; rm -rf "$work"; exit $rc
fi

# --- cluster bookkeeping -------------------------------------------------------------

id=$(python3 -c 'import secrets; print(secrets.token_hex(3))')
rel=bco-pkg-$id                 # release name
ns=bco-pkg-$id                  # release namespace
team_a=bco-pkg-$id-team-a       # watched namespaces in namespaced mode
team_b=bco-pkg-$id-team-b
fullname=$rel-$chart_name
sa=$fullname
as_sa="--as=system:serviceaccount:$ns:$sa"
installed=""
created_deploy_ns=""

# The operator smoke run gets a private control plane, started now so that it boots while
# the other checks run.
operator_bin=${BCO_OPERATOR_BIN:-}
if [ -z "$operator_bin" ]; then
  for b in "$root/target/debug/bitbucket-credentials-operator" "$root/target/release/bitbucket-credentials-operator"; do
    [ -x "$b" ] && { operator_bin=$b; break; }
  done
fi
smoke_skip=""
if [ "${BCO_SMOKE:-1}" = 0 ]; then
  smoke_skip="BCO_SMOKE=0"
elif [ -z "$operator_bin" ] || [ ! -x "$operator_bin" ]; then
  smoke_skip="no operator binary (cargo build, or set BCO_OPERATOR_BIN)"
else
  cp_dir=$work/control-plane
  # cluster.sh stops the control plane when its stdin closes, i.e. when this script ends.
  coproc CONTROL_PLANE { exec bash "$here/cluster.sh" run "$cp_dir" --stdin-lifeline >"$work/control-plane.log" 2>&1; }
fi
operator_pid=""

# Stops the private control plane. Closing the lifeline alone is not enough: cluster.sh's
# EXIT trap runs after run() has returned, when its local list of child pids is gone, so it
# would wait for its children forever. Its children (etcd, kube-apiserver,
# kube-controller-manager) are stopped here by pid instead, then cluster.sh itself.
stop_control_plane() {
  [ -n "${CONTROL_PLANE_PID:-}" ] || return 0
  local pid=$CONTROL_PLANE_PID kids
  CONTROL_PLANE_PID=""
  kids=$(pgrep -P "$pid" | tr '\n' ' ')
  if [ -n "${CONTROL_PLANE[1]:-}" ]; then eval "exec ${CONTROL_PLANE[1]}>&-"; fi
  # shellcheck disable=SC2086
  [ -z "$kids" ] || kill $kids 2>/dev/null
  local k alive
  for _ in $(seq 50); do
    alive=""
    for k in $kids; do kill -0 "$k" 2>/dev/null && alive="$alive $k"; done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  # shellcheck disable=SC2086
  [ -z "$alive" ] || kill -9 $alive 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

cleanup() {
  if [ -n "$operator_pid" ]; then kill "$operator_pid" 2>/dev/null; wait "$operator_pid" 2>/dev/null; fi
  stop_control_plane
  if [ -n "$installed" ]; then "$HELM" uninstall "$rel" -n "$ns" >/dev/null 2>&1; fi
  kubectl delete namespace "$ns" "$team_a" "$team_b" --ignore-not-found --wait=false >/dev/null 2>&1
  if [ -n "$created_deploy_ns" ]; then
    kubectl delete namespace "$deploy_namespace" --ignore-not-found --wait=false >/dev/null 2>&1
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# can-i rows: VERB RESOURCE[/NAME] NAMESPACE [SUBRESOURCE]
#   NAMESPACE "-" = cluster-scoped resource, "*" = across all namespaces
can_i() { # yes|no VERB RESOURCE NAMESPACE [SUBRESOURCE]
  local want=$1 verb=$2 res=$3 where=$4 sub=${5:-}
  local args=("$verb" "$res" "$as_sa")
  case $where in
    -) ;;
    '*') args+=(--all-namespaces) ;;
    *) args+=(-n "$where") ;;
  esac
  [ -n "$sub" ] && args+=("--subresource=$sub")
  local got
  got=$(kubectl auth can-i "${args[@]}" 2>/dev/null </dev/null)
  [ -z "$got" ] && got=no
  local label="$verb $res${sub:+/$sub} ${where/#-/(cluster)}"
  if [ "$got" = "$want" ]; then
    echo "  $want: $label"
  else
    echo "  WRONG: $label -> $got, want $want"
    return 1
  fi
}
can_rows() { # yes|no < rows
  local want=$1 rc=0 verb res where sub
  while read -r verb res where sub; do
    [ -z "$verb" ] && continue
    can_i "$want" "$verb" "$res" "$where" "$sub" || rc=1
  done
  return $rc
}

G=bitbucket.credentials.dev
crd_rows() { # NAMESPACE: what the operator needs on the namespaced custom resources there
  local n=$1 r v
  for r in bitbucketworkspaces bitbucketaccesskeys; do
    for v in get list watch patch; do echo "$v $r.$G $n"; done
  done
  for v in list watch; do echo "$v bitbucketoauthconsumers.$G $n"; done
  for r in bitbucketworkspaces bitbucketaccesskeys bitbucketoauthconsumers; do
    echo "patch $r.$G $n status"
  done
}
crd_unused_rows() { # NAMESPACE: verbs the operator never uses there
  local n=$1 r
  for r in bitbucketworkspaces bitbucketaccesskeys bitbucketoauthconsumers; do
    echo "update $r.$G $n"; echo "update $r.$G $n status"; echo "update $r.$G $n finalizers"
  done
  echo "patch bitbucketoauthconsumers.$G $n"
}
secret_rows() { # NAMESPACE
  local v
  for v in get list watch create patch delete; do echo "$v secrets $1"; done
}
event_rows() { # NAMESPACE
  echo "create events.events.k8s.io $1"; echo "patch events.events.k8s.io $1"
}
unused_rows() { # NAMESPACE: verbs the operator never uses on core kinds there
  echo "update secrets $1"; echo "create events $1"; echo "patch events $1"
}
cluster_rows() {
  local v
  for v in get list watch patch; do echo "$v clusterbitbucketworkspaces.$G -"; done
  echo "patch clusterbitbucketworkspaces.$G - status"
  echo "get namespaces -"
}
cluster_unused_rows() {
  echo "update clusterbitbucketworkspaces.$G -"
  echo "update clusterbitbucketworkspaces.$G - status"
  echo "update clusterbitbucketworkspaces.$G - finalizers"
  echo "list namespaces -"; echo "watch namespaces -"
}
lease_rows() {
  echo "create leases.coordination.k8s.io $ns"
  echo "get leases.coordination.k8s.io/$lease_name $ns"
  echo "update leases.coordination.k8s.io/$lease_name $ns"
  echo "patch leases.coordination.k8s.io/$lease_name $ns"
}
never_rows() { # what the operator must never be able to do, in any mode
  cat <<EOF
delete namespaces -
create namespaces -
create pods $ns
create pods default
create deployments.apps $ns
update customresourcedefinitions.apiextensions.k8s.io -
create customresourcedefinitions.apiextensions.k8s.io -
delete customresourcedefinitions.apiextensions.k8s.io -
create clusterroles.rbac.authorization.k8s.io -
create rolebindings.rbac.authorization.k8s.io $ns
create serviceaccounts $ns token
get configmaps $ns
delete bitbucketaccesskeys.$G $ns
create bitbucketaccesskeys.$G $ns
delete clusterbitbucketworkspaces.$G -
update leases.coordination.k8s.io/kube-controller-manager kube-system
get leases.coordination.k8s.io/other-lease $ns
create leases.coordination.k8s.io kube-system
EOF
}

# --- checks --------------------------------------------------------------------------

echo "# helm: $("$HELM" version --short 2>/dev/null) ($HELM)"
echo "# kubectl: $(kubectl version --client 2>/dev/null | head -1); server: $(kubectl version 2>/dev/null | sed -n 's/^Server Version: //p')"
echo "# YAML parsing: $yaml_parser; release $rel in namespace $ns"

check "helm lint --strict (default values)" \
  "$HELM" lint --strict "$chart"
check "helm lint --strict (watchNamespaces set)" \
  "$HELM" lint --strict "$chart" --set "watchNamespaces={team-a,team-b}" --set clusterResourceNamespace=bco-secrets

check "helm package" "$HELM" package "$chart" --destination "$work/package"
check "chart crds/ holds one CRD per kind" py check-crds "$chart/crds"

top_crds_match() {
  local rc=0 f
  for f in "$root"/crds/*.yaml; do
    [ -f "$chart/crds/$(basename "$f")" ] || { echo "  chart lacks crds/$(basename "$f")"; rc=1; continue; }
    cmp "$f" "$chart/crds/$(basename "$f")" || rc=1
  done
  for f in "$chart"/crds/*.yaml; do
    [ -f "$root/crds/$(basename "$f")" ] || { echo "  top-level crds/ lacks $(basename "$f")"; rc=1; }
  done
  return $rc
}
if compgen -G "$root/crds/*.yaml" >/dev/null; then
  check "chart crds/ identical to top-level crds/" top_crds_match
else
  skip "chart crds/ identical to top-level crds/" "top-level crds/ has no *.yaml yet"
fi

check "CRDs accepted by the API server (apply --dry-run=server)" \
  kubectl apply --dry-run=server -f "$chart/crds/"

deploy_matches() {
  generate_deploy "$work/deploy" || return 1
  diff -ru "$deploy" "$work/deploy" && echo "  deploy/ is up to date"
}
check "deploy/ matches the chart (regenerate: hack/test-packaging.sh --update-deploy)" deploy_matches

render_cluster() {
  template "$work/cluster.yaml" "$rel" "$ns" && to_json "$work/cluster.yaml" "$work/cluster.json" &&
    py check-render "$work/cluster.json" cluster "$ns" "$ns"
}
check "helm template renders: cluster-wide mode (securityContext, resources, probes, RBAC shape)" render_cluster

render_namespaced() {
  template "$work/namespaced.yaml" "$rel" "$ns" --set "watchNamespaces={team-a,team-b}" &&
    to_json "$work/namespaced.yaml" "$work/namespaced.json" &&
    py check-render "$work/namespaced.json" namespaced "$ns" "$ns" team-a team-b &&
    template "$work/namespaced-cr.yaml" "$rel" "$ns" --set "watchNamespaces={team-a}" \
      --set clusterResourceNamespace=bco-secrets &&
    to_json "$work/namespaced-cr.yaml" "$work/namespaced-cr.json" &&
    py check-render "$work/namespaced-cr.json" namespaced "$ns" bco-secrets team-a
}
check "helm template renders: namespaced mode (Roles per namespace, small ClusterRole)" render_namespaced

render_optional() {
  template "$work/optional.yaml" "$rel" "$ns" --set metrics.serviceMonitor.enabled=true \
    --set podDisruptionBudget.enabled=true --set replicas=2 --set image.digest="sha256:$(printf '%064d' 0)" &&
    to_json "$work/optional.yaml" "$work/optional.json" && py check-optional "$work/optional.json" 2 &&
    grep -q "image: \"ghcr.io/.*@sha256:0000" "$work/optional.yaml"
}
check "helm template renders: ServiceMonitor, PodDisruptionBudget, 2 replicas, image digest" render_optional

render_network() { # a corporate network: an extra CA (inline or an existing ConfigMap), a proxy
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/ca.key" -out "$work/ca.pem" \
    -days 1 -subj "/CN=Corp Inspecting CA" 2>/dev/null &&
    template "$work/net.yaml" "$rel" "$ns" --set-file caBundle.pem="$work/ca.pem" \
      --set proxy.httpsProxy=http://proxy.corp:3128 --set proxy.noProxy=".svc\,.cluster.local" &&
    to_json "$work/net.yaml" "$work/net.json" &&
    py check-network "$work/net.json" "$fullname-ca-bundle" ca.crt true http://proxy.corp:3128 &&
    template "$work/net-cm.yaml" "$rel" "$ns" --set caBundle.configMap.name=corp-ca --set caBundle.configMap.key=bundle.pem &&
    to_json "$work/net-cm.yaml" "$work/net-cm.json" && py check-network "$work/net-cm.json" corp-ca bundle.pem false "" &&
    rejects --set caBundle.pem=not-a-certificate && rejects --set proxy.httpsProxy=proxy.corp:3128
}

render_strategy() { # a surge Pod by default; with hostNetwork two Pods would clash on their ports
  py check-strategy "$work/optional.json" 1 0 false &&
    template "$work/hostnet.yaml" "$rel" "$ns" --set hostNetwork=true --set listenAddress=127.0.0.1 &&
    to_json "$work/hostnet.yaml" "$work/hostnet.json" && py check-strategy "$work/hostnet.json" 0 1 true &&
    grep -q -- '--health-addr=127.0.0.1:' "$work/hostnet.yaml"
}
check "helm template renders: RollingUpdate without a gap (maxUnavailable 0), hostNetwork without a port clash (maxSurge 0)" render_strategy

alerts() {
  local promtool
  promtool=$(ls "$("$here/build-control-plane.sh" promtool | tail -1)"/promtool-* | tail -1) &&
    template "$work/alerts.yaml" "$rel" "$ns" --set metrics.prometheusRule.enabled=true --set metrics.dashboard.enabled=true &&
    to_json "$work/alerts.yaml" "$work/alerts.json" &&
    py alert-rules "$work/alerts.json" "$work/alerts" "$root/src/metrics.rs" &&
    cp "$here/alerts-test.yaml" "$work/alerts/" &&
    "$promtool" check rules "$work/alerts/rules.yaml" &&
    "$promtool" test rules "$work/alerts/alerts-test.yaml"
}
check "alerting rules and dashboard: real metric names, promtool check rules and its unit tests (hack/alerts-test.yaml)" alerts

rejects() { # helm template must fail with these values
  if template "$work/bad.yaml" "$rel" "$ns" "$@" 2>"$work/bad.err"; then
    echo "  accepted: $*"; return 1
  fi
  echo "  rejected: $* ($(grep -v '^$' "$work/bad.err" | grep -v 'Use --debug' | tail -1 | cut -c1-120))"
}
bad_values() {
  rejects --set logFormat=xml &&
    rejects --set "allowedBitbucketUrls={bitbucket.org}" &&
    rejects --set-json "allowedBitbucketUrls=[]" &&
    rejects --set replicas=2 --set leaderElection.enabled=false &&
    rejects --set "watchNamespaces={Team_A}" &&
    rejects --set "watchNamespaces={a,a}" &&
    rejects --set clusterName= &&
    rejects --set no.such.value=1 &&
    rejects --set metrics.serviceMonitor.enabled=true --set metrics.service.enabled=false &&
    rejects --set serviceAccount.create=false
}
check "invalid values are rejected (values.schema.json and template guards)" bad_values
check "helm template renders: a CA bundle (inline or an existing ConfigMap) mounted and passed as --ca-bundle; HTTPS_PROXY/NO_PROXY" render_network

check "Dockerfile and .dockerignore fit the crate (static; no Docker engine here)" py docker-context "$root"
if command -v cargo >/dev/null 2>&1; then
  # Resolution covers every platform, so --locked still refuses a lock file that no longer
  # matches Cargo.toml; --filter-platform only spares the download of crates that other
  # platforms alone use (a Linux build never fetches e.g. anstyle-wincon, so a fresh
  # machine's registry cache lacks them and a plain --offline run fails there).
  host_triple=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
  check "Cargo.lock is current (the image builds with --locked)" \
    cargo metadata --manifest-path "$root/Cargo.toml" --locked --offline \
      ${host_triple:+--filter-platform "$host_triple"} --format-version 1 -q
else
  skip "Cargo.lock is current (the image builds with --locked)" "no cargo on PATH"
fi

# The image the node runs (hack/build-images.sh operator) from a binary built already: this
# check never starts a release build.
image_bin=${BCO_OPERATOR_BIN:-}
if [ -z "$image_bin" ]; then
  for b in "$root/target/release/bitbucket-credentials-operator" "$root/target/debug/bitbucket-credentials-operator"; do
    [ -x "$b" ] && { image_bin=$b; break; }
  done
fi
operator_image() {
  BCO_OPERATOR_IMAGE=$work/operator.tar bash "$here/build-images.sh" operator "$image_bin" >/dev/null &&
    python3 "$here/oci-image.py" inspect "$work/operator.tar" >"$work/operator-image.json" &&
    python3 "$here/oci-image.py" unpack "$work/operator.tar" "$work/operator-rootfs" &&
    ldd "$image_bin" >"$work/operator.ldd" &&
    py operator-image "$root" "$work/operator-image.json" "$work/operator-rootfs" "$image_bin" "$work/operator.ldd" || return 1
  if [ "$(id -u)" -eq 0 ] && command -v chroot >/dev/null; then
    # The libraries are complete: the binary runs inside the image's files alone.
    local user entry
    user=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["User"])' "$work/operator-image.json") &&
      entry=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["Entrypoint"][0])' "$work/operator-image.json") &&
      chroot --userspec="$user" "$work/operator-rootfs" "$entry" --help >/dev/null &&
      echo "  chroot --userspec=$user ROOTFS $entry --help: ok"
  fi
}
if [ -n "$image_bin" ] && [ -x "$image_bin" ]; then
  check "operator image matches the Dockerfile (user, entrypoint, ports, labels, files)" operator_image
else
  skip "operator image matches the Dockerfile (user, entrypoint, ports, labels, files)" "no operator binary (cargo build, or set BCO_OPERATOR_BIN)"
fi

size_info() {
  local f=$1
  echo "$(wc -c <"$f" | tr -d ' ') bytes, $(wc -l <"$f" | tr -d ' ') lines, $(grep -c '^kind:' "$f") objects"
}

# Against the real API server.
install_cluster() {
  kubectl create namespace "$ns" && installed=yes &&
    "$HELM" install "$rel" "$chart" -n "$ns" --skip-crds --set clusterName=packaging-test
}
check "helm install (cluster-wide mode) into fresh namespace $ns" install_cluster

objects_exist() {
  kubectl -n "$ns" get "deployment/$fullname" "serviceaccount/$sa" "service/$fullname-metrics" \
    "role/$fullname-leader-election" "rolebinding/$fullname-leader-election" -o name &&
    kubectl get "clusterrole/$fullname" "clusterrolebinding/$fullname" -o name &&
    kubectl -n "$ns" get "deployment/$fullname" -o jsonpath='{.spec.template.spec.containers[0].args}' |
      grep -q -- '--cluster-name=packaging-test'
}
check "installed objects exist (Deployment, ServiceAccount, Service, ClusterRole, ClusterRoleBinding, leader-election Role)" objects_exist

# The control plane serves MutatingAdmissionPolicy (hack/cluster.sh), so helm install renders
# the finalizer policy; cluster-wide, its binding selects every namespace.
# dry_run_key NS KUBECTL...: the finalizers the API server gives a new access key in NS
# (a server-side dry run passes through admission).
dry_run_key() {
  local namespace=$1; shift
  "$@" create --dry-run=server -o jsonpath='{.metadata.finalizers}' -f - <<YAML
apiVersion: $G/v1alpha1
kind: BitbucketAccessKey
metadata: {name: admission-probe, namespace: $namespace}
spec: {workspaceRef: {name: acme}, repositories: [api]}
YAML
}
# admission_ready NS PATTERN KUBECTL...: waits (up to 60s) until a new access key in NS is
# admitted with finalizers matching PATTERN. Freshly installed CRDs and the chart's
# finalizer policy make creates answer 503 for a few seconds (the policy needs the kind's
# schema, read every 5s), as docs/install.md says; a new policy takes a moment to load.
admission_ready() {
  local namespace=$1 pattern=$2 got _; shift 2
  for _ in $(seq 120); do
    got=$(dry_run_key "$namespace" "$@" 2>&1) && [[ $got =~ $pattern ]] && { echo "  finalizers: ${got:-(none)}"; return 0; }
    sleep 0.5
  done
  echo "  a new access key in $namespace is still not admitted as expected after 60s: $got"; return 1
}

finalizer_policy() {
  local selector
  kubectl get "mutatingadmissionpolicy/$fullname-cleanup-finalizer" -o name &&
    selector=$(kubectl get "mutatingadmissionpolicybinding/$fullname-cleanup-finalizer" -o jsonpath='{.spec.matchResources.namespaceSelector}') &&
    echo "  namespaceSelector: ${selector:-(none)}" && [ -z "$selector" ] &&
    admission_ready "$ns" 'bitbucket.credentials.dev/cleanup' kubectl
}
check "helm install renders the finalizer policy where the cluster serves it: a new access key gets the cleanup finalizer" finalizer_policy

rbac_cluster_can() {
  { crd_rows "$ns"; crd_rows default; crd_rows "*"; secret_rows "$ns"; secret_rows kube-system
    secret_rows "*"; event_rows "$ns"; event_rows default; cluster_rows; lease_rows; } | can_rows yes
}
check "RBAC cluster-wide: the ServiceAccount can do all the operator needs" rbac_cluster_can
rbac_cluster_cannot() {
  { never_rows; crd_unused_rows "$ns"; crd_unused_rows "*"; unused_rows "$ns"; unused_rows "*"
    cluster_unused_rows; } | can_rows no
}
check "RBAC cluster-wide: the ServiceAccount cannot do more (no update, no core events)" rbac_cluster_cannot

tenant_roles() {
  # Kubernetes' own roles, bound in one namespace, carry the custom resources there once
  # the aggregation controller has folded the chart's ClusterRoles into them.
  kubectl -n "$ns" create rolebinding "$rel-tenant-edit" --clusterrole=edit --user=tenant-editor >/dev/null &&
    kubectl -n "$ns" create rolebinding "$rel-tenant-view" --clusterrole=view --user=tenant-viewer >/dev/null || return 1
  local got
  for _ in $(seq 100); do
    got=$(kubectl auth can-i create "bitbucketaccesskeys.$G" -n "$ns" --as=tenant-editor 2>/dev/null </dev/null)
    [ "$got" = yes ] && break
    sleep 0.2
  done
  local rc=0 row who want verb res where
  while read -r who want verb res where; do
    [ -z "$who" ] && continue
    local args=("$verb" "$res" "--as=$who")
    [ "$where" = - ] || args+=(-n "$where")
    got=$(kubectl auth can-i "${args[@]}" 2>/dev/null </dev/null)
    [ -z "$got" ] && got=no
    row="$who: $verb $res ${where/#-/(cluster)}"
    if [ "$got" = "$want" ]; then echo "  $want: $row"; else echo "  WRONG: $row -> $got, want $want"; rc=1; fi
  done <<ROWS
tenant-editor yes create bitbucketaccesskeys.$G $ns
tenant-editor yes delete bitbucketoauthconsumers.$G $ns
tenant-editor yes patch bitbucketworkspaces.$G $ns
tenant-editor no create bitbucketaccesskeys.$G default
tenant-editor no create clusterbitbucketworkspaces.$G -
tenant-viewer yes list bitbucketaccesskeys.$G $ns
tenant-viewer yes get bitbucketworkspaces.$G $ns
tenant-viewer no create bitbucketaccesskeys.$G $ns
tenant-viewer no delete bitbucketoauthconsumers.$G $ns
ROWS
  kubectl -n "$ns" delete rolebinding "$rel-tenant-edit" "$rel-tenant-view" >/dev/null
  return $rc
}
check "tenant RBAC: edit and view in a namespace carry the custom resources, nothing more" tenant_roles

upgrade_namespaced() {
  local spec
  kubectl create namespace "$team_a" && kubectl create namespace "$team_b" &&
    "$HELM" upgrade "$rel" "$chart" -n "$ns" --skip-crds --set clusterName=packaging-test-2 \
      --set "watchNamespaces={$team_a,$team_b}" --set logFormat=text --set replicas=2 \
      --set podDisruptionBudget.enabled=true --set resources.limits.memory=300Mi &&
    spec=$(kubectl -n "$ns" get deployment "$fullname" \
      -o jsonpath='replicas={.spec.replicas} memory={.spec.template.spec.containers[0].resources.limits.memory} args={.spec.template.spec.containers[0].args}') &&
    echo "  $spec" &&
    grep -- "--watch-namespaces=$team_a,$team_b" <<<"$spec" | grep -- '--log-format=text' |
      grep -- '--cluster-name=packaging-test-2' | grep -- 'replicas=2 memory=300Mi' >/dev/null &&
    kubectl -n "$ns" get "poddisruptionbudget/$fullname" -o name &&
    kubectl -n "$team_a" get "role/$fullname" "rolebinding/$fullname" -o name &&
    kubectl -n "$team_b" get "role/$fullname" "rolebinding/$fullname" -o name &&
    kubectl get "mutatingadmissionpolicybinding/$fullname-cleanup-finalizer" \
      -o jsonpath='{.spec.matchResources.namespaceSelector.matchExpressions[0].values}' | tee /dev/stderr |
      python3 -c "import json,sys; sys.exit(sorted(json.load(sys.stdin)) != sorted(sys.argv[1:]))" "$team_a" "$team_b" &&
    [ "$("$HELM" status "$rel" -n "$ns" -o json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["version"], d["info"]["status"])')" = "2 deployed" ]
}
check "helm upgrade to namespaced mode with changed values" upgrade_namespaced

rbac_namespaced_can() {
  { crd_rows "$team_a"; crd_rows "$team_b"; secret_rows "$team_a"; secret_rows "$team_b"
    event_rows "$team_a"; event_rows "$team_b"; event_rows default; cluster_rows; lease_rows
    for v in get list watch; do echo "$v secrets $ns"; done; } | can_rows yes
}
check "RBAC namespaced: the ServiceAccount can do all the operator needs" rbac_namespaced_can
rbac_namespaced_cannot() {
  { never_rows; crd_unused_rows "$team_a"; unused_rows "$team_a"; cluster_unused_rows
    for v in get list watch create delete; do echo "$v secrets kube-system"; echo "$v secrets default"; done
    for v in get list watch; do echo "$v secrets *"; done
    for v in create update patch delete; do echo "$v secrets $ns"; done
    echo "get bitbucketaccesskeys.$G kube-system"; echo "list bitbucketaccesskeys.$G *"
    echo "watch bitbucketworkspaces.$G *"; echo "update bitbucketoauthconsumers.$G default"
    echo "create events.events.k8s.io kube-system"; echo "create events kube-system"; } | can_rows no
}
check "RBAC namespaced: the ServiceAccount cannot do more (e.g. Secrets in kube-system)" rbac_namespaced_cannot

uninstall() {
  "$HELM" uninstall "$rel" -n "$ns" && installed="" || return 1
  local left
  left=$(kubectl get "clusterrole/$fullname" "clusterrolebinding/$fullname" "clusterrole/$fullname-edit" "clusterrole/$fullname-view" \
    --ignore-not-found -o name
    kubectl -n "$team_a" get "role/$fullname" --ignore-not-found -o name
    kubectl -n default get "role/$fullname-cluster-events" --ignore-not-found -o name
    kubectl -n "$ns" get "deployment/$fullname" "serviceaccount/$sa" --ignore-not-found -o name
    kubectl get "mutatingadmissionpolicy/$fullname-cleanup-finalizer" \
      "mutatingadmissionpolicybinding/$fullname-cleanup-finalizer" --ignore-not-found -o name)
  [ -z "$left" ] || { echo "  left behind: $left"; return 1; }
}
check "helm uninstall removes every object" uninstall

apply_kustomize() {
  # A server-side dry run creates nothing, so the namespaced objects need their Namespace
  # to exist already; create it for the run when it does not.
  if ! kubectl get namespace "$deploy_namespace" >/dev/null 2>&1; then
    kubectl create namespace "$deploy_namespace" >/dev/null && created_deploy_ns=yes
  fi
  kubectl apply -k "$deploy" --dry-run=server
  local rc=$?
  if [ -n "$created_deploy_ns" ]; then
    kubectl delete namespace "$deploy_namespace" --wait=false >/dev/null && created_deploy_ns=""
  fi
  return $rc
}
check "kubectl apply -k deploy/ --dry-run=server" apply_kustomize

# --- the real operator under the chart's RBAC, on a private control plane ---------------
smoke_objects() { # NAMESPACE: a workspace (its API unreachable on purpose), an access key, an OAuth consumer
  cat <<EOF
apiVersion: v1
kind: Secret
metadata: {name: bb-admin, namespace: $1}
stringData: {email: admin@example.test, token: packaging-test-token}
---
apiVersion: v1
kind: Secret
metadata: {name: bb-consumer, namespace: $1}
stringData: {key: packaging-key, secret: packaging-secret}
---
apiVersion: bitbucket.credentials.dev/v1alpha1
kind: BitbucketWorkspace
metadata: {name: acme, namespace: $1}
spec:
  workspace: acme
  apiURL: http://127.0.0.1:9/2.0
  siteURL: http://127.0.0.1:9
  auth: {apiToken: {secretRef: {name: bb-admin}}}
---
apiVersion: bitbucket.credentials.dev/v1alpha1
kind: BitbucketAccessKey
metadata: {name: clone, namespace: $1}
spec:
  workspaceRef: {name: acme}
  repositories: [api]
---
apiVersion: bitbucket.credentials.dev/v1alpha1
kind: BitbucketOAuthConsumer
metadata: {name: token, namespace: $1}
spec:
  workspaceRef: {name: acme}
  consumerSecretRef: {name: bb-consumer}
EOF
}
smoke_cluster_workspace() { # NAME: a ClusterBitbucketWorkspace whose auth Secret is in the release namespace
  cat <<EOF
apiVersion: v1
kind: Secret
metadata: {name: $1-auth, namespace: $ns}
stringData: {key: packaging-key, secret: packaging-secret}
---
apiVersion: bitbucket.credentials.dev/v1alpha1
kind: ClusterBitbucketWorkspace
metadata: {name: $1}
spec:
  workspace: acme
  apiURL: http://127.0.0.1:9/2.0
  siteURL: http://127.0.0.1:9
  auth: {oauthConsumer: {secretRef: {name: $1-auth}}}
  allowedNamespaces: {names: [$team_a, $team_b]}
EOF
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# smoke_run LABEL OBJECT...: runs the operator with the Deployment's own args and the
# ServiceAccount's token until every OBJECT (kind/name, or namespace:kind/name) has a
# condition and the operator holds the Lease; fails on any Forbidden in its log. An OBJECT
# written ?OBJECT is only reported: whether it gets a status is the controllers' business
# (tested elsewhere), not the packaging's.
smoke_run() {
  local label=$1; shift
  local all=() required=() o
  for o in "$@"; do all+=("${o#\?}"); [[ $o == \?* ]] || required+=("$o"); done
  set -- "${all[@]}"
  local kc=$cp_dir/kubeconfig log=$work/operator-$label.log
  local mport hport
  mport=$(free_port) && hport=$(free_port) || return 1
  local args=()
  mapfile -t args < <(kubectl --kubeconfig "$kc" -n "$ns" get deployment "$fullname" \
    -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}' |
    sed "s/^--metrics-addr=.*/--metrics-addr=127.0.0.1:$mport/; s/^--health-addr=.*/--health-addr=127.0.0.1:$hport/")
  [ ${#args[@]} -gt 0 ] || { echo "  no args read from the Deployment"; return 1; }
  echo "  $label: $(basename "$operator_bin") run ${args[*]}"
  env -u RUST_LOG KUBECONFIG="$work/sa.kubeconfig" POD_NAME="$rel-smoke" POD_NAMESPACE="$ns" \
    "$operator_bin" run "${args[@]}" >"$log" 2>&1 </dev/null &
  operator_pid=$!
  local pending=("${required[@]}") holder="" deadline=$((SECONDS + 90)) obj
  local left=()
  while [ $SECONDS -lt $deadline ]; do
    kill -0 "$operator_pid" 2>/dev/null || { echo "  the operator exited"; break; }
    grep -qiE 'forbidden|\b403\b' "$log" && { sleep 2; break; }
    holder=$(kubectl --kubeconfig "$kc" -n "$ns" get lease "$lease_name" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null)
    left=()
    for obj in "${pending[@]}"; do
      local where=() ref=$obj
      if [[ $obj == *:* ]]; then where=(-n "${obj%%:*}"); ref=${obj#*:}; fi
      [ -n "$(kubectl --kubeconfig "$kc" "${where[@]}" get "$ref" -o jsonpath='{.status.conditions[0].reason}' 2>/dev/null)" ] ||
        left+=("$obj")
    done
    pending=("${left[@]}")
    [ ${#pending[@]} -eq 0 ] && [ "$holder" = "$rel-smoke" ] && break
    sleep 1
  done
  kill "$operator_pid" 2>/dev/null; wait "$operator_pid" 2>/dev/null; operator_pid=""
  local rc=0
  if [ "$holder" != "$rel-smoke" ]; then echo "  Lease holder is '$holder', want $rel-smoke"; rc=1; fi
  if [ ${#pending[@]} -gt 0 ]; then echo "  no status written: ${pending[*]}"; rc=1; fi
  for obj in "$@"; do
    local where=() ref=$obj
    if [[ $obj == *:* ]]; then where=(-n "${obj%%:*}"); ref=${obj#*:}; fi
    echo "  $label: $obj -> Ready=$(kubectl --kubeconfig "$kc" "${where[@]}" get "$ref" \
      -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].reason}' 2>/dev/null)"
  done
  if grep -iE 'forbidden|\b403\b' "$log" >/dev/null; then
    echo "  Forbidden in the operator log:"
    grep -iE 'forbidden|\b403\b' "$log" | head -5 | cut -c1-400 | sed 's/^/    /'
    rc=1
  fi
  [ $rc -eq 0 ] || { echo "  log tail:"; tail -n 15 "$log" | cut -c1-300 | sed 's/^/    /'; }
  return $rc
}

smoke_events() { # NAMESPACE: the operator recorded events there
  local n
  n=$(kubectl --kubeconfig "$cp_dir/kubeconfig" -n "$1" get events.events.k8s.io \
    -o jsonpath='{range .items[?(@.reportingController=="bitbucket-credentials-operator")]}{.reason}{"\n"}{end}' | grep -c .)
  echo "  events recorded in $1: $n"
  [ "$n" -gt 0 ]
}

operator_smoke() {
  local kc=$cp_dir/kubeconfig
  for _ in $(seq 1200); do
    [ -f "$cp_dir/ready" ] && break
    kill -0 "$CONTROL_PLANE_PID" 2>/dev/null || { cat "$work/control-plane.log"; return 1; }
    sleep 0.5
  done
  [ -f "$cp_dir/ready" ] || { echo "  private control plane did not start"; cat "$work/control-plane.log"; return 1; }
  head -1 "$work/control-plane.log" | sed 's/^/  /'
  local K=(kubectl --kubeconfig "$kc")
  "${K[@]}" apply --server-side -f "$chart/crds/" >/dev/null &&
    "${K[@]}" wait --for=condition=Established crd --all --timeout=60s >/dev/null &&
    "${K[@]}" create namespace "$ns" >/dev/null && "${K[@]}" create namespace "$team_a" >/dev/null &&
    "${K[@]}" create namespace "$team_b" >/dev/null || return 1
  # Cluster-wide mode, default values.
  # The smoke objects point at http://127.0.0.1:9 (nothing listens): allowed, so that the
  # operator really tries Bitbucket and reports it unreachable.
  "$HELM" --kubeconfig "$kc" install "$rel" "$chart" -n "$ns" --set clusterName=packaging-smoke \
    --set "allowedBitbucketUrls={http://127.0.0.1:9}" >/dev/null || return 1
  admission_ready "$team_a" '' "${K[@]}" || return 1
  local token
  token=$("${K[@]}" -n "$ns" create token "$sa" --duration=1h) || return 1
  cp "$kc" "$work/sa.kubeconfig" &&
    kubectl --kubeconfig "$work/sa.kubeconfig" config set-credentials packaging-sa --token="$token" >/dev/null &&
    kubectl --kubeconfig "$work/sa.kubeconfig" config set-context --current --user=packaging-sa >/dev/null || return 1
  { smoke_objects "$team_a"; echo "---"; smoke_cluster_workspace shared-1; } | "${K[@]}" apply -f - >/dev/null || return 1
  smoke_run cluster-wide "$team_a:bitbucketworkspace/acme" "$team_a:bitbucketaccesskey/clone" \
    "?$team_a:bitbucketoauthconsumer/token" "clusterbitbucketworkspace/shared-1" || return 1
  smoke_events "$team_a" || return 1
  # Namespaced mode: Roles in the two namespaces only.
  "$HELM" --kubeconfig "$kc" upgrade "$rel" "$chart" -n "$ns" --set clusterName=packaging-smoke \
    --set "watchNamespaces={$team_a,$team_b}" --set "allowedBitbucketUrls={http://127.0.0.1:9}" >/dev/null || return 1
  { smoke_objects "$team_b"; echo "---"; smoke_cluster_workspace shared-2; } | "${K[@]}" apply -f - >/dev/null || return 1
  smoke_run namespaced "$team_b:bitbucketworkspace/acme" "$team_b:bitbucketaccesskey/clone" \
    "?$team_b:bitbucketoauthconsumer/token" "clusterbitbucketworkspace/shared-2" || return 1
  smoke_events "$team_b" || return 1
  if "${K[@]}" get events.events.k8s.io -n default -o jsonpath='{range .items[*]}{.regarding.kind}{"\n"}{end}' |
    grep -q ClusterBitbucketWorkspace; then
    echo "  events about ClusterBitbucketWorkspace objects recorded in default"
  fi
  stop_control_plane
}
if [ -n "$smoke_skip" ]; then
  skip "operator binary runs under the chart's ServiceAccount and RBAC (private control plane)" "$smoke_skip"
else
  check "operator binary runs under the chart's ServiceAccount and RBAC (private control plane)" operator_smoke
fi

# --- information for humans ----------------------------------------------------------
if [ -f "$work/cluster.yaml" ]; then
  echo "# helm template size, default values (cluster-wide): $(size_info "$work/cluster.yaml")"
fi
if [ -f "$work/namespaced.yaml" ]; then
  echo "# helm template size, watchNamespaces={team-a,team-b}: $(size_info "$work/namespaced.yaml")"
fi
if [ -f "$work/cluster.yaml" ]; then
  crd_bytes=$(cat "$chart"/crds/*.yaml | wc -c | tr -d ' ')
  echo "# chart crds/: $crd_bytes bytes in $(ls "$chart"/crds/*.yaml | wc -l | tr -d ' ') files"
fi
[ -f "$work/cluster.json" ] && py print-rules "$work/cluster.json" "default values: cluster-wide mode, release $rel in $ns"
[ -f "$work/namespaced.json" ] && py print-rules "$work/namespaced.json" "watchNamespaces={team-a,team-b}, release $rel in $ns"

summary
