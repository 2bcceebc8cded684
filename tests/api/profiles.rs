//! The kap profiles over HTTP: the conformance resources served read-only, validation on write of resources
//! that claim a kap profile, `$validate`, and the CapabilityStatement's account of both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, without_server_fields};

const KAP_SD: &str = "http://kap-gateway.org/fhir/StructureDefinition/";

fn examples() -> Vec<Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

fn example(id: &str) -> Value {
    examples()
        .into_iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("no example {id}"))
}

/// The `issue.expression`s of an OperationOutcome.
fn expressions(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["expression"][0].as_str().map(str::to_owned))
        .collect()
}

fn severities(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["severity"].as_str().unwrap().to_owned())
        .collect()
}

/// A kap-score Observation with two problems: no encounter, and an instrument outside the value set.
fn broken_score() -> Value {
    let mut r = example("kap-example-phq9-baseline");
    r.as_object_mut().unwrap().remove("encounter");
    r["code"]["coding"][0]["code"] = json!("0000-0");
    r
}

async fn put_example(app: &TestApp, r: &Value) {
    let t = r["resourceType"].as_str().unwrap();
    let id = r["id"].as_str().unwrap();
    let resp = app.put(&format!("/fhir/{t}/{id}"), r).await;
    assert!(
        resp.status == 201 || resp.status == 200,
        "{t}/{id}: {} {}",
        resp.status,
        resp.text
    );
}

#[tokio::test]
async fn a_structure_definition_is_found_by_its_exact_url() {
    let app = spawn_app().await;
    let url = format!("{KAP_SD}kap-session");
    let r = app
        .get(&format!("/fhir/StructureDefinition?url={url}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["type"], "searchset");
    assert_eq!(r.body["total"], 1);
    assert_eq!(r.match_ids(), vec!["kap-session"]);
    assert_eq!(r.body["entry"][0]["resource"]["url"], url.as_str());

    let all = app.get("/fhir/StructureDefinition").await;
    assert_eq!(all.body["total"], 23);
    let by_id = app
        .get("/fhir/ValueSet?_id=kap-eligibility,kap-vital-signs&unknown=1")
        .await;
    assert_eq!(by_id.status, 200, "{}", by_id.text);
    assert_eq!(by_id.match_ids().len(), 2);
    let none = app
        .get(&format!("/fhir/StructureDefinition?url={url}x"))
        .await;
    assert_eq!(none.body["total"], 0);
}

#[tokio::test]
async fn a_value_set_is_read_by_id_and_an_unknown_one_is_not_found() {
    let app = spawn_app().await;
    let r = app.get("/fhir/ValueSet/kap-session-kinds").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["resourceType"], "ValueSet");
    assert_eq!(
        r.body["url"],
        "http://kap-gateway.org/fhir/ValueSet/kap-session-kinds"
    );
    let cs = app.get("/fhir/CodeSystem/kap").await;
    assert_eq!(cs.status, 200);
    fn concepts(v: &serde_json::Value) -> u64 {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|c| 1 + concepts(&c["concept"]))
            .sum()
    }
    assert!(cs.body["count"].as_u64().unwrap() > 60);
    assert_eq!(
        cs.body["count"].as_u64().unwrap(),
        concepts(&cs.body["concept"])
    );
    let missing = app.get("/fhir/ValueSet/nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn the_conformance_resources_are_read_only_and_need_a_token() {
    let app = spawn_app().await;
    let cs = app.get("/fhir/CodeSystem/kap").await.body;
    let r = app.put("/fhir/CodeSystem/kap", &cs).await;
    assert_eq!(r.status, 405, "{}", r.text);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    let r = app
        .post("/fhir/ValueSet", &json!({"resourceType": "ValueSet"}))
        .await;
    assert_eq!(r.status, 405);
    let r = app.delete("/fhir/StructureDefinition/kap-goal").await;
    assert_eq!(r.status, 405);
    let anonymous = app
        .anonymous
        .get(app.url("/fhir/StructureDefinition/kap-goal"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
}

#[tokio::test]
async fn every_profile_example_is_written_and_comes_back_unchanged() {
    let app = spawn_app().await;
    // References between the examples are by id; the Patient and Practitioner go first, as a client would.
    let mut all = examples();
    all.sort_by_key(|r| match r["resourceType"].as_str().unwrap() {
        "Practitioner" => 0,
        "Patient" => 1,
        "Condition" | "Goal" => 2,
        "CarePlan" => 3,
        "Encounter" => 4,
        "Provenance" => 6,
        _ => 5,
    });
    for r in &all {
        put_example(&app, r).await;
    }
    for r in &all {
        let t = r["resourceType"].as_str().unwrap();
        let id = r["id"].as_str().unwrap();
        let back = app.get(&format!("/fhir/{t}/{id}")).await;
        assert_eq!(back.status, 200, "{t}/{id}: {}", back.text);
        assert_eq!(
            without_server_fields(back.body.clone()),
            without_server_fields(r.clone()),
            "{t}/{id} changed in storage"
        );
    }
    assert_eq!(all.len(), 26);
}

#[tokio::test]
async fn a_kap_observation_that_breaks_its_profile_is_refused_with_every_issue() {
    let app = spawn_app().await;
    let mut bad = broken_score();
    bad["id"] = json!("bad-score");
    let r = app.put("/fhir/Observation/bad-score", &bad).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    let found = expressions(&r.body);
    assert!(
        found.contains(&"Observation.encounter".to_owned()),
        "{found:?}"
    );
    assert!(
        found.contains(&"Observation.code.coding[0]".to_owned()),
        "{found:?}"
    );
    assert_eq!(found.len(), 2, "{}", r.diagnostics());
    assert!(r.diagnostics().contains("kap-score"), "{}", r.diagnostics());
    assert_eq!(app.get("/fhir/Observation/bad-score").await.status, 404);

    // POST and transactions refuse it the same way.
    let posted = app.post("/fhir/Observation", &broken_score()).await;
    assert_eq!(posted.status, 422, "{}", posted.text);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": broken_score(), "request": {"method": "POST", "url": "Observation"}}
    ]});
    let tx = app.post("/fhir", &bundle).await;
    assert_eq!(tx.status, 422, "{}", tx.text);
}

#[tokio::test]
async fn a_base_r4_error_stays_a_400_even_in_a_kap_resource() {
    let app = spawn_app().await;
    let mut r = broken_score();
    r["id"] = json!("bad-date");
    r["effectiveDateTime"] = json!("yesterday");
    let resp = app.put("/fhir/Observation/bad-date", &r).await;
    assert_eq!(resp.status, 400, "{}", resp.text);
}

#[tokio::test]
async fn the_same_observation_without_a_profile_claim_is_accepted() {
    let app = spawn_app().await;
    let mut r = broken_score();
    r.as_object_mut().unwrap().remove("meta");
    r["id"] = json!("plain-score");
    let resp = app.put("/fhir/Observation/plain-score", &r).await;
    assert_eq!(resp.status, 201, "{}", resp.text);

    // A claim of another publisher's profile is not checked here either.
    r["meta"] = json!({"profile": ["http://example.org/fhir/StructureDefinition/other"]});
    let resp = app.put("/fhir/Observation/plain-score", &r).await;
    assert_eq!(resp.status, 200, "{}", resp.text);
}

#[tokio::test]
async fn an_unknown_kap_profile_claim_is_refused() {
    let app = spawn_app().await;
    let mut r = example("kap-example-patient");
    r["meta"]["profile"] = json!([format!("{KAP_SD}kap-unheard-of")]);
    let resp = app.put("/fhir/Patient/kap-example-patient", &r).await;
    assert_eq!(resp.status, 422, "{}", resp.text);
    assert_eq!(expressions(&resp.body), vec!["Patient.meta.profile[0]"]);
}

#[tokio::test]
async fn validate_at_type_level_reports_no_issues_for_a_good_resource_and_all_for_a_bad_one() {
    let app = spawn_app().await;
    let good = app
        .post(
            "/fhir/Observation/$validate",
            &example("kap-example-phq9-baseline"),
        )
        .await;
    assert_eq!(good.status, 200, "{}", good.text);
    assert_eq!(good.body["resourceType"], "OperationOutcome");
    assert_eq!(severities(&good.body), vec!["information"]);
    assert!(good.diagnostics().contains("no issues"), "{}", good.text);

    let bad = app
        .post("/fhir/Observation/$validate", &broken_score())
        .await;
    assert_eq!(bad.status, 200, "{}", bad.text);
    let found = expressions(&bad.body);
    assert!(
        found.contains(&"Observation.encounter".to_owned()),
        "{found:?}"
    );
    assert!(
        found.contains(&"Observation.code.coding[0]".to_owned()),
        "{found:?}"
    );
    assert!(severities(&bad.body).iter().all(|s| s == "error"));

    // Base R4 problems are listed too.
    let mut worse = broken_score();
    worse["status"] = json!("whatever");
    let r = app.post("/fhir/Observation/$validate", &worse).await;
    assert!(
        expressions(&r.body).contains(&"Observation.status".to_owned()),
        "{}",
        r.text
    );

    // Nothing to validate is a bad request, not an empty outcome.
    let empty = app
        .send(
            reqwest::Method::POST,
            "/fhir/Observation/$validate",
            None,
            &[],
        )
        .await;
    assert_eq!(empty.status, 400, "{}", empty.text);
}

#[tokio::test]
async fn validate_checks_against_the_profile_parameter_instead_of_the_claims() {
    let app = spawn_app().await;
    let mut unclaimed = example("kap-example-phq9-baseline");
    unclaimed.as_object_mut().unwrap().remove("meta");
    unclaimed.as_object_mut().unwrap().remove("encounter");
    let plain = app.post("/fhir/Observation/$validate", &unclaimed).await;
    assert_eq!(
        severities(&plain.body),
        vec!["information"],
        "{}",
        plain.text
    );

    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": unclaimed},
        {"name": "profile", "valueUri": format!("{KAP_SD}kap-score")}
    ]});
    let r = app.post("/fhir/Observation/$validate", &params).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(expressions(&r.body), vec!["Observation.encounter"]);

    let query = app
        .post(
            &format!("/fhir/Observation/$validate?profile={KAP_SD}kap-eligibility"),
            &unclaimed,
        )
        .await;
    assert_eq!(query.status, 200, "{}", query.text);
    assert!(
        query.diagnostics().contains("kap-eligibility"),
        "{}",
        query.text
    );

    let unknown = app
        .post(
            "/fhir/Observation/$validate?profile=http://example.org/StructureDefinition/x",
            &unclaimed,
        )
        .await;
    assert_eq!(unknown.body["issue"][0]["code"], "not-supported");
}

#[tokio::test]
async fn validate_on_an_instance_checks_the_stored_resource_or_the_one_sent() {
    let app = spawn_app().await;
    let score = example("kap-example-phq9-baseline");
    put_example(&app, &score).await;
    let path = "/fhir/Observation/kap-example-phq9-baseline/$validate";
    let stored = app.send(reqwest::Method::POST, path, None, &[]).await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    assert_eq!(severities(&stored.body), vec!["information"]);

    // The stored resource against another profile.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "profile", "valueCanonical": format!("{KAP_SD}kap-eligibility")}
    ]});
    let other = app.post(path, &params).await;
    assert_eq!(other.status, 200, "{}", other.text);
    assert!(
        expressions(&other.body).contains(&"Observation.code.coding[0].system".to_owned()),
        "{}",
        other.text
    );

    // A resource in the body is validated instead of the stored one.
    let sent = app.post(path, &broken_score()).await;
    assert_eq!(expressions(&sent.body).len(), 2, "{}", sent.text);

    let missing = app
        .send(
            reqwest::Method::POST,
            "/fhir/Observation/nope/$validate",
            None,
            &[],
        )
        .await;
    assert_eq!(missing.status, 404);

    // The instance level reads: a token without read on the type is refused.
    let writer = app.client_for("system/Observation.c", None).await;
    let refused = writer
        .post(app.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(refused, 403);
}

#[tokio::test]
async fn the_capability_statement_lists_the_profiles_and_the_validate_operation() {
    let app = spawn_app().await;
    let r = app.get("/fhir/metadata").await;
    assert_eq!(r.status, 200);
    let resources = r.body["rest"][0]["resource"].as_array().unwrap();
    let of = |t: &str| resources.iter().find(|x| x["type"] == t).unwrap();
    let observation = of("Observation");
    let profiles = observation["supportedProfile"].as_array().unwrap();
    assert!(profiles.contains(&json!(format!("{KAP_SD}kap-score"))));
    assert_eq!(profiles.len(), 12);
    assert!(
        of("Encounter")["supportedProfile"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("{KAP_SD}kap-session")))
    );
    assert!(
        observation["operation"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "validate"
                && o["definition"] == "http://hl7.org/fhir/OperationDefinition/Resource-validate")
    );
    for t in ["StructureDefinition", "CodeSystem", "ValueSet"] {
        let interactions = of(t)["interaction"].as_array().unwrap();
        assert!(interactions.contains(&json!({"code": "read"})));
        assert!(!interactions.contains(&json!({"code": "update"})));
    }
}
