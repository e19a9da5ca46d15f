-- A phone number's erasure finds the tenant's messages and calls with it
-- through these, not by scanning the tenant's rows.
CREATE INDEX messages_to_number ON messages (tenant_id, to_number);
CREATE INDEX messages_from_number ON messages (tenant_id, from_number);
CREATE INDEX calls_to_number ON calls (tenant_id, to_number);
CREATE INDEX calls_from_number ON calls (tenant_id, from_number);
