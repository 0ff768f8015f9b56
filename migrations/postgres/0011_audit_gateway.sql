-- Which gateway wrote an audit entry (its heartbeat name, see 0007_gateways.sql): with several
-- gateways on one registry, every change says where it was made, so that what a stolen gateway
-- did can be told apart. NULL: an admin command run against the registry directly.
-- Keep in step with ../sqlite/0011_audit_gateway.sql.
ALTER TABLE audit_log ADD COLUMN gateway TEXT;
