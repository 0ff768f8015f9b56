-- A rule's ports as the admin wrote them: a list of ports and ranges (22,53,8000-8100). Empty
-- for rules written before lists existed, which mean port_lo-port_hi; for a list, port_lo and
-- port_hi hold its lowest and highest port. Keep in step with ../sqlite/0004_rule_port_lists.sql.
ALTER TABLE policy_rules ADD COLUMN ports TEXT NOT NULL DEFAULT '';
