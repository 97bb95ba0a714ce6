# syntax=docker/dockerfile:1
# The gateway's image: built on Debian 12 (glibc 2.36), run on distroless cc-debian12, which has
# the same glibc, as uid/gid 65532. Both bases are pinned by digest; bump tag and digest together.
# CI has no container engine: scripts/check-deploy lints this file with hadolint and checks the
# release binary's libraries and glibc symbol versions against this runtime (scripts/check-binary).
#
#   docker build --build-arg VERSION=$(git describe --tags) --build-arg REVISION=$(git rev-parse HEAD) .

FROM rust:1.95-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082 AS build
WORKDIR /src
# query! macros read the committed .sqlx/ data; the build never needs a database.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

# The production build: --no-default-features leaves out the upstream simulator and its
# unauthenticated admin API (the `sandbox` feature), so only its manifest is copied, for the
# workspace and the lock file, with an empty library that is never compiled.
#
# Dependencies alone, with stub sources: this layer is rebuilt only when a Cargo.toml or
# Cargo.lock change. The stubs' own artefacts are removed so the real sources always rebuild,
# whatever their modification times.
COPY Cargo.toml Cargo.lock ./
COPY crates/upstream-sandbox/Cargo.toml crates/upstream-sandbox/
COPY .cargo/ .cargo/
RUN mkdir -p src benches crates/upstream-sandbox/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs crates/upstream-sandbox/src/lib.rs \
    && echo 'fn main() {}' > benches/cpu_path.rs \
    && cargo build --release --locked --no-default-features --bin profile-gateway \
    && rm -rf src benches \
        target/release/.fingerprint/profile-gateway-* \
        target/release/deps/profile_gateway-* \
        target/release/deps/libprofile_gateway-*

COPY .sqlx/ .sqlx/
COPY migrations/ migrations/
COPY benches/ benches/
COPY config/ config/
COPY src/ src/
RUN cargo build --release --locked --no-default-features --bin profile-gateway \
    && install -D -m 0755 target/release/profile-gateway /out/profile-gateway

# glibc 2.36 (Debian 12's libc6 2.36-9+deb12u*), libgcc_s, libstdc++, CA certificates, tzdata;
# no shell, no package manager. The :nonroot variant's user is 65532.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="profile-gateway" \
      org.opencontainers.image.description="One endpoint to change a user's payment profile at every provider" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="UNLICENSED" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/profile-gateway /usr/local/bin/profile-gateway
USER 65532:65532
# 8080: the API; 9090: /metrics (telemetry.metrics_listen).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/profile-gateway"]
CMD ["serve"]
