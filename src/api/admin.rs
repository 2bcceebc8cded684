//! `/admin/sync`: the state of EHR sync (queue depth, oldest pending age, last success and error per EHR, dead
//! letters with the EHR's OperationOutcome), retries of dead letters, and recording a patient's authorization to
//! disclose psychotherapy notes to an EHR.
//!
//! Authorized for administrators (a user token with the `admin` role) and for tokens carrying the
//! `kap/sync.admin` scope. `system/*.cruds` alone is not enough: the queue shows which records move where.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::response::json_response;
use crate::auth::access::Access;
use crate::error::{Error, ErrorKind};
use crate::sync::outbox;

pub use crate::auth::access::SYNC_ADMIN_SCOPE;

fn require_admin(access: &Access) -> Result<(), Error> {
    if access.admin || access.scopes.contains(SYNC_ADMIN_SCOPE) {
        Ok(())
    } else {
        let mut e = Error::new(
            ErrorKind::Forbidden,
            format!("/admin/sync needs an administrator or the {SYNC_ADMIN_SCOPE} scope"),
        );
        e.www_authenticate = Some(format!(
            "Bearer realm=\"kap-gateway\", error=\"insufficient_scope\", scope=\"{SYNC_ADMIN_SCOPE}\""
        ));
        Err(e)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// How many dead letters to list (default 100, at most 1000).
    #[serde(default)]
    dead_letters: Option<i64>,
}

/// `GET /admin/sync`: queue depth, oldest pending age and last success/error per EHR; dead letters.
pub async fn status(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    query: web::Query<StatusQuery>,
) -> Result<HttpResponse, Error> {
    require_admin(&access)?;
    let ehrs = crate::sync::config::names_and_urls(&state.config.ehr);
    let limit = query.dead_letters.unwrap_or(100).clamp(0, 1000);
    let status = outbox::status(&state.store.db, &ehrs, limit).await?;
    let body = serde_json::to_value(&status).map_err(Error::internal)?;
    Ok(json_response(&req, StatusCode::OK, &body))
}

/// `GET /admin/sync/metrics`: the same figures as Prometheus text (queue depth, oldest pending age, dead
/// letters, last success and error per EHR).
pub async fn metrics(state: web::Data<AppState>, access: Access) -> Result<HttpResponse, Error> {
    require_admin(&access)?;
    let ehrs = crate::sync::config::names_and_urls(&state.config.ehr);
    let status = outbox::status(&state.store.db, &ehrs, 0).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(outbox::prometheus(&status)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryQuery {
    /// One dead letter, by its sequence number.
    #[serde(default)]
    seq: Option<i64>,
    /// The dead letters of one EHR.
    #[serde(default)]
    ehr: Option<String>,
}

/// `POST /admin/sync/retry[?seq=N | ?ehr=NAME]`: puts dead letters back in the queue (all of them without a
/// parameter).
pub async fn retry(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    query: web::Query<RetryQuery>,
) -> Result<HttpResponse, Error> {
    require_admin(&access)?;
    if let Some(ehr) = &query.ehr
        && !state.config.ehr.iter().any(|e| &e.name == ehr)
    {
        return Err(Error::not_found(format!(
            "No EHR named {ehr:?} is configured"
        )));
    }
    let n = outbox::retry_dead(&state.store.db, query.seq, query.ehr.as_deref()).await?;
    if query.seq.is_some() && n == 0 {
        return Err(Error::not_found(format!(
            "No dead letter with seq {}",
            query.seq.unwrap_or_default()
        )));
    }
    Ok(json_response(&req, StatusCode::OK, &json!({"requeued": n})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationBody {
    /// Local Patient id.
    patient: String,
    /// EHR name, or `*` for every EHR.
    ehr: String,
    /// Where the signed authorization is kept (a document id, a scan's location).
    #[serde(default)]
    reference: Option<String>,
}

/// `POST /admin/sync/authorizations`: records that a patient authorized disclosure of their psychotherapy notes to
/// an EHR; notes withheld so far are queued again.
pub async fn authorize(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    require_admin(&access)?;
    let b: AuthorizationBody = serde_json::from_slice(&body).map_err(|e| {
        Error::bad_request(format!(
            "The body must be {{\"patient\": \"<id>\", \"ehr\": \"<name>|*\", \"reference\": \"…\"}}: {e}"
        ))
    })?;
    if b.ehr != "*" && !state.config.ehr.iter().any(|e| e.name == b.ehr) {
        return Err(Error::not_found(format!(
            "No EHR named {:?} is configured",
            b.ehr
        )));
    }
    if state
        .store
        .current_direct("Patient", &b.patient)
        .await?
        .is_none_or(|p| p.deleted)
    {
        return Err(Error::not_found(format!(
            "Patient/{} is not known",
            b.patient
        )));
    }
    let n = outbox::authorize_disclosure(
        &state.store.db,
        &b.patient,
        &b.ehr,
        &access.subject,
        b.reference.as_deref(),
    )
    .await?;
    Ok(json_response(
        &req,
        StatusCode::CREATED,
        &json!({"patient": b.patient, "ehr": b.ehr, "requeued": n}),
    ))
}
