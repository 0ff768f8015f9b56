#!/bin/sh
# The gateway service of docker-compose.yml (and of tests/e2e/compose.rs,
# which runs this same file in a network namespace). First start: the CA,
# the demo's policy, one enrollment code per device in $SHIMGATE_SHARED, and
# the console's first admin (its one-time password goes to this log:
# `docker compose logs gateway`). Every start: serve, console included.
set -eu
umask 077
if [ ! -f "$SHIMGATE_GATEWAY_DIR/gateway.toml" ]; then
    shimgate-gateway init --name "$GATEWAY_NAME" --listen "0.0.0.0:$GATEWAY_PORT"
    shimgate-gateway migrate
    shimgate-gateway policy add allow --to "$INTRANET_NAME" --ports 80
    shimgate-gateway policy add allow --to "bob.vpn.internal" --ports "$BOB_EXPORT"
    mkdir -p "$SHIMGATE_SHARED"
    for device in $DEVICES; do
        # written then renamed: a device never reads half a code
        shimgate-gateway token create --user "$device" --expires 1h --quiet \
            >"$SHIMGATE_SHARED/.$device.code"
        mv "$SHIMGATE_SHARED/.$device.code" "$SHIMGATE_SHARED/$device.code"
    done
    shimgate-gateway admin create "$CONSOLE_ADMIN"
fi
# Plain HTTP on the container's network: docker-compose.yml publishes it on
# the host's loopback only.
exec shimgate-gateway serve --console "$CONSOLE_LISTEN" --console-url "$CONSOLE_URL" --insecure-http
