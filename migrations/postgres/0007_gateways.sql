-- Every gateway serving on this registry, as it last said in its heartbeat (once a second):
-- `shimgate-gateway gateway list` shows them, and one whose heartbeat is older than a few
-- seconds is down. Times are the database's own clock (unix seconds), so that gateways on hosts
-- whose clocks differ still agree. Keep in step with ../sqlite/0007_gateways.sql.
CREATE TABLE gateways (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    region TEXT NOT NULL DEFAULT '',
    version TEXT NOT NULL,
    devices_online BIGINT NOT NULL DEFAULT 0,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
