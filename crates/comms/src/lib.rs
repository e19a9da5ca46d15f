//! The communications domain: message segmentation and the carriers that
//! deliver messages and place calls.

pub mod carrier;
pub mod media;
pub mod segments;
pub mod srtp_echo;

pub use carrier::{CallAnswer, Carrier, CarrierError, NoMedia, OutboundCall, OutboundMessage, SandboxCarrier};
pub use media::MediaLeg;
