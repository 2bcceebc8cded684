//! Access tokens: issuing the gateway's own JWTs (recorded so they can be introspected and revoked) and
//! authenticating the bearer token of every request — the gateway's own or, when configured, an external
//! issuer's (https://hl7.org/fhir/smart-app-launch/STU2.2/app-launch.html#response-5,
//! https://www.rfc-editor.org/rfc/rfc6750).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::RwLock;

use super::access::{Access, PSYCHOTHERAPY_SCOPE};
use super::keys::{KeyError, KeyRing, split_token, verify_with_jwks};
use super::scopes::ScopeSet;
use crate::error::{Error, ErrorKind};
use crate::fhir::datetime::now_micros;
use crate::fhir::outcome::Issue;
use crate::store::db::{Col, Db, Sql};

/// Verified tokens remembered at most.
const VERIFIED_CACHE_SIZE: usize = 10_000;

fn token_digest(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 30;

/// What a new access token is for.
#[derive(Debug, Clone, Default)]
pub struct TokenGrant {
    pub client_id: String,
    /// The user (for user launches) or the client id (backend services).
    pub subject: String,
    pub scope: String,
    pub patient: Option<String>,
    pub encounter: Option<String>,
    pub fhir_user: Option<String>,
    /// Role of the signed-in user, if any (`admin` unlocks administrative reads).
    pub role: Option<String>,
    /// Refresh/code family the token belongs to, so a reused code or refresh token can revoke it.
    pub family: Option<String>,
    pub lifetime_secs: i64,
}

/// An external authorization server whose tokens are trusted.
#[derive(Debug, Clone)]
pub struct ExternalIssuer {
    pub issuer: String,
    pub jwks_url: String,
    pub audience: String,
    /// Claim holding the space-separated scopes (`scope` unless configured).
    pub scope_claim: String,
}

#[derive(Debug, Default)]
struct JwksCache {
    jwks: Option<Value>,
    fetched: Option<Instant>,
    max_age: Duration,
}

/// Verifies bearer tokens and issues the gateway's own.
#[derive(Clone)]
pub struct Authenticator {
    pub keys: KeyRing,
    pub issuer: String,
    pub audience: String,
    db: Db,
    external: Option<ExternalIssuer>,
    /// Whether this gateway's own tokens are accepted (the built-in server is on).
    builtin: bool,
    external_jwks: Arc<RwLock<JwksCache>>,
    http: reqwest::Client,
    /// Tokens whose signature and claims were verified, by digest: an ES384 check costs far more than the rest of a
    /// read. Bounded; cleared when full.
    verified: Arc<std::sync::Mutex<std::collections::HashMap<[u8; 32], Value>>>,
    /// Revoked, unexpired token ids as last read from the database (see [`REVOCATION_REFRESH`]).
    revocations: Arc<Revocations>,
}

/// How often a replica re-reads the revocations made by others. A token revoked through this replica is refused at
/// once; one revoked through another replica sharing the database is refused here within this interval.
pub const REVOCATION_REFRESH: Duration = Duration::from_secs(1);

/// Revocations are re-read with this much overlap, so that a revocation stamped by a replica whose clock is behind
/// ours is still seen.
const REVOCATION_OVERLAP_MICROS: i64 = 60_000_000;

/// The per-replica copy of the revoked token ids, so that checking a known token needs no database round trip.
#[derive(Debug, Default)]
struct Revocations {
    state: std::sync::Mutex<RevocationState>,
    /// Held by the one request that re-reads the table; the others go on with the copy they have.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct RevocationState {
    /// jti → expires_at (microseconds), to forget entries once the token has expired anyway.
    revoked: std::collections::HashMap<String, i64>,
    loaded_at: Option<Instant>,
    /// Largest `revoked_at` seen.
    watermark: i64,
}

impl Revocations {
    fn fresh(&self) -> bool {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.loaded_at)
            .is_some_and(|at| at.elapsed() < REVOCATION_REFRESH)
    }

    fn loaded(&self) -> bool {
        self.state
            .lock()
            .ok()
            .is_some_and(|s| s.loaded_at.is_some())
    }

    fn contains(&self, jti: &str) -> bool {
        // A poisoned lock means a panic elsewhere: refuse rather than trust.
        self.state
            .lock()
            .map(|s| s.revoked.contains_key(jti))
            .unwrap_or(true)
    }
}

/// 401 with the RFC 6750 challenge.
pub fn unauthorized(description: &str) -> Error {
    let mut e = Error::with_issues(
        ErrorKind::Unauthorized,
        vec![Issue::error(
            "login",
            format!("Authentication required: {description}"),
        )],
    );
    e.www_authenticate = Some(format!(
        "Bearer realm=\"kap-gateway\", error=\"invalid_token\", error_description=\"{}\"",
        description.replace('"', "'")
    ));
    e
}

fn claim_str(claims: &Value, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn claim_i64(claims: &Value, name: &str) -> Option<i64> {
    claims
        .get(name)
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}

fn audience_matches(claims: &Value, expected: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => a.trim_end_matches('/') == expected.trim_end_matches('/'),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| a.trim_end_matches('/') == expected.trim_end_matches('/')),
        _ => false,
    }
}

/// Checks `exp` (required) and `nbf` (optional) against now, with leeway.
fn check_times(claims: &Value) -> Result<(), Error> {
    let now = now_micros() / 1_000_000;
    let exp = claim_i64(claims, "exp").ok_or_else(|| unauthorized("the token has no exp"))?;
    if exp + LEEWAY_SECS < now {
        return Err(unauthorized("the token has expired"));
    }
    if let Some(nbf) = claim_i64(claims, "nbf")
        && nbf - LEEWAY_SECS > now
    {
        return Err(unauthorized("the token is not valid yet"));
    }
    Ok(())
}

impl Authenticator {
    pub fn new(
        keys: KeyRing,
        db: Db,
        issuer: String,
        audience: String,
        external: Option<ExternalIssuer>,
    ) -> Authenticator {
        Authenticator {
            keys,
            issuer,
            audience,
            db,
            external,
            builtin: true,
            external_jwks: Arc::new(RwLock::new(JwksCache::default())),
            verified: Arc::new(std::sync::Mutex::new(std::collections::HashMap::new())),
            revocations: Arc::new(Revocations::default()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Accepts (or, with `false`, refuses) tokens of the built-in authorization server.
    pub fn with_builtin(mut self, builtin: bool) -> Authenticator {
        self.builtin = builtin;
        self
    }

    pub fn builtin_enabled(&self) -> bool {
        self.builtin
    }

    /// Signs an access token and records its id; returns (token, jti).
    pub async fn issue_access_token(&self, grant: &TokenGrant) -> Result<(String, String), Error> {
        let now_us = now_micros();
        let now = now_us / 1_000_000;
        let jti = uuid::Uuid::new_v4().to_string();
        let lifetime = grant.lifetime_secs.clamp(1, 3600);
        let mut claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": grant.subject,
            "client_id": grant.client_id,
            "scope": grant.scope,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": jti,
        });
        if let Some(obj) = claims.as_object_mut() {
            for (k, v) in [
                ("patient", &grant.patient),
                ("encounter", &grant.encounter),
                ("fhirUser", &grant.fhir_user),
                ("role", &grant.role),
            ] {
                if let Some(v) = v {
                    obj.insert(k.into(), Value::String(v.clone()));
                }
            }
        }
        let token = self.keys.sign(&claims).map_err(Error::internal)?;
        let mut tx = self.db.begin_write().await?;
        let mut sql = Sql::new(
            "INSERT INTO issued_tokens (jti, family, client_id, username, scope, created_at, expires_at) VALUES (",
        );
        sql.bind(jti.as_str())
            .push(", ")
            .bind(grant.family.clone())
            .push(", ")
            .bind(grant.client_id.as_str())
            .push(", ")
            .bind(grant.subject.as_str())
            .push(", ")
            .bind(grant.scope.as_str())
            .push(", ")
            .bind(now_us)
            .push(", ")
            .bind(now_us + lifetime * 1_000_000)
            .push(")");
        tx.execute(&sql).await?;
        tx.commit().await?;
        Ok((token, jti))
    }

    /// Revokes every access token of a family (a reused code or refresh token).
    pub async fn revoke_family(&self, family: &str) -> Result<(), Error> {
        let mut tx = self.db.begin_write().await?;
        let mut sql = Sql::new("UPDATE issued_tokens SET revoked_at = ");
        sql.bind(now_micros())
            .push(" WHERE family = ")
            .bind(family)
            .push(" AND revoked_at IS NULL");
        tx.execute(&sql).await?;
        tx.commit().await?;
        self.refresh_revocations(true).await
    }

    /// Revokes one access token by its id.
    pub async fn revoke_jti(&self, jti: &str) -> Result<(), Error> {
        let mut tx = self.db.begin_write().await?;
        let mut sql = Sql::new("UPDATE issued_tokens SET revoked_at = ");
        sql.bind(now_micros())
            .push(" WHERE jti = ")
            .bind(jti)
            .push(" AND revoked_at IS NULL");
        tx.execute(&sql).await?;
        tx.commit().await?;
        self.refresh_revocations(true).await
    }

    /// Re-reads the revocations made since the last read (by any replica), when the copy is older than
    /// [`REVOCATION_REFRESH`] or `force` is set. While one request re-reads, the others use the copy they have.
    async fn refresh_revocations(&self, force: bool) -> Result<(), Error> {
        let revs = &self.revocations;
        if !force && revs.fresh() {
            return Ok(());
        }
        let _guard = if force || !revs.loaded() {
            revs.refreshing.lock().await
        } else {
            match revs.refreshing.try_lock() {
                Ok(g) => g,
                Err(_) => return Ok(()),
            }
        };
        if !force && revs.fresh() {
            return Ok(());
        }
        let since = revs
            .state
            .lock()
            .map(|s| s.watermark)
            .unwrap_or(0)
            .saturating_sub(REVOCATION_OVERLAP_MICROS);
        let now = now_micros();
        let started = Instant::now();
        let mut sql =
            Sql::new("SELECT jti, expires_at, revoked_at FROM issued_tokens WHERE revoked_at >= ");
        sql.bind(since).push(" AND expires_at > ").bind(now);
        let rows = self
            .db
            .fetch(&sql, &[Col::Text, Col::Int, Col::Int])
            .await?;
        let mut state = self
            .revocations
            .state
            .lock()
            .map_err(|_| Error::internal(anyhow::anyhow!("revocation list lock poisoned")))?;
        for row in rows {
            state.watermark = state.watermark.max(row.int(2));
            state.revoked.insert(row.text(0), row.int(1));
        }
        let horizon = now - (LEEWAY_SECS + 60) * 1_000_000;
        state.revoked.retain(|_, expires| *expires > horizon);
        state.loaded_at = Some(started);
        Ok(())
    }

    /// Whether a token already seen (signature, claims and its record checked) has been revoked since, from this
    /// replica's copy of the revocations.
    async fn is_revoked_known(&self, jti: &str) -> Result<bool, Error> {
        self.refresh_revocations(false).await?;
        Ok(self.revocations.contains(jti))
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, Error> {
        // Asked of the database the first time a token is seen (it must have been recorded); later requests with the
        // same token check this replica's copy of the revocations instead (`is_revoked_known`).
        let mut sql = Sql::new("SELECT revoked_at FROM issued_tokens WHERE jti = ");
        sql.bind(jti);
        let rows = self.db.fetch(&sql, &[Col::OptInt]).await?;
        // A token of ours that was never recorded is not trusted either.
        Ok(rows.first().is_none_or(|r| r.opt_int(0).is_some()))
    }

    /// Verifies a token of this gateway and returns its claims (signature, iss, aud, exp, nbf, not revoked).
    pub async fn verify_own(&self, token: &str) -> Result<Value, Error> {
        let digest = token_digest(token);
        let cached = self
            .verified
            .lock()
            .ok()
            .and_then(|c| c.get(&digest).cloned());
        if let Some(claims) = cached {
            // The signature, the claims and the token's record were checked before; lifetime and revocation are
            // checked every time, revocation against this replica's copy of the list (re-read every second).
            check_times(&claims)?;
            let jti =
                claim_str(&claims, "jti").ok_or_else(|| unauthorized("the token has no jti"))?;
            if self.is_revoked_known(&jti).await? {
                return Err(unauthorized("the token has been revoked"));
            }
            return Ok(claims);
        }
        let claims = self.verify_own_uncached(token).await?;
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= VERIFIED_CACHE_SIZE {
                cache.clear();
            }
            cache.insert(digest, claims.clone());
        }
        Ok(claims)
    }

    async fn verify_own_uncached(&self, token: &str) -> Result<Value, Error> {
        let claims = match self.keys.verify(token) {
            Ok(c) => c,
            Err(KeyError::UnknownKey) => {
                // Another replica may have rotated keys since we loaded them.
                self.keys.reload().await.map_err(Error::internal)?;
                self.keys
                    .verify(token)
                    .map_err(|e| unauthorized(&e.to_string()))?
            }
            Err(e) => return Err(unauthorized(&e.to_string())),
        };
        if claim_str(&claims, "iss").as_deref() != Some(self.issuer.as_str()) {
            return Err(unauthorized("the token was issued by someone else"));
        }
        if !audience_matches(&claims, &self.audience) {
            return Err(unauthorized("the token is not meant for this server (aud)"));
        }
        check_times(&claims)?;
        let jti = claim_str(&claims, "jti").ok_or_else(|| unauthorized("the token has no jti"))?;
        if self.is_revoked(&jti).await? {
            return Err(unauthorized("the token has been revoked"));
        }
        Ok(claims)
    }

    async fn external_jwks(&self, ext: &ExternalIssuer, force: bool) -> Result<Value, Error> {
        {
            let cache = self.external_jwks.read().await;
            if !force
                && let (Some(jwks), Some(at)) = (&cache.jwks, cache.fetched)
                && at.elapsed() < cache.max_age
            {
                return Ok(jwks.clone());
            }
        }
        let resp = self.http.get(&ext.jwks_url).send().await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot fetch the issuer's keys: {e}"),
            )
        })?;
        let max_age = cache_max_age(resp.headers());
        let jwks: Value = resp.json().await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("the issuer's JWKS is not JSON: {e}"),
            )
        })?;
        let mut cache = self.external_jwks.write().await;
        cache.jwks = Some(jwks.clone());
        cache.fetched = Some(Instant::now());
        cache.max_age = max_age;
        Ok(jwks)
    }

    async fn verify_external(&self, ext: &ExternalIssuer, token: &str) -> Result<Value, Error> {
        let jwks = self.external_jwks(ext, false).await?;
        let claims = match verify_with_jwks(token, &jwks) {
            Ok(c) => c,
            Err(KeyError::UnknownKey) => {
                let fresh = self.external_jwks(ext, true).await?;
                verify_with_jwks(token, &fresh).map_err(|e| unauthorized(&e.to_string()))?
            }
            Err(e) => return Err(unauthorized(&e.to_string())),
        };
        if claim_str(&claims, "iss").as_deref() != Some(ext.issuer.as_str()) {
            return Err(unauthorized("the token was issued by someone else"));
        }
        if !audience_matches(&claims, &ext.audience) {
            return Err(unauthorized("the token is not meant for this server (aud)"));
        }
        check_times(&claims)?;
        Ok(claims)
    }

    /// Authenticates the `Authorization` header of a request.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Access, Error> {
        let header = authorization.ok_or_else(|| unauthorized("no access token was sent"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header is not a Bearer token"))?;
        let (_, _, jose) = split_token(token).map_err(|e| unauthorized(&e.to_string()))?;
        let kid = jose.get("kid").and_then(Value::as_str).unwrap_or_default();
        let (claims, scope_claim, own) = match &self.external {
            Some(ext)
                if !self.keys.knows(kid)
                    && claim_str(&super::keys::claims_of(token).unwrap_or_default(), "iss")
                        .as_deref()
                        == Some(ext.issuer.as_str()) =>
            {
                (
                    self.verify_external(ext, token).await?,
                    ext.scope_claim.clone(),
                    false,
                )
            }
            _ if self.builtin => (self.verify_own(token).await?, "scope".to_owned(), true),
            _ => {
                return Err(unauthorized(
                    "the token was not issued by the trusted authorization server",
                ));
            }
        };
        let scope_text = match claims.get(&scope_claim) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        };
        let scopes = ScopeSet::parse(&scope_text).map_err(|e| unauthorized(&e.to_string()))?;
        let role = claim_str(&claims, "role");
        Ok(Access {
            client_id: claim_str(&claims, "client_id")
                .or_else(|| claim_str(&claims, "azp"))
                .unwrap_or_default(),
            subject: claim_str(&claims, "sub").unwrap_or_default(),
            psychotherapy: scopes.contains(PSYCHOTHERAPY_SCOPE),
            admin: own && role.as_deref() == Some("admin"),
            patient: claim_str(&claims, "patient"),
            encounter: claim_str(&claims, "encounter"),
            fhir_user: claim_str(&claims, "fhirUser"),
            jti: claim_str(&claims, "jti"),
            scopes,
        })
    }
}

/// `Cache-Control: max-age` of a JWKS response, capped at a day; no caching when absent or `no-store`.
pub fn cache_max_age(headers: &reqwest::header::HeaderMap) -> Duration {
    let Some(cc) = headers
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    else {
        return Duration::ZERO;
    };
    let mut max_age = Duration::ZERO;
    for part in cc.split(',').map(str::trim) {
        if part == "no-store" || part == "no-cache" {
            return Duration::ZERO;
        }
        if let Some(v) = part.strip_prefix("max-age=")
            && let Ok(secs) = v.parse::<u64>()
        {
            max_age = Duration::from_secs(secs.min(86_400));
        }
    }
    max_age
}
