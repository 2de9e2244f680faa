#!/usr/bin/env python3
"""Splits the output of `bitbucket-credentials-operator crd` into one file per kind."""
import os
import sys

names = ["bitbucketworkspaces.yaml", "clusterbitbucketworkspaces.yaml", "bitbucketaccesskeys.yaml", "bitbucketoauthconsumers.yaml"]
docs = sys.stdin.read().split("---\n")[1:]
assert len(docs) == len(names), f"expected {len(names)} CRDs, got {len(docs)}"
for out in sys.argv[1:]:
    os.makedirs(out, exist_ok=True)
    for name, doc in zip(names, docs):
        with open(os.path.join(out, name), "w") as f:
            f.write("---\n" + doc)
