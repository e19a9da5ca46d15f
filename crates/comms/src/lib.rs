//! The communications domain: message segmentation and the carriers that
//! deliver messages and place calls.

pub mod carrier;
pub mod segments;

pub use carrier::{CallAnswer, Carrier, CarrierError, OutboundCall, OutboundMessage, SandboxCarrier};
