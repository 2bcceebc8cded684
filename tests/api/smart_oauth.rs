//! The built-in SMART on FHIR authorization server over HTTP
//! (https://hl7.org/fhir/smart-app-launch/STU2.2/app-launch.html): discovery, the browser flow with PKCE, sign-in,
//! patient picker and consent, codes, refresh-token rotation, backend services with signed assertions,
//! introspection and revocation. The browser is walked by hand with redirects turned off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kap_gateway::auth::registry::{ClientKind, NewClient, Registry, Role};
use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp, client_with_token, into_resp, registry, spawn_app};

const REDIRECT: &str = "http://127.0.0.1:9/callback";
const PASSWORD: &str = "correct horse battery";
const APP_SCOPES: &str = "openid fhirUser launch launch/patient launch/encounter offline_access online_access \
                          patient/*.cruds user/*.rs kap/psychotherapy-notes.read";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

// ---- set-up -------------------------------------------------------------------------------------------------------

async fn public_client(reg: &Registry, id: &str) {
    reg.add_client(NewClient {
        client_id: id.into(),
        name: format!("App {id}"),
        kind: ClientKind::Public,
        secret: None,
        redirect_uris: vec![REDIRECT.into()],
        allowed_scopes: APP_SCOPES.into(),
        jwks: None,
        jwks_uri: None,
    })
    .await
    .unwrap();
}

async fn symmetric_client(reg: &Registry, id: &str, secret: &str, scopes: &str) {
    reg.add_client(NewClient {
        client_id: id.into(),
        name: format!("Service {id}"),
        kind: ClientKind::ConfidentialSymmetric,
        secret: Some(secret.into()),
        redirect_uris: vec![REDIRECT.into()],
        allowed_scopes: scopes.into(),
        jwks: None,
        jwks_uri: None,
    })
    .await
    .unwrap();
}

async fn backend_client(reg: &Registry, id: &str, jwks: Option<Value>, jwks_uri: Option<String>) {
    reg.add_client(NewClient {
        client_id: id.into(),
        name: format!("Backend {id}"),
        kind: ClientKind::ConfidentialAsymmetric,
        secret: None,
        redirect_uris: vec![],
        allowed_scopes: "system/*.rs system/Observation.cruds".into(),
        jwks,
        jwks_uri,
    })
    .await
    .unwrap();
}

async fn user(reg: &Registry, name: &str, role: Role, fhir_user: Option<&str>) {
    reg.add_user(name, PASSWORD, role, fhir_user).await.unwrap();
}

/// Two patients with names, birth dates and an encounter each.
async fn patients(app: &TestApp) {
    for (id, given, family, born) in [
        ("alice", "Alice", "Ames", "1980-02-03"),
        ("bob", "Bob", "<Brown>", "1975-11-30"),
    ] {
        let r = app
            .put(
                &format!("/fhir/Patient/{id}"),
                &json!({"resourceType": "Patient", "id": id, "birthDate": born,
                    "name": [{"family": family, "given": [given]}]}),
            )
            .await;
        assert!(r.status == 201 || r.status == 200, "{}", r.text);
        let r = app
            .put(
                &format!("/fhir/Encounter/enc-{id}"),
                &json!({"resourceType": "Encounter", "id": format!("enc-{id}"), "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": format!("Patient/{id}")}}),
            )
            .await;
        assert!(r.status == 201 || r.status == 200, "{}", r.text);
    }
}

// ---- the browser --------------------------------------------------------------------------------------------------

fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k.as_ref(), v.as_ref());
    }
    s.finish()
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Every `value` of the inputs named `name` in a page.
fn input_values(html: &str, name: &str) -> Vec<String> {
    let marker = format!("name=\"{name}\" value=\"");
    html.match_indices(&marker)
        .map(|(i, _)| {
            let rest = &html[i + marker.len()..];
            unescape(&rest[..rest.find('"').unwrap()])
        })
        .collect()
}

fn pkce() -> (String, String) {
    let verifier = format!(
        "{}-{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    (verifier.clone(), challenge_of(&verifier))
}

fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD
        .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref())
}

/// Query parameters of the `Location` of a redirect.
fn location_params(r: &Resp) -> HashMap<String, String> {
    let location = r
        .header("location")
        .unwrap_or_else(|| panic!("no Location: {} {}", r.status, r.text));
    assert!(location.starts_with(REDIRECT), "{location}");
    url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// An authorization request; fields can be changed before it is sent.
#[derive(Clone)]
struct AuthRequest {
    params: Vec<(String, String)>,
    verifier: String,
}

impl AuthRequest {
    fn new(app: &TestApp, client_id: &str, scope: &str) -> AuthRequest {
        let (verifier, challenge) = pkce();
        let params = [
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("scope", scope),
            ("state", "st&te=/1 ✓"),
            ("aud", app.base.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        AuthRequest { params, verifier }
    }

    fn set(mut self, name: &str, value: &str) -> AuthRequest {
        self.params.retain(|(k, _)| k != name);
        self.params.push((name.to_owned(), value.to_owned()));
        self
    }

    fn without(mut self, name: &str) -> AuthRequest {
        self.params.retain(|(k, _)| k != name);
        self
    }
}

/// A browser: keeps the binding cookie and the request id of the last page.
struct Browser {
    http: reqwest::Client,
    address: String,
    cookie: Option<String>,
    request: Option<String>,
}

impl Browser {
    fn new(app: &TestApp) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            address: app.address.clone(),
            cookie: None,
            request: None,
        }
    }

    fn remember(&mut self, r: &Resp) {
        if let Some(c) = r
            .headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("kap_authz="))
        {
            let value = c.split(';').next().unwrap_or_default();
            self.cookie = (!value.is_empty()).then(|| value.to_owned());
        }
        if let Some(id) = input_values(&r.text, "request").first() {
            self.request = Some(id.clone());
        }
    }

    async fn authorize(&mut self, req: &AuthRequest) -> Resp {
        let url = format!("{}/auth/authorize?{}", self.address, encode(&req.params));
        let r = into_resp(self.http.get(url).send().await.unwrap()).await;
        self.remember(&r);
        r
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let mut all = vec![("request", self.request.clone().unwrap_or_default())];
        all.extend(fields.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let mut req = self
            .http
            .post(format!("{}{path}", self.address))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode(&all));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("kap_authz={c}"));
        }
        let r = into_resp(req.send().await.unwrap()).await;
        self.remember(&r);
        r
    }
}

/// Walks the browser flow: authorize, sign in as `username`, pick `patient` when the picker is shown, and consent
/// to every offered scope but `untick`. Returns the redirect's parameters and the consent page.
async fn walk(
    app: &TestApp,
    req: &AuthRequest,
    username: &str,
    patient: Option<&str>,
    untick: &[&str],
) -> (HashMap<String, String>, String) {
    let mut b = Browser::new(app);
    let login = b.authorize(req).await;
    assert_eq!(login.status, 200, "{}", login.text);
    assert!(
        login.text.contains("action=\"/auth/login\""),
        "{}",
        login.text
    );
    let mut page = b
        .post(
            "/auth/login",
            &[("username", username), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.text);
    if page.text.contains("name=\"patient\"") {
        let chosen = patient.expect("the patient picker was shown");
        page = b.post("/auth/patient", &[("patient", chosen)]).await;
        assert_eq!(page.status, 200, "{}", page.text);
    }
    assert!(
        page.text.contains("action=\"/auth/consent\""),
        "{}",
        page.text
    );
    let offered = input_values(&page.text, "scope");
    let mut fields = vec![("decision", "allow")];
    for s in offered.iter().filter(|s| !untick.contains(&s.as_str())) {
        fields.push(("scope", s.as_str()));
    }
    let done = b.post("/auth/consent", &fields).await;
    assert_eq!(done.status, 303, "{}", done.text);
    (location_params(&done), page.text)
}

async fn post_form(
    app: &TestApp,
    path: &str,
    fields: &[(&str, &str)],
    authorization: Option<&str>,
) -> Resp {
    let mut req = app
        .anonymous
        .post(app.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(fields));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    into_resp(req.send().await.unwrap()).await
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

async fn exchange(app: &TestApp, client_id: &str, code: &str, verifier: &str) -> Resp {
    post_form(
        app,
        "/auth/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
            ("client_id", client_id),
        ],
        None,
    )
    .await
}

async fn refresh(app: &TestApp, client_id: &str, token: &str, scope: Option<&str>) -> Resp {
    let mut fields = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("client_id", client_id),
    ];
    if let Some(s) = scope {
        fields.push(("scope", s));
    }
    post_form(app, "/auth/token", &fields, None).await
}

/// Status of `GET path` with `token`.
async fn fhir_status(app: &TestApp, token: &str, path: &str) -> u16 {
    app.get_with(&client_with_token(token), path).await.status
}

/// A full standalone launch for the public client `app`, returning the token response.
async fn launch_and_exchange(
    app: &TestApp,
    scope: &str,
    username: &str,
    patient: Option<&str>,
) -> Value {
    let req = AuthRequest::new(app, "app", scope);
    let (params, _) = walk(app, &req, username, patient, &[]).await;
    let r = exchange(app, "app", &params["code"], &req.verifier).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

// ---- client keys and assertions -----------------------------------------------------------------------------------

struct ClientKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn es384_key(kid: &str) -> ClientKey {
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let public = pair.public_key().as_ref();
    ClientKey {
        kid: kid.into(),
        alg: Algorithm::ES384,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384",
            "x": URL_SAFE_NO_PAD.encode(&public[1..49]), "y": URL_SAFE_NO_PAD.encode(&public[49..97])}),
    }
}

/// One DER element: (tag, contents, what follows).
fn der(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let (tag, first) = (input[0], input[1] as usize);
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        (
            input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize),
            2 + n,
        )
    };
    (tag, &input[header..header + len], &input[header + len..])
}

fn rs384_key(kid: &str) -> ClientKey {
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = pair.as_der().unwrap();
    // PrivateKeyInfo ::= SEQUENCE { version, algorithm, privateKey OCTET STRING (the PKCS#1 RSAPrivateKey) }
    let (_, info, _) = der(pkcs8.as_ref());
    let (_, _, rest) = der(info);
    let (_, _, rest) = der(rest);
    let (tag, pkcs1, _) = der(rest);
    assert_eq!(tag, 0x04);
    let public = pair.public_key();
    ClientKey {
        kid: kid.into(),
        alg: Algorithm::RS384,
        encoding: EncodingKey::from_rsa_der(pkcs1),
        jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS384",
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero())}),
    }
}

fn jwks_of(keys: &[&ClientKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn assertion_claims(app: &TestApp, client_id: &str) -> Value {
    json!({"iss": client_id, "sub": client_id, "aud": app.url("/auth/token"), "exp": now() + 240,
        "jti": uuid::Uuid::new_v4().to_string()})
}

fn sign(key: &ClientKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(kid.into());
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

async fn backend_token(app: &TestApp, assertion: &str, scope: &str) -> Resp {
    post_form(
        app,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
        ],
        None,
    )
    .await
}

// ---- discovery ----------------------------------------------------------------------------------------------------

#[tokio::test]
async fn discovery_announces_absolute_endpoints_and_exactly_what_works() {
    let app = spawn_app().await;
    let r = into_resp(
        app.anonymous
            .get(app.url("/.well-known/smart-configuration"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let c = &r.body;
    assert_eq!(c["issuer"], app.base.as_str());
    assert_eq!(c["authorization_endpoint"], app.url("/auth/authorize"));
    assert_eq!(c["token_endpoint"], app.url("/auth/token"));
    assert_eq!(c["introspection_endpoint"], app.url("/auth/introspect"));
    assert_eq!(c["revocation_endpoint"], app.url("/auth/revoke"));
    assert_eq!(c["jwks_uri"], app.url("/auth/jwks"));
    assert_eq!(c["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(c["response_types_supported"], json!(["code"]));
    assert_eq!(
        c["grant_types_supported"],
        json!(["authorization_code", "refresh_token", "client_credentials"])
    );
    assert_eq!(
        c["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS384", "ES384"])
    );
    let caps: Vec<&str> = c["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for cap in [
        "launch-ehr",
        "launch-standalone",
        "client-confidential-asymmetric",
        "context-standalone-patient",
        "permission-v2",
        "sso-openid-connect",
    ] {
        assert!(caps.contains(&cap), "{cap} missing from {caps:?}");
    }
    assert!(!caps.contains(&"context-standalone-encounter") && !caps.contains(&"authorize-post"));
    assert!(
        c["scopes_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("kap/psychotherapy-notes.read"))
    );
    // The same document under the FHIR base URL, and keys to verify tokens and id_tokens with.
    let under_fhir = into_resp(
        app.anonymous
            .get(app.url("/fhir/.well-known/smart-configuration"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(under_fhir.body, r.body);
    let oidc = into_resp(
        app.anonymous
            .get(app.url("/fhir/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(oidc.body["issuer"], app.base.as_str());
    let jwks = into_resp(
        app.anonymous
            .get(app.url("/auth/jwks"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(jwks.body["keys"][0]["alg"], "ES384");
    assert!(jwks.body["keys"][0].get("d").is_none());
}

// ---- the browser flow ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_standalone_launch_picks_a_patient_and_the_consent_decides_the_scopes() {
    let app = spawn_app().await;
    patients(&app).await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    user(&reg, "clin", Role::Clinician, Some("Practitioner/clin")).await;
    let req = AuthRequest::new(
        &app,
        "app",
        "launch/patient patient/Patient.rs patient/Encounter.rs openid",
    );

    let mut b = Browser::new(&app);
    let login = b.authorize(&req).await;
    assert_eq!(login.status, 200);
    assert_eq!(login.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(login.header("cache-control").as_deref(), Some("no-store"));
    let csp = login.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let cookie = login.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(login.text.contains("<label for=\"username\">"));

    let picker = b
        .post(
            "/auth/login",
            &[("username", "clin"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(picker.status, 200, "{}", picker.text);
    let listed = input_values(&picker.text, "patient");
    assert_eq!(listed.len(), 2, "{}", picker.text);
    assert!(
        picker.text.contains("Alice Ames, born 1980-02-03"),
        "{}",
        picker.text
    );
    // Names are escaped, not interpreted.
    assert!(picker.text.contains("Bob &lt;Brown&gt;") && !picker.text.contains("<Brown>"));
    let searched = b.post("/auth/patient", &[("name", "Ames")]).await;
    assert_eq!(input_values(&searched.text, "patient"), vec!["alice"]);

    let consent = b.post("/auth/patient", &[("patient", "alice")]).await;
    assert!(consent.text.contains("Alice Ames"), "{}", consent.text);
    let offered = input_values(&consent.text, "scope");
    assert_eq!(
        offered,
        vec![
            "launch/patient",
            "patient/Patient.rs",
            "patient/Encounter.rs",
            "openid"
        ]
    );
    let done = b
        .post(
            "/auth/consent",
            &[
                ("decision", "allow"),
                ("scope", "launch/patient"),
                ("scope", "patient/Patient.rs"),
                ("scope", "openid"),
            ],
        )
        .await;
    assert_eq!(done.status, 303);
    let params = location_params(&done);
    assert_eq!(params["state"], "st&te=/1 ✓");
    assert_eq!(params["iss"], app.base.as_str());
    assert!(!params.contains_key("error"));

    let r = exchange(&app, "app", &params["code"], &req.verifier).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(r.header("pragma").as_deref(), Some("no-cache"));
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["scope"], "launch/patient patient/Patient.rs openid");
    assert_eq!(r.body["patient"], "alice");
    assert!(r.body["expires_in"].as_i64().unwrap() <= 3600);
    assert!(r.body.get("refresh_token").is_none());
    let token = r.body["access_token"].as_str().unwrap();
    assert_eq!(fhir_status(&app, token, "/fhir/Patient/alice").await, 200);
    assert_eq!(fhir_status(&app, token, "/fhir/Patient/bob").await, 404);
    // The unticked scope was not granted.
    assert_eq!(
        fhir_status(&app, token, "/fhir/Encounter/enc-alice").await,
        403
    );
}

#[tokio::test]
async fn an_ehr_launch_takes_its_patient_and_encounter_from_the_launch_context() {
    let app = spawn_app().await;
    patients(&app).await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    user(&reg, "clin", Role::Clinician, None).await;
    // Only administrators and full backend services may create launches.
    let weak = app.client_for("patient/*.rs", Some("alice")).await;
    let refused = into_resp(
        weak.post(app.url("/auth/launch"))
            .json(&json!({"patient": "alice"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, 403);
    let missing = app
        .client
        .post(app.url("/auth/launch"))
        .json(&json!({"patient": "nobody"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 400);
    let created = into_resp(
        app.client
            .post(app.url("/auth/launch"))
            .json(&json!({"patient": "bob", "encounter": "enc-bob"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text);
    let launch = created.body["launch"].as_str().unwrap().to_owned();
    assert!(created.body["expires_in"].as_i64().unwrap() > 0);

    let req = AuthRequest::new(&app, "app", "launch patient/*.rs").set("launch", &launch);
    let (params, consent) = walk(&app, &req, "clin", None, &[]).await;
    assert!(consent.contains("Bob"), "{consent}");
    let r = exchange(&app, "app", &params["code"], &req.verifier).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["patient"], "bob");
    assert_eq!(r.body["encounter"], "enc-bob");
    let token = r.body["access_token"].as_str().unwrap();
    assert_eq!(
        fhir_status(&app, token, "/fhir/Encounter/enc-bob").await,
        200
    );
    assert_eq!(
        fhir_status(&app, token, "/fhir/Encounter/enc-alice").await,
        404
    );

    // An unknown launch gets an error page, not a redirect.
    let mut b = Browser::new(&app);
    let r = b
        .authorize(&AuthRequest::new(&app, "app", "launch patient/*.rs").set("launch", "made-up"))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
    assert!(r.text.contains("launch"), "{}", r.text);
}

#[tokio::test]
async fn a_patient_user_gets_their_own_record_without_a_picker_and_no_user_scopes() {
    let app = spawn_app().await;
    patients(&app).await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    user(&reg, "alice", Role::Patient, Some("Patient/alice")).await;
    let body =
        launch_and_exchange(&app, "launch/patient patient/*.rs user/*.rs", "alice", None).await;
    assert_eq!(body["patient"], "alice");
    assert_eq!(body["scope"], "launch/patient patient/*.rs");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(
        fhir_status(&app, token, "/fhir/Encounter/enc-bob").await,
        404
    );
}

#[tokio::test]
async fn authorization_requests_without_s256_pkce_get_no_code() {
    let app = spawn_app().await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    let base = AuthRequest::new(&app, "app", "launch/patient patient/*.rs");
    for req in [
        base.clone().without("code_challenge"),
        base.clone().without("code_challenge_method"),
        base.clone().set("code_challenge_method", "plain"),
        base.clone().set("code_challenge", "too-short"),
    ] {
        let r = Browser::new(&app).authorize(&req).await;
        assert_eq!(r.status, 303, "{}", r.text);
        let params = location_params(&r);
        assert_eq!(params["error"], "invalid_request");
        assert_eq!(params["state"], "st&te=/1 ✓");
        assert!(!params.contains_key("code"));
    }
    let r = Browser::new(&app)
        .authorize(&base.clone().set("response_type", "token"))
        .await;
    assert_eq!(location_params(&r)["error"], "unsupported_response_type");
    let r = Browser::new(&app)
        .authorize(&base.clone().set("scope", "patient/Observation.xyz"))
        .await;
    assert_eq!(location_params(&r)["error"], "invalid_scope");
}

#[tokio::test]
async fn a_wrong_or_missing_code_verifier_is_an_invalid_grant() {
    let app = spawn_app().await;
    patients(&app).await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    user(&reg, "clin", Role::Clinician, None).await;
    let (other_verifier, _) = pkce();
    for verifier in [other_verifier.as_str(), ""] {
        let req = AuthRequest::new(&app, "app", "launch/patient patient/*.rs");
        let (params, _) = walk(&app, &req, "clin", Some("alice"), &[]).await;
        let r = exchange(&app, "app", &params["code"], verifier).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.body["error"], "invalid_grant");
    }
}

#[tokio::test]
async fn an_unregistered_redirect_uri_or_client_gets_an_error_page_and_no_redirect() {
    let app = spawn_app().await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    let base = AuthRequest::new(&app, "app", "patient/*.rs");
    for req in [
        base.clone()
            .set("redirect_uri", "http://127.0.0.1:9/callback/other"),
        base.clone()
            .set("redirect_uri", "http://127.0.0.1:9/callback?x=1"),
        base.clone().without("redirect_uri"),
        base.clone().set("client_id", "nobody"),
        base.clone().without("client_id"),
    ] {
        let r = Browser::new(&app).authorize(&req).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(r.header("location").is_none());
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(!r.text.contains("name=\"request\""));
    }
}

#[tokio::test]
async fn a_request_for_another_server_gets_an_error_page() {
    let app = spawn_app().await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    let base = AuthRequest::new(&app, "app", "patient/*.rs");
    for req in [
        base.clone().set("aud", "https://other.example.org/fhir"),
        base.clone().without("aud"),
    ] {
        let r = Browser::new(&app).authorize(&req).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(r.header("location").is_none());
        assert!(r.text.contains("another server"), "{}", r.text);
    }
}

#[tokio::test]
async fn sign_in_refuses_wrong_passwords_alike_and_forms_without_the_browser_cookie() {
    let app = spawn_app().await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    user(&reg, "clin", Role::Clinician, None).await;
    let req = AuthRequest::new(&app, "app", "user/*.rs");
    let mut b = Browser::new(&app);
    b.authorize(&req).await;
    let wrong = b
        .post(
            "/auth/login",
            &[("username", "clin"), ("password", "not the password")],
        )
        .await;
    let unknown = b
        .post(
            "/auth/login",
            &[("username", "ghost"), ("password", "not the password")],
        )
        .await;
    for r in [&wrong, &unknown] {
        assert_eq!(r.status, 200);
        assert!(
            r.text.contains("The username or password is not correct."),
            "{}",
            r.text
        );
        assert!(r.text.contains("action=\"/auth/login\""));
    }
    // A form posted from elsewhere carries the request id but not the cookie.
    let cookie = b.cookie.take();
    let forged = b
        .post(
            "/auth/login",
            &[("username", "clin"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(forged.status, 400);
    assert!(!forged.text.contains("action=\"/auth/consent\""));
    // The real browser still can.
    b.cookie = cookie;
    let ok = b
        .post(
            "/auth/login",
            &[("username", "clin"), ("password", PASSWORD)],
        )
        .await;
    assert!(ok.text.contains("action=\"/auth/consent\""), "{}", ok.text);
    // Consent cannot be skipped to, nor answered twice.
    let denied = b.post("/auth/consent", &[("decision", "deny")]).await;
    assert_eq!(denied.status, 303);
    let params = location_params(&denied);
    assert_eq!(params["error"], "access_denied");
    assert_eq!(params["state"], "st&te=/1 ✓");
    let again = b
        .post(
            "/auth/consent",
            &[("decision", "allow"), ("scope", "user/*.rs")],
        )
        .await;
    assert_eq!(again.status, 400);
}

#[tokio::test]
async fn a_reused_code_is_refused_and_the_tokens_it_bought_are_revoked() {
    let app = spawn_app().await;
    patients(&app).await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    user(&reg, "clin", Role::Clinician, None).await;
    let req = AuthRequest::new(&app, "app", "launch/patient patient/*.rs offline_access");
    let (params, _) = walk(&app, &req, "clin", Some("alice"), &[]).await;
    let first = exchange(&app, "app", &params["code"], &req.verifier).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let token = first.body["access_token"].as_str().unwrap();
    assert_eq!(fhir_status(&app, token, "/fhir/Patient/alice").await, 200);
    let second = exchange(&app, "app", &params["code"], &req.verifier).await;
    assert_eq!(second.status, 400);
    assert_eq!(second.body["error"], "invalid_grant");
    assert_eq!(fhir_status(&app, token, "/fhir/Patient/alice").await, 401);
    let r = refresh(
        &app,
        "app",
        first.body["refresh_token"].as_str().unwrap(),
        None,
    )
    .await;
    assert_eq!(r.body["error"], "invalid_grant");
    // A made-up code is refused too.
    let r = exchange(&app, "app", "not-a-code", &req.verifier).await;
    assert_eq!(r.body["error"], "invalid_grant");
}

#[tokio::test]
async fn refresh_tokens_rotate_and_may_only_narrow_the_scopes() {
    let app = spawn_app().await;
    patients(&app).await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    public_client(&reg, "other").await;
    user(&reg, "clin", Role::Clinician, None).await;
    let body = launch_and_exchange(
        &app,
        "launch/patient patient/*.rs offline_access",
        "clin",
        Some("alice"),
    )
    .await;
    let r1 = body["refresh_token"].as_str().unwrap().to_owned();

    // Bound to its client.
    let stolen = refresh(&app, "other", &r1, None).await;
    assert_eq!(stolen.body["error"], "invalid_grant");

    let narrowed = refresh(&app, "app", &r1, Some("patient/Patient.rs")).await;
    assert_eq!(narrowed.status, 200, "{}", narrowed.text);
    assert_eq!(
        narrowed.header("cache-control").as_deref(),
        Some("no-store")
    );
    assert_eq!(narrowed.body["scope"], "patient/Patient.rs");
    assert_eq!(narrowed.body["patient"], "alice");
    let r2 = narrowed.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    let token = narrowed.body["access_token"].as_str().unwrap();
    assert_eq!(fhir_status(&app, token, "/fhir/Patient/alice").await, 200);
    assert_eq!(
        fhir_status(&app, token, "/fhir/Encounter/enc-alice").await,
        403
    );

    let escalated = refresh(&app, "app", &r2, Some("user/*.rs")).await;
    assert_eq!(escalated.status, 400);
    assert_eq!(escalated.body["error"], "invalid_scope");
    // A refused narrowing does not spend the token, and the new one keeps the original grant's scopes.
    let r = refresh(&app, "app", &r2, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body["scope"],
        "launch/patient patient/*.rs offline_access"
    );
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_the_whole_family() {
    let app = spawn_app().await;
    patients(&app).await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    user(&reg, "clin", Role::Clinician, None).await;
    let body = launch_and_exchange(
        &app,
        "launch/patient patient/*.rs online_access",
        "clin",
        Some("alice"),
    )
    .await;
    let first_access = body["access_token"].as_str().unwrap().to_owned();
    let r1 = body["refresh_token"].as_str().unwrap().to_owned();
    let rotated = refresh(&app, "app", &r1, None).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let r2 = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    let second_access = rotated.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        fhir_status(&app, &second_access, "/fhir/Patient/alice").await,
        200
    );

    let replay = refresh(&app, "app", &r1, None).await;
    assert_eq!(replay.status, 400);
    assert_eq!(replay.body["error"], "invalid_grant");
    assert_eq!(
        refresh(&app, "app", &r2, None).await.body["error"],
        "invalid_grant"
    );
    assert_eq!(
        fhir_status(&app, &first_access, "/fhir/Patient/alice").await,
        401
    );
    assert_eq!(
        fhir_status(&app, &second_access, "/fhir/Patient/alice").await,
        401
    );
}

#[tokio::test]
async fn an_id_token_names_the_fhir_user_and_echoes_the_nonce() {
    let app = spawn_app().await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    user(&reg, "clin", Role::Clinician, Some("Practitioner/clin")).await;
    let req =
        AuthRequest::new(&app, "app", "openid fhirUser user/*.rs").set("nonce", "n-0S6_WzA2Mj");
    let (params, _) = walk(&app, &req, "clin", None, &[]).await;
    let r = exchange(&app, "app", &params["code"], &req.verifier).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id_token = r.body["id_token"].as_str().unwrap();
    let jwks = into_resp(
        app.anonymous
            .get(app.url("/auth/jwks"))
            .send()
            .await
            .unwrap(),
    )
    .await
    .body;
    let claims = kap_gateway::auth::keys::verify_with_jwks(id_token, &jwks).unwrap();
    assert_eq!(claims["iss"], app.base.as_str());
    assert_eq!(claims["aud"], "app");
    assert_eq!(claims["sub"], "clin");
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(
        claims["fhirUser"],
        format!("{}/Practitioner/clin", app.base)
    );
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
    // The id_token is not an access token.
    assert_eq!(fhir_status(&app, id_token, "/fhir/Patient").await, 401);
}

#[tokio::test]
async fn the_psychotherapy_scope_is_dropped_for_a_clinician_and_kept_for_a_therapist() {
    let app = spawn_app().await;
    patients(&app).await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    user(&reg, "clin", Role::Clinician, None).await;
    user(&reg, "ther", Role::Therapist, None).await;
    let scope = "launch/patient patient/*.rs kap/psychotherapy-notes.read";
    let req = AuthRequest::new(&app, "app", scope);
    let (params, consent) = walk(&app, &req, "clin", Some("alice"), &[]).await;
    assert!(!input_values(&consent, "scope").contains(&"kap/psychotherapy-notes.read".to_owned()));
    let r = exchange(&app, "app", &params["code"], &req.verifier).await;
    assert_eq!(r.body["scope"], "launch/patient patient/*.rs");
    let body = launch_and_exchange(&app, scope, "ther", Some("alice")).await;
    assert_eq!(body["scope"], scope);
}

// ---- backend services ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn backend_services_authenticate_with_es384_and_rs384_assertions() {
    let app = spawn_app().await;
    patients(&app).await;
    let reg = registry(&app).await;
    let es = es384_key("es-1");
    let rs = rs384_key("rs-1");
    backend_client(&reg, "svc-es", Some(jwks_of(&[&es])), None).await;
    backend_client(&reg, "svc-rs", Some(jwks_of(&[&rs])), None).await;
    for (client, key) in [("svc-es", &es), ("svc-rs", &rs)] {
        let assertion = sign(key, &key.kid, &assertion_claims(&app, client));
        let r = backend_token(&app, &assertion, "system/Patient.rs system/Observation.rs").await;
        assert_eq!(r.status, 200, "{client}: {}", r.text);
        assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
        assert_eq!(r.body["scope"], "system/Patient.rs system/Observation.rs");
        assert!(r.body["expires_in"].as_i64().unwrap() <= 300);
        assert!(r.body.get("refresh_token").is_none() && r.body.get("id_token").is_none());
        let token = r.body["access_token"].as_str().unwrap();
        assert_eq!(fhir_status(&app, token, "/fhir/Patient/bob").await, 200);
        // Replaying the same assertion (same jti) is refused.
        let replay = backend_token(&app, &assertion, "system/Patient.rs").await;
        assert_eq!(replay.status, 400, "{}", replay.text);
        assert_eq!(replay.body["error"], "invalid_client");
        assert!(
            replay.body["error_description"]
                .as_str()
                .unwrap()
                .contains("replay")
        );
    }
}

#[tokio::test]
async fn assertions_for_another_audience_too_long_lived_foreign_or_unknown_keyed_are_refused() {
    let app = spawn_app().await;
    let reg = registry(&app).await;
    let key = es384_key("k1");
    backend_client(&reg, "svc", Some(jwks_of(&[&key])), None).await;
    let good = assertion_claims(&app, "svc");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!(app.base);
    let mut long = good.clone();
    long["exp"] = json!(now() + 600);
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 120);
    let mut foreign = good.clone();
    foreign["sub"] = json!("someone-else");
    let mut no_jti = good.clone();
    no_jti.as_object_mut().unwrap().remove("jti");
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let other = es384_key("k1");
    for (why, assertion, expected) in [
        ("wrong aud", sign(&key, "k1", &wrong_aud), "aud must be"),
        (
            "exp over five minutes",
            sign(&key, "k1", &long),
            "within five minutes",
        ),
        ("expired", sign(&key, "k1", &expired), "has expired"),
        (
            "iss differs from sub",
            sign(&key, "k1", &foreign),
            "iss and sub",
        ),
        ("no jti", sign(&key, "k1", &no_jti), "jti"),
        ("no exp", sign(&key, "k1", &no_exp), "no exp"),
        ("unknown kid", sign(&key, "k2", &good), "unknown key"),
        (
            "signed by another key",
            sign(&other, "k1", &good),
            "signature",
        ),
        ("not a JWT", "abc.def".to_owned(), "malformed"),
    ] {
        let r = backend_token(&app, &assertion, "system/*.rs").await;
        assert_eq!(r.status, 400, "{why}: {}", r.text);
        assert_eq!(r.body["error"], "invalid_client", "{why}");
        let description = r.body["error_description"].as_str().unwrap();
        assert!(description.contains(expected), "{why}: {description}");
    }
    // Still fine with a fresh, correct assertion.
    let ok = backend_token(
        &app,
        &sign(&key, "k1", &assertion_claims(&app, "svc")),
        "system/*.rs",
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
}

#[tokio::test]
async fn backend_services_get_system_scopes_only() {
    let app = spawn_app().await;
    let reg = registry(&app).await;
    let key = es384_key("k1");
    backend_client(&reg, "svc", Some(jwks_of(&[&key])), None).await;
    for scope in [
        "patient/*.rs",
        "user/Patient.rs",
        "system/*.rs openid",
        "system/*.rs offline_access",
    ] {
        let r = backend_token(
            &app,
            &sign(&key, "k1", &assertion_claims(&app, "svc")),
            scope,
        )
        .await;
        assert_eq!(r.status, 400, "{scope}: {}", r.text);
        assert_eq!(r.body["error"], "invalid_scope", "{scope}");
    }
    // Narrowed to what the client is allowed: the write part of system/*.cruds goes.
    let r = backend_token(
        &app,
        &sign(&key, "k1", &assertion_claims(&app, "svc")),
        "system/Patient.cruds system/Patient.rs",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["scope"], "system/Patient.rs");
    // A public client cannot use client_credentials at all.
    public_client(&reg, "app").await;
    let r = post_form(
        &app,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
            ("client_id", "app"),
        ],
        None,
    )
    .await;
    assert_eq!(r.body["error"], "unauthorized_client");
    let r = post_form(
        &app,
        "/auth/token",
        &[("grant_type", "password"), ("client_id", "app")],
        None,
    )
    .await;
    assert_eq!(r.body["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn a_backend_clients_keys_are_fetched_from_its_jwks_uri_and_cached() {
    let app = spawn_app().await;
    let reg = registry(&app).await;
    let key = es384_key("remote-1");
    let jwks = jwks_of(&[&key]).to_string();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = actix_web::HttpServer::new(move || {
        let jwks = jwks.clone();
        let counter = counter.clone();
        actix_web::App::new().route(
            "/jwks.json",
            actix_web::web::get().to(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = jwks.clone();
                async move {
                    actix_web::HttpResponse::Ok()
                        .insert_header(("cache-control", "public, max-age=120"))
                        .content_type("application/json")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    backend_client(
        &reg,
        "remote",
        None,
        Some(format!("http://127.0.0.1:{port}/jwks.json")),
    )
    .await;
    for _ in 0..2 {
        let r = backend_token(
            &app,
            &sign(&key, "remote-1", &assertion_claims(&app, "remote")),
            "system/*.rs",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn client_secret_basic_authenticates_a_symmetric_client() {
    let app = spawn_app().await;
    let reg = registry(&app).await;
    symmetric_client(&reg, "svc", "a-secret-of-some-length", "system/*.rs").await;
    let fields = [
        ("grant_type", "client_credentials"),
        ("scope", "system/*.rs"),
    ];
    let ok = post_form(
        &app,
        "/auth/token",
        &fields,
        Some(&basic("svc", "a-secret-of-some-length")),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["scope"], "system/*.rs");
    for auth in [
        basic("svc", "a-secret-of-other-length"),
        basic("ghost", "a-secret-of-some-length"),
        "Basic !!!".to_owned(),
    ] {
        let r = post_form(&app, "/auth/token", &fields, Some(&auth)).await;
        assert_eq!(r.status, 401, "{}", r.text);
        assert_eq!(r.body["error"], "invalid_client");
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    }
    // Without credentials a confidential client is not authenticated.
    let r = post_form(
        &app,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
            ("client_id", "svc"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"], "invalid_client");
}

// ---- introspection and revocation ---------------------------------------------------------------------------------

#[tokio::test]
async fn introspection_reports_live_tokens_and_calls_everything_else_inactive() {
    let app = spawn_app().await;
    let reg = registry(&app).await;
    symmetric_client(&reg, "svc", "a-secret-of-some-length", "system/*.rs").await;
    symmetric_client(&reg, "rs", "another-secret-value-1", "system/*.rs").await;
    let creds = basic("svc", "a-secret-of-some-length");
    let issued = post_form(
        &app,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
        ],
        Some(&creds),
    )
    .await;
    let token = issued.body["access_token"].as_str().unwrap().to_owned();

    let r = post_form(&app, "/auth/introspect", &[("token", &token)], Some(&creds)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["active"], true);
    assert_eq!(r.body["scope"], "system/*.rs");
    assert_eq!(r.body["client_id"], "svc");
    assert_eq!(r.body["sub"], "svc");
    assert_eq!(r.body["iss"], app.base.as_str());
    assert_eq!(r.body["token_type"], "Bearer");
    assert!(r.body["exp"].as_i64().unwrap() > r.body["iat"].as_i64().unwrap());

    // Another client learns nothing about it; an administrator's token does.
    let other = post_form(
        &app,
        "/auth/introspect",
        &[("token", &token)],
        Some(&basic("rs", "another-secret-value-1")),
    )
    .await;
    assert_eq!(other.body, json!({"active": false}));
    let (admin, _) = app
        .auth
        .issue_access_token(&kap_gateway::auth::tokens::TokenGrant {
            client_id: "console".into(),
            subject: "adm".into(),
            scope: "user/*.rs".into(),
            role: Some("admin".into()),
            lifetime_secs: 300,
            ..Default::default()
        })
        .await
        .unwrap();
    let by_admin = post_form(
        &app,
        "/auth/introspect",
        &[("token", &token)],
        Some(&format!("Bearer {admin}")),
    )
    .await;
    assert_eq!(by_admin.body["active"], true, "{}", by_admin.text);
    let not_admin = app.client_for("system/*.rs", None).await;
    let r = into_resp(
        not_admin
            .post(app.url("/auth/introspect"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode(&[("token", &token)]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 403);

    for garbage in ["garbage", "a.b.c", &format!("{token}x")] {
        let r = post_form(
            &app,
            "/auth/introspect",
            &[("token", garbage)],
            Some(&creds),
        )
        .await;
        assert_eq!(r.body, json!({"active": false}), "{garbage}");
    }
    let revoked = post_form(&app, "/auth/revoke", &[("token", &token)], Some(&creds)).await;
    assert_eq!(revoked.status, 200);
    let r = post_form(&app, "/auth/introspect", &[("token", &token)], Some(&creds)).await;
    assert_eq!(r.body, json!({"active": false}));
    // Unauthenticated callers are refused.
    let r = post_form(&app, "/auth/introspect", &[("token", &token)], None).await;
    assert_eq!(r.body["error"], "invalid_client");
}

#[tokio::test]
async fn revoking_an_access_token_or_a_refresh_token_stops_it_at_once() {
    let app = spawn_app().await;
    patients(&app).await;
    let reg = registry(&app).await;
    public_client(&reg, "app").await;
    public_client(&reg, "other").await;
    user(&reg, "clin", Role::Clinician, None).await;
    let body = launch_and_exchange(
        &app,
        "launch/patient patient/*.rs offline_access",
        "clin",
        Some("alice"),
    )
    .await;
    let access = body["access_token"].as_str().unwrap();
    let refresh_token = body["refresh_token"].as_str().unwrap();

    // Another client's request is answered 200 and changes nothing.
    let r = post_form(
        &app,
        "/auth/revoke",
        &[("token", access), ("client_id", "other")],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(fhir_status(&app, access, "/fhir/Patient/alice").await, 200);

    let r = post_form(
        &app,
        "/auth/revoke",
        &[("token", access), ("client_id", "app")],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(fhir_status(&app, access, "/fhir/Patient/alice").await, 401);

    let refreshed = refresh(&app, "app", refresh_token, None).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    let newer_access = refreshed.body["access_token"].as_str().unwrap();
    let newer_refresh = refreshed.body["refresh_token"].as_str().unwrap();
    let r = post_form(
        &app,
        "/auth/revoke",
        &[
            ("token", newer_refresh),
            ("token_type_hint", "refresh_token"),
            ("client_id", "app"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        refresh(&app, "app", newer_refresh, None).await.body["error"],
        "invalid_grant"
    );
    assert_eq!(
        fhir_status(&app, newer_access, "/fhir/Patient/alice").await,
        401
    );
    // Unknown tokens are fine too.
    let r = post_form(
        &app,
        "/auth/revoke",
        &[("token", "nothing-like-a-token"), ("client_id", "app")],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
}
