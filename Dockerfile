# syntax=docker/dockerfile:1.7
#
# Container image of the operator:
#   docker build -t bitbucket-credentials-operator:0.1.0 .
# The runtime image is distroless (glibc + libgcc, no shell, no package manager) and runs as
# the unprivileged user 65532, which the Helm chart's securityContext expects.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# The whole build context (trimmed by .dockerignore): Cargo.toml may name targets anywhere
# in the tree, and a partial copy would break the build the day one is added.
COPY . .
# Cache mounts keep the registry and target dir between builds (BuildKit). The binary is
# copied out in the same step because the target cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin bitbucket-credentials-operator \
 && install -D -m 0755 target/release/bitbucket-credentials-operator /out/bitbucket-credentials-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="bitbucket-credentials-operator" \
      org.opencontainers.image.description="Kubernetes operator that gives CI runners Bitbucket Cloud access keys and OAuth tokens that belong to no person" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/bitbucket-credentials-operator /bitbucket-credentials-operator
USER 65532:65532
# 8080: /metrics, 8081: /healthz and /readyz
EXPOSE 8080 8081
ENTRYPOINT ["/bitbucket-credentials-operator", "run"]
