-- Recovery after a stop. Each running instance notes when it was last
-- seen; a live call belongs to the instance that drives it, and one whose
-- instance is no longer seen is ended by another (it would otherwise hold
-- its concurrent-call slot and prepaid minute for ever).
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);
ALTER TABLE calls ADD COLUMN instance_id TEXT;
CREATE INDEX calls_live ON calls (instance_id) WHERE status IN ('queued', 'ringing', 'in_progress');
-- Messages not handed to a carrier yet: a few at any moment. One queued
-- for long was interrupted before the hand-over; it fails, refunded.
CREATE INDEX messages_queued ON messages (updated_at) WHERE status = 'queued';
