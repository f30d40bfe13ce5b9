# kube-aws-iam-controller container image.
#
#   docker build -t <registry>/kube-aws-iam-controller:<tag> .
#
# Stage 1 builds the two release binaries with the locked dependencies: the controller and
# `credentials-server`, the small sidecar that pods with the endpoint delivery run as their
# sidecar container's command. Stage 2 is a minimal runtime (distroless: glibc, CA
# certificates, no shell) running as the unprivileged user 65532.

FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
# Only what the build needs (see also .dockerignore). Cargo.toml declares the bench targets and
# the workspace members (test-apiserver, credentials-server), so their sources must be present
# for cargo to read it.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY test-apiserver ./test-apiserver
COPY credentials-server ./credentials-server
RUN cargo build --release --locked --bin kube-aws-iam-controller --bin credentials-server \
 && install -D -m 0755 target/release/kube-aws-iam-controller /out/kube-aws-iam-controller \
 && install -D -m 0755 target/release/credentials-server /out/credentials-server

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/kube-aws-iam-controller /usr/local/bin/kube-aws-iam-controller
# The endpoint delivery's sidecar: the mutation names this path as the sidecar's command and
# startup probe (pods injected earlier run `kube-aws-iam-controller credentials-server`).
COPY --from=build /out/credentials-server /usr/local/bin/credentials-server
# nonroot (65532:65532), numeric so that Kubernetes can verify runAsNonRoot.
USER 65532:65532
# /healthz, /readyz and /metrics of `run`.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kube-aws-iam-controller"]
CMD ["run"]
