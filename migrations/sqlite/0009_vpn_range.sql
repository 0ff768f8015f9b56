-- The VPN range is chosen at init (the `vpn_range` setting) instead of being 100.64.0.0/10, so a
-- device's address may be any IPv4 address; the code keeps it inside the chosen range. Only
-- relaxes a check: a gateway of the release before runs on this schema unchanged.
-- Keep in step with ../postgres/0009_vpn_range.sql.
--
-- SQLite cannot change a column's CHECK, so the table is rebuilt. Certificates and enrollment
-- tokens refer to devices, and foreign keys cannot be switched off inside the migration's
-- transaction: with their checks deferred to the commit, the old table is dropped (which counts
-- every reference as dangling) and the rows are then inserted into the new one under the same
-- ids (which settles each again).
PRAGMA defer_foreign_keys = ON;

CREATE TEMP TABLE devices_copy AS SELECT * FROM devices;
CREATE TEMP TABLE devices_seq AS SELECT seq FROM sqlite_sequence WHERE name = 'devices';

CREATE TABLE devices_new (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    name                  TEXT    NOT NULL UNIQUE,
    user_id               BIGINT  NOT NULL REFERENCES users (id),
    vpn_ip                BIGINT  NOT NULL UNIQUE CHECK (vpn_ip > 0 AND vpn_ip < 4294967295),
    created_at            BIGINT  NOT NULL,
    last_seen             BIGINT,
    revoked_at            BIGINT,
    approval_requested_at BIGINT,
    last_gateway          TEXT
);
DROP TABLE devices;
ALTER TABLE devices_new RENAME TO devices;
CREATE INDEX devices_user ON devices (user_id);
INSERT INTO devices (id, name, user_id, vpn_ip, created_at, last_seen, revoked_at,
                     approval_requested_at, last_gateway)
    SELECT id, name, user_id, vpn_ip, created_at, last_seen, revoked_at, approval_requested_at,
           last_gateway
    FROM devices_copy;

-- Ids of deleted devices are never handed out again: the counter is the old table's.
DELETE FROM sqlite_sequence WHERE name = 'devices';
INSERT INTO sqlite_sequence (name, seq) SELECT 'devices', seq FROM devices_seq;

DROP TABLE devices_copy;
DROP TABLE devices_seq;
