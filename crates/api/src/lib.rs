//! The HTTP API: router, middleware, extractors, handlers and the OpenAPI
//! document generated from them.

pub mod abuse;
pub mod body;
pub mod credentials;
pub mod erasure;
pub mod extract;
pub mod metrics;
pub mod middleware;
mod openapi;
pub mod ops;
pub mod recovery;
pub mod reports;
pub mod retention;
pub mod routes;
pub mod state;

pub use routes::router;
pub use state::{AppState, MasterKey, Services};

/// A connection's place under the listener's caps (connections in total and
/// per address), put in each request's extensions by the server: a request
/// that turns its connection into a WebSocket holds it for as long as the
/// stream lives, so an upgraded connection still counts.
#[derive(Clone)]
pub struct ConnectionHold(pub std::sync::Arc<dyn std::any::Any + Send + Sync>);
