# bitbucket-credentials-operator
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build control-plane test test-fresh test-unit test-e2e test-packaging cluster-up cluster-down crds demo demo-down bench fuzz lint

all: build

build:
	$(CARGO) build --bins

## The real control plane and Helm, built once from the published Go modules into a cache.
control-plane:
	bash hack/build-control-plane.sh all

## Regenerate crds/ (and the chart's copy) from the API types.
crds: build
	./target/debug/bitbucket-credentials-operator crd | python3 hack/split-crds.py crds charts/bitbucket-credentials-operator/crds

## Every test: unit, simulator contract, the real control plane end to end, packaging.
test: control-plane
	$(CARGO) fmt --check
	$(CARGO) build --bins --tests
	$(CARGO) test --no-fail-fast -- --test-threads=4
	$(MAKE) test-packaging

## .ci/run from a clean clone with empty CARGO_HOME, Go caches and cache folder (a fresh machine).
test-fresh:
	bash hack/test-fresh.sh

test-unit:
	$(CARGO) test --lib --bins

test-e2e: control-plane
	$(CARGO) test --test e2e -- --test-threads=4

test-packaging: control-plane
	bash hack/with-cluster.sh bash -c 'kubectl apply --server-side -f crds/ >/dev/null && kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null && bash hack/test-packaging.sh'

cluster-up: control-plane
	bash hack/cluster.sh up

cluster-down:
	bash hack/cluster.sh down

demo:
	bash hack/demo.sh

demo-down:
	bash hack/demo.sh down

## The scale benchmarks (release build); sizes from BENCH_OBJECTS, BENCH_UNRELATED_SECRETS.
bench: control-plane
	BCO_OPERATOR_LOG=$${BCO_OPERATOR_LOG:-info} $(CARGO) bench --bench scale

## Property-based fuzzing of every parser of outside input (Bitbucket responses, OpenSSH
## keys, Secret contents read back, the simulator's config and requests), for longer.
fuzz:
	PROPTEST_CASES=$${PROPTEST_CASES:-20000} $(CARGO) test --release --lib never_panic -- --test-threads=2

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
