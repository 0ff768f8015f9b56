-- shimgate registry schema (SQLite). Times are unix seconds; ids are 64-bit integers.
-- Keep in step with ../postgres/0001_registry.sql: the Rust code runs the same queries on both.

CREATE TABLE users (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE user_groups (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE group_members (
    group_id    BIGINT  NOT NULL REFERENCES user_groups (id) ON DELETE CASCADE,
    user_id     BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON group_members (user_id);

-- Only the SHA-256 of the secret is stored; the id is public.
CREATE TABLE enrollment_tokens (
    id            TEXT    PRIMARY KEY,
    secret_sha256 BLOB    NOT NULL,
    user_id       BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_by    TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL,
    uses_left     BIGINT  NOT NULL CHECK (uses_left >= 0),
    cancelled_at  BIGINT
);

-- vpn_ip is the IPv4 address as an integer, inside 100.64.0.0/10 minus network and broadcast.
CREATE TABLE devices (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    user_id     BIGINT  NOT NULL REFERENCES users (id),
    vpn_ip      BIGINT  NOT NULL UNIQUE CHECK (vpn_ip > 1681915904 AND vpn_ip < 1686110207),
    created_at  BIGINT  NOT NULL,
    last_seen   BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX devices_user ON devices (user_id);

CREATE TABLE certificates (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id          BIGINT  NOT NULL REFERENCES devices (id),
    serial_hex         TEXT    NOT NULL,
    fingerprint_sha256 TEXT    NOT NULL UNIQUE,
    not_after          BIGINT  NOT NULL,
    created_at         BIGINT  NOT NULL,
    revoked_at         BIGINT
);
CREATE INDEX certificates_device ON certificates (device_id);
CREATE INDEX certificates_not_after ON certificates (not_after);

-- subject_kind: everyone | user | group (subject_name NULL for everyone).
CREATE TABLE policy_rules (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_kind TEXT    NOT NULL CHECK (subject_kind IN ('everyone', 'user', 'group')),
    subject_name TEXT,
    dest         TEXT    NOT NULL,
    port_lo      BIGINT  NOT NULL CHECK (port_lo >= 1 AND port_lo <= 65535),
    port_hi      BIGINT  NOT NULL CHECK (port_hi >= port_lo AND port_hi <= 65535),
    action       TEXT    NOT NULL CHECK (action IN ('allow', 'deny')),
    created_by   TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL
);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT  NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    source_addr TEXT,
    detail      TEXT    NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at, id);

-- One row. Every change that gateways cache (devices, certificates, policy, group
-- membership) bumps seq in the same transaction. SQLite has no NOTIFY: readers poll it.
CREATE TABLE change_seq (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT  NOT NULL
);
INSERT INTO change_seq (id, seq) VALUES (1, 0);
