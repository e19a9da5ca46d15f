-- The tenant's own retention of finished webhook deliveries (NULL: the
-- operator's `webhooks.retention_days`).
ALTER TABLE tenants ADD COLUMN retention_webhooks_days INTEGER;
