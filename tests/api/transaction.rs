//! Batch and transaction Bundles: atomicity, processing order, urn:uuid and conditional references.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_transaction_resolves_urn_uuid_references_between_its_entries() {
    let app = spawn_app().await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": {"resourceType": "Observation", "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
                    "subject": {"reference": "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059"},
                    "valueInteger": 17},
                "request": {"method": "POST", "url": "Observation"}
            },
            {
                "fullUrl": "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059",
                "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "t1"}]},
                "request": {"method": "POST", "url": "Patient"}
            }
        ]
    });
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["type"], "transaction-response");
    let entries = r.body["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    let patient_id = entries[1]["resource"]["id"].as_str().unwrap();
    let obs_id = entries[0]["resource"]["id"].as_str().unwrap();
    let obs = app.get(&format!("/fhir/Observation/{obs_id}")).await;
    assert_eq!(
        obs.body["subject"]["reference"],
        format!("Patient/{patient_id}")
    );
    assert_eq!(
        app.search_ids(&format!("Observation?subject=Patient/{patient_id}"))
            .await,
        vec![obs_id.to_owned()]
    );
}

#[tokio::test]
async fn a_failing_entry_rolls_back_the_whole_transaction_and_is_named() {
    let app = spawn_app().await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient", "active": true}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "birthDate": "not-a-date"}, "request": {"method": "POST", "url": "Patient"}}
        ]
    });
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.diagnostics().contains("Bundle.entry[1]"),
        "{}",
        r.diagnostics()
    );
    assert_eq!(app.get("/fhir/Patient").await.body["total"], 0);
}

#[tokio::test]
async fn a_transaction_resolves_conditional_references_and_conditional_creates() {
    let app = spawn_app().await;
    let pid = app
        .create(&json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "c1"}]}))
        .await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001",
             "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "c1"}]},
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|c1"}},
            {"resource": {"resourceType": "Encounter", "status": "finished",
                          "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                          "subject": {"reference": "Patient?identifier=urn:mrn|c1"}},
             "request": {"method": "POST", "url": "Encounter"}},
            {"resource": {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "Sleep better"},
                          "subject": {"reference": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001"}},
             "request": {"method": "POST", "url": "Goal"}}
        ]
    });
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.body["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "200 OK");
    assert_eq!(entries[0]["resource"]["id"], pid.as_str());
    assert_eq!(
        entries[1]["resource"]["subject"]["reference"],
        format!("Patient/{pid}")
    );
    assert_eq!(
        entries[2]["resource"]["subject"]["reference"],
        format!("Patient/{pid}")
    );
    assert_eq!(
        app.search_ids("Patient?identifier=urn:mrn|c1").await.len(),
        1
    );
}

#[tokio::test]
async fn a_conditional_reference_matching_nothing_fails_the_transaction() {
    let app = spawn_app().await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "x"},
                          "subject": {"reference": "Patient?identifier=urn:mrn|nobody"}},
             "request": {"method": "POST", "url": "Goal"}}
        ]
    });
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(app.get("/fhir/Goal").await.body["total"], 0);
}

#[tokio::test]
async fn deletes_run_before_creates_and_updates_in_a_transaction() {
    let app = spawn_app().await;
    let old = app
        .create(&json!({"resourceType": "Patient", "active": false}))
        .await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "fixed", "active": true}, "request": {"method": "PUT", "url": "Patient/fixed"}},
            {"request": {"method": "GET", "url": "Patient?active=true"}},
            {"request": {"method": "DELETE", "url": format!("Patient/{old}")}}
        ]
    });
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.body["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    // The GET runs last, so it sees the PUT.
    assert_eq!(entries[1]["resource"]["total"], 1);
    assert_eq!(entries[2]["response"]["status"], "204 No Content");
    assert_eq!(app.get(&format!("/fhir/Patient/{old}")).await.status, 410);
}

#[tokio::test]
async fn a_batch_runs_each_entry_on_its_own() {
    let app = spawn_app().await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": {"resourceType": "Patient", "active": true}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "gender": "mal"}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}}
        ]
    });
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["type"], "batch-response");
    let entries = r.body["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[1]["response"]["status"], "400");
    assert_eq!(
        entries[1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(entries[2]["response"]["status"], "404");
    assert_eq!(app.get("/fhir/Patient").await.body["total"], 1);
}

#[tokio::test]
async fn a_bundle_that_is_neither_batch_nor_transaction_is_refused() {
    let app = spawn_app().await;
    let r = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "collection"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = app.post("/fhir", &json!({"resourceType": "Patient"})).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn a_transaction_of_many_creates_and_updates_writes_each_with_its_history_and_index() {
    let app = spawn_app().await;
    app.put(
        "/fhir/Patient/p0",
        &json!({"resourceType": "Patient", "id": "p0", "active": false}),
    )
    .await;
    // PUTs to new ids, one PUT to an existing id, and POSTs, all in one transaction.
    let mut entries: Vec<serde_json::Value> = (0..5)
        .map(|i| {
            json!({
                "resource": {"resourceType": "Patient", "id": format!("p{i}"), "active": true,
                    "name": [{"family": format!("Family{i}")}]},
                "request": {"method": "PUT", "url": format!("Patient/p{i}")}
            })
        })
        .collect();
    entries.extend((0..3).map(|i| {
        json!({
            "resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
                "subject": {"reference": format!("Patient/p{i}")}, "valueInteger": i},
            "request": {"method": "POST", "url": "Observation"}
        })
    }));
    let r = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let statuses: Vec<&str> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "200 OK",
            "201 Created",
            "201 Created",
            "201 Created",
            "201 Created",
            "201 Created",
            "201 Created",
            "201 Created"
        ]
    );
    assert_eq!(
        app.get("/fhir/Patient/p0").await.body["meta"]["versionId"],
        "2"
    );
    assert_eq!(
        app.get("/fhir/Patient/p3").await.body["meta"]["versionId"],
        "1"
    );
    let history = app.get("/fhir/Patient/p3/_history").await;
    assert_eq!(history.body["total"], 1);
    assert_eq!(history.body["entry"][0]["request"]["method"], "PUT");
    assert_eq!(
        app.search_ids("Patient?family=Family4").await,
        vec!["p4".to_owned()]
    );
    let obs = app
        .get("/fhir/Observation?subject=Patient/p2&code=http://loinc.org|44261-6")
        .await;
    assert_eq!(obs.body["total"], 1, "{}", obs.text);
    assert_eq!(obs.body["entry"][0]["resource"]["valueInteger"], 2);

    // One invalid entry among the creates: none of them is written.
    let clash = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Patient", "id": "q1"}, "request": {"method": "PUT", "url": "Patient/q1"}},
                {"resource": {"resourceType": "Patient", "id": "bad id"}, "request": {"method": "PUT", "url": "Patient/bad id"}}
            ]}),
        )
        .await;
    assert_eq!(clash.status, 400, "{}", clash.text);
    assert_eq!(app.get("/fhir/Patient/q1").await.status, 404);
}
