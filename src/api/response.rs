//! HTTP framing of FHIR: content negotiation (`Accept`, `_format`), request bodies (size limit, media type, JSON),
//! `Prefer` handling and responses as `application/fhir+json` with ETag and Last-Modified
//! (https://hl7.org/fhir/R4/http.html#mime-type).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use futures_util::StreamExt as _;
use serde_json::Value;

use crate::error::{Error, ErrorKind};
use crate::fhir::outcome::information;
use crate::store::StoredResource;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if self.kind == ErrorKind::Internal || self.kind == ErrorKind::Unavailable {
            tracing::error!(error = %self, cause = ?self.source, "request failed");
        }
        let mut resp = HttpResponse::build(self.status_code());
        resp.insert_header((header::CONTENT_TYPE, FHIR_JSON));
        if let Some(www) = &self.www_authenticate {
            resp.insert_header((header::WWW_AUTHENTICATE, www.as_str()));
        }
        resp.body(self.outcome().to_string())
    }
}

fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn is_json_type(media: &str) -> bool {
    let m = media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        m.as_str(),
        "application/fhir+json"
            | "application/json"
            | "json"
            | "application/*"
            | "*/*"
            | "*"
            | "application/json+fhir"
    )
}

/// Checks that the client accepts JSON (`_format` wins over `Accept`); XML and others get 406.
pub fn negotiate(req: &HttpRequest) -> Result<(), Error> {
    if let Some(format) = query_param(req, "_format") {
        return if is_json_type(&format) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::NotAcceptable,
                format!(
                    "_format={format} is not supported: this server speaks FHIR JSON only (application/fhir+json)"
                ),
            ))
        };
    }
    let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    if accept.trim().is_empty() || accept.split(',').any(is_json_type) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::NotAcceptable,
            format!(
                "Cannot produce '{accept}': this server speaks FHIR JSON only (application/fhir+json)"
            ),
        ))
    }
}

/// Reads the body up to `limit` bytes, checking its media type; a larger body is refused with 413 before it is
/// buffered whole.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    allowed: &[&str],
) -> Result<web::BytesMut, Error> {
    if let Some(ct) = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !allowed.contains(&media.as_str()) {
            return Err(Error::new(
                ErrorKind::UnsupportedMediaType,
                format!(
                    "Content-Type '{media}' is not supported here; send {}",
                    allowed.join(" or ")
                ),
            ));
        }
    }
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large(limit));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| Error::bad_request(format!("Could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn too_large(limit: usize) -> Error {
    Error::new(
        ErrorKind::PayloadTooLarge,
        format!("The request body exceeds the limit of {limit} bytes"),
    )
}

/// Parses a JSON body, naming where it is malformed. serde_json's nesting limit refuses absurdly deep documents.
pub fn parse_json(body: &[u8]) -> Result<Value, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::bad_request(
            "The request body is empty; a FHIR JSON resource is expected",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        Error::with_issues(
            ErrorKind::BadRequest,
            vec![crate::fhir::outcome::Issue::error(
                "structure",
                format!(
                    "The body is not valid JSON: {e} (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )],
        )
    })
}

/// `Prefer: return=…` (https://hl7.org/fhir/R4/http.html#ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

fn prefer_tokens(req: &HttpRequest) -> Vec<String> {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

pub fn prefer_return(req: &HttpRequest) -> Return {
    let tokens = prefer_tokens(req);
    if tokens.iter().any(|t| t == "return=minimal") {
        Return::Minimal
    } else if tokens.iter().any(|t| t == "return=operationoutcome") {
        Return::OperationOutcome
    } else {
        Return::Representation
    }
}

/// `Prefer: handling=strict`.
pub fn prefer_strict(req: &HttpRequest) -> bool {
    prefer_tokens(req).iter().any(|t| t == "handling=strict")
}

fn pretty(req: &HttpRequest) -> bool {
    query_param(req, "_pretty").as_deref() == Some("true")
}

/// A JSON body response with the FHIR media type.
pub fn json_response(req: &HttpRequest, status: StatusCode, body: &Value) -> HttpResponse {
    let text = if pretty(req) {
        serde_json::to_string_pretty(body).unwrap_or_default()
    } else {
        body.to_string()
    };
    fhir_json(status, text)
}

/// A response whose JSON body is already text (pretty-printed when `_pretty=true` asks for it).
pub fn json_text_response(req: &HttpRequest, status: StatusCode, text: String) -> HttpResponse {
    if !pretty(req) {
        return fhir_json(status, text);
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => json_response(req, status, &v),
        Err(_) => fhir_json(status, text),
    }
}

fn fhir_json(status: StatusCode, text: String) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, FHIR_JSON))
        .body(text)
}

/// HTTP-date for Last-Modified.
pub fn http_date(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|d| d.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_default()
}

/// A resource response with ETag and Last-Modified; the stored text is sent as is unless `_pretty` is asked for.
pub fn resource_response(
    req: &HttpRequest,
    status: StatusCode,
    r: &StoredResource,
) -> HttpResponse {
    let body = if pretty(req) {
        pretty_text(r)
    } else {
        r.content.clone().unwrap_or_default()
    };
    resource_response_with(status, r, body)
}

/// [`resource_response`] for a resource no longer needed: its stored text becomes the body without a copy.
pub fn resource_response_owned(
    req: &HttpRequest,
    status: StatusCode,
    mut r: StoredResource,
) -> HttpResponse {
    let body = if pretty(req) {
        pretty_text(&r)
    } else {
        r.content.take().unwrap_or_default()
    };
    resource_response_with(status, &r, body)
}

fn pretty_text(r: &StoredResource) -> String {
    r.json()
        .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
        .unwrap_or_default()
}

fn resource_response_with(status: StatusCode, r: &StoredResource, body: String) -> HttpResponse {
    let mut resp = HttpResponse::build(status);
    resp.insert_header((header::CONTENT_TYPE, FHIR_JSON))
        .insert_header((header::ETAG, r.etag()))
        .insert_header((header::LAST_MODIFIED, http_date(r.last_updated)));
    resp.body(body)
}

/// The response to a create or update, honouring `Prefer: return`.
pub fn write_response(
    req: &HttpRequest,
    base: &str,
    r: &StoredResource,
    created: bool,
) -> HttpResponse {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("{base}/{}/{}/_history/{}", r.res_type, r.id, r.version);
    let mut resp = match prefer_return(req) {
        Return::Representation => resource_response(req, status, r),
        Return::Minimal => {
            let mut b = HttpResponse::build(status);
            b.insert_header((header::ETAG, r.etag()))
                .insert_header((header::LAST_MODIFIED, http_date(r.last_updated)));
            b.finish()
        }
        Return::OperationOutcome => {
            let verb = if created { "Created" } else { "Updated" };
            let mut resp = json_response(
                req,
                status,
                &information(format!(
                    "{verb} {}/{} version {}",
                    r.res_type, r.id, r.version
                )),
            );
            resp.headers_mut()
                .insert(header::ETAG, header_value(&r.etag()));
            resp
        }
    };
    resp.headers_mut()
        .insert(header::LOCATION, header_value(&location));
    resp
}

pub fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}
