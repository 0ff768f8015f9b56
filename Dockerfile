# Builds shimgate-gateway, shimgate and the socket shim's library, then a slim runtime image with the
# deploy/ scripts docker-compose.yml runs (as the unprivileged user `shimgate`).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# 1. The dependencies, in layers of their own: they are rebuilt only when a Cargo.toml or
# Cargo.lock changes, not when the project's code does. The workspace's crates are stubs here.
COPY Cargo.toml Cargo.lock ./
COPY wire/Cargo.toml wire/
COPY host/Cargo.toml host/
COPY registry/Cargo.toml registry/
COPY gateway/Cargo.toml gateway/
COPY proxy/Cargo.toml proxy/
COPY preload/Cargo.toml preload/
COPY cli/Cargo.toml cli/
COPY tests/Cargo.toml tests/
# Optional: a `cargo vendor` copy of the dependencies and the .cargo/config.toml that points
# cargo at it, for a build without crates.io (tests/docker/compose.sh makes one). The globs
# may match nothing; Cargo.lock is named too because the classic builder wants one file.
COPY Cargo.lock .carg[o] .cargo/
COPY Cargo.lock vendo[r] vendor/
# Each crate becomes an empty library and empty programs, the dependencies are built, then the
# stubs go, and so do their build records, so that the real crates are built in step 2.
RUN set -eu; \
    for crate in wire host registry gateway proxy preload cli tests; do \
        mkdir -p "$crate/src"; touch "$crate/src/lib.rs"; \
        for target in $(sed -n 's/^path *= *"\(.*\)"/\1/p' "$crate/Cargo.toml"); do \
            mkdir -p "$(dirname "$crate/$target")"; echo 'fn main() {}' >"$crate/$target"; \
        done; \
    done; \
    cargo build --release --locked -p shimgate-cli -p shimgate-preload; \
    rm -rf wire host registry gateway proxy preload cli tests \
        target/release/.fingerprint/shimgate-* target/release/deps/*shimgate*

# 2. The project's code.
COPY . .
RUN cargo build --release --locked -p shimgate-cli -p shimgate-preload

FROM debian:bookworm-slim
# curl: to try the VPN from inside a device container, and the gateway's health check;
# busybox: the demo's web servers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl busybox \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
# The services need no root: they run as `shimgate`. The directories the compose file mounts
# named volumes on are made here, owned by it, so that a new volume starts with that owner.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/shimgate --shell /usr/sbin/nologin shimgate \
    && mkdir -p /var/lib/shimgate /config /shared /srv/intranet /srv/bob \
    && chown shimgate:shimgate /var/lib/shimgate /config /shared /srv/intranet /srv/bob \
    && chmod 700 /var/lib/shimgate /config
# the socket shim's library goes next to `shimgate`, where `shimgate run` looks for it
COPY --from=build /src/target/release/shimgate-gateway /src/target/release/shimgate /src/target/release/libshimgate_preload.so /usr/local/bin/
COPY deploy/ /deploy/
USER shimgate
EXPOSE 8443 8080
CMD ["shimgate-gateway", "--help"]
