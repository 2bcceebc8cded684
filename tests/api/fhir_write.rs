//! Create, read, vread, update, patch, delete, history and their conditional forms.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, without_server_fields};

fn observation() -> serde_json::Value {
    // Parsed from text: the json! macro would turn 80.50 into an f64 and lose the trailing zero.
    serde_json::from_str(
        r#"{
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-05-06T10:00:00+02:00",
        "_effectiveDateTime": {"extension": [{"url": "http://example.org/precision", "valueString": "minute"}]},
        "valueQuantity": {"value": 80.50, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
        "extension": [{"url": "http://example.org/ext", "valueDecimal": 1.50}]
    }"#,
    )
    .unwrap()
}

#[tokio::test]
async fn create_returns_201_with_location_etag_and_last_modified() {
    let app = spawn_app().await;
    let r = app.post("/fhir/Observation", &observation()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap();
    assert_eq!(r.header("etag").as_deref(), Some("W/\"1\""));
    assert!(r.header("last-modified").unwrap().ends_with("GMT"));
    let location = r.header("location").unwrap();
    assert_eq!(
        location,
        format!("{}/Observation/{id}/_history/1", app.base)
    );
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/fhir+json")
    );
    assert_eq!(r.body["meta"]["versionId"], "1");
}

#[tokio::test]
async fn stored_json_comes_back_exactly_as_sent_apart_from_id_and_meta() {
    let app = spawn_app().await;
    let r = app.post("/fhir/Observation", &observation()).await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let read = app.get(&format!("/fhir/Observation/{id}")).await;
    assert_eq!(read.status, 200);
    // Decimal precision is kept in the text itself, not only in value equality.
    assert!(read.text.contains("\"value\":80.50"), "{}", read.text);
    assert!(read.text.contains("\"valueDecimal\":1.50"), "{}", read.text);
    assert!(read.text.contains("+02:00"), "{}", read.text);
    assert_eq!(without_server_fields(read.body.clone()), observation());
}

#[tokio::test]
async fn a_client_supplied_id_on_create_is_replaced_by_the_server() {
    let app = spawn_app().await;
    let mut o = observation();
    o["id"] = json!("mine");
    let r = app.post("/fhir/Observation", &o).await;
    assert_eq!(r.status, 201);
    assert_ne!(r.body["id"], "mine");
}

#[tokio::test]
async fn read_of_an_unknown_id_is_404_and_of_a_deleted_one_410() {
    let app = spawn_app().await;
    let r = app.get("/fhir/Patient/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    let id = app
        .create(&json!({"resourceType": "Patient", "active": true}))
        .await;
    let d = app.delete(&format!("/fhir/Patient/{id}")).await;
    assert_eq!(d.status, 204);
    let r = app.get(&format!("/fhir/Patient/{id}")).await;
    assert_eq!(r.status, 410, "{}", r.text);
    assert_eq!(r.body["issue"][0]["code"], "deleted");
    // Deleting again is idempotent.
    assert_eq!(app.delete(&format!("/fhir/Patient/{id}")).await.status, 204);
}

#[tokio::test]
async fn update_creates_a_new_version_and_vread_returns_each() {
    let app = spawn_app().await;
    let id = app
        .create(&json!({"resourceType": "Patient", "gender": "female"}))
        .await;
    let r = app
        .put(
            &format!("/fhir/Patient/{id}"),
            &json!({"resourceType": "Patient", "id": id, "gender": "male"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("etag").as_deref(), Some("W/\"2\""));
    let v1 = app.get(&format!("/fhir/Patient/{id}/_history/1")).await;
    assert_eq!(v1.status, 200);
    assert_eq!(v1.body["gender"], "female");
    let v2 = app.get(&format!("/fhir/Patient/{id}/_history/2")).await;
    assert_eq!(v2.body["gender"], "male");
    assert_eq!(
        app.get(&format!("/fhir/Patient/{id}/_history/9"))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn update_with_a_stale_if_match_is_412_and_changes_nothing() {
    let app = spawn_app().await;
    let id = app
        .create(&json!({"resourceType": "Patient", "gender": "female"}))
        .await;
    let body = json!({"resourceType": "Patient", "id": id, "gender": "male"});
    let ok = app
        .send(
            Method::PUT,
            &format!("/fhir/Patient/{id}"),
            Some(&body),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_eq!(ok.status, 200);
    let stale = app
        .send(
            Method::PUT,
            &format!("/fhir/Patient/{id}"),
            Some(&json!({"resourceType": "Patient", "id": id, "gender": "other"})),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_eq!(stale.status, 412, "{}", stale.text);
    assert_eq!(
        app.get(&format!("/fhir/Patient/{id}")).await.body["gender"],
        "male"
    );
}

#[tokio::test]
async fn update_as_create_uses_the_client_chosen_id() {
    let app = spawn_app().await;
    let r = app
        .put(
            "/fhir/Patient/kap-123",
            &json!({"resourceType": "Patient", "id": "kap-123", "active": true}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(app.get("/fhir/Patient/kap-123").await.body["active"], true);
    let mismatch = app
        .put(
            "/fhir/Patient/kap-123",
            &json!({"resourceType": "Patient", "id": "other"}),
        )
        .await;
    assert_eq!(mismatch.status, 400);
    let bad_id = app
        .put(
            "/fhir/Patient/bad_id!",
            &json!({"resourceType": "Patient", "id": "bad_id!"}),
        )
        .await;
    assert_eq!(bad_id.status, 400);
}

#[tokio::test]
async fn an_update_that_changes_nothing_keeps_the_version() {
    let app = spawn_app().await;
    let id = app
        .create(&json!({"resourceType": "Patient", "active": true}))
        .await;
    let r = app
        .put(
            &format!("/fhir/Patient/{id}"),
            &json!({"resourceType": "Patient", "id": id, "active": true}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["meta"]["versionId"], "1");
}

#[tokio::test]
async fn history_lists_every_version_newest_first_with_since_and_count() {
    let app = spawn_app().await;
    let id = app
        .create(&json!({"resourceType": "Patient", "gender": "female"}))
        .await;
    app.put(
        &format!("/fhir/Patient/{id}"),
        &json!({"resourceType": "Patient", "id": id, "gender": "male"}),
    )
    .await;
    app.delete(&format!("/fhir/Patient/{id}")).await;
    let h = app.get(&format!("/fhir/Patient/{id}/_history")).await;
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(h.body["type"], "history");
    assert_eq!(h.body["total"], 3);
    let methods: Vec<&str> = h.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["DELETE", "PUT", "POST"]);
    assert!(h.body["entry"][0].get("resource").is_none());

    // Type and system history, paged with _count and limited by _since.
    app.create(&json!({"resourceType": "Patient", "active": true}))
        .await;
    let page = app.get("/fhir/Patient/_history?_count=2").await;
    assert_eq!(page.body["entry"].as_array().unwrap().len(), 2);
    let next = page.link("next").expect("next link");
    let page2 = app.get_url(&next).await;
    assert_eq!(page2.body["entry"].as_array().unwrap().len(), 2);
    // A token that may not read AuditEvents sees system history without the audit trail of these requests.
    let clinical = app
        .client_for("system/*.rs kap/psychotherapy-notes.read", None)
        .await;
    let future = app
        .get_with(&clinical, "/fhir/_history?_since=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(future.body["total"], 0);
    let all = app
        .get_with(&clinical, "/fhir/_history?_since=2000-01-01")
        .await;
    assert_eq!(all.body["total"], 4, "{}", all.text);
}

#[tokio::test]
async fn twenty_parallel_identical_conditional_creates_leave_exactly_one_resource() {
    let app = spawn_app().await;
    let body =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "42"}]});
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = app.client.clone();
        let url = app.url("/fhir/Patient");
        let body = body.to_string();
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", "identifier=urn:mrn|42")
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            201 => created += 1,
            200 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(
        app.search_ids("Patient?identifier=urn:mrn|42").await.len(),
        1
    );
}

#[tokio::test]
async fn conditional_create_returns_the_existing_match_with_200() {
    let app = spawn_app().await;
    let body =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "7"}]});
    let first = app
        .send(
            Method::POST,
            "/fhir/Patient",
            Some(&body),
            &[("if-none-exist", "identifier=urn:mrn|7")],
        )
        .await;
    assert_eq!(first.status, 201);
    let second = app
        .send(
            Method::POST,
            "/fhir/Patient",
            Some(&body),
            &[("if-none-exist", "identifier=urn:mrn|7")],
        )
        .await;
    assert_eq!(second.status, 200);
    assert_eq!(first.body["id"], second.body["id"]);
}

#[tokio::test]
async fn conditional_update_and_delete_act_on_the_single_match() {
    let app = spawn_app().await;
    let body = json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "9"}], "active": true});
    let r = app.put("/fhir/Patient?identifier=urn:mrn|9", &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let mut changed = body.clone();
    changed["active"] = json!(false);
    let r = app
        .put("/fhir/Patient?identifier=urn:mrn|9", &changed)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], id.as_str());
    assert_eq!(r.body["meta"]["versionId"], "2");

    app.create(
        &json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "dup"}]}),
    )
    .await;
    app.create(
        &json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "dup"}]}),
    )
    .await;
    assert_eq!(
        app.delete("/fhir/Patient?identifier=urn:mrn|dup")
            .await
            .status,
        412
    );
    assert_eq!(
        app.delete("/fhir/Patient?identifier=urn:mrn|9")
            .await
            .status,
        204
    );
    assert_eq!(app.get(&format!("/fhir/Patient/{id}")).await.status, 410);
}

#[tokio::test]
async fn json_patch_changes_the_resource_and_keeps_the_rest() {
    let app = spawn_app().await;
    let r = app.post("/fhir/Observation", &observation()).await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let patch = json!([{"op": "replace", "path": "/status", "value": "amended"}]);
    let r = app
        .client
        .patch(app.url(&format!("/fhir/Observation/{id}")))
        .header("content-type", "application/json-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    let r = crate::helpers::into_resp(r).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "amended");
    assert!(r.text.contains("80.50"));
    // A patch that breaks the resource is refused and changes nothing.
    let bad = json!([{"op": "replace", "path": "/status", "value": 12}]);
    let r = app
        .client
        .patch(app.url(&format!("/fhir/Observation/{id}")))
        .header("content-type", "application/json-patch+json")
        .body(bad.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    assert_eq!(
        app.get(&format!("/fhir/Observation/{id}")).await.body["meta"]["versionId"],
        "2"
    );
}

#[tokio::test]
async fn prefer_return_minimal_and_operation_outcome_are_honoured() {
    let app = spawn_app().await;
    let p = json!({"resourceType": "Patient", "active": true});
    let minimal = app
        .send(
            Method::POST,
            "/fhir/Patient",
            Some(&p),
            &[("prefer", "return=minimal")],
        )
        .await;
    assert_eq!(minimal.status, 201);
    assert!(minimal.text.is_empty());
    assert!(minimal.header("location").is_some());
    let oo = app
        .send(
            Method::POST,
            "/fhir/Patient",
            Some(&p),
            &[("prefer", "return=OperationOutcome")],
        )
        .await;
    assert_eq!(oo.status, 201);
    assert_eq!(oo.body["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn invalid_resources_are_refused_with_the_element_named() {
    let app = spawn_app().await;
    let r = app
        .post(
            "/fhir/Patient",
            &json!({"resourceType": "Patient", "foo": 1}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.diagnostics().contains("Patient.foo"),
        "{}",
        r.diagnostics()
    );
    let r = app
        .post(
            "/fhir/Patient",
            &json!({"resourceType": "Patient", "birthDate": 1980}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.diagnostics().contains("birthDate"), "{}", r.diagnostics());
    let r = app
        .post(
            "/fhir/Patient",
            &json!({"resourceType": "Observation", "status": "final"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.diagnostics().contains("resourceType"),
        "{}",
        r.diagnostics()
    );
    let r = app
        .post("/fhir/Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "eighty"}}))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.diagnostics().contains("valueQuantity.value"),
        "{}",
        r.diagnostics()
    );
}

#[tokio::test]
async fn concurrent_updates_of_one_resource_all_succeed_as_successive_versions() {
    let app = spawn_app().await;
    let id = app
        .create(&json!({"resourceType": "Patient", "active": true}))
        .await;
    let mut tasks = Vec::new();
    for n in 0..10 {
        let client = app.client.clone();
        let url = app.url(&format!("/fhir/Patient/{id}"));
        let body =
            json!({"resourceType": "Patient", "id": id, "name": [{"family": format!("F{n}")}]})
                .to_string();
        tasks.push(tokio::spawn(async move {
            client
                .put(url)
                .header("content-type", "application/fhir+json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    let h = app.get(&format!("/fhir/Patient/{id}/_history")).await;
    assert_eq!(h.body["total"], 11);
    assert_eq!(
        app.get(&format!("/fhir/Patient/{id}")).await.body["meta"]["versionId"],
        "11"
    );
}
