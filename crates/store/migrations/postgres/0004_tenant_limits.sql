-- Per-tenant overrides of the abuse controls (rate limits, address lists),
-- set by the operator. One JSON document per tenant; absent means the
-- configured defaults.
CREATE TABLE tenant_limits (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
    settings TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
