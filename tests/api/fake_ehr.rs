//! A fake EHR: a real HTTP FHIR R4 server on loopback that stores what it receives (conditional update, create
//! and delete by identifier, like a real server), records every request, issues SMART backend-services tokens,
//! and can be told to be down, to answer 500/503/429, to be slow, or to reject a record.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

/// A request as the fake EHR saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub method: String,
    /// Path and query, e.g. `/fhir/Observation?identifier=…`.
    pub target: String,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    pub authorization: Option<String>,
    pub traceparent: Option<String>,
    pub if_none_exist: Option<String>,
    pub body: Option<Value>,
    pub status: u16,
}

impl Recorded {
    /// The decoded `identifier` search value (`system|value`) of a conditional request.
    pub fn identifier(&self) -> Option<String> {
        let q = self.target.split_once('?').map(|(_, q)| q).unwrap_or("");
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "identifier")
            .map(|(_, v)| v.into_owned())
            .or_else(|| {
                self.if_none_exist.as_ref().and_then(|c| {
                    url::form_urlencoded::parse(c.as_bytes())
                        .find(|(k, _)| k == "identifier")
                        .map(|(_, v)| v.into_owned())
                })
            })
    }
}

#[derive(Debug, Clone)]
pub struct Stored {
    pub res_type: String,
    pub id: String,
    pub version: u64,
    pub body: Value,
    pub last_updated: String,
}

/// A scripted answer for the next FHIR request.
#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16),
    /// 429 with `Retry-After: <secs>`.
    TooMany(u64),
}

#[derive(Default)]
pub struct State {
    pub resources: Vec<Stored>,
    pub requests: Vec<Recorded>,
    pub script: VecDeque<Fault>,
    /// Identifier values refused with 422.
    pub reject: Vec<String>,
    /// Identifier values that fail once with 503.
    pub fail_once: Vec<String>,
    pub slow: Duration,
    /// SMART: the public key (uncompressed EC point) client assertions must verify with; `None` = no auth.
    pub client_key: Option<Vec<u8>>,
    pub client_id: String,
    pub tokens: HashMap<String, Instant>,
    pub token_lifetime: u64,
    pub token_requests: u32,
    pub next_id: u64,
}

pub struct FakeEhr {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    handle: Mutex<Option<ServerHandle>>,
}

fn outcome(code: &str, text: &str) -> Value {
    json!({"resourceType": "OperationOutcome",
           "issue": [{"severity": "error", "code": code, "diagnostics": text}]})
}

fn fhir_json(status: u16, body: &Value) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .content_type("application/fhir+json; fhirVersion=4.0")
        .body(body.to_string())
}

fn now_instant() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn has_identifier(r: &Value, system: &str, value: &str) -> bool {
    r["identifier"].as_array().is_some_and(|ids| {
        ids.iter()
            .any(|i| i["system"] == system && i["value"] == value)
    })
}

impl FakeEhr {
    pub async fn start() -> Arc<FakeEhr> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Arc::new(FakeEhr {
            addr,
            state: Arc::new(Mutex::new(State {
                token_lifetime: 300,
                ..State::default()
            })),
            handle: Mutex::new(None),
        });
        fake.serve(listener);
        fake
    }

    fn serve(&self, listener: std::net::TcpListener) {
        let state = self.state.clone();
        let base = self.root();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .app_data(web::Data::new(base.clone()))
                .route(
                    "/fhir/.well-known/smart-configuration",
                    web::get().to(smart_configuration),
                )
                .route("/token", web::post().to(token))
                .default_service(web::to(fhir))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .unwrap()
        .run();
        *self.handle.lock().unwrap() = Some(server.handle());
        tokio::spawn(server);
    }

    pub fn root(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The FHIR base URL.
    pub fn base(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }

    /// Stops accepting connections (requests fail with a network error).
    pub async fn down(&self) {
        let handle = self.handle.lock().unwrap().take();
        if let Some(h) = handle {
            h.stop(false).await;
        }
    }

    /// Serves again on the same port.
    pub async fn up(&self) {
        for _ in 0..100 {
            if let Ok(l) = std::net::TcpListener::bind(self.addr) {
                self.serve(l);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot listen on {} again", self.addr);
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.clone())
    }

    /// Writes (PUT/POST/DELETE) to FHIR resources, in arrival order.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET" && !r.target.starts_with("/token"))
            .collect()
    }

    /// Stored resources with this identifier.
    pub fn stored_with(&self, system: &str, value: &str) -> Vec<Stored> {
        self.with(|s| {
            s.resources
                .iter()
                .filter(|r| has_identifier(&r.body, system, value))
                .cloned()
                .collect()
        })
    }

    pub fn stored(&self, res_type: &str) -> Vec<Stored> {
        self.with(|s| {
            s.resources
                .iter()
                .filter(|r| r.res_type == res_type)
                .cloned()
                .collect()
        })
    }

    /// Adds a resource as if the EHR had it already; returns its id.
    pub fn seed(&self, mut body: Value) -> String {
        self.with(|s| {
            s.next_id += 1;
            let id = format!("ehr{}", s.next_id);
            let res_type = body["resourceType"].as_str().unwrap().to_owned();
            body["id"] = json!(id);
            let last_updated = now_instant();
            body["meta"] = json!({"versionId": "1", "lastUpdated": last_updated});
            s.resources.push(Stored {
                res_type,
                id: id.clone(),
                version: 1,
                body,
                last_updated,
            });
            id
        })
    }

    /// Makes every access token issued so far invalid (as if they had expired).
    pub fn expire_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }
}

async fn smart_configuration(base: web::Data<String>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "token_endpoint": format!("{}/token", base.get_ref()),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "grant_types_supported": ["client_credentials"],
    }))
}

async fn token(
    state: web::Data<Arc<Mutex<State>>>,
    base: web::Data<String>,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    let mut s = state.lock().unwrap();
    s.token_requests += 1;
    s.requests.push(Recorded {
        at: Instant::now(),
        method: "POST".into(),
        target: "/token".into(),
        content_type: None,
        accept: None,
        authorization: None,
        traceparent: None,
        if_none_exist: None,
        body: None,
        status: 200,
    });
    let bad = |why: &str| {
        HttpResponse::BadRequest()
            .json(json!({"error": "invalid_client", "error_description": why}))
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return bad("grant_type");
    }
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return bad("client_assertion_type");
    }
    let Some(key) = s.client_key.clone() else {
        return bad("no client registered");
    };
    let assertion = form.get("client_assertion").cloned().unwrap_or_default();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES384);
    validation.set_audience(&[format!("{}/token", base.get_ref())]);
    validation.set_issuer(&[s.client_id.clone()]);
    let Ok(data) = jsonwebtoken::decode::<Value>(
        &assertion,
        &jsonwebtoken::DecodingKey::from_ec_der(&key),
        &validation,
    ) else {
        return bad("client assertion does not verify");
    };
    if data.claims["sub"] != json!(s.client_id) || data.claims["jti"].as_str().is_none() {
        return bad("sub or jti");
    }
    let t = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let lifetime = s.token_lifetime;
    s.tokens
        .insert(t.clone(), Instant::now() + Duration::from_secs(lifetime));
    HttpResponse::Ok().json(json!({
        "access_token": t, "token_type": "bearer", "expires_in": lifetime,
        "scope": form.get("scope").cloned().unwrap_or_default()
    }))
}

async fn fhir(
    state: web::Data<Arc<Mutex<State>>>,
    base: web::Data<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut rec = Recorded {
        at: Instant::now(),
        method: req.method().to_string(),
        target: req.uri().to_string(),
        content_type: header("content-type"),
        accept: header("accept"),
        authorization: header("authorization"),
        traceparent: header("traceparent"),
        if_none_exist: header("if-none-exist"),
        body: serde_json::from_slice(&body).ok(),
        status: 0,
    };
    let slow = state.lock().unwrap().slow;
    if !slow.is_zero() {
        tokio::time::sleep(slow).await;
    }
    let mut s = state.lock().unwrap();
    let response = handle(&mut s, &base, &rec);
    rec.status = response.status().as_u16();
    s.requests.push(rec);
    response
}

fn handle(s: &mut State, base: &str, rec: &Recorded) -> HttpResponse {
    // Authentication, when the EHR has a SMART client registered.
    if s.client_key.is_some() {
        let ok = rec
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .and_then(|t| s.tokens.get(t))
            .is_some_and(|exp| *exp > Instant::now());
        if !ok {
            return fhir_json(
                401,
                &outcome("login", "access token missing, unknown or expired"),
            );
        }
    }
    if let Some(f) = s.script.pop_front() {
        return match f {
            Fault::Status(code) => fhir_json(code, &outcome("transient", "scripted failure")),
            Fault::TooMany(secs) => HttpResponse::TooManyRequests()
                .insert_header(("Retry-After", secs.to_string()))
                .content_type("application/fhir+json; fhirVersion=4.0")
                .body(outcome("throttled", "slow down").to_string()),
        };
    }
    if matches!(rec.method.as_str(), "PUT" | "POST")
        && rec.content_type.as_deref() != Some("application/fhir+json; fhirVersion=4.0")
    {
        return fhir_json(415, &outcome("not-supported", "R4 JSON only"));
    }
    let (path, query) = rec.target.split_once('?').unwrap_or((&rec.target, ""));
    let segs: Vec<&str> = path.trim_start_matches("/fhir/").split('/').collect();
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let res_type = segs.first().copied().unwrap_or("").to_owned();
    let ident = rec.identifier();
    if let Some(i) = &ident {
        let value = i.split_once('|').map(|(_, v)| v).unwrap_or(i);
        if s.reject.iter().any(|r| r == value) && rec.method != "GET" {
            return fhir_json(
                422,
                &outcome(
                    "business-rule",
                    &format!("record {value} refused by the EHR"),
                ),
            );
        }
        if let Some(pos) = s.fail_once.iter().position(|r| r == value) {
            s.fail_once.remove(pos);
            return fhir_json(503, &outcome("transient", "failing once"));
        }
    }
    let find = |s: &State, ident: &str| -> Vec<usize> {
        let (system, value) = ident.split_once('|').unwrap_or(("", ident));
        s.resources
            .iter()
            .enumerate()
            .filter(|(_, r)| r.res_type == res_type && has_identifier(&r.body, system, value))
            .map(|(i, _)| i)
            .collect()
    };
    match (rec.method.as_str(), segs.len()) {
        ("PUT", 1) | ("POST", 1) => {
            let Some(mut body) = rec.body.clone() else {
                return fhir_json(400, &outcome("invalid", "no JSON body"));
            };
            if body["resourceType"] != json!(res_type) {
                return fhir_json(400, &outcome("invalid", "resourceType does not match"));
            }
            if body.get("id").is_some() {
                return fhir_json(
                    400,
                    &outcome("invalid", "a conditional write carries no id"),
                );
            }
            let Some(i) = ident.clone() else {
                return fhir_json(400, &outcome("invalid", "no identifier criteria"));
            };
            let found = find(s, &i);
            let last_updated = now_instant();
            match found.as_slice() {
                [] => {
                    s.next_id += 1;
                    let id = format!("ehr{}", s.next_id);
                    body["id"] = json!(id);
                    body["meta"]["versionId"] = json!("1");
                    body["meta"]["lastUpdated"] = json!(last_updated);
                    s.resources.push(Stored {
                        res_type: res_type.clone(),
                        id: id.clone(),
                        version: 1,
                        body: body.clone(),
                        last_updated,
                    });
                    HttpResponse::Created()
                        .insert_header((
                            "Location",
                            format!("{base}/fhir/{res_type}/{id}/_history/1"),
                        ))
                        .content_type("application/fhir+json; fhirVersion=4.0")
                        .body(body.to_string())
                }
                [one] if rec.method == "POST" => fhir_json(200, &s.resources[*one].body),
                [one] => {
                    let r = &mut s.resources[*one];
                    r.version += 1;
                    body["id"] = json!(r.id);
                    body["meta"]["versionId"] = json!(r.version.to_string());
                    body["meta"]["lastUpdated"] = json!(last_updated);
                    r.body = body.clone();
                    r.last_updated = last_updated;
                    HttpResponse::Ok()
                        .insert_header((
                            "Location",
                            format!("{base}/fhir/{res_type}/{}/_history/{}", r.id, r.version),
                        ))
                        .content_type("application/fhir+json; fhirVersion=4.0")
                        .body(body.to_string())
                }
                _ => fhir_json(412, &outcome("multiple-matches", "several matches")),
            }
        }
        ("DELETE", 1) => {
            let Some(i) = ident else {
                return fhir_json(400, &outcome("invalid", "no identifier criteria"));
            };
            let found = find(s, &i);
            for idx in found.iter().rev() {
                s.resources.remove(*idx);
            }
            HttpResponse::NoContent().finish()
        }
        ("GET", 1) => {
            let mut matches: Vec<Value> = Vec::new();
            for r in s.resources.iter().filter(|r| r.res_type == res_type) {
                if let Some(i) = &ident {
                    let (system, value) = i.split_once('|').unwrap_or(("", i));
                    if !has_identifier(&r.body, system, value) {
                        continue;
                    }
                }
                if let Some(p) = param("patient") {
                    let subject = r.body["patient"]["reference"]
                        .as_str()
                        .or(r.body["subject"]["reference"].as_str())
                        .unwrap_or("");
                    if subject != format!("Patient/{p}") {
                        continue;
                    }
                }
                if let Some(lu) = param("_lastUpdated") {
                    let since = lu.trim_start_matches("gt");
                    let since = chrono::DateTime::parse_from_rfc3339(since).unwrap();
                    let at = chrono::DateTime::parse_from_rfc3339(&r.last_updated).unwrap();
                    if at <= since {
                        continue;
                    }
                }
                matches.push(r.body.clone());
            }
            let bundle = json!({
                "resourceType": "Bundle", "type": "searchset",
                "meta": {"lastUpdated": now_instant()},
                "total": matches.len(),
                "entry": matches.iter().map(|m| json!({
                    "fullUrl": format!("{base}/fhir/{}/{}", m["resourceType"].as_str().unwrap(), m["id"].as_str().unwrap()),
                    "resource": m, "search": {"mode": "match"}})).collect::<Vec<_>>()
            });
            fhir_json(200, &bundle)
        }
        ("GET", 2) => match s
            .resources
            .iter()
            .find(|r| r.res_type == res_type && r.id == segs[1])
        {
            Some(r) => fhir_json(200, &r.body),
            None => fhir_json(404, &outcome("not-found", "unknown")),
        },
        _ => fhir_json(
            400,
            &outcome("not-supported", "the fake EHR does not do that"),
        ),
    }
}
