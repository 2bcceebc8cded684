//! The project's conformance resources, served read-only (https://hl7.org/fhir/R4/http.html#read,
//! https://hl7.org/fhir/R4/http.html#search), and the `$validate` operation
//! (https://hl7.org/fhir/R4/resource-operation-validate.html).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::AppState;
use super::audit::AuditInfo;
use super::response::{json_response, negotiate, parse_json, prefer_strict, read_body};
use crate::audit::patients_of;
use crate::auth::access::Access;
use crate::auth::scopes::Op;
use crate::error::{Error, ErrorKind, Result};
use crate::fhir::datetime::{format_instant, now_micros};
use crate::fhir::outcome::{Issue, Severity, operation_outcome};
use crate::fhir::profile::{
    KAP_CANONICAL_BASE, claimed_kap_profiles, conformance_resources, validate_against_profile,
};
use crate::fhir::registry;
use crate::fhir::validate::{ValidationIssue, validate_resource};
use crate::service::bundle::search_url;
use crate::service::parse_query_string;

const JSON_TYPES: &[&str] = &[
    "application/fhir+json",
    "application/json",
    "application/json+fhir",
];

/// Parameters a conformance search understands; `_format` and `_pretty` shape the response elsewhere.
const SEARCH_PARAMS: &[&str] = &["url", "_id", "_format", "_pretty"];

fn of_type<'a>(res_type: &'a str) -> impl Iterator<Item = &'static Value> + 'a {
    conformance_resources()
        .filter(move |r| r.get("resourceType").and_then(Value::as_str) == Some(res_type))
}

/// Whether a canonical search value names `r`: its url, or `url|version`.
fn canonical_matches(r: &Value, wanted: &str) -> bool {
    let url = r.get("url").and_then(Value::as_str);
    let version = r.get("version").and_then(Value::as_str);
    match wanted.split_once('|') {
        Some((u, v)) => url == Some(u) && version == Some(v),
        None => url == Some(wanted),
    }
}

fn with_audit(mut resp: HttpResponse, interaction: &'static str) -> HttpResponse {
    resp.extensions_mut().insert(AuditInfo {
        patients: Vec::new(),
        interaction: Some(interaction),
    });
    resp
}

/// search: `GET /fhir/{StructureDefinition|CodeSystem|ValueSet}` with `url` (exact canonical, `url|version`
/// allowed) and `_id`; each takes a comma-separated list meaning any of them, and repeating a parameter means
/// all of them. Other parameters are ignored, unless `Prefer: handling=strict` asks for an error.
pub async fn search(
    state: web::Data<AppState>,
    req: HttpRequest,
    _access: Access,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let res_type = path.into_inner();
    let params = parse_query_string(req.query_string());
    if prefer_strict(&req)
        && let Some((name, _)) = params
            .iter()
            .find(|(k, _)| !SEARCH_PARAMS.contains(&k.as_str()))
    {
        return Err(Error::invalid_at(
            "not-supported",
            format!("Search parameter '{name}' is not supported on {res_type}; use url or _id"),
            name.clone(),
        ));
    }
    let applied: Vec<(String, String)> = params
        .into_iter()
        .filter(|(k, _)| k == "url" || k == "_id")
        .collect();
    let matches: Vec<&Value> = of_type(&res_type)
        .filter(|r| {
            applied.iter().all(|(k, v)| {
                v.split(',').any(|wanted| match k.as_str() {
                    "url" => canonical_matches(r, wanted),
                    _ => r.get("id").and_then(Value::as_str) == Some(wanted),
                })
            })
        })
        .collect();
    let entries: Vec<Value> = matches
        .iter()
        .map(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or("");
            json!({
                "fullUrl": format!("{}/{res_type}/{id}", state.base_url),
                "resource": r,
                "search": {"mode": "match"},
            })
        })
        .collect();
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": format_instant(now_micros())},
        "type": "searchset",
        "total": matches.len(),
        "link": [{"relation": "self", "url": search_url(&state.base_url, &res_type, &applied, None)}],
    });
    if !entries.is_empty()
        && let Some(obj) = bundle.as_object_mut()
    {
        obj.insert("entry".into(), Value::Array(entries));
    }
    Ok(with_audit(
        json_response(&req, StatusCode::OK, &bundle),
        "search-type",
    ))
}

/// read: `GET /fhir/{StructureDefinition|CodeSystem|ValueSet}/{id}`.
pub async fn read(
    req: HttpRequest,
    _access: Access,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (res_type, id) = path.into_inner();
    let found = of_type(&res_type)
        .find(|r| r.get("id").and_then(Value::as_str) == Some(id.as_str()))
        .ok_or_else(|| Error::not_found(format!("{res_type}/{id} is not known")))?;
    Ok(with_audit(
        json_response(&req, StatusCode::OK, found),
        "read",
    ))
}

/// Any other method on the conformance resources: they come with the server and change only with it.
pub async fn read_only(req: HttpRequest, _access: Access) -> Result<HttpResponse> {
    Err(Error::new(
        ErrorKind::MethodNotAllowed,
        format!(
            "{} is not allowed on {}: the conformance resources of this server are read-only",
            req.method(),
            req.path()
        ),
    ))
}

/// What a `$validate` request asks for.
#[derive(Default)]
struct ValidateInput {
    resource: Option<Value>,
    profile: Option<String>,
}

/// The body: nothing, a resource, or a Parameters with `resource` and `profile` (`mode` is accepted and
/// ignored: create and update are checked alike, and this server has no rules that refuse a delete).
fn parse_input(res_type: &str, body: &[u8]) -> Result<ValidateInput> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ValidateInput::default());
    }
    let v = parse_json(body)?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Parameters")
        || res_type == "Parameters"
    {
        return Ok(ValidateInput {
            resource: Some(v),
            profile: None,
        });
    }
    let mut input = ValidateInput::default();
    for p in v
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match p.get("name").and_then(Value::as_str) {
            Some("resource") => input.resource = p.get("resource").cloned(),
            Some("profile") => {
                input.profile = ["valueUri", "valueCanonical", "valueString"]
                    .iter()
                    .find_map(|k| p.get(*k).and_then(Value::as_str))
                    .map(str::to_owned);
                if input.profile.is_none() {
                    return Err(Error::invalid_at(
                        "invalid",
                        "The profile parameter needs a valueUri or valueCanonical",
                        "Parameters.parameter.where(name = 'profile')",
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(input)
}

fn to_issue(i: ValidationIssue) -> Issue {
    Issue::error(i.kind.code(), i.message).at(i.expression)
}

/// Base R4 first, then the profile asked for, else every kap profile the resource claims. Every issue is
/// listed; with none, a single information issue says so.
fn validation_outcome(res_type: &str, resource: &Value, profile: Option<&str>) -> Value {
    let mut issues: Vec<Issue> = Vec::new();
    if let Err(found) = validate_resource(Some(res_type), resource) {
        issues.extend(found.into_iter().map(to_issue));
    }
    let profiles: Vec<&str> = match profile {
        Some(p) => vec![p],
        None => claimed_kap_profiles(resource),
    };
    for p in &profiles {
        if let Err(found) = validate_against_profile(resource, p) {
            issues.extend(found.into_iter().map(to_issue));
        }
    }
    if issues.is_empty() {
        let checked = if profiles.is_empty() {
            "base FHIR R4".to_owned()
        } else {
            format!("base FHIR R4 and {}", profiles.join(", "))
        };
        issues.push(
            Issue::error(
                "informational",
                format!("Validation found no issues ({checked})"),
            )
            .with_severity(Severity::Information),
        );
    }
    // Claims of profiles published elsewhere are not checked: say so rather than imply they were.
    if profile.is_none() {
        let others = resource
            .get("meta")
            .and_then(|m| m.get("profile"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|u| !u.starts_with(KAP_CANONICAL_BASE));
        for other in others {
            issues.push(
                Issue::error(
                    "informational",
                    format!("Profile {other} is not defined on this server and was not checked"),
                )
                .with_severity(Severity::Information),
            );
        }
    }
    operation_outcome(&issues)
}

fn require_type(res_type: &str) -> Result<()> {
    if registry::is_supported_type(res_type) {
        Ok(())
    } else {
        Err(Error::not_found(format!(
            "Resource type '{res_type}' is not supported by this server"
        )))
    }
}

fn profile_param(req: &HttpRequest, input: &ValidateInput) -> Option<String> {
    input.profile.clone().or_else(|| {
        parse_query_string(req.query_string())
            .into_iter()
            .find(|(k, _)| k == "profile")
            .map(|(_, v)| v)
    })
}

/// `POST /fhir/{type}/$validate`: validates the resource in the body. Nothing is read from the store, so a
/// valid token is all it needs.
pub async fn validate_type(
    state: web::Data<AppState>,
    req: HttpRequest,
    _access: Access,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let res_type = path.into_inner();
    require_type(&res_type)?;
    let body = read_body(&req, payload, state.config.max_body_bytes, JSON_TYPES).await?;
    let input = parse_input(&res_type, &body)?;
    let profile = profile_param(&req, &input);
    let Some(resource) = input.resource else {
        return Err(Error::bad_request(format!(
            "$validate on {res_type} needs a resource in the body (or a Parameters with a resource parameter)"
        )));
    };
    let outcome = validation_outcome(&res_type, &resource, profile.as_deref());
    Ok(json_response(&req, StatusCode::OK, &outcome))
}

/// `POST /fhir/{type}/{id}/$validate`: validates the resource in the body, or the stored one when the body is
/// empty or a Parameters without `resource`. Needs read access to the type.
pub async fn validate_instance(
    state: web::Data<AppState>,
    req: HttpRequest,
    access: Access,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (res_type, id) = path.into_inner();
    require_type(&res_type)?;
    access.permit(&res_type, Op::Read)?;
    let body = read_body(&req, payload, state.config.max_body_bytes, JSON_TYPES).await?;
    let input = parse_input(&res_type, &body)?;
    let profile = profile_param(&req, &input);
    let (resource, stored) = match input.resource {
        Some(r) => (r, false),
        None => {
            let r = state.fhir.read(&access, &res_type, &id).await?;
            let json = r.json().ok_or_else(|| {
                Error::internal(anyhow::anyhow!("stored {res_type}/{id} is not JSON"))
            })?;
            (json, true)
        }
    };
    let outcome = validation_outcome(&res_type, &resource, profile.as_deref());
    let mut resp = json_response(&req, StatusCode::OK, &outcome);
    if stored {
        // The stored resource was read: the audit names its patient as for a read.
        resp.extensions_mut().insert(AuditInfo {
            patients: patients_of(&res_type, &resource),
            interaction: None,
        });
    }
    Ok(resp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_parameters_body_yields_its_resource_and_profile() {
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": {"resourceType": "Patient"}},
            {"name": "profile", "valueCanonical": "http://kap-gateway.org/fhir/StructureDefinition/kap-patient"},
            {"name": "mode", "valueCode": "create"}
        ]});
        let input = parse_input("Patient", body.to_string().as_bytes()).unwrap();
        assert_eq!(input.resource.unwrap()["resourceType"], "Patient");
        assert_eq!(
            input.profile.as_deref(),
            Some("http://kap-gateway.org/fhir/StructureDefinition/kap-patient")
        );
        let empty = parse_input("Patient", b"  ").unwrap();
        assert!(empty.resource.is_none() && empty.profile.is_none());
    }

    #[test]
    fn a_canonical_search_value_may_carry_a_version() {
        let r = json!({"url": "http://a/b", "version": "1.0"});
        assert!(canonical_matches(&r, "http://a/b"));
        assert!(canonical_matches(&r, "http://a/b|1.0"));
        assert!(!canonical_matches(&r, "http://a/b|2.0"));
        assert!(!canonical_matches(&r, "http://a/bc"));
    }
}
