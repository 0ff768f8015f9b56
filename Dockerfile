# Builds shimgate-gateway and shimgate, then a slim runtime image with the
# deploy/ scripts docker-compose.yml runs.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p shimgate-cli

FROM debian:bookworm-slim
# curl: to try the VPN from inside a device container; busybox: the demo's web servers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl busybox \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/shimgate-gateway /src/target/release/shimgate /usr/local/bin/
COPY deploy/ /deploy/
EXPOSE 8443
CMD ["shimgate-gateway", "--help"]
