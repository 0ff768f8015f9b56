# Builds shimgate-gateway, shimgate and the socket shim's library, then a slim runtime image with the
# deploy/ scripts docker-compose.yml runs.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p shimgate-cli -p shimgate-preload

FROM debian:bookworm-slim
# curl: to try the VPN from inside a device container; busybox: the demo's web servers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl busybox \
    && rm -rf /var/lib/apt/lists/*
# the socket shim's library goes next to `shimgate`, where `shimgate run` looks for it
COPY --from=build /src/target/release/shimgate-gateway /src/target/release/shimgate /src/target/release/libshimgate_preload.so /usr/local/bin/
COPY deploy/ /deploy/
EXPOSE 8443
CMD ["shimgate-gateway", "--help"]
