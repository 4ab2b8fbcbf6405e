# kmseal-controller image (the kmseal CLI is included for debugging: `kubectl exec ... kmseal verify`).
# Build: docker build -t kmseal-controller .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --release --bin kmseal-controller --bin kmseal

# distroless/cc: glibc and CA certificates (KMS and STS are reached over TLS), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/kmseal-controller /usr/local/bin/kmseal-controller
COPY --from=build /src/target/release/kmseal /usr/local/bin/kmseal
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kmseal-controller"]
