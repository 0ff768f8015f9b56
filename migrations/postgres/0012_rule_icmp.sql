-- Policy rules may name ICMP (`--proto icmp`: pings, which have no port), beside tcp, udp and any.
-- Keep in step with ../sqlite/0012_rule_icmp.sql.
ALTER TABLE policy_rules DROP CONSTRAINT IF EXISTS policy_rules_proto_check;
ALTER TABLE policy_rules ADD CONSTRAINT policy_rules_proto_check
    CHECK (proto IN ('tcp', 'udp', 'icmp', 'any'));
