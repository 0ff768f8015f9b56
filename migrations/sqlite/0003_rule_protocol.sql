-- Policy rules name a protocol. Rules written before UDP existed keep meaning TCP, so nothing
-- that was refused becomes allowed by an upgrade. Keep in step with ../postgres/0003_rule_protocol.sql.
ALTER TABLE policy_rules ADD COLUMN proto TEXT NOT NULL DEFAULT 'tcp' CHECK (proto IN ('tcp', 'udp', 'any'));
