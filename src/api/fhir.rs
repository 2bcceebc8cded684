//! Handlers of the FHIR REST API under `/fhir`, one per interaction (https://hl7.org/fhir/R4/http.html):
//! extract, call the service once, respond.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::AppState;
use super::audit::AuditInfo;
use super::response::{
    Return, json_response, json_text_response, negotiate, parse_json, prefer_return, prefer_strict,
    read_body, resource_response, resource_response_owned, write_response,
};
use crate::audit::{patients_of, patients_of_text};
use crate::auth::access::Access;
use crate::error::{Error, Result};
use crate::fhir::capability::capability_statement;
use crate::fhir::datetime::parse_range;
use crate::fhir::outcome::information;
use crate::service::{bundle, parse_etag, parse_query_string};
use crate::store::StoredResource;

/// Tells the audit trail which patients a response concerns.
fn audited(
    resp: HttpResponse,
    resources: &[&StoredResource],
    interaction: Option<&'static str>,
) -> HttpResponse {
    with_audit_info(resp, audit_info(resources, interaction))
}

fn with_audit_info(mut resp: HttpResponse, info: AuditInfo) -> HttpResponse {
    resp.extensions_mut().insert(info);
    resp
}

/// Which patients `resources` concern, for the audit trail.
fn audit_info(resources: &[&StoredResource], interaction: Option<&'static str>) -> AuditInfo {
    let mut patients: Vec<String> = resources
        .iter()
        .filter_map(|r| {
            r.content
                .as_deref()
                .map(|c| patients_of_text(&r.res_type, c))
        })
        .flatten()
        .collect();
    patients.sort();
    patients.dedup();
    AuditInfo {
        patients,
        interaction,
    }
}

/// The response to a create or update, with the patients it concerns for the audit trail.
fn written(
    req: &HttpRequest,
    state: &AppState,
    out: &crate::service::WriteOutcome,
) -> HttpResponse {
    audited(
        write_response(req, &state.base_url, &out.resource, out.created),
        &[&out.resource],
        None,
    )
}

const JSON_TYPES: &[&str] = &[
    "application/fhir+json",
    "application/json",
    "application/json+fhir",
];
const PATCH_TYPES: &[&str] = &["application/json-patch+json"];

fn if_match(req: &HttpRequest) -> Result<Option<i64>> {
    match req
        .headers()
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(None),
        Some(v) => parse_etag(v).map(Some).ok_or_else(|| {
            Error::bad_request(format!(
                "If-Match '{v}' is not a version ETag such as W/\"3\""
            ))
        }),
    }
}

fn query_pairs(req: &HttpRequest) -> Vec<(String, String)> {
    parse_query_string(req.query_string())
}

async fn body_json(state: &AppState, req: &HttpRequest, payload: web::Payload) -> Result<Value> {
    let body = read_body(req, payload, state.config.max_body_bytes, JSON_TYPES).await?;
    parse_json(&body)
}

/// capabilities: `GET /fhir/metadata` — https://hl7.org/fhir/R4/http.html#capabilities
pub async fn metadata(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse> {
    negotiate(&req)?;
    Ok(json_response(
        &req,
        StatusCode::OK,
        &capability_statement(&state.capability),
    ))
}

/// read: `GET /fhir/{type}/{id}` — https://hl7.org/fhir/R4/http.html#read
pub async fn read(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (res_type, id) = path.into_inner();
    let r = state.fhir.read(&access, &res_type, &id).await?;
    if let Some(inm) = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        && parse_etag(inm) == Some(r.version)
    {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, r.etag()))
            .finish());
    }
    let info = audit_info(&[&r], None);
    Ok(with_audit_info(
        resource_response_owned(&req, StatusCode::OK, r),
        info,
    ))
}

/// vread: `GET /fhir/{type}/{id}/_history/{vid}` — https://hl7.org/fhir/R4/http.html#vread
pub async fn vread(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (res_type, id, vid) = path.into_inner();
    let r = state.fhir.vread(&access, &res_type, &id, &vid).await?;
    Ok(audited(
        resource_response(&req, StatusCode::OK, &r),
        &[&r],
        None,
    ))
}

/// create: `POST /fhir/{type}`, conditional with `If-None-Exist` — https://hl7.org/fhir/R4/http.html#create
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let res_type = path.into_inner();
    let body = body_json(&state, &req, payload).await?;
    let if_none_exist = req
        .headers()
        .get("if-none-exist")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let out = state
        .fhir
        .create(&access, &res_type, body, if_none_exist.as_deref())
        .await?;
    Ok(written(&req, &state, &out))
}

/// update: `PUT /fhir/{type}/{id}` (update-as-create allowed) — https://hl7.org/fhir/R4/http.html#update
pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (res_type, id) = path.into_inner();
    let body = body_json(&state, &req, payload).await?;
    let out = state
        .fhir
        .update(&access, &res_type, &id, body, if_match(&req)?)
        .await?;
    Ok(written(&req, &state, &out))
}

/// conditional update: `PUT /fhir/{type}?criteria` — https://hl7.org/fhir/R4/http.html#cond-update
pub async fn conditional_update(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let res_type = path.into_inner();
    let body = body_json(&state, &req, payload).await?;
    let params = query_pairs(&req);
    let out = state
        .fhir
        .conditional_update(&access, &res_type, &params, body, if_match(&req)?)
        .await?;
    Ok(written(&req, &state, &out))
}

/// patch: `PATCH /fhir/{type}/{id}` with JSON Patch — https://hl7.org/fhir/R4/http.html#patch
pub async fn patch(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (res_type, id) = path.into_inner();
    let body = read_body(&req, payload, state.config.max_body_bytes, PATCH_TYPES).await?;
    let patch = parse_json(&body)?;
    let out = state
        .fhir
        .patch(&access, &res_type, &id, patch, if_match(&req)?)
        .await?;
    Ok(written(&req, &state, &out))
}

fn delete_response(req: &HttpRequest, message: String, etag: Option<String>) -> HttpResponse {
    let mut resp = match prefer_return(req) {
        Return::OperationOutcome => json_response(req, StatusCode::OK, &information(message)),
        _ => HttpResponse::NoContent().finish(),
    };
    if let Some(e) = etag {
        resp.headers_mut()
            .insert(header::ETAG, super::response::header_value(&e));
    }
    resp
}

/// delete: `DELETE /fhir/{type}/{id}` — https://hl7.org/fhir/R4/http.html#delete
pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (res_type, id) = path.into_inner();
    let deleted = state
        .fhir
        .delete(&access, &res_type, &id, if_match(&req)?)
        .await?;
    let message = match &deleted {
        Some(d) => format!("Deleted {res_type}/{id} (version {})", d.version),
        None => format!("{res_type}/{id} was already deleted"),
    };
    Ok(delete_response(&req, message, deleted.map(|d| d.etag())))
}

/// conditional delete: `DELETE /fhir/{type}?criteria` — https://hl7.org/fhir/R4/http.html#cdelete
pub async fn conditional_delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let res_type = path.into_inner();
    let params = query_pairs(&req);
    let deleted = state
        .fhir
        .conditional_delete(&access, &res_type, &params)
        .await?;
    let message = match &deleted {
        Some(d) => format!("Deleted {res_type}/{}", d.id),
        None => format!("No {res_type} matched; nothing deleted"),
    };
    Ok(delete_response(&req, message, deleted.map(|d| d.etag())))
}

async fn run_search(
    state: &AppState,
    req: &HttpRequest,
    access: &Access,
    res_type: &str,
    params: Vec<(String, String)>,
) -> Result<HttpResponse> {
    let q = state
        .fhir
        .parse_search(res_type, &params, prefer_strict(req))?;
    let page = state.fhir.search(access, &q).await?;
    let resp = json_text_response(
        req,
        StatusCode::OK,
        bundle::searchset_text(&state.base_url, &q, &page),
    );
    let touched: Vec<&StoredResource> = page.matches.iter().chain(page.includes.iter()).collect();
    Ok(audited(resp, &touched, None))
}

/// search: `GET /fhir/{type}?…` — https://hl7.org/fhir/R4/http.html#search
pub async fn search(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let res_type = path.into_inner();
    run_search(&state, &req, &access, &res_type, query_pairs(&req)).await
}

/// search: `POST /fhir/{type}/_search` with form parameters (and any in the URL).
pub async fn search_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let res_type = path.into_inner();
    let body = read_body(
        &req,
        payload,
        state.config.max_body_bytes,
        &["application/x-www-form-urlencoded"],
    )
    .await?;
    let mut params = query_pairs(&req);
    params.extend(url::form_urlencoded::parse(&body).into_owned());
    run_search(&state, &req, &access, &res_type, params).await
}

/// Parses `_since`, `_count` and the paging position of a history request.
fn history_params(req: &HttpRequest) -> Result<(Option<i64>, usize, Option<i64>)> {
    let mut since = None;
    let mut count = crate::fhir::search::DEFAULT_COUNT;
    let mut before = None;
    for (k, v) in query_pairs(req) {
        match k.as_str() {
            "_since" => {
                since = Some(
                    parse_range(&v)
                        .ok_or_else(|| {
                            Error::invalid_at(
                                "invalid",
                                format!("_since '{v}' is not a valid instant"),
                                "_since",
                            )
                        })?
                        .lo,
                )
            }
            "_count" => {
                count = v
                    .parse::<usize>()
                    .map_err(|_| {
                        Error::invalid_at(
                            "invalid",
                            format!("_count '{v}' is not a number"),
                            "_count",
                        )
                    })?
                    .clamp(1, crate::fhir::search::MAX_COUNT)
            }
            "_before_entry" => before = v.parse().ok(),
            _ => {}
        }
    }
    Ok((since, count, before))
}

async fn run_history(
    state: &AppState,
    req: &HttpRequest,
    access: &Access,
    res_type: Option<&str>,
    id: Option<&str>,
) -> Result<HttpResponse> {
    negotiate(req)?;
    let (since, count, before) = history_params(req)?;
    let (entries, total, more) = state
        .fhir
        .history(access, res_type, id, since, before, count)
        .await?;
    let mut path = state.base_url.clone();
    if let Some(t) = res_type {
        path.push('/');
        path.push_str(t);
    }
    if let Some(i) = id {
        path.push('/');
        path.push_str(i);
    }
    path.push_str("/_history");
    let mut params: Vec<(String, String)> = query_pairs(req)
        .into_iter()
        .filter(|(k, _)| k == "_since" || k == "_count")
        .collect();
    let self_url = with_query(&path, &params);
    let next = if more {
        entries.last().map(|last| {
            params.push(("_before_entry".into(), last.hpk.to_string()));
            with_query(&path, &params)
        })
    } else {
        None
    };
    let resp = json_response(
        req,
        StatusCode::OK,
        &bundle::history(&state.base_url, &self_url, &entries, total, next),
    );
    let touched: Vec<&StoredResource> = entries.iter().map(|e| &e.resource).collect();
    Ok(audited(resp, &touched, None))
}

fn with_query(path: &str, params: &[(String, String)]) -> String {
    if params.is_empty() {
        return path.to_owned();
    }
    let qs = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .finish();
    format!("{path}?{qs}")
}

/// history-instance: `GET /fhir/{type}/{id}/_history`
pub async fn history_instance(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (t, id) = path.into_inner();
    run_history(&state, &req, &access, Some(&t), Some(&id)).await
}

/// history-type: `GET /fhir/{type}/_history`
pub async fn history_type(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let t = path.into_inner();
    run_history(&state, &req, &access, Some(&t), None).await
}

/// history-system: `GET /fhir/_history`
pub async fn history_system(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
) -> Result<HttpResponse> {
    run_history(&state, &req, &access, None, None).await
}

/// batch/transaction: `POST /fhir` with a Bundle — https://hl7.org/fhir/R4/http.html#transaction
pub async fn batch_or_transaction(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    payload: web::Payload,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let body = body_json(&state, &req, payload).await?;
    let kind = if body.get("type").and_then(serde_json::Value::as_str) == Some("batch") {
        "batch"
    } else {
        "transaction"
    };
    let response = state.fhir.process_bundle(&access, body).await?;
    let mut resp = json_response(&req, StatusCode::OK, &response);
    let mut patients: Vec<String> = response["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.get("resource"))
                .filter_map(|r| {
                    r.get("resourceType")
                        .and_then(serde_json::Value::as_str)
                        .map(|t| patients_of(t, r))
                })
                .flatten()
                .collect()
        })
        .unwrap_or_default();
    patients.sort();
    patients.dedup();
    resp.extensions_mut().insert(AuditInfo {
        patients,
        interaction: Some(kind),
    });
    Ok(resp)
}

/// Answers a known path with a method it does not support.
pub async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse> {
    Err(Error::new(
        crate::error::ErrorKind::MethodNotAllowed,
        format!("{} is not supported on {}", req.method(), req.path()),
    ))
}

/// Anything that matches no route.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse> {
    Err(Error::not_found(format!(
        "No route for {} {}",
        req.method(),
        req.path()
    )))
}
