//! HTTP handlers of `$everything` and the Bulk Data export: kick-off, status (poll and cancel) and file download.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::audit::AuditInfo;
use crate::api::response::{header_value, json_response, negotiate};
use crate::auth::access::Access;
use crate::error::{Error, ErrorKind, Result};
use crate::fhir::datetime::{format_instant, now_micros, parse_range};
use crate::fhir::outcome::information;
use crate::fhir::registry;
use crate::service::parse_query_string;

use super::everything::{EverythingParams, bundle, everything, everything_types};
use super::jobs::{Job, Jobs, Level, NewJob};
use super::worker::{may_export_any, type_query};
use super::{NDJSON, compartment_types};

/// The routes, registered before the generic `/fhir/{type}…` patterns that would otherwise take them.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let na = || web::route().to(crate::api::fhir::method_not_allowed);
    cfg.service(
        web::resource("/fhir/$export")
            .route(web::get().to(export_system))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/{type:Patient}/$export")
            .route(web::get().to(export_patients))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/{type:Group}/{id}/$export")
            .route(web::get().to(export_group))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/$export-status/{job}")
            .route(web::get().to(status))
            .route(web::delete().to(cancel))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/$export-file/{job}/{file}")
            .route(web::get().to(download))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/{type:Patient}/{id}/$everything")
            .route(web::get().to(patient_everything))
            .default_service(na()),
    );
}

fn with_patients(mut resp: HttpResponse, patients: Vec<String>) -> HttpResponse {
    resp.extensions_mut().insert(AuditInfo {
        patients,
        interaction: None,
    });
    resp
}

/// `GET /fhir/Patient/{id}/$everything`
pub async fn patient_everything(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (_, id) = path.into_inner();
    let params = EverythingParams::parse(&parse_query_string(req.query_string()))?;
    let page = everything(&state.fhir, &access, &id, &params).await?;
    let body = bundle(&state.base_url, &id, &params, &page);
    Ok(with_patients(
        json_response(&req, StatusCode::OK, &body),
        vec![id],
    ))
}

/// `GET /fhir/$export`
pub async fn export_system(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
) -> Result<HttpResponse> {
    kick_off(&state, &req, &access, Level::System, None).await
}

/// `GET /fhir/Patient/$export`
pub async fn export_patients(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
) -> Result<HttpResponse> {
    kick_off(&state, &req, &access, Level::Patient, None).await
}

/// `GET /fhir/Group/{id}/$export`
pub async fn export_group(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (_, id) = path.into_inner();
    kick_off(&state, &req, &access, Level::Group, Some(id)).await
}

const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

fn prefers_async(req: &HttpRequest) -> bool {
    req.headers().get_all("prefer").any(|v| {
        v.to_str()
            .map(|s| s.split([',', ';']).any(|t| t.trim() == "respond-async"))
            .unwrap_or(false)
    })
}

/// Validates a kick-off request and queues its job: 202 with `Content-Location`.
async fn kick_off(
    state: &AppState,
    req: &HttpRequest,
    access: &Access,
    level: Level,
    group_id: Option<String>,
) -> Result<HttpResponse> {
    if !prefers_async(req) {
        return Err(Error::bad_request(
            "A bulk export must be requested with the header 'Prefer: respond-async'",
        ));
    }
    let pairs = parse_query_string(req.query_string());
    let mut since = None;
    let mut types: Option<Vec<String>> = None;
    let mut filters: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &pairs {
        match k.as_str() {
            "_outputFormat" if !OUTPUT_FORMATS.contains(&v.as_str()) => {
                return Err(Error::invalid_at(
                    "not-supported",
                    format!("_outputFormat '{v}' is not supported; use application/fhir+ndjson"),
                    "_outputFormat",
                ));
            }
            "_since" => {
                if parse_range(v).is_none() {
                    return Err(Error::invalid_at(
                        "invalid",
                        format!("_since '{v}' is not a valid instant"),
                        "_since",
                    ));
                }
                since = Some(v.clone());
            }
            "_type" => {
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !registry::is_supported_type(t) {
                        return Err(Error::invalid_at(
                            "not-supported",
                            format!("_type '{t}' is not a resource type this server supports"),
                            "_type",
                        ));
                    }
                    let list = types.get_or_insert_with(Vec::new);
                    if !list.iter().any(|x| x == t) {
                        list.push(t.to_owned());
                    }
                }
            }
            "_typeFilter" => {
                for f in split_type_filters(v) {
                    let f = f.as_str();
                    let (t, query) = f.split_once('?').unwrap_or((f, ""));
                    if !registry::is_supported_type(t) {
                        return Err(Error::invalid_at(
                            "not-supported",
                            format!("_typeFilter '{f}' names an unsupported resource type"),
                            "_typeFilter",
                        ));
                    }
                    if filters.insert(t.to_owned(), query.to_owned()).is_some() {
                        return Err(Error::invalid_at(
                            "not-supported",
                            format!("Only one _typeFilter per resource type is supported ({t})"),
                            "_typeFilter",
                        ));
                    }
                    type_query(&state.fhir, t, Some(query), None)
                        .map_err(|e| e.in_context("_typeFilter"))?;
                }
            }
            "_elements" | "includeAssociatedData" | "patient" | "_typeElements" => {
                return Err(Error::invalid_at(
                    "not-supported",
                    format!("The export parameter '{k}' is not supported"),
                    k.clone(),
                ));
            }
            _ => {}
        }
    }
    let explicit_types = types.is_some();
    let types: Vec<String> = match (level, types) {
        (Level::System, None) => registry::SUPPORTED_TYPES
            .iter()
            .map(|t| (*t).to_owned())
            .collect(),
        (Level::System, Some(t)) => t,
        (_, t) => everything_types(t.as_deref())?,
    };
    if !may_export_any(access, &types) {
        return Err(Error::new(
            ErrorKind::Forbidden,
            "The access token does not allow reading any of the requested resource types",
        ));
    }
    let members = match (&level, &group_id) {
        (Level::Group, Some(gid)) => {
            let group = state.fhir.read(access, "Group", gid).await?;
            Some(group_members(
                &state.base_url,
                &group.json().unwrap_or(Value::Null),
            ))
        }
        _ => None,
    };
    if level == Level::Patient
        && !compartment_types()
            .iter()
            .any(|t| types.contains(&(*t).to_owned()))
    {
        return Err(Error::bad_request(
            "No requested type is in the patient compartment",
        ));
    }
    let path = req.path().strip_prefix("/fhir").unwrap_or(req.path());
    let request_url = if req.query_string().is_empty() {
        format!("{}{path}", state.base_url)
    } else {
        format!("{}{path}?{}", state.base_url, req.query_string())
    };
    let jobs = Jobs::new(state.store.db.clone());
    let (id, _) = jobs
        .create(NewJob {
            level,
            group_id,
            members,
            request_url,
            types,
            explicit_types,
            type_filters: filters,
            since,
            access,
        })
        .await?;
    let location = status_url(&state.base_url, &id);
    let mut resp = json_response(
        req,
        StatusCode::ACCEPTED,
        &information(format!("Export {id} accepted; poll {location}")),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LOCATION, header_value(&location));
    Ok(resp)
}

/// Splits a `_typeFilter` value into its `Type?query` parts: a comma starts a new part only when what follows
/// names a type (`Observation?…`), so commas between ORed values inside a query stay where they are.
fn split_type_filters(v: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for seg in v.split(',') {
        let starts_filter = seg.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && seg
                .split_once('?')
                .is_some_and(|(t, _)| registry::is_supported_type(t));
        match out.last_mut() {
            Some(last) if !starts_filter => {
                last.push(',');
                last.push_str(seg);
            }
            _ if seg.is_empty() => {}
            _ => out.push(seg.to_owned()),
        }
    }
    out
}

/// Patient ids of `Group.member.entity` (relative or absolute references to this server).
fn group_members(base: &str, group: &Value) -> Vec<String> {
    let base = format!("{}/", base.trim_end_matches('/'));
    let mut out: Vec<String> = group["member"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|e| e["entity"]["reference"].as_str())
                .map(|r| r.strip_prefix(base.as_str()).unwrap_or(r))
                .filter_map(|r| r.strip_prefix("Patient/"))
                .map(|id| id.split('/').next().unwrap_or(id).to_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

fn status_url(base: &str, id: &str) -> String {
    format!("{base}/$export-status/{id}")
}

fn file_url(base: &str, id: &str, file_no: i64) -> String {
    format!("{base}/$export-file/{id}/{file_no}")
}

/// The job, if it exists, was not cancelled, and belongs to the caller's client (and patient context).
async fn owned_job(state: &AppState, access: &Access, id: &str) -> Result<(Jobs, Job)> {
    let jobs = Jobs::new(state.store.db.clone());
    let job = match jobs.get(id).await? {
        Some(j) if j.status != "cancelled" => j,
        _ => return Err(Error::not_found(format!("Export {id} is not known"))),
    };
    if job.client_id != access.client_id || job.patient != access.patient {
        return Err(Error::new(
            ErrorKind::Forbidden,
            "This export was requested by another client; only that client may poll it or download its files",
        ));
    }
    Ok((jobs, job))
}

fn expired(job: &Job) -> bool {
    job.status == "expired"
        || (job.status == "completed" && job.expires_at.is_some_and(|e| e <= now_micros()))
}

/// `GET /fhir/$export-status/{job}`: 202 while running, 200 with the manifest when done.
pub async fn status(
    state: web::Data<AppState>,
    access: Access,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let id = path.into_inner();
    let (jobs, job) = owned_job(&state, &access, &id).await?;
    if expired(&job) {
        return Err(Error::gone(format!(
            "The files of export {id} have expired; start a new export"
        )));
    }
    match job.status.as_str() {
        "queued" | "running" => {
            let n = job.types.len();
            let at = usize::try_from(job.type_index).unwrap_or(0).min(n);
            let progress = if job.status == "queued" {
                "queued".to_owned()
            } else {
                format!(
                    "{} resources exported; type {} of {n}{}",
                    job.exported,
                    (at + 1).min(n),
                    job.types
                        .get(at)
                        .map(|t| format!(" ({t})"))
                        .unwrap_or_default()
                )
            };
            Ok(HttpResponse::Accepted()
                .insert_header(("X-Progress", progress))
                .insert_header((
                    header::RETRY_AFTER,
                    state.config.bulk.retry_after_secs.max(1).to_string(),
                ))
                .finish())
        }
        "completed" => {
            let files = jobs.files(&id).await?;
            let base = &state.base_url;
            let output: Vec<Value> = files
                .iter()
                .filter(|f| f.file_no != job.error_file_no())
                .map(|f| json!({"type": f.res_type, "url": file_url(base, &id, f.file_no), "count": f.count}))
                .collect();
            let error: Vec<Value> = files
                .iter()
                .filter(|f| f.file_no == job.error_file_no())
                .map(|f| json!({"type": "OperationOutcome", "url": file_url(base, &id, f.file_no), "count": f.count}))
                .collect();
            let manifest = json!({
                "transactionTime": format_instant(job.transaction_time),
                "request": job.request_url,
                "requiresAccessToken": true,
                "output": output,
                "error": error,
            });
            let mut resp = HttpResponse::Ok()
                .insert_header((header::CONTENT_TYPE, "application/json"))
                .body(manifest.to_string());
            if let Some(e) = job.expires_at {
                resp.headers_mut().insert(
                    header::EXPIRES,
                    header_value(&crate::api::response::http_date(e)),
                );
            }
            Ok(resp)
        }
        _ => Err(Error::new(
            ErrorKind::Internal,
            format!(
                "Export {id} failed: {}",
                job.error.as_deref().unwrap_or("unknown error")
            ),
        )),
    }
}

/// `DELETE /fhir/$export-status/{job}`: cancels the job or discards its files.
pub async fn cancel(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let id = path.into_inner();
    let (jobs, _) = owned_job(&state, &access, &id).await?;
    jobs.cancel(&id).await?;
    Ok(json_response(
        &req,
        StatusCode::ACCEPTED,
        &information(format!("Export {id} cancelled; its files are deleted")),
    ))
}

/// `GET /fhir/$export-file/{job}/{file}`: one NDJSON file, streamed chunk by chunk from the database.
pub async fn download(
    state: web::Data<AppState>,
    access: Access,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (id, file) = path.into_inner();
    let (jobs, job) = owned_job(&state, &access, &id).await?;
    if expired(&job) {
        return Err(Error::gone(format!(
            "The files of export {id} have expired; start a new export"
        )));
    }
    let file_no: i64 = file
        .trim_end_matches(".ndjson")
        .parse()
        .map_err(|_| Error::not_found(format!("Export {id} has no file '{file}'")))?;
    if job.status != "completed" || !jobs.files(&id).await?.iter().any(|f| f.file_no == file_no) {
        return Err(Error::not_found(format!(
            "Export {id} has no file {file_no}"
        )));
    }
    let stream = futures_util::stream::unfold(Some(0i64), move |after| {
        let jobs = jobs.clone();
        let id = id.clone();
        async move {
            let after = after?;
            match jobs.next_chunk(&id, file_no, after).await {
                Ok(Some((seq, data))) => Some((Ok::<Bytes, Error>(Bytes::from(data)), Some(seq))),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "export file download failed");
                    Some((Err(e), None))
                }
            }
        }
    });
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, NDJSON))
        .streaming(stream))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn type_filters_split_on_commas_that_start_a_new_type() {
        assert_eq!(
            split_type_filters("Observation?code=a,b&status=final,Patient?gender=female"),
            vec![
                "Observation?code=a,b&status=final".to_owned(),
                "Patient?gender=female".to_owned()
            ]
        );
        assert_eq!(
            split_type_filters("Banana?x=1"),
            vec!["Banana?x=1".to_owned()]
        );
    }

    #[test]
    fn group_members_are_the_patients_referenced_by_member_entity() {
        let group = json!({"resourceType": "Group", "member": [
            {"entity": {"reference": "Patient/a"}},
            {"entity": {"reference": "http://h/fhir/Patient/b/_history/2"}},
            {"entity": {"reference": "Practitioner/x"}},
            {"entity": {"reference": "http://elsewhere/fhir/Patient/c"}},
            {"entity": {"reference": "Patient/a"}}]});
        assert_eq!(
            group_members("http://h/fhir", &group),
            vec!["a".to_owned(), "b".to_owned()]
        );
    }
}
