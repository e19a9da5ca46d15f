//! Credentials: generation and hashing of opaque tokens, password hashing
//! and policy, access-token (JWT) signing, and telling credential kinds apart.

pub mod code;
pub mod credential;
pub mod grant;
pub mod jwt;
pub mod password;
pub mod token;
pub mod totp;

pub use credential::Credential;
pub use jwt::{AccessClaims, JwtKeys, Refused};
