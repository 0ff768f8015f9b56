#!/bin/sh
# The official Postgres image's entry point, as far as docker-compose.yml uses it: a new
# cluster in $PGDATA (superuser postgres, every host trusted when
# POSTGRES_HOST_AUTH_METHOD=trust), then the server as user postgres on every address.
set -eu
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups sh "$0" "$@"
fi
if [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
    echo "this test image supports POSTGRES_HOST_AUTH_METHOD=trust only" >&2
    exit 1
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb -D "$PGDATA" -U postgres -A trust --no-sync >/dev/null
    echo "host all all all trust" >>"$PGDATA/pg_hba.conf"
fi
exec "$@" -D "$PGDATA" -c listen_addresses='*'
