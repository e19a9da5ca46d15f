-- Retention of messages: past the tenant's period a message is soft
-- deleted (hidden from the API, restorable by the operator), and past the
-- grace period removed, its counts folded into the hourly usage archive
-- first, so usage keeps every hour.
ALTER TABLE messages ADD COLUMN deleted_at BIGINT;
-- The sweeper's scan: live messages by age (soft-deleted ones are not
-- stepped over again at every batch).
CREATE INDEX messages_live_age ON messages (tenant_id, created_at) WHERE deleted_at IS NULL;
CREATE INDEX messages_deleted ON messages (tenant_id, deleted_at);
-- The tenant's own period, within the operator's bounds (NULL: default).
ALTER TABLE tenants ADD COLUMN retention_messages_days INTEGER;
CREATE TABLE usage_archive (
    tenant_id TEXT NOT NULL,
    -- `messages`.
    kind TEXT NOT NULL,
    hour BIGINT NOT NULL,
    count BIGINT NOT NULL,
    units BIGINT NOT NULL,
    cost BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, kind, hour)
);
