-- Policy rules may name ICMP (`--proto icmp`: pings, which have no port), beside tcp, udp and any.
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt with every column as
-- the earlier migrations left it, and its id sequence carried over (no id is handed out twice).
-- Keep in step with ../postgres/0012_rule_icmp.sql.
CREATE TEMP TABLE policy_rules_seq AS SELECT seq FROM sqlite_sequence WHERE name = 'policy_rules';
CREATE TABLE policy_rules_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_kind TEXT    NOT NULL CHECK (subject_kind IN ('everyone', 'user', 'group')),
    subject_name TEXT,
    dest         TEXT    NOT NULL,
    port_lo      BIGINT  NOT NULL CHECK (port_lo >= 1 AND port_lo <= 65535),
    port_hi      BIGINT  NOT NULL CHECK (port_hi >= port_lo AND port_hi <= 65535),
    action       TEXT    NOT NULL CHECK (action IN ('allow', 'deny')),
    created_by   TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    proto        TEXT    NOT NULL DEFAULT 'tcp' CHECK (proto IN ('tcp', 'udp', 'icmp', 'any')),
    ports        TEXT    NOT NULL DEFAULT '',
    program      TEXT,
    local_user   TEXT
);
INSERT INTO policy_rules_new
    (id, subject_kind, subject_name, dest, port_lo, port_hi, action, created_by, created_at,
     proto, ports, program, local_user)
SELECT id, subject_kind, subject_name, dest, port_lo, port_hi, action, created_by, created_at,
       proto, ports, program, local_user
FROM policy_rules;
DROP TABLE policy_rules;
ALTER TABLE policy_rules_new RENAME TO policy_rules;

-- Ids of removed rules are never handed out again: the counter is the old table's.
DELETE FROM sqlite_sequence WHERE name = 'policy_rules';
INSERT INTO sqlite_sequence (name, seq) SELECT 'policy_rules', seq FROM policy_rules_seq;
DROP TABLE policy_rules_seq;
