//! External authorization server mode: tokens of a configured issuer, verified against its JWKS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::helpers::{client_with_token, into_resp, spawn_app_with};

struct Issuer {
    der: Vec<u8>,
    jwks: Value,
}

fn issuer_key() -> Issuer {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let public = pair.public_key().as_ref();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": "ext-1", "alg": "ES384", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&public[1..49]), "y": URL_SAFE_NO_PAD.encode(&public[49..97])}]});
    Issuer {
        der: pkcs8.as_ref().to_vec(),
        jwks,
    }
}

fn sign(issuer: &Issuer, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
    header.kid = Some("ext-1".into());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ec_der(&issuer.der),
    )
    .unwrap()
}

/// Serves the issuer's JWKS on a free loopback port and returns its URL.
async fn serve_jwks(jwks: Value) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = actix_web::HttpServer::new(move || {
        let jwks = jwks.clone();
        actix_web::App::new().route(
            "/jwks",
            actix_web::web::get().to(move || {
                let jwks = jwks.clone();
                async move {
                    actix_web::HttpResponse::Ok()
                        .insert_header(("cache-control", "max-age=60"))
                        .json(jwks)
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    format!("http://127.0.0.1:{port}/jwks")
}

#[tokio::test]
async fn tokens_of_the_configured_external_issuer_are_accepted_with_their_scopes() {
    let issuer = issuer_key();
    let jwks_url = serve_jwks(issuer.jwks.clone()).await;
    let app = spawn_app_with(|c| {
        c.auth.external = Some(kap_gateway::config::ExternalAuthConfig {
            issuer: "https://idp.example.org".into(),
            jwks_url: jwks_url.clone(),
            audience: Some("kap-gateway".into()),
            scope_claim: "scp".into(),
        });
    })
    .await;
    app.put(
        "/fhir/Patient/alice",
        &json!({"resourceType": "Patient", "id": "alice"}),
    )
    .await;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": "https://idp.example.org", "aud": ["kap-gateway"], "sub": "someone",
        "azp": "ext-app", "exp": now + 300, "nbf": now - 5, "scp": ["user/Patient.rs"]});
    let token = sign(&issuer, &claims);
    let r = into_resp(
        client_with_token(&token)
            .get(app.url("/fhir/Patient/alice"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Its scopes are enforced like any other token's.
    let r = into_resp(
        client_with_token(&token)
            .get(app.url("/fhir/Observation"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 403);

    for (field, value) in [("aud", json!("someone-else")), ("exp", json!(now - 600))] {
        let mut c = claims.clone();
        c[field] = value;
        let r = client_with_token(&sign(&issuer, &c))
            .get(app.url("/fhir/Patient/alice"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{field}");
    }
    // A key the issuer does not publish is refused.
    let stranger = issuer_key();
    let r = client_with_token(&sign(&stranger, &claims))
        .get(app.url("/fhir/Patient/alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // The built-in server's tokens still work beside it.
    assert_eq!(app.get("/fhir/Patient/alice").await.status, 200);
}

#[tokio::test]
async fn with_the_builtin_server_off_only_the_external_issuers_tokens_count() {
    let issuer = issuer_key();
    let jwks_url = serve_jwks(issuer.jwks.clone()).await;
    let app = spawn_app_with(|c| {
        c.auth.builtin = false;
        c.auth.external = Some(kap_gateway::config::ExternalAuthConfig {
            issuer: "https://idp.example.org".into(),
            jwks_url: jwks_url.clone(),
            audience: None,
            scope_claim: "scope".into(),
        });
    })
    .await;
    assert_eq!(app.get("/fhir/Patient").await.status, 401);
    let now = chrono::Utc::now().timestamp();
    let token = sign(
        &issuer,
        &json!({"iss": "https://idp.example.org", "aud": app.base, "sub": "x", "exp": now + 60, "scope": "system/*.rs"}),
    );
    let r = client_with_token(&token)
        .get(app.url("/fhir/Patient"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
