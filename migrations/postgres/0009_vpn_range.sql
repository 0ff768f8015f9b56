-- The VPN range is chosen at init (the `vpn_range` setting) instead of being 100.64.0.0/10, so a
-- device's address may be any IPv4 address; the code keeps it inside the chosen range. Only
-- relaxes a check: a gateway of the release before runs on this schema unchanged.
-- Keep in step with ../sqlite/0009_vpn_range.sql.
ALTER TABLE devices DROP CONSTRAINT devices_vpn_ip_check;
ALTER TABLE devices ADD CONSTRAINT devices_vpn_ip_check CHECK (vpn_ip > 0 AND vpn_ip < 4294967295);
