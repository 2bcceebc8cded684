//! Liveness and readiness probes for orchestrators and load balancers, and the Prometheus metrics.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;

/// `GET /health/live`: the process is up and serving HTTP.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "pass" }))
}

/// `GET /health/ready`: the database answers, every migration is applied, every background worker runs (and
/// has beaten recently, for those that beat), and shutdown has not begun. 503 otherwise, naming what failed.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let (database, migrations) = match state.store.db.migrations_applied().await {
        Ok(true) => ("pass", "pass"),
        Ok(false) => ("pass", "fail"),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: database unreachable");
            ("fail", "unknown")
        }
    };
    let workers = state.workers.status();
    let workers_pass = workers.iter().all(|w| w.healthy);
    let shutting_down = state.workers.shutting_down();
    let pass = database == "pass" && migrations == "pass" && workers_pass && !shutting_down;
    let body = json!({
        "status": if pass { "pass" } else { "fail" },
        "checks": {
            "database": database,
            "migrations": migrations,
            "workers": if workers_pass { "pass" } else { "fail" },
            "shutdown": if shutting_down { "fail" } else { "pass" },
        },
        "workers": workers,
    });
    if pass {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics`: Prometheus text format (version 0.0.4).
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let text = state
        .metrics
        .render(
            &state.store.db,
            state.config.db_max_connections,
            &state.workers,
        )
        .await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
