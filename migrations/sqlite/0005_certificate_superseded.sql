-- When a renewed certificate was first used: from then on the device's older certificates are
-- refused for new connections (a copied old key can't live on until its expiry); connections
-- they already hold go on. Keep in step with ../postgres/0005_certificate_superseded.sql.
ALTER TABLE certificates ADD COLUMN superseded_at BIGINT;
