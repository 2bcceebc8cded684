//! Scopes, patient compartments and psychotherapy labels enforced on every FHIR interaction, and bearer-token
//! checks (signature, issuer, audience, lifetime, algorithm, revocation).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::helpers::{TestApp, client_with_token, into_resp, spawn_app};

const PSY_LABELS: &str = r#"[{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"},
    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]"#;

/// Two patients, each with a PHQ-9 score, an encounter, and one psychotherapy note for the first.
async fn two_patients(app: &TestApp) -> (String, String, String) {
    for p in ["alice", "bob"] {
        app.put(
            &format!("/fhir/Patient/{p}"),
            &json!({"resourceType": "Patient", "id": p}),
        )
        .await;
        app.put(
            &format!("/fhir/Encounter/enc-{p}"),
            &json!({"resourceType": "Encounter", "id": format!("enc-{p}"), "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": format!("Patient/{p}")}}),
        )
        .await;
        app.put(
            &format!("/fhir/Observation/phq-{p}"),
            &json!({"resourceType": "Observation", "id": format!("phq-{p}"), "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
                "subject": {"reference": format!("Patient/{p}")},
                "encounter": {"reference": format!("Encounter/enc-{p}")},
                "valueInteger": 12}),
        )
        .await;
    }
    let mut note = json!({"resourceType": "Observation", "id": "note-alice", "status": "final",
        "code": {"coding": [{"system": "http://kap-gateway.org/fhir/CodeSystem/kap", "code": "integration-note"}]},
        "subject": {"reference": "Patient/alice"},
        "valueString": "Private psychotherapy content"});
    note["meta"] = json!({"security": serde_json::from_str::<Value>(PSY_LABELS).unwrap()});
    let r = app.put("/fhir/Observation/note-alice", &note).await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
    ("alice".into(), "bob".into(), "note-alice".into())
}

fn ids(r: &crate::helpers::Resp) -> Vec<String> {
    let mut v = r.match_ids();
    v.sort();
    v
}

#[tokio::test]
async fn a_request_without_a_token_is_401_with_a_bearer_challenge() {
    let app = spawn_app().await;
    let r = into_resp(
        app.anonymous
            .get(app.url("/fhir/Patient"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    // The CapabilityStatement and health probes stay public.
    let meta = into_resp(
        app.anonymous
            .get(app.url("/fhir/metadata"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(meta.status, 200);
}

#[tokio::test]
async fn a_patient_token_sees_only_its_own_compartment() {
    let app = spawn_app().await;
    two_patients(&app).await;
    let alice = app.client_for("patient/*.rs", Some("alice")).await;
    assert_eq!(
        app.get_with(&alice, "/fhir/Observation/phq-alice")
            .await
            .status,
        200
    );
    assert_eq!(
        app.get_with(&alice, "/fhir/Observation/phq-bob")
            .await
            .status,
        404
    );
    assert_eq!(app.get_with(&alice, "/fhir/Patient/bob").await.status, 404);
    assert_eq!(
        app.get_with(&alice, "/fhir/Patient/alice").await.status,
        200
    );
    let all = app.get_with(&alice, "/fhir/Observation").await;
    assert_eq!(ids(&all), vec!["phq-alice"]);
    assert_eq!(all.body["total"], 1);
    let bob_by_subject = app
        .get_with(&alice, "/fhir/Observation?subject=Patient/bob")
        .await;
    assert_eq!(bob_by_subject.body["total"], 0);
    assert_eq!(
        ids(&app.get_with(&alice, "/fhir/Patient").await),
        vec!["alice"]
    );
    // Versions and history of another patient's resources are hidden too.
    assert_eq!(
        app.get_with(&alice, "/fhir/Observation/phq-bob/_history/1")
            .await
            .status,
        404
    );
    assert_eq!(
        app.get_with(&alice, "/fhir/Observation/phq-bob/_history")
            .await
            .status,
        404
    );
    let history = app.get_with(&alice, "/fhir/Observation/_history").await;
    let seen: Vec<&str> = history.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, vec!["phq-alice"]);
}

#[tokio::test]
async fn includes_never_pull_in_what_the_token_may_not_see() {
    let app = spawn_app().await;
    two_patients(&app).await;
    let alice = app
        .client_for("patient/Observation.rs patient/Encounter.rs", Some("alice"))
        .await;
    // Encounter is readable, Patient is not: the include of subject is dropped, that of encounter kept.
    let r = app
        .get_with(
            &alice,
            "/fhir/Observation?_include=Observation:subject&_include=Observation:encounter",
        )
        .await;
    let included: Vec<String> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(included, vec!["Encounter/enc-alice"]);
    // A revinclude from another patient's data stays out.
    let user = app.client_for("patient/*.rs", Some("alice")).await;
    let r = app
        .get_with(&user, "/fhir/Encounter?_revinclude=Observation:encounter")
        .await;
    let all: Vec<&str> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert!(
        all.contains(&"phq-alice") && !all.contains(&"phq-bob") && !all.contains(&"enc-bob"),
        "{all:?}"
    );
}

#[tokio::test]
async fn psychotherapy_notes_need_the_psychotherapy_scope() {
    let app = spawn_app().await;
    two_patients(&app).await;
    let clinician = app.client_for("user/*.rs", None).await;
    assert_eq!(
        app.get_with(&clinician, "/fhir/Observation/note-alice")
            .await
            .status,
        404
    );
    let found = app
        .get_with(&clinician, "/fhir/Observation?subject=Patient/alice")
        .await;
    assert_eq!(ids(&found), vec!["phq-alice"]);
    assert_eq!(
        app.get_with(&clinician, "/fhir/Observation/note-alice/_history/1")
            .await
            .status,
        404
    );
    let therapist = app
        .client_for("user/*.rs kap/psychotherapy-notes.read", None)
        .await;
    assert_eq!(
        app.get_with(&therapist, "/fhir/Observation/note-alice")
            .await
            .status,
        200
    );
    let found = app
        .get_with(&therapist, "/fhir/Observation?subject=Patient/alice")
        .await;
    assert_eq!(ids(&found), vec!["note-alice", "phq-alice"]);
}

#[tokio::test]
async fn scopes_decide_which_interactions_are_allowed() {
    let app = spawn_app().await;
    two_patients(&app).await;
    let reader = app.client_for("user/Observation.rs", None).await;
    let r = app.get_with(&reader, "/fhir/Patient/alice").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["issue"][0]["code"], "forbidden");
    let create = reader
        .post(app.url("/fhir/Observation"))
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(create.status().as_u16(), 403);
    // v1 write scope allows create but not read.
    let writer = app.client_for("user/Observation.write", None).await;
    let created = writer
        .post(app.url("/fhir/Observation"))
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    assert_eq!(
        app.get_with(&writer, "/fhir/Observation/phq-alice")
            .await
            .status,
        403
    );
    // AuditEvent needs an explicit system scope.
    let wide = app.client_for("system/*.rs", None).await;
    assert_eq!(app.get_with(&wide, "/fhir/AuditEvent").await.status, 403);
    let auditor = app.client_for("system/AuditEvent.rs", None).await;
    assert_eq!(app.get_with(&auditor, "/fhir/AuditEvent").await.status, 200);
}

#[tokio::test]
async fn a_patient_token_cannot_write_into_another_patients_record() {
    let app = spawn_app().await;
    two_patients(&app).await;
    let alice = app
        .client_for("patient/Observation.cruds", Some("alice"))
        .await;
    let obs = |subject: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "mood"},
            "subject": {"reference": format!("Patient/{subject}")}})
        .to_string()
    };
    let post = |body: String| {
        alice
            .post(app.url("/fhir/Observation"))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
    };
    assert_eq!(post(obs("alice")).await.unwrap().status().as_u16(), 201);
    assert_eq!(post(obs("bob")).await.unwrap().status().as_u16(), 403);
    // Moving one's own resource to another patient is refused, and so is patching another's.
    let moved = json!({"resourceType": "Observation", "id": "phq-alice", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient/bob"}});
    let r = alice
        .put(app.url("/fhir/Observation/phq-alice"))
        .header("content-type", "application/fhir+json")
        .body(moved.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = alice
        .delete(app.url("/fhir/Observation/phq-bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(app.get("/fhir/Observation/phq-bob").await.status, 200);
    // Inside a transaction the same rules hold, and the whole Bundle fails.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": serde_json::from_str::<Value>(&obs("alice")).unwrap(), "request": {"method": "POST", "url": "Observation"}},
        {"resource": serde_json::from_str::<Value>(&obs("bob")).unwrap(), "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = alice
        .post(app.url("/fhir"))
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(
        app.get("/fhir/Observation?subject=Patient/bob").await.body["total"],
        1
    );
}

#[tokio::test]
async fn granular_scopes_limit_searches_and_reads_to_their_category() {
    let app = spawn_app().await;
    two_patients(&app).await;
    app.put(
        "/fhir/Observation/hr-alice",
        &json!({"resourceType": "Observation", "id": "hr-alice", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/alice"}, "valueQuantity": {"value": 72, "unit": "/min"}}),
    )
    .await;
    let vitals = app
        .client_for(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
            Some("alice"),
        )
        .await;
    assert_eq!(
        ids(&app.get_with(&vitals, "/fhir/Observation").await),
        vec!["hr-alice"]
    );
    assert_eq!(
        app.get_with(&vitals, "/fhir/Observation/phq-alice")
            .await
            .status,
        404
    );
    assert_eq!(
        app.get_with(&vitals, "/fhir/Observation/hr-alice")
            .await
            .status,
        200
    );
}

fn forge(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        signature
    )
}

async fn status_with(app: &TestApp, token: &str) -> (u16, String) {
    let r = into_resp(
        client_with_token(token)
            .get(app.url("/fhir/Patient"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    (r.status, r.header("www-authenticate").unwrap_or_default())
}

#[tokio::test]
async fn tampered_foreign_expired_and_unsigned_tokens_are_refused() {
    let app = spawn_app().await;
    let good = crate::helpers::mint(&app.auth, "system/*.rs", None).await;
    assert_eq!(status_with(&app, &good).await.0, 200);
    let parts: Vec<&str> = good.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();

    // A changed claim breaks the signature.
    let mut escalated = claims.clone();
    escalated["scope"] = json!("system/*.cruds kap/psychotherapy-notes.read");
    let (status, challenge) = status_with(&app, &forge(&header, &escalated, parts[2])).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("invalid_token"));
    // alg none, and HMAC keyed with the public key (key confusion), are refused outright.
    let mut none = header.clone();
    none["alg"] = json!("none");
    assert_eq!(status_with(&app, &forge(&none, &claims, "")).await.0, 401);
    let mut hs = header.clone();
    hs["alg"] = json!("HS384");
    assert_eq!(
        status_with(&app, &forge(&hs, &claims, parts[2])).await.0,
        401
    );
    // Garbage and unknown keys.
    assert_eq!(status_with(&app, "not.a.token").await.0, 401);
    let mut unknown = header.clone();
    unknown["kid"] = json!("no-such-key");
    assert_eq!(
        status_with(&app, &forge(&unknown, &claims, parts[2]))
            .await
            .0,
        401
    );

    // Properly signed but wrong audience, wrong issuer, expired or not yet valid.
    let now = chrono::Utc::now().timestamp();
    for (field, value) in [
        ("aud", json!("https://elsewhere.example/fhir")),
        ("iss", json!("https://elsewhere.example")),
        ("exp", json!(now - 3600)),
        ("nbf", json!(now + 3600)),
    ] {
        let mut c = claims.clone();
        c[field] = value;
        let token = app.auth.keys.sign(&c).unwrap();
        assert_eq!(
            status_with(&app, &token).await.0,
            401,
            "{field} should be refused"
        );
    }
}

#[tokio::test]
async fn a_revoked_token_stops_working_at_once() {
    let app = spawn_app().await;
    let token = crate::helpers::mint(&app.auth, "system/*.rs", None).await;
    assert_eq!(status_with(&app, &token).await.0, 200);
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    app.auth
        .revoke_jti(claims["jti"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(status_with(&app, &token).await.0, 401);
}

#[tokio::test]
async fn a_token_revoked_through_another_replica_stops_working_within_the_refresh_interval() {
    let app = spawn_app().await;
    let token = crate::helpers::mint(&app.auth, "system/*.rs", None).await;
    // Seen twice: the second check uses this replica's copy of the revocations.
    assert_eq!(status_with(&app, &token).await.0, 200);
    assert_eq!(status_with(&app, &token).await.0, 200);
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    // Another replica: its own authenticator on the same database.
    let db = crate::helpers::app_db(&app).await;
    let keys = kap_gateway::auth::keys::KeyRing::load_or_create(&db)
        .await
        .unwrap();
    let other = kap_gateway::auth::tokens::Authenticator::new(
        keys,
        db,
        app.auth.issuer.clone(),
        app.auth.audience.clone(),
        None,
    );
    other
        .revoke_jti(claims["jti"].as_str().unwrap())
        .await
        .unwrap();
    let refresh = kap_gateway::auth::tokens::REVOCATION_REFRESH;
    tokio::time::sleep(refresh + refresh / 2).await;
    assert_eq!(status_with(&app, &token).await.0, 401);
}

#[tokio::test]
async fn after_a_key_rotation_old_tokens_still_verify_and_new_ones_use_the_new_key() {
    let app = spawn_app().await;
    let old = crate::helpers::mint(&app.auth, "system/*.rs", None).await;
    let old_kid = app.auth.keys.current_kid().unwrap();
    let store = kap_gateway::startup::connect_store(&kap_gateway::config::Config {
        database_url: app.database_url.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let new_kid = kap_gateway::auth::keys::KeyRing::rotate(&store.db, 3900)
        .await
        .unwrap();
    assert_ne!(old_kid, new_kid);
    app.auth.keys.reload().await.unwrap();
    let new = crate::helpers::mint(&app.auth, "system/*.rs", None).await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(new.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], new_kid.as_str());
    assert_eq!(status_with(&app, &old).await.0, 200);
    assert_eq!(status_with(&app, &new).await.0, 200);
    let jwks = app.auth.keys.jwks();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
}
