//! The built-in SMART on FHIR authorization server, without HTTP: discovery, the authorization-code flow with PKCE,
//! sign-in, patient picker and consent, the token endpoint (authorization code, refresh-token rotation, backend
//! services with signed client assertions), introspection, revocation and EHR launch contexts
//! (https://hl7.org/fhir/smart-app-launch/STU2.2/app-launch.html,
//! https://hl7.org/fhir/smart-app-launch/STU2.2/backend-services.html, https://www.rfc-editor.org/rfc/rfc9700).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::access::{Access, PSYCHOTHERAPY_SCOPE, SYNC_ADMIN_SCOPE};
use super::keys::{KeyError, claims_of, verify_with_jwks};
use super::pages::{Page, PatientChoice};
use super::registry::{Client, ClientKind, Registry, RegistryError, Role, User};
use super::scopes::{Scope, ScopeContext, ScopeSet};
use super::tokens::{Authenticator, TokenGrant, cache_max_age};
use crate::error::{Error, ErrorKind};
use crate::fhir::datetime::now_micros;
use crate::service::FhirService;
use crate::store::db::{Col, Db, Row, Sql, is_unique_violation};

/// `client_assertion_type` of a signed JWT client assertion (RFC 7523 §2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Cookie binding a sign-in to the browser that started it.
pub const REQUEST_COOKIE: &str = "kap_authz";
/// Clock skew tolerated on assertion times.
const LEEWAY_SECS: i64 = 30;
/// Longest lifetime a client assertion may claim (SMART Backend Services: "no more than five minutes").
const MAX_ASSERTION_SECS: i64 = 300;
/// `online_access` refresh tokens stand for a user still at work, so they do not outlive a working day.
const ONLINE_REFRESH_MAX_SECS: i64 = 8 * 3600;
/// Used codes and spent refresh tokens are kept this long after they expire, so that a replay is still recognised.
const KEEP_SPENT_SECS: i64 = 24 * 3600;
/// Patients listed by the picker at once.
const PICKER_LIMIT: usize = 50;
/// Largest JWKS accepted from a client's `jwks_uri`.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Lifetimes of what the authorization server hands out, in seconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthSettings {
    /// Access tokens of user launches (at most 3600).
    pub access_token_secs: i64,
    /// Access tokens of backend services (at most 300).
    pub backend_token_secs: i64,
    /// Authorization codes (at most 600; RFC 6749 §4.1.2 recommends ten minutes at most).
    pub code_secs: i64,
    /// Refresh tokens (`offline_access`); each rotation starts a new lifetime.
    pub refresh_token_secs: i64,
    /// A pending authorization request, from the authorize redirect to the consent.
    pub request_secs: i64,
    /// EHR launch contexts created by `POST /auth/launch`.
    pub launch_secs: i64,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        OAuthSettings {
            access_token_secs: 3600,
            backend_token_secs: 300,
            code_secs: 60,
            refresh_token_secs: 30 * 24 * 3600,
            request_secs: 600,
            launch_secs: 600,
        }
    }
}

impl OAuthSettings {
    /// The settings with each value brought within its bounds.
    pub fn bounded(&self) -> OAuthSettings {
        OAuthSettings {
            access_token_secs: self.access_token_secs.clamp(1, 3600),
            backend_token_secs: self.backend_token_secs.clamp(1, 300),
            code_secs: self.code_secs.clamp(0, 600),
            refresh_token_secs: self.refresh_token_secs.clamp(60, 365 * 24 * 3600),
            request_secs: self.request_secs.clamp(60, 3600),
            launch_secs: self.launch_secs.clamp(1, 24 * 3600),
        }
    }
}

/// The absolute URLs of the authorization server, derived from the FHIR base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The FHIR base URL: `iss` of every token and the only accepted `aud`.
    pub issuer: String,
    /// Where `/auth/…` lives: the base URL without its `/fhir` suffix.
    pub root: String,
    pub authorize: String,
    pub token: String,
    pub introspect: String,
    pub revoke: String,
    pub jwks: String,
}

impl Endpoints {
    pub fn new(base_url: &str) -> Endpoints {
        let issuer = base_url.trim_end_matches('/').to_owned();
        let root = match issuer.strip_suffix("/fhir") {
            Some(r) => r.to_owned(),
            None => url::Url::parse(&issuer)
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or_else(|_| issuer.clone()),
        };
        Endpoints {
            authorize: format!("{root}/auth/authorize"),
            token: format!("{root}/auth/token"),
            introspect: format!("{root}/auth/introspect"),
            revoke: format!("{root}/auth/revoke"),
            jwks: format!("{root}/auth/jwks"),
            issuer,
            root,
        }
    }
}

/// What the server announces at `/.well-known/smart-configuration`: exactly what works.
/// (https://hl7.org/fhir/smart-app-launch/STU2.2/conformance.html#metadata)
pub fn smart_configuration(base_url: &str) -> Value {
    let e = Endpoints::new(base_url);
    json!({
        "issuer": e.issuer,
        "jwks_uri": e.jwks,
        "authorization_endpoint": e.authorize,
        "token_endpoint": e.token,
        "introspection_endpoint": e.introspect,
        "revocation_endpoint": e.revoke,
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "authorization_response_iss_parameter_supported": true,
        "scopes_supported": [
            "openid", "fhirUser", "launch", "launch/patient", "launch/encounter", "offline_access",
            "online_access", "patient/*.rs", "patient/*.cruds", "user/*.rs", "user/*.cruds", "system/*.rs",
            "system/*.cruds", PSYCHOTHERAPY_SCOPE
        ],
        "capabilities": [
            "launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
            "client-confidential-asymmetric", "context-ehr-patient", "context-ehr-encounter",
            "context-standalone-patient", "permission-offline", "permission-online", "permission-patient",
            "permission-user", "permission-v1", "permission-v2", "sso-openid-connect"
        ],
    })
}

/// The OpenID Provider metadata for `sso-openid-connect`: apps verify `id_token`s with the keys it points to
/// (https://openid.net/specs/openid-connect-discovery-1_0.html#ProviderMetadata).
pub fn openid_configuration(base_url: &str) -> Value {
    let e = Endpoints::new(base_url);
    json!({
        "issuer": e.issuer,
        "authorization_endpoint": e.authorize,
        "token_endpoint": e.token,
        "jwks_uri": e.jwks,
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES384"],
        "scopes_supported": ["openid", "fhirUser"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "none"],
        "code_challenge_methods_supported": ["S256"],
    })
}

/// `CapabilityStatement.rest.security` announcing SMART on FHIR and its OAuth endpoints
/// (https://hl7.org/fhir/smart-app-launch/STU2.2/conformance.html#using-cors).
pub fn smart_security_extension(base_url: &str) -> Value {
    let e = Endpoints::new(base_url);
    json!({
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [
                {"url": "authorize", "valueUri": e.authorize},
                {"url": "token", "valueUri": e.token},
                {"url": "introspect", "valueUri": e.introspect},
                {"url": "revoke", "valueUri": e.revoke}
            ]
        }],
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
                "display": "SMART-on-FHIR"
            }],
            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)"
        }]
    })
}

/// A form (`application/x-www-form-urlencoded` body or query string), in order, repeated names kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form {
            pairs: url::form_urlencoded::parse(body).into_owned().collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Form {
        Form {
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The first value of `name`; an empty value counts as absent (RFC 6749 §3.1).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every non-empty value of `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// The first parameter given more than once: OAuth parameters "MUST NOT be included more than once"
    /// (RFC 6749 §3.1, §3.2), and a repeated one is how parameter-pollution attacks start.
    pub fn repeated(&self) -> Option<&str> {
        self.pairs.iter().enumerate().find_map(|(i, (k, _))| {
            self.pairs[..i]
                .iter()
                .any(|(seen, _)| seen == k)
                .then_some(k.as_str())
        })
    }
}

/// An OAuth error response (RFC 6749 §5.2, RFC 7009 §2.2.1, RFC 7662 §2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
    /// `WWW-Authenticate` to send (HTTP Basic or Bearer authentication failed).
    pub www_authenticate: Option<String>,
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.description)
    }
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status,
            error,
            description: description.into(),
            www_authenticate: None,
        }
    }

    pub fn invalid_request(d: impl Into<String>) -> OAuthError {
        OAuthError::new(400, "invalid_request", d)
    }

    pub fn invalid_client(d: impl Into<String>) -> OAuthError {
        OAuthError::new(400, "invalid_client", d)
    }

    /// `invalid_client` after HTTP Basic authentication failed: 401 with the Basic challenge (RFC 6749 §5.2).
    fn invalid_basic_client(d: impl Into<String>) -> OAuthError {
        OAuthError {
            www_authenticate: Some("Basic realm=\"kap-gateway\"".into()),
            ..OAuthError::new(401, "invalid_client", d)
        }
    }

    pub fn invalid_grant(d: impl Into<String>) -> OAuthError {
        OAuthError::new(400, "invalid_grant", d)
    }

    pub fn invalid_scope(d: impl Into<String>) -> OAuthError {
        OAuthError::new(400, "invalid_scope", d)
    }

    pub fn unauthorized_client(d: impl Into<String>) -> OAuthError {
        OAuthError::new(400, "unauthorized_client", d)
    }

    pub fn unsupported_grant_type(d: impl Into<String>) -> OAuthError {
        OAuthError::new(400, "unsupported_grant_type", d)
    }

    /// The server failed (RFC 6749 §4.1.2.1 `server_error`); details are only in the log.
    pub fn server_error() -> OAuthError {
        OAuthError::new(
            500,
            "server_error",
            "the authorization server failed; see its log",
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": self.error, "error_description": self.description})
    }
}

impl From<Error> for OAuthError {
    fn from(e: Error) -> OAuthError {
        tracing::error!(error = %e, cause = ?e.source, "authorization server failure");
        if e.kind == ErrorKind::Unavailable {
            OAuthError::new(
                503,
                "temporarily_unavailable",
                "The server is busy; retry later",
            )
        } else {
            OAuthError::new(500, "server_error", "The server failed; see its log")
        }
    }
}

impl From<sqlx::Error> for OAuthError {
    fn from(e: sqlx::Error) -> OAuthError {
        Error::from(e).into()
    }
}

impl From<RegistryError> for OAuthError {
    fn from(e: RegistryError) -> OAuthError {
        Error::internal(e).into()
    }
}

/// The next thing the browser sees during authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Show a page. `cookie` is a new browser-binding secret to set as [`REQUEST_COOKIE`].
    Page { page: Page, cookie: Option<String> },
    /// Send the browser back to the application (303); the binding cookie is no longer needed.
    Redirect { location: String },
}

/// Why an authorization step stops early: a page to show, or a failure of the server.
enum Stop {
    Show(Box<Page>),
    Fail(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Fail(e)
    }
}

impl From<sqlx::Error> for Stop {
    fn from(e: sqlx::Error) -> Stop {
        Stop::Fail(e.into())
    }
}

impl From<RegistryError> for Stop {
    fn from(e: RegistryError) -> Stop {
        Stop::Fail(Error::internal(e))
    }
}

fn finish(r: Result<Step, Stop>) -> Result<Step, Error> {
    match r {
        Ok(step) => Ok(step),
        Err(Stop::Show(page)) => Ok(Step::Page {
            page: *page,
            cookie: None,
        }),
        Err(Stop::Fail(e)) => Err(e),
    }
}

fn error_page(status: u16, title: &str, message: &str) -> Stop {
    Stop::Show(Box::new(Page::Error {
        status,
        title: title.to_owned(),
        message: message.to_owned(),
    }))
}

fn expired_form() -> Stop {
    error_page(
        400,
        "This sign-in has expired",
        "The form has expired, was already used, or was opened in another browser. Return to the application \
         and start again.",
    )
}

/// 32 random bytes, base64url: codes, refresh tokens, request secrets, launch ids, families.
fn random_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| Error::internal(anyhow::anyhow!("the random generator failed")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256, base64url: what is stored of codes, refresh tokens and request secrets.
fn sha256_b64(s: &str) -> String {
    URL_SAFE_NO_PAD
        .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes()).as_ref())
}

fn same(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

fn now_secs() -> i64 {
    now_micros() / 1_000_000
}

const MICROS: i64 = 1_000_000;

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~"`.
pub fn is_code_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An S256 challenge is the unpadded base64url of a SHA-256 digest: exactly 43 characters.
fn is_s256_challenge(c: &str) -> bool {
    c.len() == 43 && URL_SAFE_NO_PAD.decode(c).is_ok_and(|d| d.len() == 32)
}

/// RFC 7636 §4.6: BASE64URL(SHA256(verifier)) == challenge.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    is_code_verifier(verifier) && same(&sha256_b64(verifier), challenge)
}

/// `redirect_uri` with parameters appended to its query (RFC 6749 §4.1.2 keeps the registered query).
fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut url = url::Url::parse(redirect_uri).ok()?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    Some(url.to_string())
}

/// Decodes one half of HTTP Basic client credentials: RFC 6749 §2.3.1 form-encodes them first.
fn form_decode(part: &str) -> String {
    if part.contains('&') {
        return part.to_owned();
    }
    url::form_urlencoded::parse(format!("v={part}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| part.to_owned())
}

/// `Some(Ok((id, secret)))` for a Basic header, `Some(Err(()))` for a malformed one, `None` for none.
#[allow(
    clippy::result_unit_err,
    reason = "a malformed header has nothing more to say"
)]
pub fn parse_basic(authorization: Option<&str>) -> Option<Result<(String, String), ()>> {
    let header = authorization?.trim();
    let (scheme, rest) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD
        .decode(rest.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    Some(match decoded.as_deref().and_then(|d| d.split_once(':')) {
        Some((id, secret)) if !id.is_empty() => Ok((id.to_owned(), secret.to_owned())),
        _ => Err(()),
    })
}

fn claim_str<'a>(claims: &'a Value, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

fn claim_i64(claims: &Value, name: &str) -> Option<i64> {
    claims
        .get(name)
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}

/// A FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The requested scopes this client may have for this user: within the client's registration; no `system/`
/// scopes in a user's launch; no `user/` scopes for a patient, who sees only their own record; and the
/// psychotherapy scope only for therapists and administrators.
pub fn grantable_for_user(requested: &ScopeSet, allowed: &ScopeSet, role: Role) -> ScopeSet {
    let scopes = requested
        .narrowed_to(allowed)
        .scopes
        .into_iter()
        .filter(|s| match s {
            Scope::Resource(r) => match r.context {
                ScopeContext::System => false,
                ScopeContext::User => role != Role::Patient,
                ScopeContext::Patient => true,
            },
            Scope::Other(o) if o == PSYCHOTHERAPY_SCOPE => {
                matches!(role, Role::Therapist | Role::Admin)
            }
            Scope::Other(o) if o == SYNC_ADMIN_SCOPE => role == Role::Admin,
            Scope::Other(_) => true,
        })
        .collect();
    ScopeSet { scopes }
}

/// The patient id of a `Patient/<id>` user.
fn own_patient(user: &User) -> Option<String> {
    user.fhir_user
        .as_deref()
        .and_then(|f| f.strip_prefix("Patient/"))
        .map(str::to_owned)
}

fn patient_display(resource: &Value) -> (String, Option<String>) {
    let name = resource
        .get("name")
        .and_then(Value::as_array)
        .and_then(|names| {
            names
                .iter()
                .find(|n| n.get("use").and_then(Value::as_str) == Some("official"))
                .or_else(|| names.first())
        })
        .map(|n| match n.get("text").and_then(Value::as_str) {
            Some(text) => text.to_owned(),
            None => {
                let mut parts: Vec<&str> = n
                    .get("given")
                    .and_then(Value::as_array)
                    .map(|g| g.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if let Some(family) = n.get("family").and_then(Value::as_str) {
                    parts.push(family);
                }
                parts.join(" ")
            }
        })
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "(no name recorded)".to_owned());
    let birth = resource
        .get("birthDate")
        .and_then(Value::as_str)
        .map(str::to_owned);
    (name, birth)
}

/// An authorization request between the authorize redirect and the consent.
#[derive(Debug, Clone)]
struct Pending {
    id: String,
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    nonce: Option<String>,
    launch: Option<String>,
    username: Option<String>,
    patient: Option<String>,
    encounter: Option<String>,
    code_challenge: String,
}

const PENDING_COLS: &str = "id, client_id, redirect_uri, scope, state, nonce, launch, username, patient, encounter, code_challenge";
const PENDING_KINDS: &[Col] = &[
    Col::Text,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::OptText,
    Col::OptText,
    Col::OptText,
    Col::OptText,
    Col::OptText,
    Col::OptText,
];

fn pending_from(row: &Row) -> Pending {
    Pending {
        id: row.text(0),
        client_id: row.text(1),
        redirect_uri: row.text(2),
        scope: row.text(3),
        state: row.opt_text(4),
        nonce: row.opt_text(5),
        launch: row.opt_text(6),
        username: row.opt_text(7),
        patient: row.opt_text(8),
        encounter: row.opt_text(9),
        code_challenge: row.text(10),
    }
}

/// A refresh token as stored.
struct StoredRefresh {
    family: String,
    client_id: String,
    username: Option<String>,
    scope: String,
    patient: Option<String>,
    encounter: Option<String>,
    fhir_user: Option<String>,
    expires_at: i64,
    rotated: bool,
    revoked: bool,
}

/// What a user's tokens carry.
struct UserGrant<'a> {
    client: &'a Client,
    user: &'a User,
    family: &'a str,
    scope: ScopeSet,
    /// Scope of the refresh token to issue: the grant's original one (RFC 6749 §6).
    refresh_scope: ScopeSet,
    patient: Option<String>,
    encounter: Option<String>,
    nonce: Option<String>,
    /// Issue an `id_token` (code exchange only).
    id_token: bool,
}

/// Who calls the introspection endpoint.
enum Introspector {
    Admin,
    Client(String),
}

#[derive(Clone)]
struct CachedJwks {
    jwks: Value,
    fetched: Instant,
    max_age: Duration,
}

/// Keys fetched from clients' `jwks_uri`s, per client and URI, kept no longer than their `Cache-Control: max-age`.
static JWKS_CACHE: LazyLock<Mutex<HashMap<String, CachedJwks>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Fetches client keys: short timeout, no redirects (the registered URI is the one trusted).
static HTTP: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
});

/// Creates an EHR launch context and returns its opaque `launch` id, valid for `ttl_secs`
/// (https://hl7.org/fhir/smart-app-launch/STU2.2/app-launch.html#launch-app-ehr-launch).
pub async fn create_launch(
    db: &Db,
    patient: &str,
    encounter: Option<&str>,
    ttl_secs: i64,
) -> Result<String, Error> {
    if !is_fhir_id(patient) {
        return Err(Error::bad_request(format!(
            "'{patient}' is not a valid Patient id"
        )));
    }
    if let Some(e) = encounter
        && !is_fhir_id(e)
    {
        return Err(Error::bad_request(format!(
            "'{e}' is not a valid Encounter id"
        )));
    }
    let launch = random_token()?;
    let now = now_micros();
    let mut tx = db.begin_write().await?;
    let mut purge = Sql::new("DELETE FROM launch_contexts WHERE expires_at < ");
    purge.bind(now);
    tx.execute(&purge).await?;
    let mut sql = Sql::new(
        "INSERT INTO launch_contexts (launch, patient, encounter, created_at, expires_at) VALUES (",
    );
    sql.bind(launch.as_str())
        .push(", ")
        .bind(patient)
        .push(", ")
        .bind(encounter)
        .push(", ")
        .bind(now)
        .push(", ")
        .bind(now + ttl_secs.max(1) * MICROS)
        .push(")");
    tx.execute(&sql).await?;
    tx.commit().await?;
    Ok(launch)
}

/// The authorization server over one database.
#[derive(Clone)]
pub struct OAuthServer {
    registry: Registry,
    auth: Authenticator,
    fhir: FhirService,
    db: Db,
    settings: OAuthSettings,
    endpoints: Endpoints,
}

impl OAuthServer {
    pub fn new(
        registry: Registry,
        auth: Authenticator,
        fhir: FhirService,
        db: Db,
        base_url: &str,
        settings: &OAuthSettings,
    ) -> OAuthServer {
        OAuthServer {
            registry,
            auth,
            fhir,
            db,
            settings: settings.bounded(),
            endpoints: Endpoints::new(base_url),
        }
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    /// The binding cookie is `Secure` when the server is reached over https.
    pub fn secure_cookies(&self) -> bool {
        self.endpoints.root.starts_with("https://")
    }

    fn absolute_fhir_user(&self, fhir_user: &str) -> String {
        format!("{}/{fhir_user}", self.endpoints.issuer)
    }

    // ---- Authorization: authorize → sign-in → (patient picker) → consent → code -------------------------------

    /// `GET /auth/authorize` (RFC 6749 §4.1.1, RFC 7636, SMART App Launch).
    pub async fn authorize(&self, params: &Form) -> Result<Step, Error> {
        finish(self.authorize_inner(params).await)
    }

    async fn authorize_inner(&self, p: &Form) -> Result<Step, Stop> {
        let bad = |message: &str| error_page(400, "This request cannot be answered", message);
        for name in ["client_id", "redirect_uri"] {
            if p.all(name).count() > 1 {
                return Err(bad(&format!("The request gives {name} more than once.")));
            }
        }
        let client_id = p.get("client_id").ok_or_else(|| {
            bad("The request does not say which application is asking (client_id is missing).")
        })?;
        let client = self
            .registry
            .client(client_id)
            .await?
            .ok_or_else(|| bad("The application is not registered with this server."))?;
        // Until the redirect URI is known to be registered, nothing may be sent to it (RFC 6749 §4.1.2.1).
        let redirect_uri = p.get("redirect_uri").ok_or_else(|| {
            bad("The request does not say where to return (redirect_uri is missing).")
        })?;
        if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
            return Err(bad(
                "The return address (redirect_uri) is not registered for this application.",
            ));
        }
        // A token for another server must not be issued here, and the app must not be told anything either.
        if p.get("aud").map(|a| a.trim_end_matches('/')) != Some(self.endpoints.issuer.as_str()) {
            return Err(bad(&format!(
                "The application asked for access to another server (aud must be {}).",
                self.endpoints.issuer
            )));
        }
        let state = p.get("state");
        let issuer = self.endpoints.issuer.clone();
        let back = |error: &str, description: &str| -> Result<Step, Stop> {
            let mut params = vec![("error", error), ("error_description", description)];
            if let Some(s) = state {
                params.push(("state", s));
            }
            params.push(("iss", issuer.as_str()));
            let location = redirect_with(redirect_uri, &params)
                .ok_or_else(|| bad("The registered return address is not a valid URL."))?;
            Ok(Step::Redirect { location })
        };
        if let Some(name) = p.repeated() {
            return back(
                "invalid_request",
                &format!("{name} is given more than once"),
            );
        }
        match p.get("response_type") {
            Some("code") => {}
            None => return back("invalid_request", "response_type is required"),
            Some(_) => {
                return back(
                    "unsupported_response_type",
                    "only response_type=code is supported",
                );
            }
        }
        let Some(state) = state else {
            return back("invalid_request", "state is required");
        };
        if state.len() > 2048 {
            return back("invalid_request", "state is too long");
        }
        let Some(challenge) = p.get("code_challenge") else {
            return back(
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256",
            );
        };
        if p.get("code_challenge_method") != Some("S256") {
            return back(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted)",
            );
        }
        if !is_s256_challenge(challenge) {
            return back(
                "invalid_request",
                "code_challenge must be the base64url SHA-256 of the code verifier (43 characters)",
            );
        }
        let Some(scope_text) = p.get("scope") else {
            return back("invalid_scope", "scope is required");
        };
        let requested = match ScopeSet::parse(scope_text) {
            Ok(s) => s,
            Err(e) => return back("invalid_scope", &e.to_string()),
        };
        if requested.narrowed_to(&client.scopes()).scopes.is_empty() {
            return back(
                "invalid_scope",
                "none of the requested scopes is allowed for this application",
            );
        }
        let nonce = p.get("nonce");
        if nonce.is_some_and(|n| n.len() > 512) {
            return back("invalid_request", "nonce is too long");
        }
        let launch = p.get("launch");
        let (patient, encounter) = match launch {
            Some(l) => {
                if !requested.contains("launch") {
                    return back("invalid_scope", "an EHR launch needs the launch scope");
                }
                self.launch_context(l).await?.ok_or_else(|| {
                    error_page(
                        400,
                        "This launch has expired",
                        "The launch is unknown or has expired. Start the application again from the EHR.",
                    )
                })?
            }
            None => (None, None),
        };
        let secret = random_token()?;
        let id = sha256_b64(&secret);
        let now = now_micros();
        let mut tx = self.db.begin_write().await?;
        self.purge(&mut tx, now).await?;
        let mut sql = Sql::new(
            "INSERT INTO auth_requests (id, client_id, redirect_uri, scope, state, code_challenge, nonce, launch, \
             patient, encounter, created_at, expires_at) VALUES (",
        );
        sql.bind(id.as_str())
            .push(", ")
            .bind(client.client_id.as_str())
            .push(", ")
            .bind(redirect_uri)
            .push(", ")
            .bind(requested.to_string())
            .push(", ")
            .bind(state)
            .push(", ")
            .bind(challenge)
            .push(", ")
            .bind(nonce)
            .push(", ")
            .bind(launch)
            .push(", ")
            .bind(patient)
            .push(", ")
            .bind(encounter)
            .push(", ")
            .bind(now)
            .push(", ")
            .bind(now + self.settings.request_secs * MICROS)
            .push(")");
        tx.execute(&sql).await?;
        tx.commit().await?;
        Ok(Step::Page {
            page: Page::Login {
                request: id,
                client: client.name,
                username: String::new(),
                error: None,
            },
            cookie: Some(secret),
        })
    }

    /// Removes what has expired: requests, launch contexts, and codes and refresh tokens long past their use.
    async fn purge(&self, tx: &mut crate::store::db::Tx, now: i64) -> Result<(), sqlx::Error> {
        let keep = now - KEEP_SPENT_SECS * MICROS;
        for (table, cutoff) in [
            ("auth_requests", now),
            ("launch_contexts", now),
            ("auth_codes", keep),
            ("refresh_tokens", keep),
        ] {
            let mut sql = Sql::new(&format!("DELETE FROM {table} WHERE expires_at < "));
            sql.bind(cutoff);
            tx.execute(&sql).await?;
        }
        Ok(())
    }

    async fn launch_context(
        &self,
        launch: &str,
    ) -> Result<Option<(Option<String>, Option<String>)>, Error> {
        let mut sql = Sql::new("SELECT patient, encounter FROM launch_contexts WHERE launch = ");
        sql.bind(launch)
            .push(" AND expires_at > ")
            .bind(now_micros());
        let mut tx = self.db.begin_read().await?;
        let rows = tx.fetch(&sql, &[Col::OptText, Col::OptText]).await?;
        tx.rollback().await?;
        Ok(rows.first().map(|r| (r.opt_text(0), r.opt_text(1))))
    }

    /// The pending request a form belongs to, if the browser posting it holds the request's cookie.
    async fn pending(&self, form: &Form, cookie: Option<&str>) -> Result<Pending, Stop> {
        let (Some(id), Some(secret)) = (form.get("request"), cookie) else {
            return Err(expired_form());
        };
        // The id is the hash of the cookie: a form posted from another site (or another browser) does not carry
        // the cookie that hashes to it.
        if !same(&sha256_b64(secret), id) {
            return Err(expired_form());
        }
        let mut sql = Sql::new(&format!(
            "SELECT {PENDING_COLS} FROM auth_requests WHERE id = "
        ));
        sql.bind(id).push(" AND expires_at > ").bind(now_micros());
        let mut tx = self.db.begin_read().await?;
        let rows = tx.fetch(&sql, PENDING_KINDS).await?;
        tx.rollback().await?;
        rows.first().map(pending_from).ok_or_else(expired_form)
    }

    async fn client_of(&self, pending: &Pending) -> Result<Client, Stop> {
        self.registry
            .client(&pending.client_id)
            .await?
            .ok_or_else(|| {
                error_page(
                    400,
                    "This request cannot be answered",
                    "The application is no longer registered with this server.",
                )
            })
    }

    async fn signed_in_user(&self, pending: &Pending) -> Result<User, Stop> {
        let Some(username) = &pending.username else {
            return Err(expired_form());
        };
        self.registry.user(username).await?.ok_or_else(expired_form)
    }

    /// `POST /auth/login`: checks the password and moves on to the picker or the consent.
    pub async fn login(&self, form: &Form, cookie: Option<&str>) -> Result<Step, Error> {
        finish(self.login_inner(form, cookie).await)
    }

    async fn login_inner(&self, form: &Form, cookie: Option<&str>) -> Result<Step, Stop> {
        let mut pending = self.pending(form, cookie).await?;
        let client = self.client_of(&pending).await?;
        let username = form.get("username").unwrap_or_default();
        let password = form.get("password").unwrap_or_default();
        let user = if username.is_empty() || password.is_empty() || username.len() > 128 {
            None
        } else {
            self.registry.verify_password(username, password).await?
        };
        let Some(user) = user else {
            tracing::info!(client_id = %client.client_id, "sign-in refused");
            // The same words whether the username or the password was wrong: no account enumeration.
            return Ok(Step::Page {
                page: Page::Login {
                    request: pending.id,
                    client: client.name,
                    username: username.chars().take(128).collect(),
                    error: Some("The username or password is not correct.".into()),
                },
                cookie: None,
            });
        };
        let own = own_patient(&user);
        if user.role == Role::Patient {
            if own.is_none() {
                return Err(error_page(
                    403,
                    "Access refused",
                    "Your account is not linked to a patient record.",
                ));
            }
            if pending.launch.is_some() && pending.patient != own {
                return Err(error_page(
                    403,
                    "Access refused",
                    "This launch is for a record other than yours.",
                ));
            }
        }
        let mut sql = Sql::new("UPDATE auth_requests SET username = ");
        sql.bind(user.username.as_str());
        if let Some(p) = &own {
            sql.push(", patient = ").bind(p.as_str());
        }
        sql.push(" WHERE id = ").bind(pending.id.as_str());
        let mut tx = self.db.begin_write().await?;
        tx.execute(&sql).await?;
        tx.commit().await?;
        tracing::info!(client_id = %client.client_id, username = %user.username, "signed in for authorization");
        pending.username = Some(user.username.clone());
        if own.is_some() {
            pending.patient = own;
        }
        self.next_page(&pending, &client, &user, "", None).await
    }

    fn needs_picker(&self, pending: &Pending, client: &Client, user: &User) -> bool {
        pending.launch.is_none()
            && user.role != Role::Patient
            && pending.patient.is_none()
            && ScopeSet::parse(&pending.scope).is_ok_and(|requested| {
                grantable_for_user(&requested, &client.scopes(), user.role)
                    .contains("launch/patient")
            })
    }

    async fn next_page(
        &self,
        pending: &Pending,
        client: &Client,
        user: &User,
        filter: &str,
        error: Option<String>,
    ) -> Result<Step, Stop> {
        let page = if self.needs_picker(pending, client, user) {
            self.picker_page(pending, client, filter, error).await?
        } else {
            self.consent_page(pending, client, user).await?
        };
        Ok(Step::Page { page, cookie: None })
    }

    async fn picker_page(
        &self,
        pending: &Pending,
        client: &Client,
        filter: &str,
        error: Option<String>,
    ) -> Result<Page, Stop> {
        let mut params = vec![
            ("_count".to_owned(), (PICKER_LIMIT + 1).to_string()),
            ("_sort".to_owned(), "family,given".to_owned()),
        ];
        let filter = filter.trim();
        if !filter.is_empty() {
            params.push(("name".to_owned(), filter.chars().take(100).collect()));
        }
        let query = self.fhir.parse_search("Patient", &params, false)?;
        let page = self.fhir.search(&Access::internal(), &query).await?;
        let mut patients: Vec<PatientChoice> = page
            .matches
            .iter()
            .filter_map(|r| {
                let json = r.json()?;
                let (name, birth_date) = patient_display(&json);
                Some(PatientChoice {
                    id: r.id.clone(),
                    name,
                    birth_date,
                })
            })
            .collect();
        let truncated = patients.len() > PICKER_LIMIT;
        patients.truncate(PICKER_LIMIT);
        Ok(Page::Picker {
            request: pending.id.clone(),
            client: client.name.clone(),
            filter: filter.to_owned(),
            patients,
            truncated,
            error,
        })
    }

    async fn patient_label(&self, id: &str) -> Result<String, Error> {
        match self.fhir.read(&Access::internal(), "Patient", id).await {
            Ok(r) => {
                let (name, birth) = r
                    .json()
                    .map(|j| patient_display(&j))
                    .unwrap_or_else(|| ("(no name recorded)".into(), None));
                Ok(match birth {
                    Some(b) => format!("{name}, born {b} (id {id})"),
                    None => format!("{name} (id {id})"),
                })
            }
            Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Gone) => {
                Ok(format!("Patient {id}"))
            }
            Err(e) => Err(e),
        }
    }

    async fn consent_page(
        &self,
        pending: &Pending,
        client: &Client,
        user: &User,
    ) -> Result<Page, Stop> {
        let requested = ScopeSet::parse(&pending.scope).unwrap_or_default();
        let grantable = grantable_for_user(&requested, &client.scopes(), user.role);
        let offered: Vec<String> = grantable.scopes.iter().map(ToString::to_string).collect();
        let unavailable: Vec<String> = requested
            .scopes
            .iter()
            .map(ToString::to_string)
            .filter(|s| !offered.contains(s))
            .collect();
        let patient = match &pending.patient {
            Some(id) => Some(self.patient_label(id).await?),
            None => None,
        };
        let redirect_origin = url::Url::parse(&pending.redirect_uri)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        Ok(Page::Consent {
            request: pending.id.clone(),
            client: client.name.clone(),
            user: user.username.clone(),
            patient,
            scopes: offered,
            unavailable,
            redirect_origin,
        })
    }

    /// `POST /auth/patient`: searches patients by name, or takes the chosen one and moves on to the consent.
    pub async fn pick_patient(&self, form: &Form, cookie: Option<&str>) -> Result<Step, Error> {
        finish(self.pick_inner(form, cookie).await)
    }

    async fn pick_inner(&self, form: &Form, cookie: Option<&str>) -> Result<Step, Stop> {
        let mut pending = self.pending(form, cookie).await?;
        let user = self.signed_in_user(&pending).await?;
        let client = self.client_of(&pending).await?;
        // The launch or the patient's own account decides the patient; the picker must not override it.
        if pending.launch.is_some() || user.role == Role::Patient {
            return Err(error_page(
                400,
                "The patient cannot be changed",
                "The patient for this sign-in is already set.",
            ));
        }
        let Some(chosen) = form.get("patient") else {
            return self
                .next_page(
                    &pending,
                    &client,
                    &user,
                    form.get("name").unwrap_or_default(),
                    None,
                )
                .await;
        };
        let exists = is_fhir_id(chosen)
            && match self.fhir.read(&Access::internal(), "Patient", chosen).await {
                Ok(_) => true,
                Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Gone) => false,
                Err(e) => return Err(e.into()),
            };
        if !exists {
            return self
                .next_page(
                    &pending,
                    &client,
                    &user,
                    "",
                    Some("That patient does not exist.".into()),
                )
                .await;
        }
        let mut sql = Sql::new("UPDATE auth_requests SET patient = ");
        sql.bind(chosen)
            .push(" WHERE id = ")
            .bind(pending.id.as_str());
        let mut tx = self.db.begin_write().await?;
        tx.execute(&sql).await?;
        tx.commit().await?;
        pending.patient = Some(chosen.to_owned());
        self.next_page(&pending, &client, &user, "", None).await
    }

    /// `POST /auth/consent`: the user's answer. Allowed → a one-time code, sent back with the state; denied →
    /// `access_denied`.
    pub async fn consent(&self, form: &Form, cookie: Option<&str>) -> Result<Step, Error> {
        finish(self.consent_inner(form, cookie).await)
    }

    async fn consent_inner(&self, form: &Form, cookie: Option<&str>) -> Result<Step, Stop> {
        let pending = self.pending(form, cookie).await?;
        let user = self.signed_in_user(&pending).await?;
        let client = self.client_of(&pending).await?;
        if self.needs_picker(&pending, &client, &user) {
            return self.next_page(&pending, &client, &user, "", None).await;
        }
        let requested = ScopeSet::parse(&pending.scope).unwrap_or_default();
        let ticked: Vec<&str> = form.all("scope").collect();
        let granted = ScopeSet {
            scopes: grantable_for_user(&requested, &client.scopes(), user.role)
                .scopes
                .into_iter()
                .filter(|s| ticked.contains(&s.to_string().as_str()))
                .collect(),
        };
        let allowed = form.get("decision") == Some("allow") && !granted.scopes.is_empty();
        let now = now_micros();
        let mut tx = self.db.begin_write().await?;
        // The request is used up by the answer, whatever it is: a second post of the same form finds nothing.
        let mut delete = Sql::new("DELETE FROM auth_requests WHERE id = ");
        delete.bind(pending.id.as_str());
        if tx.execute(&delete).await? == 0 {
            tx.rollback().await?;
            return Err(expired_form());
        }
        let state = pending.state.as_deref().unwrap_or_default();
        let issuer = self.endpoints.issuer.as_str();
        if !allowed {
            tx.commit().await?;
            tracing::info!(client_id = %client.client_id, username = %user.username, "authorization denied");
            let description = if granted.scopes.is_empty() && form.get("decision") == Some("allow")
            {
                "no scope was granted"
            } else {
                "the user denied the request"
            };
            let location = redirect_with(
                &pending.redirect_uri,
                &[
                    ("error", "access_denied"),
                    ("error_description", description),
                    ("state", state),
                    ("iss", issuer),
                ],
            )
            .ok_or_else(expired_form)?;
            return Ok(Step::Redirect { location });
        }
        let patient_context = user.role == Role::Patient
            || granted.contains("launch")
            || granted.contains("launch/patient");
        let patient = if patient_context {
            pending.patient.clone()
        } else {
            None
        };
        let encounter = if granted.contains("launch") || granted.contains("launch/encounter") {
            pending.encounter.clone()
        } else {
            None
        };
        let code = random_token()?;
        let family = random_token()?;
        let mut sql = Sql::new(
            "INSERT INTO auth_codes (code_hash, family, client_id, redirect_uri, username, scope, patient, \
             encounter, fhir_user, nonce, code_challenge, created_at, expires_at) VALUES (",
        );
        sql.bind(sha256_b64(&code))
            .push(", ")
            .bind(family.as_str())
            .push(", ")
            .bind(client.client_id.as_str())
            .push(", ")
            .bind(pending.redirect_uri.as_str())
            .push(", ")
            .bind(user.username.as_str())
            .push(", ")
            .bind(granted.to_string())
            .push(", ")
            .bind(patient)
            .push(", ")
            .bind(encounter)
            .push(", ")
            .bind(user.fhir_user.clone())
            .push(", ")
            .bind(pending.nonce.clone())
            .push(", ")
            .bind(pending.code_challenge.as_str())
            .push(", ")
            .bind(now)
            .push(", ")
            .bind(now + self.settings.code_secs * MICROS)
            .push(")");
        tx.execute(&sql).await?;
        tx.commit().await?;
        tracing::info!(client_id = %client.client_id, username = %user.username, scope = %granted, "authorization code issued");
        let location = redirect_with(
            &pending.redirect_uri,
            &[("code", code.as_str()), ("state", state), ("iss", issuer)],
        )
        .ok_or_else(expired_form)?;
        Ok(Step::Redirect { location })
    }

    // ---- Client authentication (RFC 6749 §2.3, RFC 7523, SMART client-confidential-asymmetric) ----------------

    /// Authenticates the client of a token, introspection or revocation request: HTTP Basic (symmetric), a signed
    /// JWT assertion (asymmetric) or just `client_id` (public). `audiences` are the accepted assertion `aud`s.
    async fn authenticate_client(
        &self,
        form: &Form,
        authorization: Option<&str>,
        audiences: &[&str],
    ) -> Result<Client, OAuthError> {
        let basic = parse_basic(authorization);
        let assertion_type = form.get("client_assertion_type");
        let assertion = form.get("client_assertion");
        let uses_assertion = assertion_type.is_some() || assertion.is_some();
        if basic.is_some() && uses_assertion {
            return Err(OAuthError::invalid_request(
                "use one client authentication method, not several",
            ));
        }
        if form.get("client_secret").is_some() {
            return Err(OAuthError::invalid_client(
                "client_secret_post is not supported; send the secret with HTTP Basic",
            ));
        }
        if let Some(basic) = basic {
            let Ok((raw_id, raw_secret)) = basic else {
                return Err(OAuthError::invalid_basic_client(
                    "the Authorization header is not valid HTTP Basic",
                ));
            };
            let (id, secret) = (form_decode(&raw_id), form_decode(&raw_secret));
            if form.get("client_id").is_some_and(|c| c != id) {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the authenticated client",
                ));
            }
            let mut ok = self.registry.verify_client_secret(&id, &secret).await?;
            if !ok && secret != raw_secret {
                // Many clients send the secret without the form-encoding RFC 6749 asks for.
                ok = self.registry.verify_client_secret(&id, &raw_secret).await?;
            }
            let client = if ok {
                self.registry.client(&id).await?
            } else {
                None
            };
            return client.ok_or_else(|| {
                tracing::info!(client_id = %id, "client authentication failed");
                OAuthError::invalid_basic_client("client authentication failed")
            });
        }
        if uses_assertion {
            if assertion_type != Some(ASSERTION_TYPE) {
                return Err(OAuthError::invalid_client(format!(
                    "client_assertion_type must be {ASSERTION_TYPE}"
                )));
            }
            let assertion = assertion
                .ok_or_else(|| OAuthError::invalid_request("client_assertion is required"))?;
            return self
                .verify_assertion(assertion, form.get("client_id"), audiences)
                .await
                .inspect_err(|e| tracing::info!(error = %e, "client assertion refused"));
        }
        let id = form.get("client_id").ok_or_else(|| {
            OAuthError::invalid_client("client authentication is required (client_id is missing)")
        })?;
        match self.registry.client(id).await? {
            Some(c) if c.kind == ClientKind::Public => Ok(c),
            Some(c) if c.kind == ClientKind::ConfidentialAsymmetric => {
                Err(OAuthError::invalid_client(
                    "this client must authenticate with a signed client assertion (private_key_jwt)",
                ))
            }
            Some(_) => Err(OAuthError::invalid_client(
                "this client must authenticate with its secret (client_secret_basic)",
            )),
            None => Err(OAuthError::invalid_client("unknown client")),
        }
    }

    /// Verifies a client assertion (https://hl7.org/fhir/smart-app-launch/STU2.2/client-confidential-asymmetric.html):
    /// signed by a registered key, `iss` = `sub` = the client, `aud` our token endpoint, short-lived, and its
    /// `jti` never seen before.
    async fn verify_assertion(
        &self,
        assertion: &str,
        expected_client: Option<&str>,
        audiences: &[&str],
    ) -> Result<Client, OAuthError> {
        let unverified = claims_of(assertion).map_err(|e| {
            OAuthError::invalid_client(format!("the client assertion is malformed: {e}"))
        })?;
        let iss = claim_str(&unverified, "iss").unwrap_or_default();
        if iss.is_empty() || claim_str(&unverified, "sub") != Some(iss) {
            return Err(OAuthError::invalid_client(
                "the client assertion's iss and sub must both be the client id",
            ));
        }
        if expected_client.is_some_and(|c| c != iss) {
            return Err(OAuthError::invalid_client(
                "client_id differs from the client assertion's issuer",
            ));
        }
        let client = self
            .registry
            .client(iss)
            .await?
            .filter(|c| c.kind == ClientKind::ConfidentialAsymmetric)
            .ok_or_else(|| {
                OAuthError::invalid_client(
                    "unknown client, or not one that authenticates with keys",
                )
            })?;
        let claims = self.verify_with_client_keys(&client, assertion).await?;
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => audiences.contains(&a.as_str()),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| audiences.contains(&a)),
            _ => false,
        };
        if !aud_ok {
            return Err(OAuthError::invalid_client(format!(
                "the client assertion's aud must be {}",
                self.endpoints.token
            )));
        }
        let now = now_secs();
        let exp = claim_i64(&claims, "exp")
            .ok_or_else(|| OAuthError::invalid_client("the client assertion has no exp"))?;
        if exp + LEEWAY_SECS <= now {
            return Err(OAuthError::invalid_client(
                "the client assertion has expired",
            ));
        }
        if exp > now + MAX_ASSERTION_SECS + LEEWAY_SECS {
            return Err(OAuthError::invalid_client(
                "the client assertion must expire within five minutes",
            ));
        }
        if claim_i64(&claims, "nbf").is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
            return Err(OAuthError::invalid_client(
                "the client assertion is not valid yet",
            ));
        }
        let jti = claim_str(&claims, "jti")
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| OAuthError::invalid_client("the client assertion has no usable jti"))?;
        self.record_jti(&client.client_id, jti, exp + LEEWAY_SECS)
            .await?;
        Ok(client)
    }

    /// Remembers an assertion's `jti` until it expires; a second use is a replay.
    async fn record_jti(
        &self,
        client_id: &str,
        jti: &str,
        exp_secs: i64,
    ) -> Result<(), OAuthError> {
        let now = now_micros();
        let mut tx = self.db.begin_write().await?;
        let mut purge = Sql::new("DELETE FROM assertion_jtis WHERE expires_at < ");
        purge.bind(now);
        tx.execute(&purge).await?;
        let mut sql = Sql::new("INSERT INTO assertion_jtis (client_id, jti, expires_at) VALUES (");
        sql.bind(client_id)
            .push(", ")
            .bind(jti)
            .push(", ")
            .bind(exp_secs.saturating_mul(MICROS))
            .push(")");
        match tx.execute(&sql).await {
            Ok(_) => {
                tx.commit().await?;
                Ok(())
            }
            Err(e) if is_unique_violation(&e) => {
                let _ = tx.rollback().await;
                Err(OAuthError::invalid_client(
                    "the client assertion was already used (jti replay)",
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn verify_with_client_keys(
        &self,
        client: &Client,
        assertion: &str,
    ) -> Result<Value, OAuthError> {
        let refused = |e: KeyError| {
            OAuthError::invalid_client(format!("the client assertion is refused: {e}"))
        };
        let (jwks, fresh) = self.client_jwks(client, false).await?;
        match verify_with_jwks(assertion, &jwks) {
            Ok(claims) => Ok(claims),
            // The client may have rotated its keys since they were cached.
            Err(KeyError::UnknownKey) if !fresh && client.jwks_uri.is_some() => {
                let (jwks, _) = self.client_jwks(client, true).await?;
                verify_with_jwks(assertion, &jwks).map_err(refused)
            }
            Err(e) => Err(refused(e)),
        }
    }

    /// The client's public keys, and whether they were fetched just now.
    async fn client_jwks(&self, client: &Client, force: bool) -> Result<(Value, bool), OAuthError> {
        if let Some(jwks) = &client.jwks {
            return Ok((jwks.clone(), false));
        }
        let Some(uri) = &client.jwks_uri else {
            return Err(OAuthError::invalid_client(
                "the client has no registered keys",
            ));
        };
        let key = format!("{}\n{uri}", client.client_id);
        if !force
            && let Some(cached) = JWKS_CACHE.lock().ok().and_then(|c| c.get(&key).cloned())
            && cached.fetched.elapsed() < cached.max_age
        {
            return Ok((cached.jwks, false));
        }
        let unavailable = |why: String| {
            tracing::warn!(client_id = %client.client_id, jwks_uri = %uri, "cannot fetch client keys: {why}");
            OAuthError::invalid_client("the client's keys could not be fetched from its jwks_uri")
        };
        let resp = HTTP
            .get(uri)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("status {}", resp.status())));
        }
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_JWKS_BYTES as u64)
        {
            return Err(unavailable("too large".into()));
        }
        let max_age = cache_max_age(resp.headers());
        let bytes = resp.bytes().await.map_err(|e| unavailable(e.to_string()))?;
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(unavailable("too large".into()));
        }
        let jwks: Value = serde_json::from_slice(&bytes).map_err(|e| unavailable(e.to_string()))?;
        if let Ok(mut cache) = JWKS_CACHE.lock() {
            if max_age.is_zero() {
                cache.remove(&key);
            } else {
                cache.insert(
                    key,
                    CachedJwks {
                        jwks: jwks.clone(),
                        fetched: Instant::now(),
                        max_age,
                    },
                );
            }
        }
        Ok((jwks, true))
    }

    // ---- Token endpoint (RFC 6749 §4.1.3, §6, §4.4; SMART Backend Services) -----------------------------------

    /// `POST /auth/token`: the successful JSON response, or an OAuth error.
    pub async fn token(
        &self,
        form: &Form,
        authorization: Option<&str>,
    ) -> Result<Value, OAuthError> {
        if let Some(name) = form.repeated() {
            return Err(OAuthError::invalid_request(format!(
                "{name} is given more than once"
            )));
        }
        let grant_type = form
            .get("grant_type")
            .ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?;
        if !matches!(
            grant_type,
            "authorization_code" | "refresh_token" | "client_credentials"
        ) {
            return Err(OAuthError::unsupported_grant_type(format!(
                "grant_type {grant_type} is not supported"
            )));
        }
        let token_url = self.endpoints.token.clone();
        let client = self
            .authenticate_client(form, authorization, &[token_url.as_str()])
            .await?;
        match grant_type {
            "authorization_code" => self.grant_code(&client, form).await,
            "refresh_token" => self.grant_refresh(&client, form).await,
            _ => self.grant_client_credentials(&client, form).await,
        }
    }

    async fn grant_code(&self, client: &Client, form: &Form) -> Result<Value, OAuthError> {
        let code = form
            .get("code")
            .ok_or_else(|| OAuthError::invalid_request("code is required"))?;
        let redirect_uri = form
            .get("redirect_uri")
            .ok_or_else(|| OAuthError::invalid_request("redirect_uri is required"))?;
        let hash = sha256_b64(code);
        let now = now_micros();
        let mut tx = self.db.begin_write().await?;
        // Marking the code used and reading it is one statement, so that two concurrent exchanges cannot both
        // succeed.
        let mut sql = Sql::new("UPDATE auth_codes SET used_at = ");
        sql.bind(now)
            .push(" WHERE code_hash = ")
            .bind(hash.as_str())
            .push(
                " AND used_at IS NULL RETURNING family, client_id, redirect_uri, username, scope, patient, \
                 encounter, nonce, code_challenge, expires_at",
            );
        let rows = tx
            .fetch(
                &sql,
                &[
                    Col::Text,
                    Col::Text,
                    Col::Text,
                    Col::Text,
                    Col::Text,
                    Col::OptText,
                    Col::OptText,
                    Col::OptText,
                    Col::Text,
                    Col::Int,
                ],
            )
            .await?;
        let Some(row) = rows.first() else {
            let mut used = Sql::new("SELECT family FROM auth_codes WHERE code_hash = ");
            used.bind(hash.as_str());
            let family = tx
                .fetch(&used, &[Col::Text])
                .await?
                .first()
                .map(|r| r.text(0));
            tx.rollback().await?;
            return match family {
                Some(family) => {
                    // RFC 6749 §4.1.2 and RFC 9700 §4.5: a code used twice was probably stolen; what it bought
                    // is revoked.
                    tracing::warn!(client_id = %client.client_id, "authorization code reused; revoking its tokens");
                    self.revoke_family(&family).await?;
                    Err(OAuthError::invalid_grant(
                        "the authorization code was already used; the tokens issued from it are revoked",
                    ))
                }
                None => Err(OAuthError::invalid_grant(
                    "the authorization code is not valid",
                )),
            };
        };
        tx.commit().await?;
        let family = row.text(0);
        if row.text(1) != client.client_id {
            return Err(OAuthError::invalid_grant(
                "the authorization code was issued to another client",
            ));
        }
        if row.int(9) <= now {
            return Err(OAuthError::invalid_grant(
                "the authorization code has expired",
            ));
        }
        if row.text(2) != redirect_uri {
            return Err(OAuthError::invalid_grant(
                "redirect_uri differs from the one of the authorization request",
            ));
        }
        let verifier = form.get("code_verifier").unwrap_or_default();
        if !pkce_matches(verifier, &row.text(8)) {
            return Err(OAuthError::invalid_grant(
                "code_verifier is missing or does not match the code_challenge",
            ));
        }
        let user = self
            .registry
            .user(&row.text(3))
            .await?
            .ok_or_else(|| OAuthError::invalid_grant("the user no longer exists"))?;
        let scope =
            ScopeSet::parse(&row.text(4)).map_err(|e| OAuthError::invalid_grant(e.to_string()))?;
        self.issue_user_tokens(UserGrant {
            client,
            user: &user,
            family: &family,
            refresh_scope: scope.clone(),
            scope,
            patient: row.opt_text(5),
            encounter: row.opt_text(6),
            nonce: row.opt_text(7),
            id_token: true,
        })
        .await
    }

    async fn refresh_row(&self, hash: &str) -> Result<Option<StoredRefresh>, OAuthError> {
        let mut sql = Sql::new(
            "SELECT family, client_id, username, scope, patient, encounter, fhir_user, expires_at, rotated_at, \
             revoked_at FROM refresh_tokens WHERE token_hash = ",
        );
        sql.bind(hash);
        let mut tx = self.db.begin_read().await?;
        let rows = tx
            .fetch(
                &sql,
                &[
                    Col::Text,
                    Col::Text,
                    Col::OptText,
                    Col::Text,
                    Col::OptText,
                    Col::OptText,
                    Col::OptText,
                    Col::Int,
                    Col::OptInt,
                    Col::OptInt,
                ],
            )
            .await?;
        tx.rollback().await?;
        Ok(rows.first().map(|r| StoredRefresh {
            family: r.text(0),
            client_id: r.text(1),
            username: r.opt_text(2),
            scope: r.text(3),
            patient: r.opt_text(4),
            encounter: r.opt_text(5),
            fhir_user: r.opt_text(6),
            expires_at: r.int(7),
            rotated: r.opt_int(8).is_some(),
            revoked: r.opt_int(9).is_some(),
        }))
    }

    async fn grant_refresh(&self, client: &Client, form: &Form) -> Result<Value, OAuthError> {
        let token = form
            .get("refresh_token")
            .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
        let hash = sha256_b64(token);
        let stored = self
            .refresh_row(&hash)
            .await?
            .ok_or_else(|| OAuthError::invalid_grant("the refresh token is not valid"))?;
        if stored.client_id != client.client_id {
            return Err(OAuthError::invalid_grant(
                "the refresh token was issued to another client",
            ));
        }
        if stored.revoked {
            return Err(OAuthError::invalid_grant(
                "the refresh token has been revoked",
            ));
        }
        let reused = || async {
            // RFC 9700 §4.14.2: a rotated refresh token presented again means two parties hold the family; neither
            // can be told apart from the other, so the whole family goes.
            tracing::warn!(client_id = %client.client_id, "rotated refresh token reused; revoking its family");
            self.revoke_family(&stored.family).await?;
            Err(OAuthError::invalid_grant(
                "the refresh token was already used; its grant is revoked",
            ))
        };
        if stored.rotated {
            return reused().await;
        }
        if stored.expires_at <= now_micros() {
            return Err(OAuthError::invalid_grant("the refresh token has expired"));
        }
        let username = stored
            .username
            .clone()
            .ok_or_else(|| OAuthError::invalid_grant("the refresh token has no user"))?;
        let user = self
            .registry
            .user(&username)
            .await?
            .ok_or_else(|| OAuthError::invalid_grant("the user no longer exists"))?;
        let original =
            ScopeSet::parse(&stored.scope).map_err(|e| OAuthError::invalid_grant(e.to_string()))?;
        let requested = match form.get("scope") {
            Some(s) => {
                let requested =
                    ScopeSet::parse(s).map_err(|e| OAuthError::invalid_scope(e.to_string()))?;
                if !requested.is_subset_of(&original) {
                    return Err(OAuthError::invalid_scope(
                        "a refresh may only narrow the scopes of the original grant",
                    ));
                }
                requested
            }
            None => original.clone(),
        };
        // The registration or the user's role may have changed since the grant: apply them again.
        let scope = grantable_for_user(&requested, &client.scopes(), user.role);
        if scope.scopes.is_empty() {
            return Err(OAuthError::invalid_scope(
                "none of these scopes is still allowed for this client and user",
            ));
        }
        let now = now_micros();
        let mut tx = self.db.begin_write().await?;
        let mut rotate = Sql::new("UPDATE refresh_tokens SET rotated_at = ");
        rotate
            .bind(now)
            .push(" WHERE token_hash = ")
            .bind(hash.as_str())
            .push(" AND rotated_at IS NULL AND revoked_at IS NULL");
        if tx.execute(&rotate).await? == 0 {
            // Another request rotated it in the meantime.
            tx.rollback().await?;
            return reused().await;
        }
        tx.commit().await?;
        let fhir_user = stored.fhir_user.clone().or_else(|| user.fhir_user.clone());
        let user = User { fhir_user, ..user };
        self.issue_user_tokens(UserGrant {
            client,
            user: &user,
            family: &stored.family,
            scope,
            refresh_scope: original,
            patient: stored.patient.clone(),
            encounter: stored.encounter.clone(),
            nonce: None,
            id_token: false,
        })
        .await
    }

    async fn grant_client_credentials(
        &self,
        client: &Client,
        form: &Form,
    ) -> Result<Value, OAuthError> {
        if client.kind == ClientKind::Public {
            return Err(OAuthError::unauthorized_client(
                "a public client cannot use client_credentials",
            ));
        }
        let text = form
            .get("scope")
            .ok_or_else(|| OAuthError::invalid_scope("scope is required"))?;
        let requested =
            ScopeSet::parse(text).map_err(|e| OAuthError::invalid_scope(e.to_string()))?;
        // A backend service acts for itself: only system scopes (and the psychotherapy and sync-admin
        // permissions) make sense.
        if let Some(bad) = requested.scopes.iter().find(|s| match s {
            Scope::Resource(r) => r.context != ScopeContext::System,
            Scope::Other(o) => o != PSYCHOTHERAPY_SCOPE && o != SYNC_ADMIN_SCOPE,
        }) {
            return Err(OAuthError::invalid_scope(format!(
                "{bad} is not available to a backend service; request system/ scopes"
            )));
        }
        let granted = requested.narrowed_to(&client.scopes());
        if granted.scopes.is_empty() {
            return Err(OAuthError::invalid_scope(
                "none of the requested scopes is allowed for this client",
            ));
        }
        let lifetime = self.settings.backend_token_secs;
        let (access_token, _) = self
            .auth
            .issue_access_token(&TokenGrant {
                client_id: client.client_id.clone(),
                subject: client.client_id.clone(),
                scope: granted.to_string(),
                lifetime_secs: lifetime,
                ..TokenGrant::default()
            })
            .await?;
        tracing::info!(client_id = %client.client_id, scope = %granted, "backend access token issued");
        Ok(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": granted.to_string(),
        }))
    }

    async fn issue_user_tokens(&self, g: UserGrant<'_>) -> Result<Value, OAuthError> {
        let lifetime = self.settings.access_token_secs;
        let fhir_user = g
            .user
            .fhir_user
            .as_deref()
            .map(|f| self.absolute_fhir_user(f));
        let (access_token, _) = self
            .auth
            .issue_access_token(&TokenGrant {
                client_id: g.client.client_id.clone(),
                subject: g.user.username.clone(),
                scope: g.scope.to_string(),
                patient: g.patient.clone(),
                encounter: g.encounter.clone(),
                fhir_user: fhir_user.clone(),
                role: Some(g.user.role.as_str().to_owned()),
                family: Some(g.family.to_owned()),
                lifetime_secs: lifetime,
            })
            .await?;
        let mut body = json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": g.scope.to_string(),
        });
        if let Some(p) = &g.patient {
            body["patient"] = json!(p);
        }
        if let Some(e) = &g.encounter {
            body["encounter"] = json!(e);
        }
        if g.id_token && g.scope.contains("openid") {
            let now = now_secs();
            let mut claims = json!({
                "iss": self.endpoints.issuer,
                "sub": g.user.username,
                "aud": g.client.client_id,
                "iat": now,
                "exp": now + lifetime,
            });
            if let Some(n) = &g.nonce {
                claims["nonce"] = json!(n);
            }
            if g.scope.contains("fhirUser")
                && let Some(f) = &fhir_user
            {
                claims["fhirUser"] = json!(f);
            }
            body["id_token"] = json!(self.auth.keys.sign(&claims).map_err(Error::internal)?);
        }
        let offline = g.refresh_scope.contains("offline_access");
        if offline || g.refresh_scope.contains("online_access") {
            let lifetime = if offline {
                self.settings.refresh_token_secs
            } else {
                self.settings
                    .refresh_token_secs
                    .min(ONLINE_REFRESH_MAX_SECS)
            };
            let token = random_token()?;
            let now = now_micros();
            let mut sql = Sql::new(
                "INSERT INTO refresh_tokens (token_hash, family, client_id, username, scope, patient, encounter, \
                 fhir_user, created_at, expires_at) VALUES (",
            );
            sql.bind(sha256_b64(&token))
                .push(", ")
                .bind(g.family)
                .push(", ")
                .bind(g.client.client_id.as_str())
                .push(", ")
                .bind(g.user.username.as_str())
                .push(", ")
                .bind(g.refresh_scope.to_string())
                .push(", ")
                .bind(g.patient.clone())
                .push(", ")
                .bind(g.encounter.clone())
                .push(", ")
                .bind(g.user.fhir_user.clone())
                .push(", ")
                .bind(now)
                .push(", ")
                .bind(now + lifetime * MICROS)
                .push(")");
            let mut tx = self.db.begin_write().await?;
            tx.execute(&sql).await?;
            tx.commit().await?;
            body["refresh_token"] = json!(token);
        }
        tracing::info!(client_id = %g.client.client_id, username = %g.user.username, scope = %g.scope, "access token issued");
        Ok(body)
    }

    /// Revokes a grant: every refresh token and access token of the family.
    async fn revoke_family(&self, family: &str) -> Result<(), OAuthError> {
        let mut sql = Sql::new("UPDATE refresh_tokens SET revoked_at = ");
        sql.bind(now_micros())
            .push(" WHERE family = ")
            .bind(family)
            .push(" AND revoked_at IS NULL");
        let mut tx = self.db.begin_write().await?;
        tx.execute(&sql).await?;
        tx.commit().await?;
        self.auth.revoke_family(family).await?;
        Ok(())
    }

    // ---- Introspection (RFC 7662) and revocation (RFC 7009) ---------------------------------------------------

    /// `POST /auth/introspect`. Callers are confidential clients, who learn only about their own tokens, or
    /// bearers of an administrator's token, who learn about any.
    pub async fn introspect(
        &self,
        form: &Form,
        authorization: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let bearer = authorization.map(str::trim).and_then(|h| {
            h.get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                .and_then(|_| h.get(7..))
                .map(str::trim)
        });
        let caller = if let Some(token) = bearer {
            let access = self
                .auth
                .authenticate(Some(&format!("Bearer {token}")))
                .await
                .map_err(|_| OAuthError {
                    www_authenticate: Some(
                        "Bearer realm=\"kap-gateway\", error=\"invalid_token\"".into(),
                    ),
                    ..OAuthError::new(401, "invalid_token", "the bearer token is not valid")
                })?;
            if !access.admin {
                return Err(OAuthError {
                    www_authenticate: Some(
                        "Bearer realm=\"kap-gateway\", error=\"insufficient_scope\"".into(),
                    ),
                    ..OAuthError::new(
                        403,
                        "insufficient_scope",
                        "introspection needs an administrator's token",
                    )
                });
            }
            Introspector::Admin
        } else {
            let audiences = [
                self.endpoints.token.as_str(),
                self.endpoints.introspect.as_str(),
            ];
            let client = self
                .authenticate_client(form, authorization, &audiences)
                .await?;
            if client.kind == ClientKind::Public {
                return Err(OAuthError::invalid_client(
                    "introspection needs a confidential client",
                ));
            }
            Introspector::Client(client.client_id)
        };
        let token = form
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        let may_see = |client_id: &str| match &caller {
            Introspector::Admin => true,
            Introspector::Client(c) => c == client_id,
        };
        let inactive = json!({"active": false});
        if let Ok(claims) = self.auth.verify_own(token).await {
            if !may_see(claim_str(&claims, "client_id").unwrap_or_default()) {
                return Ok(inactive);
            }
            let mut out = json!({"active": true, "token_type": "Bearer"});
            for name in [
                "scope",
                "client_id",
                "sub",
                "exp",
                "iat",
                "nbf",
                "iss",
                "aud",
                "jti",
                "patient",
                "encounter",
                "fhirUser",
            ] {
                if let Some(v) = claims.get(name) {
                    out[name] = v.clone();
                }
            }
            return Ok(out);
        }
        if token.len() <= 256
            && let Some(r) = self.refresh_row(&sha256_b64(token)).await?
            && !r.rotated
            && !r.revoked
            && r.expires_at > now_micros()
            && may_see(&r.client_id)
        {
            let mut out = json!({
                "active": true,
                "token_type": "refresh_token",
                "scope": r.scope,
                "client_id": r.client_id,
                "exp": r.expires_at / MICROS,
                "iss": self.endpoints.issuer,
            });
            if let Some(u) = r.username {
                out["sub"] = json!(u);
            }
            if let Some(p) = r.patient {
                out["patient"] = json!(p);
            }
            return Ok(out);
        }
        Ok(inactive)
    }

    /// `POST /auth/revoke`: an access token is revoked alone, a refresh token with its whole grant. Unknown tokens
    /// and tokens of other clients are answered the same way, with success (RFC 7009 §2.2).
    pub async fn revoke(&self, form: &Form, authorization: Option<&str>) -> Result<(), OAuthError> {
        let audiences = [
            self.endpoints.token.as_str(),
            self.endpoints.revoke.as_str(),
        ];
        let client = self
            .authenticate_client(form, authorization, &audiences)
            .await?;
        let token = form
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        // The signature proves the token is ours; an expired one needs no revoking but it does no harm.
        if let Ok(claims) = self.auth.keys.verify(token) {
            if claim_str(&claims, "client_id") == Some(client.client_id.as_str())
                && let Some(jti) = claim_str(&claims, "jti")
            {
                self.auth.revoke_jti(jti).await?;
                tracing::info!(client_id = %client.client_id, "access token revoked");
            }
            return Ok(());
        }
        if token.len() <= 256
            && let Some(r) = self.refresh_row(&sha256_b64(token)).await?
            && r.client_id == client.client_id
        {
            self.revoke_family(&r.family).await?;
            tracing::info!(client_id = %client.client_id, "refresh token revoked with its grant");
        }
        Ok(())
    }

    // ---- EHR launch ---------------------------------------------------------------------------------------------

    /// Creates a launch context for an existing patient (and encounter): `(launch, expires_in)`.
    pub async fn launch(
        &self,
        patient: &str,
        encounter: Option<&str>,
    ) -> Result<(String, i64), Error> {
        for (ty, id) in [("Patient", Some(patient)), ("Encounter", encounter)] {
            let Some(id) = id else { continue };
            if !is_fhir_id(id) {
                return Err(Error::bad_request(format!("'{id}' is not a valid {ty} id")));
            }
            match self.fhir.read(&Access::internal(), ty, id).await {
                Ok(_) => {}
                Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Gone) => {
                    return Err(Error::bad_request(format!("{ty}/{id} does not exist")));
                }
                Err(e) => return Err(e),
            }
        }
        let ttl = self.settings.launch_secs;
        Ok((create_launch(&self.db, patient, encounter, ttl).await?, ttl))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::auth::keys::KeyRing;
    use crate::auth::registry::NewClient;
    use crate::store::Store;

    const BASE: &str = "https://gw.example.org/fhir";
    const REDIRECT: &str = "https://app.example.org/cb";

    async fn server_with(settings: OAuthSettings) -> (OAuthServer, Registry, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("oauth.db").display());
        let db = Db::connect(&url, 4).await.unwrap();
        db.migrate().await.unwrap();
        let keys = KeyRing::load_or_create(&db).await.unwrap();
        let auth = Authenticator::new(keys, db.clone(), BASE.into(), BASE.into(), None);
        let registry = Registry::new(db.clone());
        let fhir = FhirService::new(Store::new(db.clone()), BASE.into());
        let server = OAuthServer::new(registry.clone(), auth, fhir, db, BASE, &settings);
        (server, registry, dir)
    }

    /// Walks authorize → sign-in → consent and returns the code and its verifier.
    async fn code_for(server: &OAuthServer, registry: &Registry) -> (String, String) {
        registry
            .add_client(NewClient {
                client_id: "app".into(),
                name: "App".into(),
                kind: ClientKind::Public,
                secret: None,
                redirect_uris: vec![REDIRECT.into()],
                allowed_scopes: "user/*.rs".into(),
                jwks: None,
                jwks_uri: None,
            })
            .await
            .unwrap();
        registry
            .add_user("doc", "long enough password", Role::Clinician, None)
            .await
            .unwrap();
        let verifier = "v".repeat(50);
        let challenge = sha256_b64(&verifier);
        let step = server
            .authorize(&Form::from_pairs([
                ("response_type", "code"),
                ("client_id", "app"),
                ("redirect_uri", REDIRECT),
                ("scope", "user/*.rs"),
                ("state", "s"),
                ("aud", BASE),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ]))
            .await
            .unwrap();
        let Step::Page {
            page: Page::Login { request, .. },
            cookie: Some(secret),
        } = step
        else {
            panic!("expected the sign-in page, got {step:?}");
        };
        let step = server
            .login(
                &Form::from_pairs([
                    ("request", request.as_str()),
                    ("username", "doc"),
                    ("password", "long enough password"),
                ]),
                Some(&secret),
            )
            .await
            .unwrap();
        assert!(
            matches!(
                step,
                Step::Page {
                    page: Page::Consent { .. },
                    ..
                }
            ),
            "{step:?}"
        );
        let step = server
            .consent(
                &Form::from_pairs([
                    ("request", request.as_str()),
                    ("decision", "allow"),
                    ("scope", "user/*.rs"),
                ]),
                Some(&secret),
            )
            .await
            .unwrap();
        let Step::Redirect { location } = step else {
            panic!("expected a redirect, got {step:?}");
        };
        let code = url::Url::parse(&location)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        (code, verifier)
    }

    fn exchange_form<'a>(code: &'a str, verifier: &'a str) -> Form {
        Form::from_pairs([
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
            ("client_id", "app"),
        ])
    }

    #[tokio::test]
    async fn a_code_past_its_configured_lifetime_is_refused() {
        let settings = OAuthSettings {
            code_secs: 0,
            ..OAuthSettings::default()
        };
        let (server, registry, _dir) = server_with(settings).await;
        let (code, verifier) = code_for(&server, &registry).await;
        let err = server
            .token(&exchange_form(&code, &verifier), None)
            .await
            .unwrap_err();
        assert_eq!(err.error, "invalid_grant");
        assert!(err.description.contains("expired"), "{err}");
    }

    #[tokio::test]
    async fn a_code_within_its_lifetime_is_exchanged_once() {
        let (server, registry, _dir) = server_with(OAuthSettings::default()).await;
        let (code, verifier) = code_for(&server, &registry).await;
        let body = server
            .token(&exchange_form(&code, &verifier), None)
            .await
            .unwrap();
        assert_eq!(body["scope"], "user/*.rs");
        assert_eq!(body["expires_in"], 3600);
        let again = server
            .token(&exchange_form(&code, &verifier), None)
            .await
            .unwrap_err();
        assert_eq!(again.error, "invalid_grant");
    }

    #[test]
    fn settings_are_kept_within_their_bounds() {
        let wild = OAuthSettings {
            access_token_secs: 86_400,
            backend_token_secs: 3600,
            code_secs: 3600,
            refresh_token_secs: 0,
            request_secs: 1,
            launch_secs: -5,
        };
        let b = wild.bounded();
        assert_eq!(b.access_token_secs, 3600);
        assert_eq!(b.backend_token_secs, 300);
        assert_eq!(b.code_secs, 600);
        assert!(b.refresh_token_secs >= 60 && b.request_secs >= 60 && b.launch_secs >= 1);
        assert_eq!(OAuthSettings::default().bounded(), OAuthSettings::default());
    }

    #[test]
    fn endpoints_live_beside_the_fhir_base() {
        let e = Endpoints::new("https://gw.example.org/fhir/");
        assert_eq!(e.issuer, "https://gw.example.org/fhir");
        assert_eq!(e.token, "https://gw.example.org/auth/token");
        let other = Endpoints::new("https://gw.example.org:8443/r4");
        assert_eq!(
            other.authorize,
            "https://gw.example.org:8443/auth/authorize"
        );
    }

    #[test]
    fn the_code_verifier_must_be_43_to_128_unreserved_characters_hashing_to_the_challenge() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(&verifier[1..], challenge));
        assert!(!is_code_verifier(&"a".repeat(42)));
        assert!(is_code_verifier(&"a".repeat(128)));
        assert!(!is_code_verifier(&"a".repeat(129)));
        assert!(!is_code_verifier(&format!("{}+", "a".repeat(50))));
        assert!(is_s256_challenge(challenge));
        assert!(!is_s256_challenge("plain-challenge"));
    }

    #[test]
    fn repeated_parameters_are_found_and_empty_ones_are_absent() {
        let f = Form::parse(b"a=1&b=&c=3&a=2");
        assert_eq!(f.repeated(), Some("a"));
        assert_eq!(f.get("b"), None);
        assert_eq!(f.get("a"), Some("1"));
        assert_eq!(Form::parse(b"a=1&b=2").repeated(), None);
    }

    #[test]
    fn basic_credentials_are_decoded_and_malformed_ones_recognised() {
        let header = format!("Basic {}", STANDARD.encode("my%20app:s3cr%3At"));
        let Some(Ok((id, secret))) = parse_basic(Some(&header)) else {
            panic!("not parsed");
        };
        assert_eq!(
            (form_decode(&id), form_decode(&secret)),
            ("my app".into(), "s3cr:t".into())
        );
        assert_eq!(parse_basic(Some("Basic !!!")), Some(Err(())));
        assert_eq!(parse_basic(Some("Bearer abc")), None);
        assert_eq!(parse_basic(None), None);
    }

    #[test]
    fn user_grants_drop_system_scopes_user_scopes_for_patients_and_notes_for_clinicians() {
        let requested = ScopeSet::parse(&format!(
            "patient/*.rs user/*.rs system/*.rs openid {PSYCHOTHERAPY_SCOPE}"
        ))
        .unwrap();
        let allowed = ScopeSet::parse(&format!(
            "patient/*.cruds user/*.rs system/*.rs openid {PSYCHOTHERAPY_SCOPE}"
        ))
        .unwrap();
        let text = |role| grantable_for_user(&requested, &allowed, role).to_string();
        assert_eq!(text(Role::Clinician), "patient/*.rs user/*.rs openid");
        assert_eq!(
            text(Role::Therapist),
            format!("patient/*.rs user/*.rs openid {PSYCHOTHERAPY_SCOPE}")
        );
        assert_eq!(text(Role::Patient), "patient/*.rs openid");
        let without = ScopeSet::parse("user/*.rs").unwrap();
        assert_eq!(
            grantable_for_user(&requested, &without, Role::Admin).to_string(),
            "user/*.rs"
        );
    }

    #[test]
    fn the_capability_statement_security_names_smart_and_its_endpoints() {
        let s = smart_security_extension("https://gw.example.org/fhir");
        assert_eq!(s["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
        let uris = &s["extension"][0];
        assert_eq!(
            uris["url"],
            "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
        );
        let names: Vec<&str> = uris["extension"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["url"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["authorize", "token", "introspect", "revoke"]);
        assert_eq!(
            uris["extension"][1]["valueUri"],
            "https://gw.example.org/auth/token"
        );
    }
}
