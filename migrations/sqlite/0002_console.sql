-- The web console (SQLite). Keep in step with ../postgres/0002_console.sql.

-- Console administrators. password_hash is an argon2id PHC string; the password itself is
-- never stored. one_time = 1: the password was generated and shown once; it must be changed
-- at the next sign-in.
CREATE TABLE console_admins (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    one_time      BIGINT  NOT NULL DEFAULT 0 CHECK (one_time IN (0, 1))
);

-- Invitations: a link carrying a one-time secret (only its SHA-256 is stored) that lets its
-- holder name a device and get an enrollment code. For a user (user_id) or for a group
-- (group_name: the holder also names the user, who joins the group), reusable up to max_uses.
CREATE TABLE invitations (
    id            TEXT    PRIMARY KEY,
    secret_sha256 BLOB    NOT NULL,
    user_id       BIGINT  REFERENCES users (id) ON DELETE CASCADE,
    group_name    TEXT,
    created_by    TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL,
    max_uses      BIGINT  NOT NULL CHECK (max_uses >= 1),
    uses_left     BIGINT  NOT NULL CHECK (uses_left >= 0),
    cancelled_at  BIGINT,
    CHECK ((user_id IS NULL) <> (group_name IS NULL))
);

-- An enrollment token made by an invitation names its device and remembers its invitation;
-- device_id is set once a device has enrolled with the token.
ALTER TABLE enrollment_tokens ADD COLUMN device_name TEXT;
ALTER TABLE enrollment_tokens ADD COLUMN invitation_id TEXT REFERENCES invitations (id) ON DELETE SET NULL;
ALTER TABLE enrollment_tokens ADD COLUMN device_id BIGINT REFERENCES devices (id);

-- API tokens for /api/v1: the id is public, only the secret's SHA-256 is stored.
CREATE TABLE api_tokens (
    id            TEXT    PRIMARY KEY,
    secret_sha256 BLOB    NOT NULL,
    name          TEXT    NOT NULL,
    created_by    TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    last_used     BIGINT,
    revoked_at    BIGINT
);

-- Gateway-wide settings, name -> text value (e.g. require_approval = 'true').
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

-- Set when a device enrolled while new devices needed an administrator's approval; cleared
-- when approved. Until then its certificates are refused like revoked ones.
ALTER TABLE devices ADD COLUMN approval_requested_at BIGINT;

CREATE INDEX audit_log_actor ON audit_log (actor);
CREATE INDEX audit_log_action ON audit_log (action);
