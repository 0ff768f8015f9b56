# The Rust builder image the Dockerfile names (rust:*-slim-bookworm), made by
# tests/docker/lib.sh without a registry: Debian bookworm, gcc, and the toolchain of the
# machine running the test (copied in as toolchain/), laid out as in the official image.
FROM @BASE@
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY toolchain/ /usr/local/rust/
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin \
    && for b in /usr/local/rust/bin/*; do ln -s "$b" /usr/local/cargo/bin/; done \
    && cargo --version && rustc --version
