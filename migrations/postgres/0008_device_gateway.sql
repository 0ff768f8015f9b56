-- Which gateway a device last connected to (its heartbeat name, see 0007_gateways.sql): with
-- several gateways on one registry, the console and `device list` say where each device is.
-- Keep in step with ../sqlite/0008_device_gateway.sql.
ALTER TABLE devices ADD COLUMN last_gateway TEXT;
