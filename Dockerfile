# The driver image: one binary on a distroless runtime (no shell, no package manager).
#   docker build -t secrets-store-csi-driver:0.1.0 .
# Build stage: the release profile, with the lock file as committed.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
# Cargo.toml declares the bench targets, so their sources must exist to read the manifest.
COPY benches benches
RUN cargo build --release --locked --bin secrets-store-csi-driver \
 && strip target/release/secrets-store-csi-driver

# Runtime: distroless glibc base, no shell or package manager. The driver mounts tmpfs with the
# mount(2) syscall itself, so no `mount` binary is needed. It runs as root (privileged) in the
# DaemonSet because mounting into kubelet's pod directories requires it.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/secrets-store-csi-driver /secrets-store-csi-driver
ENTRYPOINT ["/secrets-store-csi-driver"]
CMD ["node"]
