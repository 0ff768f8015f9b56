# A stand-in for the official Postgres image, made by tests/docker/lib.sh without a
# registry: Debian bookworm's postgresql-15, run as docker-compose.yml runs the official one
# (POSTGRES_HOST_AUTH_METHOD=trust, data in /var/lib/postgresql/data, pg_isready).
FROM @BASE@
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* /var/lib/postgresql/15 /etc/postgresql/15 \
    && mkdir -p /var/run/postgresql /var/lib/postgresql/data \
    && chown postgres:postgres /var/run/postgresql /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["sh", "/usr/local/bin/docker-entrypoint.sh"]
EXPOSE 5432
CMD ["postgres"]
