#!/bin/sh
# A device service of docker-compose.yml (alice, bob; and of
# tests/e2e/compose.rs). First start: enroll with the code the gateway
# wrote for this device. If EXPORT_PORT is set, serve a small web page on
# 127.0.0.1:EXPORT_PORT and offer it to the VPN. Then run the proxy
# (SOCKS5 on 127.0.0.1:1080 inside the container).
set -eu
if [ ! -f "$SHIMGATE_HOME/config.toml" ]; then
    while [ ! -s "$SHIMGATE_SHARED/$DEVICE.code" ]; do
        echo "$DEVICE: waiting for the gateway's enrollment code in $SHIMGATE_SHARED" >&2
        sleep 1
    done
    until shimgate enroll "$(cat "$SHIMGATE_SHARED/$DEVICE.code")" --name "$DEVICE"; do
        echo "$DEVICE: enrollment failed; retrying (is the gateway up?)" >&2
        sleep 2
    done
fi
if [ -n "${EXPORT_PORT:-}" ]; then
    mkdir -p "$SERVICE_DIR"
    printf '<!doctype html><title>%s</title><h1>Hello from %s</h1><p>Served on %s and reached peer to peer.</p>\n' \
        "$DEVICE" "$DEVICE" "$DEVICE.vpn.internal:$EXPORT_PORT" >"$SERVICE_DIR/index.html"
    busybox httpd -p "127.0.0.1:$EXPORT_PORT" -h "$SERVICE_DIR"
    shimgate export "$EXPORT_PORT"
fi
exec shimgate up
