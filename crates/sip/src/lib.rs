//! The SIP edge. So far its digest authentication: challenges, the
//! `Authorization` header, our own keyed nonces and the check of a
//! response, all pure (no I/O), so that the transports, the registrar and
//! the calls built on them (docs/plans/sip-edge.md) share one rule.

pub mod digest;
