use axum::extract::State;
use axum::Json;
use http::StatusCode;
use serde_json::{json, Value};

use palisade_guard::state::Health;

use crate::state::AppState;

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers. With a shared state (Redis) its reach is shown
/// too: unreachable is `degraded`, still 200, because the instance serves
/// (with the failure policy) and every instance shares the one Redis: a 503
/// would take them all out of the load balancer at once.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let shared = state.abuse.state.health();
    let db = state.db.ping().await;
    let mut body = match (db, shared) {
        (false, _) => json!({ "status": "unavailable" }),
        (true, Health::Degraded) => json!({ "status": "degraded" }),
        (true, _) => json!({ "status": "ok" }),
    };
    match shared {
        Health::InProcess => {}
        Health::Shared => body["redis"] = json!("ok"),
        Health::Degraded => body["redis"] = json!("unreachable"),
    }
    (if db { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}
