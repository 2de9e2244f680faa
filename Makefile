# bitbucket-credentials-operator
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build image control-plane test test-fresh test-unit test-e2e test-packaging test-node cluster-up cluster-down node node-up node-down crds demo demo-node demo-down bench fuzz lint

all: build

build:
	$(CARGO) build --bins

## The operator's container image, offline: target/images/operator.tar (hack/build-images.sh).
image:
	bash hack/build-images.sh operator

## The real control plane and Helm, built once from the published Go modules into a cache.
control-plane:
	bash hack/build-control-plane.sh all

## Regenerate crds/ (and the chart's copy) from the API types.
crds: build control-plane
	./target/debug/bitbucket-credentials-operator crd | python3 hack/split-crds.py crds charts/bitbucket-credentials-operator/crds
	bash hack/test-packaging.sh --update-deploy

## Every test: unit, simulator contract, the real control plane end to end, packaging.
## The house rules first (make lint): one format, no clippy warning.
test: control-plane lint
	$(CARGO) build --bins --tests
	$(CARGO) test --no-fail-fast -- --test-threads=4
	$(MAKE) -j2 -O test-packaging test-node

## .ci/run from a clean clone with empty CARGO_HOME, Go caches and cache folder (a fresh machine).
test-fresh:
	bash hack/test-fresh.sh

test-unit:
	$(CARGO) test --lib --bins

test-e2e: control-plane
	$(CARGO) build --bins --tests
	$(CARGO) test --test e2e -- --test-threads=4

test-packaging: control-plane
	bash hack/with-cluster.sh bash -c 'kubectl apply --server-side -f crds/ >/dev/null && kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null && bash hack/test-packaging.sh'

## The operator as a Pod from its image under Helm on a real node, and CI Pods cloning with
## its Secrets. The image is made from BCO_OPERATOR_BIN (default: the debug build that
## `make test` has just built; `make image` is the release image).
test-node: control-plane node
	BCO_NODE=1 bash hack/with-cluster.sh bash -c 'kubectl apply --server-side -f crds/ >/dev/null && kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null && BCO_OPERATOR_BIN=$${BCO_OPERATOR_BIN:-$(CURDIR)/target/debug/bitbucket-credentials-operator} bash hack/test-node.sh'

cluster-up: control-plane
	bash hack/cluster.sh up

cluster-down:
	bash hack/cluster.sh down

## A real node (kubelet, containerd, runc, scheduler; shared/NODE.md) for the control plane.
node:
	bash hack/build-control-plane.sh node

node-up: control-plane node
	BCO_NODE=1 bash hack/cluster.sh up

node-down:
	bash hack/cluster.sh down

demo:
	bash hack/demo.sh

## The same demo on a real node: the operator as a Pod under Helm, the clone in a Pod.
demo-node:
	bash hack/demo.sh node

demo-down:
	bash hack/demo.sh down

## The scale benchmarks (release build); sizes from BENCH_OBJECTS, BENCH_UNRELATED_SECRETS.
## The bench builds the operator's binaries itself (as for every test target, with the crash
## points: tests and benches share dev-dependencies); the simulator is another package.
bench: control-plane
	$(CARGO) build --release -p bitbucket-sim
	BCO_OPERATOR_LOG=$${BCO_OPERATOR_LOG:-info} $(CARGO) bench --bench scale

## Property-based fuzzing of every parser of outside input (Bitbucket responses, OpenSSH
## keys, Secret contents read back, the simulator's config and requests), for longer.
fuzz:
	PROPTEST_CASES=$${PROPTEST_CASES:-20000} $(CARGO) test --release --lib never_panic -- --test-threads=2

lint:
	$(CARGO) fmt --all --check
	python3 hack/unused-deps.py
	$(CARGO) clippy --all-targets -- -D warnings
