#!/bin/sh
# The intranet web app of docker-compose.yml: on a network only the gateway
# joins, so devices reach it only through the gateway.
set -eu
mkdir -p "$WWW"
printf '<!doctype html><title>Intranet</title><h1>Welcome to the intranet</h1><p>Reached through the shimgate gateway.</p>\n' \
    >"$WWW/index.html"
exec busybox httpd -f -p 80 -h "$WWW"
