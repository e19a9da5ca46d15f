//! Request guards that need no database: input sanitization and limits,
//! log redaction, client-IP resolution and CIDR lists.

pub mod input;
pub mod net;
pub mod redact;
