//! The SIP rules behind both the HTTP routes and the SIP edge: digest
//! credentials ([`credentials`]), digest authentication and its abuse
//! rules ([`auth`]), registrations ([`registrar`]) and the media security
//! of offers and answers ([`media`]). No
//! transport here: each side only translates its protocol to and from
//! these functions.

pub mod auth;
pub mod credentials;
pub mod inbound;
pub mod media;
pub mod registrar;
pub mod trunks;

#[cfg(test)]
mod tests;

use palisade_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum VoiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed digest key that does not open: the data key changed or the
    /// row was altered. Never shown to a client.
    #[error("a sealed SIP credential does not open: {0}")]
    Sealed(String),
}

pub type Result<T> = std::result::Result<T, VoiceError>;
