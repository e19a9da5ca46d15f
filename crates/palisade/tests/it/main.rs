//! One integration binary: every test starts the real server on an
//! ephemeral port and talks HTTP to it. `backend_tests!` runs a test on
//! SQLite and on PostgreSQL; the PostgreSQL variant is ignored (reported as
//! skipped) when PALISADE_TEST_POSTGRES_URL is not set at build time.

#[macro_use]
mod common;

mod abuse;
mod accounts;
mod api_keys;
mod audit;
mod auth;
mod call_streams;
mod calls;
mod cli;
mod cluster;
mod concurrency;
mod connections;
mod credential_cache;
mod data_protection;
mod db_tls;
mod email_code;
mod events;
mod exports;
mod grants;
mod identities;
mod inbound;
mod input;
mod isolation;
mod logs;
mod mail;
mod messages;
mod mfa;
mod numbers;
mod oidc;
mod openapi;
mod operators;
mod passkeys;
mod recordings;
mod recovery;
mod redis_state;
mod retention;
mod sip;
mod sip_edge;
mod sip_sipp;
mod sip_srtp;
mod sip_stir;
mod sip_trunk;
mod sip_ua;
mod streams;
mod sysadmin;
mod tls;
mod trunks;
mod users;
mod webhook_cli;
mod webhooks;
