-- Console sign-in state in the registry, not in one gateway's memory, so that with several
-- gateways behind one address an administrator stays signed in wherever a request lands, and a
-- password guesser gets no more attempts by spreading them over the gateways.
-- Keep in step with ../postgres/0010_console_state.sql.

-- A signed-in administrator. The key is the SHA-256 (hex) of the session cookie: the cookie
-- itself is stored nowhere. Times are unix seconds.
CREATE TABLE console_sessions (
    key_sha256  TEXT    PRIMARY KEY,
    admin       TEXT    NOT NULL,
    csrf        TEXT    NOT NULL,
    must_change BIGINT  NOT NULL CHECK (must_change IN (0, 1)),
    created_at  BIGINT  NOT NULL,
    last_at     BIGINT  NOT NULL,
    -- The outcome of the last action, shown once on the next page.
    flash_ok    BIGINT  CHECK (flash_ok IN (0, 1)),
    flash_text  TEXT
);
CREATE INDEX console_sessions_last ON console_sessions (last_at);

-- Token buckets for sign-in attempts, by source address (addr:IP) and by admin name (name:N).
CREATE TABLE console_throttle (
    name   TEXT    PRIMARY KEY,
    tokens REAL NOT NULL,
    at_ms  BIGINT  NOT NULL
);
