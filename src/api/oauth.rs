//! Handlers of the SMART on FHIR authorization server (https://hl7.org/fhir/smart-app-launch/STU2.2/app-launch.html):
//! discovery, keys, the browser steps of authorization, and the token, introspection, revocation and launch
//! endpoints. Each extracts, calls `OAuthServer` once and frames the answer; OAuth endpoints answer OAuth JSON
//! errors (RFC 6749 §5.2), never OperationOutcomes.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::AppState;
use crate::audit::{AuditRecord, audit_row};
use crate::auth::access::Access;
use crate::auth::pages::{self, PAGE_HEADERS, Page};
use crate::auth::registry::Registry;
use crate::auth::scopes::ScopeContext;
use crate::auth::server::{
    self, Form, OAuthError, OAuthServer, OAuthSettings, REQUEST_COOKIE, Step,
};
use crate::error::{Error, ErrorKind};

const FORM_TYPE: &str = "application/x-www-form-urlencoded";

/// The authorization server for this request. Its lifetimes come from an `OAuthSettings` registered as app data,
/// or are the defaults.
fn oauth(state: &AppState, req: &HttpRequest) -> OAuthServer {
    let settings = req
        .app_data::<web::Data<OAuthSettings>>()
        .map(|s| s.get_ref().clone())
        .unwrap_or_default();
    OAuthServer::new(
        Registry::new(state.store.db.clone()),
        state.auth.clone(),
        state.fhir.clone(),
        state.store.db.clone(),
        &state.base_url,
        &settings,
    )
}

fn is_form(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(FORM_TYPE))
}

fn authorization(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

/// Discovery documents and keys are public and may be read by browser apps of any origin.
fn public_json(body: &Value, max_age: u32) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((header::CACHE_CONTROL, format!("public, max-age={max_age}")))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .body(body.to_string())
}

/// Token responses must never be cached (RFC 6749 §5.1); CORS lets browser apps (public clients) call them.
fn no_store_json(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .body(body.to_string())
}

fn oauth_error(e: &OAuthError) -> HttpResponse {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = no_store_json(status, &e.body());
    if let Some(www) = &e.www_authenticate
        && let Ok(v) = HeaderValue::from_str(www)
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

fn oauth_json(result: Result<Value, OAuthError>) -> HttpResponse {
    match result {
        Ok(body) => no_store_json(StatusCode::OK, &body),
        Err(e) => oauth_error(&e),
    }
}

fn page_response(page: &Page, set_cookie: Option<String>) -> HttpResponse {
    let rendered = pages::render(page);
    let mut resp =
        HttpResponse::build(StatusCode::from_u16(rendered.status).unwrap_or(StatusCode::OK));
    resp.insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            rendered.content_security_policy,
        ));
    for (name, value) in PAGE_HEADERS {
        resp.insert_header((*name, *value));
    }
    if let Some(c) = set_cookie {
        resp.insert_header((header::SET_COOKIE, c));
    }
    resp.body(rendered.html)
}

/// The browser-binding cookie: HttpOnly (no script reads it), SameSite=Lax (a cross-site form post does not
/// carry it), scoped to `/auth`, and Secure over https.
fn binding_cookie(value: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{REQUEST_COOKIE}={value}; Path=/auth; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

fn step_response(oauth: &OAuthServer, result: Result<Step, Error>) -> HttpResponse {
    let secure = oauth.secure_cookies();
    match result {
        Ok(Step::Page { page, cookie }) => page_response(
            &page,
            cookie.map(|c| binding_cookie(&c, oauth.settings().request_secs, secure)),
        ),
        Ok(Step::Redirect { location }) => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, location))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .insert_header((header::SET_COOKIE, binding_cookie("", 0, secure)))
            .finish(),
        Err(e) => {
            tracing::error!(error = %e, cause = ?e.source, "authorization step failed");
            let (status, message) = if e.kind == ErrorKind::Unavailable {
                (503, "The server is busy. Please try again in a moment.")
            } else {
                (
                    500,
                    "The server could not complete the sign-in. Please try again later.",
                )
            };
            page_response(
                &Page::Error {
                    status,
                    title: "Something went wrong".into(),
                    message: message.into(),
                },
                None,
            )
        }
    }
}

fn not_a_form() -> HttpResponse {
    page_response(
        &Page::Error {
            status: 415,
            title: "This request cannot be answered".into(),
            message: "The form was not sent as application/x-www-form-urlencoded.".into(),
        },
        None,
    )
}

/// `GET /.well-known/smart-configuration` and `GET /fhir/.well-known/smart-configuration`.
pub async fn smart_configuration(state: web::Data<AppState>) -> HttpResponse {
    public_json(&server::smart_configuration(&state.base_url), 3600)
}

/// `GET /fhir/.well-known/openid-configuration`: the issuer is the FHIR base URL.
pub async fn openid_configuration(state: web::Data<AppState>) -> HttpResponse {
    public_json(&server::openid_configuration(&state.base_url), 3600)
}

/// `GET /auth/jwks`: the public keys that verify the gateway's tokens.
pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    public_json(&state.auth.keys.jwks(), 300)
}

/// `GET /auth/authorize`.
pub async fn authorize(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let oauth = oauth(&state, &req);
    let form = Form::parse(req.query_string().as_bytes());
    step_response(&oauth, oauth.authorize(&form).await)
}

/// `POST /auth/login`.
pub async fn login(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if !is_form(&req) {
        return not_a_form();
    }
    let oauth = oauth(&state, &req);
    let result = oauth
        .login(&Form::parse(&body), cookie(&req, REQUEST_COOKIE).as_deref())
        .await;
    step_response(&oauth, result)
}

/// `POST /auth/patient`: the patient picker.
pub async fn patient(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    if !is_form(&req) {
        return not_a_form();
    }
    let oauth = oauth(&state, &req);
    let result = oauth
        .pick_patient(&Form::parse(&body), cookie(&req, REQUEST_COOKIE).as_deref())
        .await;
    step_response(&oauth, result)
}

/// `POST /auth/consent`.
pub async fn consent(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    if !is_form(&req) {
        return not_a_form();
    }
    let oauth = oauth(&state, &req);
    let result = oauth
        .consent(&Form::parse(&body), cookie(&req, REQUEST_COOKIE).as_deref())
        .await;
    step_response(&oauth, result)
}

fn form_body(req: &HttpRequest, body: &web::Bytes) -> Result<Form, OAuthError> {
    if is_form(req) {
        Ok(Form::parse(body))
    } else {
        Err(OAuthError::invalid_request(format!(
            "the request body must be {FORM_TYPE}"
        )))
    }
}

/// `POST /auth/token`.
pub async fn token(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let form = match form_body(&req, &body) {
        Ok(f) => f,
        Err(e) => return oauth_error(&e),
    };
    let oauth = oauth(&state, &req);
    let result = oauth.token(&form, authorization(&req)).await;
    // Every grant and every refusal goes into the audit trail before the answer leaves.
    let status = match &result {
        Ok(_) => 200,
        Err(e) => e.status,
    };
    let patients = result
        .as_ref()
        .ok()
        .and_then(|body| body.get("patient").and_then(Value::as_str))
        .map(|p| vec![p.to_owned()])
        .unwrap_or_default();
    let grant_type = form.get("grant_type").unwrap_or("unknown").to_owned();
    state
        .metrics
        .token_result(&grant_type, result.as_ref().err().map(|e| e.error));
    let record = AuditRecord {
        interaction: "token",
        resource_type: None,
        id: None,
        patients,
        parameter_names: vec![format!("grant_type={grant_type}")],
        status,
    };
    let recorded = match audit_row(None, Some(&claimed_client(&form, &req)), &record) {
        Ok(row) => state.audit.record(row).await,
        Err(e) => Err(e),
    };
    if let Err(e) = recorded {
        tracing::error!(error = %e, "could not audit a token request");
        return oauth_error(&OAuthError::server_error());
    }
    oauth_json(result)
}

/// The client a token request says it comes from (form `client_id`, HTTP Basic user, or the assertion's `iss`),
/// for the audit trail only: it is recorded whether or not it authenticated.
fn claimed_client(form: &Form, req: &HttpRequest) -> String {
    if let Some(id) = form.get("client_id") {
        return id.to_owned();
    }
    if let Some(basic) = authorization(req).and_then(|h| h.strip_prefix("Basic ")) {
        use base64::Engine as _;
        if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim())
            && let Ok(text) = String::from_utf8(decoded)
            && let Some((id, _)) = text.split_once(':')
        {
            return id.to_owned();
        }
    }
    form.get("client_assertion")
        .and_then(|a| crate::auth::keys::claims_of(a).ok())
        .and_then(|c| c.get("iss").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// `POST /auth/introspect` (RFC 7662).
pub async fn introspect(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let form = match form_body(&req, &body) {
        Ok(f) => f,
        Err(e) => return oauth_error(&e),
    };
    let oauth = oauth(&state, &req);
    oauth_json(oauth.introspect(&form, authorization(&req)).await)
}

/// `POST /auth/revoke` (RFC 7009).
pub async fn revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let form = match form_body(&req, &body) {
        Ok(f) => f,
        Err(e) => return oauth_error(&e),
    };
    let oauth = oauth(&state, &req);
    match oauth.revoke(&form, authorization(&req)).await {
        Ok(()) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
            .finish(),
        Err(e) => oauth_error(&e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LaunchRequest {
    patient: String,
    #[serde(default)]
    encounter: Option<String>,
}

/// `POST /auth/launch` `{"patient": "…", "encounter": "…"}`: an EHR creates the context of an EHR launch. Needs an
/// administrator's token or a backend service with `system/*.cruds`.
pub async fn launch(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let full_system = access.scopes.resource_scopes().any(|s| {
        s.context == ScopeContext::System && s.resource_type.is_none() && s.permissions == "cruds"
    });
    if !access.admin && !full_system {
        return Err(Error::new(
            ErrorKind::Forbidden,
            "Creating a launch needs an administrator or the system/*.cruds scope",
        ));
    }
    let request: LaunchRequest = serde_json::from_slice(&body).map_err(|e| {
        Error::bad_request(format!(
            "The body must be {{\"patient\": \"<id>\", \"encounter\": \"<id>\"}}: {e}"
        ))
    })?;
    let oauth = oauth(&state, &req);
    let (launch, expires_in) = oauth
        .launch(&request.patient, request.encounter.as_deref())
        .await?;
    Ok(no_store_json(
        StatusCode::OK,
        &json!({"launch": launch, "expires_in": expires_in}),
    ))
}
