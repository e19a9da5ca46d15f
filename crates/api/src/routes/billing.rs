//! Credits: the tenant's balance.

use axum::extract::State;
use axum::Json;
use palisade_core::{ApiError, Permission};
use serde::Serialize;
use utoipa::ToSchema;

use crate::extract::Auth;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct BalanceView {
    /// Integer minor units (e.g. cents).
    balance: i64,
}

#[utoipa::path(get, path = "/v1/balance", tag = "billing", security(("bearer" = [])),
    responses((status = 200, body = BalanceView)))]
pub async fn balance(State(state): State<AppState>, auth: Auth) -> Result<Json<BalanceView>, ApiError> {
    let scope = auth.scope(Permission::BillingRead).await?;
    let balance = palisade_store::credits::balance(state.db.reader(), &scope).await?;
    Ok(Json(BalanceView { balance }))
}
