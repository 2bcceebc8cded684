//! Calls to one EHR's FHIR R4 API (https://hl7.org/fhir/R4/http.html) through fhir-sdk's client, with our own
//! authentication: SMART Backend Services (https://hl7.org/fhir/smart-app-launch/STU2.2/backend-services.html)
//! or a static bearer token.
//!
//! Every request goes through `send_custom_request` with R4 headers (`application/fhir+json; fhirVersion=4.0`;
//! the client's typed calls would announce 4.3) and the stored JSON bytes, never re-serialised through fhir-sdk's
//! types. The client's own retries are off: the outbox retries. Access tokens are cached until shortly before
//! they expire and fetched again on a 401.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fhir_sdk::client::{Client, RequestSettings};
use fhir_sdk::version::FhirR4B;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName};
use serde_json::Value;
use tokio::sync::Mutex;

use super::config::{EhrAuthKind, EhrConfig};

/// The FHIR R4 media type sent and accepted.
pub const FHIR_R4_JSON: &str = "application/fhir+json; fhirVersion=4.0";

/// Tokens are renewed this long before they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);

/// Why a call did not get an HTTP answer (all of these are worth retrying).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("network error: {0}")]
    Network(String),
    #[error("cannot get an access token: {0}")]
    Auth(String),
}

/// An EHR's HTTP answer.
#[derive(Debug, Clone)]
pub struct EhrResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl EhrResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

struct SmartAuth {
    client_id: String,
    key: EncodingKey,
    algorithm: Algorithm,
    key_id: Option<String>,
    scope: String,
    token_url: Mutex<Option<String>>,
}

enum Auth {
    None,
    Bearer(String),
    Smart(Box<SmartAuth>),
}

/// A cached access token.
struct CachedToken {
    value: String,
    renew_at: Instant,
}

/// A connection to one EHR. Cheap to clone.
#[derive(Clone)]
pub struct EhrClient {
    pub name: String,
    pub base_url: String,
    client: Client<FhirR4B>,
    auth: Arc<Auth>,
    token: Arc<Mutex<Option<CachedToken>>>,
}

impl std::fmt::Debug for EhrClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EhrClient")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .finish()
    }
}

fn read_secret(
    direct: Option<&String>,
    file: Option<&String>,
    env: Option<&String>,
) -> Result<String, String> {
    if let Some(v) = direct {
        return Ok(v.clone());
    }
    if let Some(path) = file {
        return std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
    }
    if let Some(var) = env {
        return std::env::var(var).map_err(|_| format!("environment variable {var} is not set"));
    }
    Err("no secret configured".into())
}

impl EhrClient {
    /// Builds the client of one `[[ehr]]` connection (reads its key or token).
    pub fn new(cfg: &EhrConfig) -> Result<EhrClient, String> {
        cfg.check()?;
        let who = format!("[[ehr]] {:?}", cfg.name);
        let auth = match cfg.auth {
            EhrAuthKind::None => Auth::None,
            EhrAuthKind::Bearer => Auth::Bearer(
                read_secret(cfg.token.as_ref(), None, cfg.token_env.as_ref())
                    .map_err(|e| format!("{who}: {e}"))?
                    .trim()
                    .to_owned(),
            ),
            EhrAuthKind::SmartBackend => {
                let pem = read_secret(
                    None,
                    cfg.private_key_file.as_ref(),
                    cfg.private_key_env.as_ref(),
                )
                .map_err(|e| format!("{who}: {e}"))?;
                let (key, algorithm) = if cfg.algorithm == "RS384" {
                    (EncodingKey::from_rsa_pem(pem.as_bytes()), Algorithm::RS384)
                } else {
                    (EncodingKey::from_ec_pem(pem.as_bytes()), Algorithm::ES384)
                };
                let key = key.map_err(|e| {
                    format!(
                        "{who}: the private key is not a {} PKCS#8 PEM key: {e}",
                        cfg.algorithm
                    )
                })?;
                Auth::Smart(Box::new(SmartAuth {
                    client_id: cfg.client_id.clone().unwrap_or_default(),
                    key,
                    algorithm,
                    key_id: cfg.key_id.clone(),
                    scope: cfg.scope.clone(),
                    token_url: Mutex::new(None),
                }))
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs))
            .user_agent(concat!("kap-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("{who}: {e}"))?;
        let base = url::Url::parse(&format!("{}/", cfg.base_url.trim_end_matches('/')))
            .map_err(|e| format!("{who}: base_url: {e}"))?;
        let client = Client::<FhirR4B>::builder()
            .base_url(base)
            .client(http)
            // The outbox retries, with backoff; stacking the client's retries under it would multiply them.
            .request_settings(RequestSettings::default().retries(0))
            // The token endpoint may live on another host than the FHIR API.
            .allow_origin_mismatch()
            .allow_version_mismatch()
            .build()
            .map_err(|e| format!("{who}: {e}"))?;
        Ok(EhrClient {
            name: cfg.name.clone(),
            base_url: cfg.base_url.trim_end_matches('/').to_owned(),
            client,
            auth: Arc::new(auth),
            token: Arc::new(Mutex::new(None)),
        })
    }

    /// `{base}/{path}` (path may carry a query).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url, path.trim_start_matches('/'))
    }

    /// Sends one FHIR request with R4 headers, authentication and `traceparent`. A 401 makes a SMART client
    /// fetch a new token and try once more.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        extra: &[(HeaderName, String)],
    ) -> Result<EhrResponse, CallError> {
        let first = self
            .send_once(method.clone(), url, body.clone(), extra, false)
            .await?;
        if first.status == 401 && matches!(*self.auth, Auth::Smart(_)) {
            tracing::info!(ehr = %self.name, "EHR answered 401: fetching a new access token");
            return self.send_once(method, url, body, extra, true).await;
        }
        Ok(first)
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        extra: &[(HeaderName, String)],
        fresh_token: bool,
    ) -> Result<EhrResponse, CallError> {
        let authorization = self.authorization(fresh_token).await?;
        let url = url.to_owned();
        let extra = extra.to_vec();
        let response = self
            .client
            .send_custom_request(move |http| {
                let mut req = http.request(method, url).header(ACCEPT, FHIR_R4_JSON);
                if let Some(body) = body {
                    req = req.header(CONTENT_TYPE, FHIR_R4_JSON).body(body);
                }
                if let Some(a) = authorization {
                    req = req.header(AUTHORIZATION, a);
                }
                for (name, value) in extra {
                    req = req.header(name, value);
                }
                req
            })
            .await
            .map_err(|e| CallError::Network(error_chain(&e)))?;
        read_response(response).await
    }

    /// The `Authorization` header value, fetching a SMART token when none is cached (or `fresh` asks for one).
    async fn authorization(&self, fresh: bool) -> Result<Option<String>, CallError> {
        match &*self.auth {
            Auth::None => Ok(None),
            Auth::Bearer(t) => Ok(Some(format!("Bearer {t}"))),
            Auth::Smart(smart) => {
                let mut cached = self.token.lock().await;
                if !fresh
                    && let Some(t) = cached.as_ref()
                    && Instant::now() < t.renew_at
                {
                    return Ok(Some(format!("Bearer {}", t.value)));
                }
                let token = self.fetch_token(smart).await?;
                let value = format!("Bearer {}", token.value);
                *cached = Some(token);
                Ok(Some(value))
            }
        }
    }

    /// Finds the token endpoint in `.well-known/smart-configuration` (once).
    async fn token_url(&self, smart: &SmartAuth) -> Result<String, CallError> {
        let mut known = smart.token_url.lock().await;
        if let Some(u) = known.as_ref() {
            return Ok(u.clone());
        }
        let url = self.url(".well-known/smart-configuration");
        let response = self
            .client
            .send_custom_request(move |http| http.get(url).header(ACCEPT, "application/json"))
            .await
            .map_err(|e| CallError::Auth(format!("smart-configuration: {}", error_chain(&e))))?;
        let response = read_response(response).await?;
        let endpoint = response
            .json()
            .and_then(|v| {
                v.get("token_endpoint")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .filter(|_| response.is_success())
            .ok_or_else(|| {
                CallError::Auth(format!(
                    "the EHR's .well-known/smart-configuration (HTTP {}) names no token_endpoint",
                    response.status
                ))
            })?;
        *known = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// The client-credentials grant with a signed client assertion.
    async fn fetch_token(&self, smart: &SmartAuth) -> Result<CachedToken, CallError> {
        let token_url = self.token_url(smart).await?;
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "iss": smart.client_id,
            "sub": smart.client_id,
            "aud": token_url,
            "exp": now + 300,
            "iat": now,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let mut header = Header::new(smart.algorithm);
        header.kid = smart.key_id.clone();
        header.typ = Some("JWT".into());
        let assertion = jsonwebtoken::encode(&header, &claims, &smart.key)
            .map_err(|e| CallError::Auth(format!("cannot sign the client assertion: {e}")))?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("scope", &smart.scope)
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", &assertion)
            .finish();
        let url = token_url.clone();
        let started = Instant::now();
        let response = self
            .client
            .send_custom_request(move |http| {
                http.post(url)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(ACCEPT, "application/json")
                    .body(form)
            })
            .await
            .map_err(|e| CallError::Auth(format!("token endpoint: {}", error_chain(&e))))?;
        let response = read_response(response).await?;
        let body = response.json().unwrap_or(Value::Null);
        let Some(value) = body
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|_| response.is_success())
        else {
            return Err(CallError::Auth(format!(
                "the token endpoint answered HTTP {}: {}",
                response.status,
                body.get("error_description")
                    .or_else(|| body.get("error"))
                    .and_then(Value::as_str)
                    .unwrap_or("no access_token")
            )));
        };
        let lifetime = Duration::from_secs(
            body.get("expires_in")
                .and_then(Value::as_u64)
                .unwrap_or(300),
        );
        // Renew a little early, but never later than halfway through a short-lived token.
        let margin = TOKEN_MARGIN.min(lifetime / 2);
        tracing::debug!(ehr = %self.name, lifetime_secs = lifetime.as_secs(), "access token obtained");
        Ok(CachedToken {
            value: value.to_owned(),
            renew_at: started + lifetime - margin,
        })
    }
}

async fn read_response(response: reqwest::Response) -> Result<EhrResponse, CallError> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .map_err(|e| CallError::Network(error_chain(&e)))?
        .to_vec();
    Ok(EhrResponse {
        status,
        headers,
        body,
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date (https://www.rfc-editor.org/rfc/rfc9110#field.retry-after).
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// The W3C `traceparent` for an outgoing call (https://www.w3.org/TR/trace-context/). Until trace export is
/// wired, each delivery starts its own trace; its id is recorded on the delivery span so logs and the EHR's
/// records can be matched. Kept in one function so the shared telemetry helper can replace it.
pub fn traceparent(span: &tracing::Span) -> String {
    let id = uuid::Uuid::new_v4().as_u128();
    let trace_id = format!("{id:032x}");
    let span_id = format!("{:016x}", (id >> 64) as u64 ^ (id as u64));
    span.record("trace_id", trace_id.as_str());
    format!("00-{trace_id}-{span_id}-01")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn traceparent_has_the_w3c_shape() {
        let tp = traceparent(&tracing::Span::none());
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
    }
}
