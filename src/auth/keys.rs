//! The gateway's token-signing keys: ES384 (P-384) key pairs kept in the database so they survive restarts and are
//! shared by replicas, published as a JWKS, rotated with an overlap so that tokens signed by the previous key verify
//! until they expire (https://www.rfc-editor.org/rfc/rfc7517, https://www.rfc-editor.org/rfc/rfc7518#section-3.4).

use std::sync::{Arc, RwLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};

use crate::fhir::datetime::now_micros;
use crate::store::db::{Col, Db, Sql};

/// Why a token could not be signed or verified.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no signing key is available")]
    NoKey,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("key storage failed: {0}")]
    Storage(String),
}

#[derive(Clone)]
struct SigningKey {
    kid: String,
    private_der: Vec<u8>,
    public_jwk: Value,
    decoding: DecodingKey,
    /// No longer used to sign.
    retired: bool,
    /// Microseconds; after this the key no longer verifies.
    expires_at: Option<i64>,
}

/// The loaded keys; cheap to clone.
#[derive(Clone)]
pub struct KeyRing {
    db: Db,
    keys: Arc<RwLock<Vec<SigningKey>>>,
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Generates a P-384 key pair: (kid, PKCS#8 DER, public JWK).
fn generate() -> Result<(String, Vec<u8>, Value), KeyError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
        .map_err(|_| KeyError::Storage("key generation failed".into()))?;
    let der = pkcs8.as_ref().to_vec();
    let jwk = public_jwk_of(&der, None)?;
    let kid = jwk["kid"].as_str().unwrap_or_default().to_owned();
    Ok((kid, der, jwk))
}

/// The public JWK of a PKCS#8 P-384 key; the kid is the RFC 7638 thumbprint unless given.
fn public_jwk_of(der: &[u8], kid: Option<&str>) -> Result<Value, KeyError> {
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der)
        .map_err(|_| KeyError::Storage("stored key is not a P-384 PKCS#8 key".into()))?;
    let public = pair.public_key().as_ref();
    if public.len() != 97 || public[0] != 4 {
        return Err(KeyError::Storage("unexpected public key encoding".into()));
    }
    let (x, y) = (b64url(&public[1..49]), b64url(&public[49..97]));
    let kid = match kid {
        Some(k) => k.to_owned(),
        None => {
            // RFC 7638: SHA-256 over the required members in lexicographic order.
            let canonical = format!(r#"{{"crv":"P-384","kty":"EC","x":"{x}","y":"{y}"}}"#);
            b64url(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes())
                    .as_ref(),
            )
        }
    };
    Ok(
        json!({"kty": "EC", "crv": "P-384", "x": x, "y": y, "kid": kid, "alg": "ES384", "use": "sig"}),
    )
}

fn load_key(
    kid: String,
    der_b64: &str,
    retired: bool,
    expires_at: Option<i64>,
) -> Result<SigningKey, KeyError> {
    let der = STANDARD
        .decode(der_b64)
        .map_err(|_| KeyError::Storage(format!("key {kid} is not base64")))?;
    let jwk = public_jwk_of(&der, Some(&kid))?;
    let decoding = DecodingKey::from_ec_components(
        jwk["x"].as_str().unwrap_or_default(),
        jwk["y"].as_str().unwrap_or_default(),
    )
    .map_err(|e| KeyError::Storage(e.to_string()))?;
    Ok(SigningKey {
        kid,
        private_der: der,
        public_jwk: jwk,
        decoding,
        retired,
        expires_at,
    })
}

impl KeyRing {
    /// Loads the keys that still verify, creating a first key when there is none, and checks that signing and
    /// verifying work (a crypto back-end mismatch would otherwise only show at the first request).
    pub async fn load_or_create(db: &Db) -> Result<KeyRing, KeyError> {
        let ring = KeyRing {
            db: db.clone(),
            keys: Arc::new(RwLock::new(Vec::new())),
        };
        ring.reload().await?;
        if ring.current().is_none() {
            ring.insert_new_key().await?;
            ring.reload().await?;
        }
        let probe = ring.sign(&json!({"probe": true}))?;
        ring.verify(&probe)?;
        Ok(ring)
    }

    async fn insert_new_key(&self) -> Result<String, KeyError> {
        let (kid, der, jwk) = generate()?;
        let mut tx = self
            .db
            .begin_write()
            .await
            .map_err(|e| KeyError::Storage(e.to_string()))?;
        let mut sql = Sql::new(
            "INSERT INTO signing_keys (kid, alg, private_der, public_jwk, created_at) VALUES (",
        );
        sql.bind(kid.as_str())
            .push(", 'ES384', ")
            .bind(STANDARD.encode(&der))
            .push(", ")
            .bind(jwk.to_string())
            .push(", ")
            .bind(now_micros())
            .push(")");
        tx.execute(&sql)
            .await
            .map_err(|e| KeyError::Storage(e.to_string()))?;
        tx.commit()
            .await
            .map_err(|e| KeyError::Storage(e.to_string()))?;
        Ok(kid)
    }

    /// Re-reads the keys from the database (another replica may have rotated them).
    pub async fn reload(&self) -> Result<(), KeyError> {
        let mut tx = self
            .db
            .begin_read()
            .await
            .map_err(|e| KeyError::Storage(e.to_string()))?;
        let mut sql = Sql::new(
            "SELECT kid, private_der, retired_at, expires_at FROM signing_keys WHERE expires_at IS NULL OR expires_at > ",
        );
        sql.bind(now_micros()).push(" ORDER BY created_at DESC");
        let rows = tx
            .fetch(&sql, &[Col::Text, Col::Text, Col::OptInt, Col::OptInt])
            .await
            .map_err(|e| KeyError::Storage(e.to_string()))?;
        tx.rollback()
            .await
            .map_err(|e| KeyError::Storage(e.to_string()))?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            keys.push(load_key(
                row.text(0),
                &row.text(1),
                row.opt_int(2).is_some(),
                row.opt_int(3),
            )?);
        }
        if let Ok(mut guard) = self.keys.write() {
            *guard = keys;
        }
        Ok(())
    }

    /// Starts signing with a new key; the previous one keeps verifying for `overlap_secs` (at least the longest
    /// token lifetime) and then drops out of the JWKS.
    pub async fn rotate(db: &Db, overlap_secs: i64) -> Result<String, KeyError> {
        let ring = KeyRing {
            db: db.clone(),
            keys: Arc::new(RwLock::new(Vec::new())),
        };
        let now = now_micros();
        let mut tx = db
            .begin_write()
            .await
            .map_err(|e| KeyError::Storage(e.to_string()))?;
        let mut sql = Sql::new("UPDATE signing_keys SET retired_at = ");
        sql.bind(now)
            .push(", expires_at = ")
            .bind(now + overlap_secs * 1_000_000)
            .push(" WHERE retired_at IS NULL");
        tx.execute(&sql)
            .await
            .map_err(|e| KeyError::Storage(e.to_string()))?;
        tx.commit()
            .await
            .map_err(|e| KeyError::Storage(e.to_string()))?;
        ring.insert_new_key().await
    }

    fn current(&self) -> Option<SigningKey> {
        self.keys
            .read()
            .ok()
            .and_then(|keys| keys.iter().find(|k| !k.retired).cloned())
    }

    /// The kid of the key that signs now.
    pub fn current_kid(&self) -> Option<String> {
        self.current().map(|k| k.kid)
    }

    /// The public keys that verify tokens now, as a JWK Set.
    pub fn jwks(&self) -> Value {
        let now = now_micros();
        let keys: Vec<Value> = self
            .keys
            .read()
            .map(|keys| {
                keys.iter()
                    .filter(|k| k.expires_at.is_none_or(|e| e > now))
                    .map(|k| k.public_jwk.clone())
                    .collect()
            })
            .unwrap_or_default();
        json!({ "keys": keys })
    }

    /// Signs claims as a compact JWS with the current key (ES384, `kid` in the header).
    pub fn sign(&self, claims: &impl serde::Serialize) -> Result<String, KeyError> {
        let key = self.current().ok_or(KeyError::NoKey)?;
        let mut header = Header::new(Algorithm::ES384);
        header.kid = Some(key.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&key.private_der))
            .map_err(|e| KeyError::Storage(e.to_string()))
    }

    /// True if `kid` names one of this gateway's keys.
    pub fn knows(&self, kid: &str) -> bool {
        self.keys
            .read()
            .map(|k| k.iter().any(|x| x.kid == kid))
            .unwrap_or(false)
    }

    /// Verifies a token's signature with the key its `kid` names and returns its claims (not yet validated).
    /// Only ES384 is accepted: `alg: none`, HMAC (whatever the key) and any other algorithm are refused before any
    /// key is used.
    pub fn verify(&self, token: &str) -> Result<Value, KeyError> {
        let (message, signature, header) = split_token(token)?;
        if header.get("alg").and_then(Value::as_str) != Some("ES384") {
            return Err(KeyError::Algorithm);
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or(KeyError::UnknownKey)?;
        let now = now_micros();
        let key = self
            .keys
            .read()
            .ok()
            .and_then(|keys| {
                keys.iter()
                    .find(|k| k.kid == kid && k.expires_at.is_none_or(|e| e > now))
                    .cloned()
            })
            .ok_or(KeyError::UnknownKey)?;
        match jsonwebtoken::crypto::verify(
            signature,
            message.as_bytes(),
            &key.decoding,
            Algorithm::ES384,
        ) {
            Ok(true) => claims_of(token),
            _ => Err(KeyError::Signature),
        }
    }
}

/// Splits a compact JWS into (signing input, signature, decoded header).
pub fn split_token(token: &str) -> Result<(&str, &str, Value), KeyError> {
    let (message, signature) = token
        .rsplit_once('.')
        .ok_or_else(|| KeyError::Malformed("not a compact JWS".into()))?;
    let (header_b64, _) = message
        .split_once('.')
        .ok_or_else(|| KeyError::Malformed("not a compact JWS".into()))?;
    let header_bytes = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| KeyError::Malformed("header is not base64url".into()))?;
    let header: Value = serde_json::from_slice(&header_bytes)
        .map_err(|_| KeyError::Malformed("header is not JSON".into()))?;
    Ok((message, signature, header))
}

/// The decoded claims of a compact JWS (signature not checked here).
pub fn claims_of(token: &str) -> Result<Value, KeyError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| KeyError::Malformed("not a compact JWS".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| KeyError::Malformed("payload is not base64url".into()))?;
    let claims: Value = serde_json::from_slice(&bytes)
        .map_err(|_| KeyError::Malformed("payload is not JSON".into()))?;
    if claims.is_object() {
        Ok(claims)
    } else {
        Err(KeyError::Malformed("payload is not a JSON object".into()))
    }
}

/// Verifies a token signed with RS384 or ES384 by a key from a JWK Set chosen by `kid` (client assertions and
/// external issuers). Exactly one key must match the kid (or, without a kid, the set must hold exactly one key).
pub fn verify_with_jwks(token: &str, jwks: &Value) -> Result<Value, KeyError> {
    let (message, signature, header) = split_token(token)?;
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("RS384") => Algorithm::RS384,
        Some("ES384") => Algorithm::ES384,
        _ => return Err(KeyError::Algorithm),
    };
    let keys: Vec<&Value> = jwks
        .get("keys")
        .and_then(Value::as_array)
        .map(|k| k.iter().collect())
        .unwrap_or_default();
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates: Vec<&Value> = match kid {
        Some(kid) => keys
            .into_iter()
            .filter(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
            .collect(),
        None => keys,
    };
    let [jwk] = candidates.as_slice() else {
        return Err(KeyError::UnknownKey);
    };
    let expected_kty = if alg == Algorithm::RS384 { "RSA" } else { "EC" };
    if jwk.get("kty").and_then(Value::as_str) != Some(expected_kty) {
        return Err(KeyError::Algorithm);
    }
    let key = match alg {
        Algorithm::RS384 => DecodingKey::from_rsa_components(
            jwk.get("n").and_then(Value::as_str).unwrap_or_default(),
            jwk.get("e").and_then(Value::as_str).unwrap_or_default(),
        ),
        _ => {
            if jwk.get("crv").and_then(Value::as_str) != Some("P-384") {
                return Err(KeyError::Algorithm);
            }
            DecodingKey::from_ec_components(
                jwk.get("x").and_then(Value::as_str).unwrap_or_default(),
                jwk.get("y").and_then(Value::as_str).unwrap_or_default(),
            )
        }
    }
    .map_err(|_| KeyError::UnknownKey)?;
    match jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, alg) {
        Ok(true) => claims_of(token),
        _ => Err(KeyError::Signature),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ring_with_fresh_key() -> KeyRing {
        // A ring without a database behind it is enough for signing and verifying.
        let (kid, der, _) = generate().unwrap();
        let key = load_key(kid, &STANDARD.encode(&der), false, None).unwrap();
        let options = "sqlite::memory:".parse().unwrap();
        KeyRing {
            db: Db::Sqlite(crate::store::db::SqlitePools::single(options)),
            keys: Arc::new(RwLock::new(vec![key])),
        }
    }

    fn forge(header: &str, payload: &str, sig: &str) -> String {
        format!(
            "{}.{}.{}",
            b64url(header.as_bytes()),
            b64url(payload.as_bytes()),
            sig
        )
    }

    #[tokio::test]
    async fn a_signed_token_verifies_and_carries_its_kid() {
        let ring = ring_with_fresh_key();
        let token = ring.sign(&json!({"sub": "x", "n": 1.50})).unwrap();
        let (_, _, header) = split_token(&token).unwrap();
        assert_eq!(header["alg"], "ES384");
        assert_eq!(header["kid"].as_str(), ring.current_kid().as_deref());
        assert_eq!(ring.verify(&token).unwrap()["sub"], "x");
        assert_eq!(ring.jwks()["keys"][0]["crv"], "P-384");
    }

    #[tokio::test]
    async fn alg_none_hmac_and_tampered_tokens_are_refused() {
        let ring = ring_with_fresh_key();
        let kid = ring.current_kid().unwrap();
        let none = forge(
            &format!(r#"{{"alg":"none","kid":"{kid}"}}"#),
            r#"{"sub":"x"}"#,
            "",
        );
        assert!(matches!(ring.verify(&none), Err(KeyError::Algorithm)));
        let hmac = forge(
            &format!(r#"{{"alg":"HS384","kid":"{kid}"}}"#),
            r#"{"sub":"x"}"#,
            "AAAA",
        );
        assert!(matches!(ring.verify(&hmac), Err(KeyError::Algorithm)));
        let token = ring.sign(&json!({"sub": "x"})).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let evil = b64url(br#"{"sub":"admin"}"#);
        parts[1] = &evil;
        assert!(matches!(
            ring.verify(&parts.join(".")),
            Err(KeyError::Signature)
        ));
        let other = ring_with_fresh_key();
        assert!(matches!(other.verify(&token), Err(KeyError::UnknownKey)));
    }

    #[tokio::test]
    async fn a_jwks_with_the_matching_kid_verifies_an_es384_assertion() {
        let ring = ring_with_fresh_key();
        let token = ring.sign(&json!({"iss": "client"})).unwrap();
        assert_eq!(
            verify_with_jwks(&token, &ring.jwks()).unwrap()["iss"],
            "client"
        );
        let other = ring_with_fresh_key();
        assert!(verify_with_jwks(&token, &other.jwks()).is_err());
    }
}
