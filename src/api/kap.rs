//! Handlers of the KAP clinical API under `/kap/v1`: extract, call the KAP service once, respond with plain JSON.
//! Errors are FHIR OperationOutcomes like everywhere else.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::AppState;
use super::audit::AuditInfo;
use super::response::read_body;
use crate::auth::access::Access;
use crate::error::{Error, ErrorKind, Result};
use crate::fhir::outcome::Issue;
use crate::kap::model::{LinkRequest, PatientRecord};
use crate::kap::service::KapRecord;

const JSON_TYPES: &[&str] = &["application/json"];

/// Reads and parses a KAP JSON body into `T`, naming the field of any problem (400).
async fn body<T: DeserializeOwned>(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<T> {
    let bytes = read_body(req, payload, state.config.max_body_bytes, JSON_TYPES).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::bad_request(
            "The request body is empty; a KAP JSON record is expected",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let issue = Issue::error("structure", format!("{}", e.inner()));
        let issue = if path == "." { issue } else { issue.at(path) };
        Error::with_issues(ErrorKind::BadRequest, vec![issue])
    })
}

fn respond(status: StatusCode, body: &Value, patient: Option<&str>) -> HttpResponse {
    let mut resp = HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .body(body.to_string());
    if let Some(p) = patient.filter(|p| !p.is_empty()) {
        resp.extensions_mut().insert(AuditInfo {
            patients: vec![p.to_owned()],
            interaction: None,
        });
    }
    resp
}

fn created(req: &HttpRequest, path: &str, body: &Value, patient: Option<&str>) -> HttpResponse {
    let mut resp = respond(StatusCode::CREATED, body, patient);
    if let Some(id) = body["id"].as_str()
        && let Ok(v) = header::HeaderValue::from_str(&format!("{}/kap/v1/{path}/{id}", base(req)))
    {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn base(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(Error::internal)
}

/// `POST /kap/v1/patients`: enrols a new patient.
pub async fn enrol(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let rec: PatientRecord = body(&state, &req, payload).await?;
    let out = to_value(&state.kap.enrol(&access, rec).await?)?;
    Ok(created(&req, "patients", &out, out["id"].as_str()))
}

/// `POST /kap/v1/patients/link`: links an existing FHIR Patient (by id or identifier) to KAP.
pub async fn link(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let link: LinkRequest = body(&state, &req, payload).await?;
    let out = to_value(&state.kap.link(&access, link).await?)?;
    Ok(respond(StatusCode::OK, &out, out["id"].as_str()))
}

/// `GET /kap/v1/patients/{id}`.
pub async fn get_patient(
    state: web::Data<AppState>,
    access: Access,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let id = path.into_inner();
    let out = to_value(&state.kap.patient(&access, &id).await?)?;
    Ok(respond(StatusCode::OK, &out, Some(&id)))
}

/// `PUT /kap/v1/patients/{id}`.
pub async fn update_patient(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let id = path.into_inner();
    let rec: PatientRecord = body(&state, &req, payload).await?;
    let out = to_value(&state.kap.update_patient(&access, &id, rec).await?)?;
    Ok(respond(StatusCode::OK, &out, Some(&id)))
}

#[derive(Deserialize)]
pub struct CourseQuery {
    course_id: Option<String>,
}

/// `GET /kap/v1/patients/{id}/course[?course_id=]`: the whole course as one document.
pub async fn course(
    state: web::Data<AppState>,
    access: Access,
    path: web::Path<String>,
    query: web::Query<CourseQuery>,
) -> Result<HttpResponse> {
    let id = path.into_inner();
    let out = state
        .kap
        .course_view(&access, &id, query.course_id.as_deref())
        .await?;
    Ok(respond(StatusCode::OK, &out, Some(&id)))
}

/// `POST /kap/v1/patients/{id}/<records>`.
pub async fn create<R: KapRecord>(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let patient = path.into_inner();
    let rec: R = body(&state, &req, payload).await?;
    let out = state.kap.create::<R>(&access, &patient, rec).await?;
    Ok(created(&req, R::PATH, &out, Some(&patient)))
}

/// `GET /kap/v1/patients/{id}/<records>`.
pub async fn list<R: KapRecord>(
    state: web::Data<AppState>,
    access: Access,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let patient = path.into_inner();
    let out = state.kap.list::<R>(&access, &patient).await?;
    Ok(respond(StatusCode::OK, &Value::Array(out), Some(&patient)))
}

/// `GET /kap/v1/<records>/{id}`.
pub async fn get<R: KapRecord>(
    state: web::Data<AppState>,
    access: Access,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let out = state.kap.get::<R>(&access, &path.into_inner()).await?;
    let patient = out["patient_id"].as_str().map(str::to_owned);
    Ok(respond(StatusCode::OK, &out, patient.as_deref()))
}

/// `PUT /kap/v1/<records>/{id}`.
pub async fn update<R: KapRecord>(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let rec: R = body(&state, &req, payload).await?;
    let out = state
        .kap
        .update::<R>(&access, &path.into_inner(), rec)
        .await?;
    let patient = out["patient_id"].as_str().map(str::to_owned);
    Ok(respond(StatusCode::OK, &out, patient.as_deref()))
}

/// Registers the `/kap/v1` routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    use crate::kap::model::{Dosing, Evaluation, FollowUp, Integration, Preparation};
    let na = || web::route().to(super::fhir::method_not_allowed);
    cfg.service(
        web::resource("/kap/v1/patients")
            .route(web::post().to(enrol))
            .default_service(na()),
    )
    .service(
        web::resource("/kap/v1/patients/link")
            .route(web::post().to(link))
            .default_service(na()),
    )
    .service(
        web::resource("/kap/v1/patients/{id}")
            .route(web::get().to(get_patient))
            .route(web::put().to(update_patient))
            .default_service(na()),
    )
    .service(
        web::resource("/kap/v1/patients/{id}/course")
            .route(web::get().to(course))
            .default_service(na()),
    );
    record_routes::<Evaluation>(
        cfg,
        web::resource("/kap/v1/patients/{id}/evaluations"),
        web::resource("/kap/v1/evaluations/{id}"),
    );
    record_routes::<Preparation>(
        cfg,
        web::resource("/kap/v1/patients/{id}/preparation-sessions"),
        web::resource("/kap/v1/preparation-sessions/{id}"),
    );
    record_routes::<Dosing>(
        cfg,
        web::resource("/kap/v1/patients/{id}/dosing-sessions"),
        web::resource("/kap/v1/dosing-sessions/{id}"),
    );
    record_routes::<Integration>(
        cfg,
        web::resource("/kap/v1/patients/{id}/integration-sessions"),
        web::resource("/kap/v1/integration-sessions/{id}"),
    );
    record_routes::<FollowUp>(
        cfg,
        web::resource("/kap/v1/patients/{id}/follow-ups"),
        web::resource("/kap/v1/follow-ups/{id}"),
    );
}

/// The routes of one record kind: `per_patient` (record, list) and `by_id` (read, replace). The paths are written
/// out at the call so the route table's check finds every registered resource.
fn record_routes<R: KapRecord>(
    cfg: &mut web::ServiceConfig,
    per_patient: actix_web::Resource,
    by_id: actix_web::Resource,
) {
    let na = || web::route().to(super::fhir::method_not_allowed);
    cfg.service(
        per_patient
            .route(web::post().to(create::<R>))
            .route(web::get().to(list::<R>))
            .default_service(na()),
    )
    .service(
        by_id
            .route(web::get().to(get::<R>))
            .route(web::put().to(update::<R>))
            .default_service(na()),
    );
}
