//! The HTTP API: router, middleware, extractors, handlers and the OpenAPI
//! document generated from them.

pub mod abuse;
pub mod body;
pub mod credentials;
pub mod extract;
pub mod metrics;
pub mod middleware;
mod openapi;
pub mod ops;
pub mod recovery;
pub mod reports;
pub mod routes;
pub mod state;

pub use routes::router;
pub use state::{AppState, MasterKey, Services};
