#!/usr/bin/env python3
"""Helpers of hack/test-node.sh (stdlib only; YAML through PyYAML when present, else kubectl).

  docs-object FILE.md KIND NAME              the `<!-- apply -->` block of FILE.md with that object, as JSON
  docs-clone-pod FILE.md JOB NAME NS SECRET OLD NEW [EDIT]
                                             the Pod template of FILE.md's Job JOB, as a Pod NAME on
                                             the local node: local git client image, host network,
                                             OLD replaced by NEW in its arguments (Bitbucket's URL by
                                             the local endpoint's), SECRET mounted; EDIT is a Python
                                             statement run on `spec` (the Pod spec) to vary it
  process-confinement PID UID                 the process runs as UID with no capabilities, no new
                                             privileges, seccomp filtering and a read-only root
"""
import json
import os
import subprocess
import sys

GIT_CLIENT_IMAGE = "localhost/git-client:1"


def yaml_docs(text):
    try:
        import yaml
        return [d for d in yaml.safe_load_all(text) if d]
    except ImportError:
        out = subprocess.run(["kubectl", "apply", "--dry-run=client", "-o", "json", "-f", "-"],
                             input=text, capture_output=True, text=True, check=True).stdout
        doc = json.loads(out)
        return doc.get("items", [doc]) if doc.get("kind") == "List" else [doc]


def applied_blocks(path):
    """Every ```yaml block right after a `<!-- apply -->` line (the docs test's rule)."""
    lines, blocks, i = open(path).read().splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == "<!-- apply -->" and i + 1 < len(lines) and lines[i + 1].startswith("```yaml"):
            j = i + 2
            while not lines[j].startswith("```"):
                j += 1
            blocks.extend(yaml_docs("\n".join(lines[i + 2:j])))
            i = j
        i += 1
    return blocks


def find(path, kind, name=None):
    for d in applied_blocks(path):
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name):
            return d
    sys.exit(f"{path}: no applied {kind} {name or ''}")


def cmd_docs_object(path, kind, name):
    print(json.dumps(find(path, kind, name)))


def cmd_docs_clone_pod(path, job, name, ns, secret, old, new, edit=""):
    spec = find(path, "Job", job)["spec"]["template"]["spec"]
    spec["hostNetwork"] = True  # no Pod network on the test node: 127.0.0.1 is the host's
    c = spec["containers"][0]
    c["image"], c["imagePullPolicy"] = GIT_CLIENT_IMAGE, "Never"
    # The docs' image has `git` as its entrypoint; ours is a plain Debian with git.
    c.setdefault("command", ["git"])
    c["args"] = [a.replace(old, new) for a in c["args"]]
    for e in c.get("env", []):
        if e["name"] == "GIT_SSH_COMMAND":  # the endpoint's host key is in the Secret's known_hosts
            e["value"] += " -o StrictHostKeyChecking=yes -o BatchMode=yes"
    for v in spec["volumes"]:
        if "secret" in v:
            v["secret"]["secretName"] = secret
    if edit:
        exec(edit, {"spec": spec})
        if c["command"][0] == "sh":  # an edited script gets the clone URL as its $0
            c["args"] = [new]
    print(json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                      "spec": spec}))


def cmd_process_confinement(pid, uid):
    status = dict(line.split(":\t", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":\t" in line)
    errors, seen = [], {}
    for field in ("Uid", "Gid"):
        ids = status[field].split()
        seen[field] = ids
        if set(ids) != {uid}:
            errors.append(f"{field} {ids}, want {uid} (real, effective, saved, fs)")
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        seen[cap] = status[cap].strip()
        if int(status[cap], 16) != 0 and cap != "CapBnd":
            errors.append(f"{cap} {status[cap].strip()}: capabilities left")
    if int(status["CapBnd"], 16) != 0:
        errors.append(f"CapBnd {status['CapBnd'].strip()}: capabilities not dropped")
    seen["NoNewPrivs"], seen["Seccomp"] = status["NoNewPrivs"].strip(), status["Seccomp"].strip()
    if seen["NoNewPrivs"] != "1":
        errors.append("NoNewPrivs is not set (allowPrivilegeEscalation)")
    if seen["Seccomp"] != "2":
        errors.append(f"Seccomp {seen['Seccomp']}, want 2 (filter: RuntimeDefault)")
    root = None
    for line in open(f"/proc/{pid}/mountinfo"):
        f = line.split()
        if f[4] == "/":
            root = f[5].split(",")
    seen["root mount"] = root
    if not root or "ro" not in root:
        errors.append(f"root filesystem mounted {root}, want ro")
    # Writing anywhere in the root must fail, as the process itself would see it.
    probe = f"/proc/{pid}/root/.write-probe"
    try:
        open(probe, "w").close()
        os.unlink(probe)
        errors.append("the root filesystem is writable")
    except OSError as e:
        seen["write to /"] = e.strerror
    for k, v in seen.items():
        print(f"  {k}: {v}")
    for e in errors:
        print("  " + e)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
