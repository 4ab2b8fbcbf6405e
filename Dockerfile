# syntax=docker/dockerfile:1.7
# The kmseal-controller image, with the kmseal CLI for debugging (`kubectl exec ... kmseal
# verify`). Multi-arch with buildx, cross-compiling on the build machine (no emulation):
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/kmseal-controller:TAG .
# Base images are pinned by digest (a rebuild gets the bytes that were reviewed); update both
# together, e.g. with `docker buildx imagetools inspect IMAGE:TAG`.
ARG RUST_IMAGE=rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS build
ARG TARGETARCH
WORKDIR /src
RUN case "$TARGETARCH" in \
        amd64) target=x86_64-unknown-linux-gnu ;; \
        arm64) target=aarch64-unknown-linux-gnu \
            && apt-get update \
            && apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
            && rm -rf /var/lib/apt/lists/* ;; \
        *) echo "unsupported architecture: $TARGETARCH" >&2 && exit 1 ;; \
    esac \
    && rustup target add "$target" \
    && echo "$target" > /target
ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
COPY . .
# The registry and the target directory are cache mounts: a source change rebuilds kmseal, not
# every dependency.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=kmseal-target-${TARGETARCH} \
    target="$(cat /target)" \
    && cargo build --locked --release --target "$target" --bin kmseal-controller --bin kmseal \
    && mkdir /out \
    && cp "target/$target/release/kmseal-controller" "target/$target/release/kmseal" /out/

# distroless/cc: glibc and CA certificates (KMS and STS are reached over TLS), no shell.
FROM ${RUNTIME_IMAGE}
ARG VERSION=dev
LABEL org.opencontainers.image.title="kmseal-controller" \
      org.opencontainers.image.description="Kubernetes Secrets in Git, envelope-encrypted with AWS KMS: the controller" \
      org.opencontainers.image.source="https://github.com/kmseal/kmseal" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/kmseal-controller /usr/local/bin/kmseal-controller
COPY --from=build /out/kmseal /usr/local/bin/kmseal
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kmseal-controller"]
