//! Audits every `/fhir` (and later `/kap`) request in one place: after the handler has answered, the request's
//! access context, route and status — plus the patients the handler reports — become an AuditEvent, committed
//! before the response is sent (https://profiles.ihe.net/ITI/BALP/).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};

use super::AppState;
use crate::audit::{AuditRecord, audit_row};
use crate::auth::access::Access;
use crate::error::Error;

/// What a handler knows that the audit needs: the patients whose data it touched.
#[derive(Debug, Clone, Default)]
pub struct AuditInfo {
    pub patients: Vec<String>,
    /// Overrides the interaction derived from the route (e.g. `batch` vs `transaction`).
    pub interaction: Option<&'static str>,
}

/// The FHIR interaction of a route pattern and method, or `None` for routes that are not audited (public ones).
/// Also names the interaction of the request's trace span.
pub(crate) fn interaction(method: &Method, pattern: &str) -> Option<&'static str> {
    Some(match (method.as_str(), pattern) {
        (_, "/fhir/metadata") => return None,
        ("GET", "/fhir/{type}/{id}") => "read",
        ("GET", "/fhir/{type}/{id}/_history/{vid}") => "vread",
        ("GET", "/fhir/{type}/{id}/_history") => "history-instance",
        ("GET", "/fhir/{type}/_history") => "history-type",
        ("GET", "/fhir/_history") => "history-system",
        ("GET", "/fhir/{type}") | ("POST", "/fhir/{type}/_search") => "search-type",
        ("POST", "/fhir/{type}") => "create",
        // $everything and the bulk export (kick-off, status, cancel, files) are operations.
        ("GET" | "DELETE", "/fhir/$export-status/{job}") => "operation",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        ("POST", "/fhir") => "transaction",
        ("GET", p) if p.starts_with("/kap/v1/") && p.ends_with("{id}") => "read",
        ("GET", p) if p.starts_with("/kap/v1/") => "search-type",
        ("POST", p) if p.starts_with("/kap/v1/") => "create",
        _ if pattern.starts_with("/kap/") => "operation",
        _ if pattern.starts_with("/fhir/") || pattern == "/fhir" => "operation",
        _ => return None,
    })
}

/// Middleware: runs the handler, then records the AuditEvent and waits for it to be committed.
pub async fn audit_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let pattern = req.match_pattern();
    let interaction_of_route = pattern
        .as_deref()
        .and_then(|p| interaction(req.method(), p));
    let Some(route_interaction) = interaction_of_route else {
        return next.call(req).await;
    };
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let parameter_names: Vec<String> = if route_interaction == "search-type" {
        let mut names: Vec<String> = url::form_urlencoded::parse(req.query_string().as_bytes())
            .map(|(k, _)| k.into_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    } else {
        Vec::new()
    };
    let res = next.call(req).await?;
    let Some(state) = state else {
        return Ok(res);
    };
    // Path parameters exist only once the router has run.
    let resource_type = res.request().match_info().get("type").map(str::to_owned);
    let id = res.request().match_info().get("id").map(str::to_owned);
    let access = res.request().extensions().get::<Access>().cloned();
    let info = res
        .response()
        .extensions()
        .get::<AuditInfo>()
        .cloned()
        .unwrap_or_default();
    let record = AuditRecord {
        interaction: info.interaction.unwrap_or(route_interaction),
        resource_type: resource_type.as_deref(),
        id: id.as_deref(),
        patients: info.patients,
        parameter_names,
        status: res.status().as_u16(),
    };
    let row = audit_row(access.as_ref(), None, &record)?;
    let span = tracing::info_span!("audit.write", fhir.interaction = record.interaction);
    if let Err(e) = tracing::Instrument::instrument(state.audit.record(row), span).await {
        // Nothing leaves unaudited: the caller gets a 500 instead of the data.
        let e: Error = e;
        return Err(e.into());
    }
    Ok(res)
}
