//! Liveness and readiness probes for orchestrators and load balancers.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;

/// `GET /health/live`: the process is up and serving HTTP.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "pass" }))
}

/// `GET /health/ready`: the database answers and every migration is applied.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    match state.store.db.migrations_applied().await {
        Ok(true) => HttpResponse::Ok().json(
            json!({ "status": "pass", "checks": { "database": "pass", "migrations": "pass" } }),
        ),
        Ok(false) => HttpResponse::ServiceUnavailable().json(
            json!({ "status": "fail", "checks": { "database": "pass", "migrations": "fail" } }),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: database unreachable");
            HttpResponse::ServiceUnavailable()
                .json(json!({ "status": "fail", "checks": { "database": "fail" } }))
        }
    }
}
