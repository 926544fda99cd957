# One Dockerfile, one target per component:
#   docker build --target inference -t imageclassifier/inference:dev .   (make images builds all)
# The builder stage compiles every binary once; BuildKit cache mounts keep the cargo registry and
# target directory between builds, so a code change recompiles only our crates.
# On air-gapped machines, e2e/offline-base-images.sh is meant to provide the two base images
# under these names (issue 8); elsewhere they are the official images.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
# Where the binaries come from: the builder stage below (the user path), or an image holding
# binaries already built on the host in /out (`make images-from-host`, for checks that should
# not compile the workspace a second time).
ARG BINARIES=builder

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY inference inference
COPY dispatcher dispatcher
COPY adapter adapter
COPY loadgen loadgen
COPY e2e e2e
COPY manifests/adapter/rules.yaml manifests/adapter/rules.yaml
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p inference -p dispatcher -p adapter -p loadgen --bins \
    && mkdir -p /out \
    && cp target/release/inference target/release/dispatcher target/release/metrics-adapter \
          target/release/loadgen /out/

FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE} AS runtime
# Non-root (the manifests also set runAsUser 65532); nothing is written to the image at run time.
USER 65532:65532

FROM runtime AS inference
COPY --from=binaries /out/inference /usr/local/bin/inference
# The model folder `make model` fills (ONNX file, description, labels).
COPY models/ /models/
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/inference"]
CMD ["serve", "--listen=0.0.0.0:8080", "--model=/models"]

FROM runtime AS dispatcher
COPY --from=binaries /out/dispatcher /usr/local/bin/dispatcher
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/dispatcher"]

FROM runtime AS metrics-adapter
COPY --from=binaries /out/metrics-adapter /usr/local/bin/metrics-adapter
COPY manifests/adapter/rules.yaml /etc/metrics-adapter/rules.yaml
EXPOSE 6443
ENTRYPOINT ["/usr/local/bin/metrics-adapter"]

FROM runtime AS loadgen
COPY --from=binaries /out/loadgen /usr/local/bin/loadgen
ENTRYPOINT ["/usr/local/bin/loadgen"]
