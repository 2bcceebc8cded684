//! Every error is an OperationOutcome served as application/fhir+json, with the right status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Resp, into_resp, spawn_app, spawn_app_with};

fn assert_outcome(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.body["resourceType"], "OperationOutcome", "{}", r.text);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/fhir+json")
    );
    assert!(
        !r.body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );
}

#[tokio::test]
async fn unknown_routes_and_types_are_404_outcomes() {
    let app = spawn_app().await;
    assert_outcome(&app.get("/nothing/here").await, 404);
    let r = app.get("/fhir/Spaceship/1").await;
    assert_outcome(&r, 404);
    assert!(r.diagnostics().contains("Spaceship"));
    // A real R4 type this server does not hold.
    assert_outcome(&app.get("/fhir/Claim?status=active").await, 404);
}

#[tokio::test]
async fn an_unsupported_method_is_405() {
    let app = spawn_app().await;
    assert_outcome(
        &app.send(Method::DELETE, "/fhir/metadata", None, &[]).await,
        405,
    );
    assert_outcome(
        &app.send(Method::PATCH, "/fhir/Patient", None, &[]).await,
        405,
    );
}

#[tokio::test]
async fn xml_is_refused_with_406_or_415() {
    let app = spawn_app().await;
    assert_outcome(
        &app.send(
            Method::GET,
            "/fhir/metadata",
            None,
            &[("accept", "application/fhir+xml")],
        )
        .await,
        406,
    );
    assert_outcome(&app.get("/fhir/Patient?_format=xml").await, 406);
    let r = app
        .client
        .post(app.url("/fhir/Patient"))
        .header("content-type", "application/fhir+xml")
        .body("<Patient xmlns=\"http://hl7.org/fhir\"/>")
        .send()
        .await
        .unwrap();
    assert_outcome(&into_resp(r).await, 415);
    // JSON through _format or Accept is fine.
    assert_eq!(app.get("/fhir/metadata?_format=json").await.status, 200);
    assert_eq!(
        app.send(
            Method::GET,
            "/fhir/metadata",
            None,
            &[("accept", "application/json")]
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_store_nothing() {
    let app = spawn_app_with(|c| c.max_body_bytes = 2048).await;
    let big = json!({"resourceType": "Patient", "name": [{"text": "x".repeat(4096)}]});
    assert_outcome(&app.post("/fhir/Patient", &big).await, 413);
    assert_eq!(app.get("/fhir/Patient").await.body["total"], 0);
}

#[tokio::test]
async fn malformed_or_absurdly_nested_json_is_400() {
    let app = spawn_app().await;
    let r = app
        .client
        .post(app.url("/fhir/Patient"))
        .header("content-type", "application/fhir+json")
        .body("{\"resourceType\": \"Patient\",")
        .send()
        .await
        .unwrap();
    assert_outcome(&into_resp(r).await, 400);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = app
        .client
        .post(app.url("/fhir/Patient"))
        .header("content-type", "application/fhir+json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_outcome(&into_resp(r).await, 400);
    // The server is still healthy afterwards.
    assert_eq!(app.get("/health/live").await.status, 200);
}

#[tokio::test]
async fn a_stale_version_is_412_and_a_gone_resource_410() {
    let app = spawn_app().await;
    let id = app.create(&json!({"resourceType": "Patient"})).await;
    let r = app
        .send(
            Method::DELETE,
            &format!("/fhir/Patient/{id}"),
            None,
            &[("if-match", "W/\"7\"")],
        )
        .await;
    assert_outcome(&r, 412);
    app.delete(&format!("/fhir/Patient/{id}")).await;
    assert_outcome(&app.get(&format!("/fhir/Patient/{id}")).await, 410);
}

#[tokio::test]
async fn a_patch_that_cannot_apply_is_422() {
    let app = spawn_app().await;
    let id = app.create(&json!({"resourceType": "Patient"})).await;
    let r = app
        .client
        .patch(app.url(&format!("/fhir/Patient/{id}")))
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "remove", "path": "/name/5"}]).to_string())
        .send()
        .await
        .unwrap();
    assert_outcome(&into_resp(r).await, 422);
}

#[tokio::test]
async fn the_capability_statement_lists_what_is_implemented() {
    let app = spawn_app().await;
    let r = app.get("/fhir/metadata").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["resourceType"], "CapabilityStatement");
    assert_eq!(r.body["fhirVersion"], "4.0.1");
    let resources = r.body["rest"][0]["resource"].as_array().unwrap();
    let types: Vec<&str> = resources
        .iter()
        .map(|x| x["type"].as_str().unwrap())
        .collect();
    for t in kap_gateway::fhir::registry::SUPPORTED_TYPES {
        assert!(types.contains(t), "{t} missing");
    }
    let obs = resources
        .iter()
        .find(|x| x["type"] == "Observation")
        .unwrap();
    let params: Vec<&str> = obs["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "_id",
        "_lastUpdated",
        "code",
        "subject",
        "patient",
        "date",
        "value-quantity",
        "category",
    ] {
        assert!(
            params.contains(&p),
            "Observation search parameter {p} missing"
        );
    }
    let interactions: Vec<&str> = r.body["rest"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert!(interactions.contains(&"transaction") && interactions.contains(&"batch"));
}

#[tokio::test]
async fn readiness_reports_the_database_and_migrations() {
    let app = spawn_app().await;
    let r = app.get("/health/ready").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["checks"]["migrations"], "pass");
}

#[tokio::test]
async fn browser_apps_on_other_origins_pass_the_cors_preflight() {
    let app = spawn_app().await;
    let r = app
        .anonymous
        .request(reqwest::Method::OPTIONS, app.url("/fhir/Patient"))
        .header("origin", "https://app.example.org")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_some());
    let r = app
        .client
        .get(app.url("/fhir/Patient"))
        .header("origin", "https://app.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let exposed = r
        .headers()
        .get("access-control-expose-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        exposed.contains("etag") && exposed.contains("location"),
        "{exposed}"
    );
}
