//! Request guards that need no database: input sanitization and limits,
//! log redaction, client-IP resolution and CIDR lists.

pub mod email;
pub mod input;
pub mod limits;
pub mod net;
pub mod phone;
pub mod redact;
pub mod ssrf;
pub mod state;
pub mod waf;
