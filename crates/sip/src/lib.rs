//! The SIP edge: listeners, the flood guard and message limits in front of
//! a maintained SIP stack (rsipstack, used here only), then REGISTER (and
//! next INVITE) translated to and from the transport-neutral services
//! (`palisade-voice`, `palisade-admission`). Digest authentication is
//! `palisade-digest`'s, its abuse rules `palisade-voice`'s.

pub mod calls;
pub mod counts;
pub mod edge;
pub mod gate;
mod inbound;
pub mod message;
pub mod trunk;

pub use edge::{start, Edge, Services};
