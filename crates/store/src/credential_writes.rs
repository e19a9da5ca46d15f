//! Every store function that writes what authentication reads tells the
//! credential caches once it commits. PostgreSQL's triggers (migration
//! 0020) hear every write anyway; this keeps SQLite's single instance from
//! serving a change late because a new function forgot to say so.

/// Statements that change what a cached credential may do (the columns
/// migration 0020's triggers watch).
const CHANGES: &[&str] = &[
    "UPDATE api_keys SET",
    "DELETE FROM api_keys",
    "UPDATE users SET",
    "DELETE FROM users",
    "UPDATE tenants SET",
    "DELETE FROM tenants",
    "INTO tenant_limits",
    "DELETE FROM tenant_limits",
    "UPDATE identities SET",
    "DELETE FROM identities",
    "UPDATE token_families SET",
    "DELETE FROM token_families",
    "UPDATE user_totp SET",
    "DELETE FROM user_totp",
    "INTO passkeys",
    "DELETE FROM passkeys",
];

/// Functions that write those tables but nothing a credential depends on,
/// and why.
const EXEMPT: &[&str] = &[
    // last_used_at only.
    "api_keys::touch",
    // The look-alike key of an address.
    "users::set_skeleton",
    // Sets the status to itself (a row lock).
    "tenants::lock",
    // Expired or never-active rows only: nothing that can authenticate.
    "tokens::purge_expired",
    // Ended sessions only (revoked, or past their expiry): refused already.
    "retention::remove_sessions",
    // A family's expiry, which authentication does not read (the access token's own does).
    "tokens::extend_family",
    // A number's verification: not read by authentication.
    "identities::verify_number",
    // When the session last gave a second factor: carried by the access
    // token it issues, not read by authentication.
    "tokens::family_gave_factor",
    // TOTP tries, lock and last step: read by the second-factor check only.
    "mfa::take_try",
    "mfa::accept_step",
    "mfa::reset_tries",
];

const SOURCES: &[(&str, &str)] = &[
    ("api_keys", include_str!("api_keys.rs")),
    ("users", include_str!("users.rs")),
    ("tenants", include_str!("tenants.rs")),
    ("identities", include_str!("identities.rs")),
    ("tokens", include_str!("tokens.rs")),
    ("mfa", include_str!("mfa.rs")),
    ("passkeys", include_str!("passkeys.rs")),
];

#[test]
fn every_credential_write_tells_the_caches() {
    let mut missing = Vec::new();
    for (module, source) in SOURCES {
        // Each function, from its `fn` to the next one.
        let starts: Vec<usize> = source
            .match_indices("\nasync fn ")
            .chain(source.match_indices("\npub async fn "))
            .chain(source.match_indices("\npub fn "))
            .map(|(i, _)| i)
            .collect();
        let mut starts = starts;
        starts.sort_unstable();
        for (n, &start) in starts.iter().enumerate() {
            let body = &source[start..starts.get(n + 1).copied().unwrap_or(source.len())];
            let body: String =
                body.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            let name = body.split("fn ").nth(1).and_then(|s| s.split(['(', '<']).next()).unwrap_or("");
            let changes = CHANGES.iter().any(|c| body.contains(c));
            let tells = body.contains("credentials_changed(") || body.contains("changes_credentials_of(");
            // A private helper is covered by its callers (`users::set_password`).
            let delegated = !body.contains("sqlx::query") && !body.contains("Stmt::");
            let qualified = format!("{module}::{name}");
            if changes && !tells && !delegated && !EXEMPT.contains(&qualified.as_str()) {
                missing.push(qualified);
            }
        }
    }
    assert!(missing.is_empty(), "these write credentials without telling the caches: {missing:?}");
}
