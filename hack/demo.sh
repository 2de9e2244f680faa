#!/usr/bin/env bash
# make demo: not built yet. The end-to-end demo (control plane, simulator, git endpoint,
# operator, a clone with the generated key) is tracked in the issue tracker.
echo "make demo: not yet. Meanwhile: 'make cluster-up', then run the operator and bitbucket-sim as README.md shows."
