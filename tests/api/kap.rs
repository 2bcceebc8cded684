//! The KAP clinical API over HTTP: a whole course end to end, the round trip of every record kind through the
//! FHIR store, the domain rules (every problem listed with its path), the course's lifecycle, psychotherapy-note
//! protection, updates, and resources written through the FHIR API showing up in the KAP API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp, into_resp, spawn_app};
use crate::kap_records::{record, without_computed};

async fn kap(
    app: &TestApp,
    client: &reqwest::Client,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Resp {
    let mut req = client.request(method, app.url(path));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    into_resp(req.send().await.expect("request")).await
}

async fn kpost(app: &TestApp, path: &str, body: &Value) -> Resp {
    kap(app, &app.client, reqwest::Method::POST, path, Some(body)).await
}

async fn kput(app: &TestApp, path: &str, body: &Value) -> Resp {
    kap(app, &app.client, reqwest::Method::PUT, path, Some(body)).await
}

async fn kget(app: &TestApp, path: &str) -> Resp {
    kap(app, &app.client, reqwest::Method::GET, path, None).await
}

/// Creates a record and returns the response body, failing on anything but 201.
async fn created(app: &TestApp, path: &str, body: &Value) -> Value {
    let r = kpost(app, path, body).await;
    assert_eq!(r.status, 201, "POST {path}: {}", r.text);
    r.body
}

/// Enrols the fixture patient and records the fixture evaluation: (patient id, course id, evaluation id).
async fn enrolled_with_course(app: &TestApp) -> (String, String, String) {
    let p = created(app, "/kap/v1/patients", &record("patient")).await;
    let pid = p["id"].as_str().expect("patient id").to_owned();
    let ev = created(
        app,
        &format!("/kap/v1/patients/{pid}/evaluations"),
        &record("evaluation"),
    )
    .await;
    (
        pid,
        ev["course_id"].as_str().expect("course id").to_owned(),
        ev["id"].as_str().expect("evaluation id").to_owned(),
    )
}

#[tokio::test]
async fn every_record_kind_round_trips_through_fhir() {
    let app = spawn_app().await;
    let input = record("patient");
    let p = created(&app, "/kap/v1/patients", &input).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let mut back = p.clone();
    back.as_object_mut().unwrap().remove("id");
    assert_eq!(back, input, "patient");

    let ev_in = record("evaluation");
    let ev = created(&app, &format!("/kap/v1/patients/{pid}/evaluations"), &ev_in).await;
    assert_eq!(ev["patient_id"], pid.as_str());
    assert!(ev["course_id"].is_string());
    assert_eq!(without_computed(ev.clone()), ev_in, "evaluation");
    // Read again: the same record, rebuilt from FHIR.
    let again = kget(
        &app,
        &format!("/kap/v1/evaluations/{}", ev["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, ev);

    let prep_in = record("preparation");
    let prep = created(
        &app,
        &format!("/kap/v1/patients/{pid}/preparation-sessions"),
        &prep_in,
    )
    .await;
    assert_eq!(without_computed(prep.clone()), prep_in, "preparation");

    let dose_in = record("dosing");
    let dose = created(
        &app,
        &format!("/kap/v1/patients/{pid}/dosing-sessions"),
        &dose_in,
    )
    .await;
    assert_eq!(dose["session_number"], 1);
    assert_eq!(
        dose["dose"]["mg"].to_string(),
        "36.25",
        "mg computed from mg/kg × weight"
    );
    let mut d = without_computed(dose.clone());
    d["dose"].as_object_mut().unwrap().remove("mg");
    assert_eq!(d, dose_in, "dosing");
    assert_eq!(
        dose["dose"]["mg_per_kg"].to_string(),
        "0.50",
        "decimal precision kept"
    );

    let mut int_in = record("integration");
    int_in["related_dosing_sessions"] = json!([dose["id"]]);
    let int = created(
        &app,
        &format!("/kap/v1/patients/{pid}/integration-sessions"),
        &int_in,
    )
    .await;
    assert_eq!(without_computed(int.clone()), int_in, "integration");

    let fu_in = record("follow-up");
    let fu = created(&app, &format!("/kap/v1/patients/{pid}/follow-ups"), &fu_in).await;
    assert_eq!(without_computed(fu.clone()), fu_in, "follow-up");
    assert_eq!(fu["treatment_response"]["baseline_phq9"], 21);
    assert_eq!(fu["treatment_response"]["response"], true);
    assert_eq!(fu["treatment_response"]["remission"], true);

    // Lists per patient.
    let list = kget(&app, &format!("/kap/v1/patients/{pid}/dosing-sessions")).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    assert_eq!(list.body[0], dose);
}

#[tokio::test]
async fn a_course_end_to_end_with_plan_lifecycle_and_course_view() {
    let app = spawn_app().await;
    let (pid, course, ev_id) = enrolled_with_course(&app).await;
    let plan = app.get(&format!("/fhir/CarePlan/{course}")).await;
    assert_eq!(plan.status, 200);
    assert_eq!(plan.body["status"], "active", "eligible → active");
    let activity = |plan: &Value, code: &str| -> Value {
        plan["activity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["detail"]["code"]["coding"][0]["code"] == code)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        activity(&plan.body, "dosing-session")["detail"]["status"],
        "scheduled"
    );
    assert_eq!(
        activity(&plan.body, "psychiatric-evaluation")["outcomeReference"][0]["reference"],
        format!("Encounter/{ev_id}")
    );

    created(
        &app,
        &format!("/kap/v1/patients/{pid}/preparation-sessions"),
        &record("preparation"),
    )
    .await;
    let d1 = created(
        &app,
        &format!("/kap/v1/patients/{pid}/dosing-sessions"),
        &record("dosing"),
    )
    .await;
    let plan = app.get(&format!("/fhir/CarePlan/{course}")).await;
    let dosing = activity(&plan.body, "dosing-session");
    assert_eq!(
        dosing["detail"]["status"], "in-progress",
        "1 of 2 dosing sessions"
    );
    assert_eq!(
        dosing["outcomeReference"][0]["reference"],
        format!("Encounter/{}", d1["id"].as_str().unwrap())
    );
    assert_eq!(
        activity(&plan.body, "preparation-session")["detail"]["status"],
        "completed"
    );

    let mut second = record("dosing");
    second["start"] = json!("2026-09-22T10:00:00-05:00");
    second["end"] = json!("2026-09-22T12:30:00-05:00");
    second["dose"] =
        json!({ "mg": 40, "start": "2026-09-22T10:15:00-05:00", "infusion_minutes": 40 });
    second["pre_dose_vitals"]["time"] = json!("2026-09-22T10:05:00-05:00");
    second["monitoring_vitals"] = json!([]);
    second["adverse_events"] = json!([]);
    second["scores"] =
        json!([{ "instrument": "cadss", "value": 12, "time": "2026-09-22T11:00:00-05:00" }]);
    second["discharge"]["time"] = json!("2026-09-22T12:20:00-05:00");
    let d2 = created(
        &app,
        &format!("/kap/v1/patients/{pid}/dosing-sessions"),
        &second,
    )
    .await;
    assert_eq!(d2["session_number"], 2);
    let plan = app.get(&format!("/fhir/CarePlan/{course}")).await;
    assert_eq!(
        activity(&plan.body, "dosing-session")["detail"]["status"],
        "completed",
        "2 of 2"
    );

    created(
        &app,
        &format!("/kap/v1/patients/{pid}/integration-sessions"),
        &record("integration"),
    )
    .await;
    let fu = created(
        &app,
        &format!("/kap/v1/patients/{pid}/follow-ups"),
        &record("follow-up"),
    )
    .await;
    assert_eq!(fu["course_decision"], "complete");
    let plan = app.get(&format!("/fhir/CarePlan/{course}")).await;
    assert_eq!(
        plan.body["status"], "completed",
        "the follow-up completed the course"
    );
    assert_eq!(plan.body["period"]["end"], "2026-10-27");

    // The course view.
    let view = kget(&app, &format!("/kap/v1/patients/{pid}/course")).await;
    assert_eq!(view.status, 200, "{}", view.text);
    let v = &view.body;
    assert_eq!(v["course_id"], course.as_str());
    assert_eq!(v["status"], "completed");
    assert_eq!(v["eligibility"]["decision"], "eligible");
    assert_eq!(v["sessions"].as_array().unwrap().len(), 6);
    assert_eq!(v["sessions"][0]["kind"], "evaluation");
    assert_eq!(v["progress"]["dosing"]["planned"], 2);
    assert_eq!(v["progress"]["dosing"]["recorded"], 2);
    assert_eq!(v["doses"].as_array().unwrap().len(), 2);
    assert_eq!(v["doses"][0]["mg"].to_string(), "36.25");
    assert_eq!(v["doses"][1]["cumulative_mg"].to_string(), "76.25");
    assert_eq!(v["cumulative_mg"].to_string(), "76.25");
    assert_eq!(v["adverse_events"].as_array().unwrap().len(), 2);
    let phq = v["score_trend"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["instrument"] == "phq-9")
        .unwrap();
    assert_eq!(phq["baseline"], 21);
    assert_eq!(phq["latest"], 4);
    assert_eq!(phq["change_from_baseline"], -17);
    assert_eq!(phq["percent_change"].to_string(), "-81");
    assert_eq!(v["latest_response"]["response"], true);

    // Every write left a Provenance naming what it wrote.
    let provs = app.get("/fhir/Provenance?_count=100").await;
    assert_eq!(provs.match_ids().len(), 7, "the patient and 6 records");
    let targets: Vec<String> = provs.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["resource"]["target"].as_array().unwrap().iter())
        .map(|t| t["reference"].as_str().unwrap().to_owned())
        .collect();
    assert!(targets.contains(&format!("Encounter/{}", d1["id"].as_str().unwrap())));
    assert!(targets.contains(&format!(
        "MedicationAdministration/{}-dose",
        d1["id"].as_str().unwrap()
    )));

    // The course is over: no more sessions against it.
    let late = kpost(
        &app,
        &format!("/kap/v1/patients/{pid}/dosing-sessions"),
        &record("dosing"),
    )
    .await;
    assert_eq!(late.status, 422, "{}", late.text);
    assert!(
        late.diagnostics().contains("no active course"),
        "{}",
        late.diagnostics()
    );
    // A record in the finished course can still be corrected, without reopening it.
    let mut corrected = record("dosing");
    corrected["notes"] = json!("Corrected: cannula in the right forearm.");
    let fix = kput(
        &app,
        &format!("/kap/v1/dosing-sessions/{}", d1["id"].as_str().unwrap()),
        &corrected,
    )
    .await;
    assert_eq!(fix.status, 200, "{}", fix.text);
    assert_eq!(
        fix.body["notes"],
        "Corrected: cannula in the right forearm."
    );
    let plan = app.get(&format!("/fhir/CarePlan/{course}")).await;
    assert_eq!(
        plan.body["status"], "completed",
        "a correction does not reopen the course"
    );
}

#[tokio::test]
async fn domain_rules_list_every_problem_with_its_path() {
    let app = spawn_app().await;
    let p = created(&app, "/kap/v1/patients", &record("patient")).await;
    let pid = p["id"].as_str().unwrap();
    let mut ev = record("evaluation");
    ev["scores"][0]["value"] = json!(30);
    ev["scores"][1]["value"] = json!(-1);
    ev["scores"][3]["value"] = json!("extreme");
    ev["contraindications"][0]["item"] = json!("broken-leg");
    ev["vitals"]["systolic"] = json!(400);
    ev["end"] = json!("2026-09-01T08:00:00-05:00");
    let r = kpost(&app, &format!("/kap/v1/patients/{pid}/evaluations"), &ev).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    let paths: Vec<&str> = r.body["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    for expected in [
        "scores[0].value",
        "scores[1].value",
        "scores[3].value",
        "contraindications[0].item",
        "vitals.systolic",
        "end",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    assert!(
        r.diagnostics().contains("phq-9 score 30 is out of range"),
        "{}",
        r.diagnostics()
    );
    // Nothing was written.
    assert!(app.search_ids("Encounter").await.is_empty());

    let (pid, _, _) = {
        let ev = created(
            &app,
            &format!("/kap/v1/patients/{pid}/evaluations"),
            &record("evaluation"),
        )
        .await;
        (pid.to_owned(), ev["course_id"].clone(), ev["id"].clone())
    };
    let mut d = record("dosing");
    d["dose"] = json!({ "mg_per_kg": 1.5, "start": "2026-09-15T10:20:00-05:00" });
    d["route"] = json!("iv");
    d["pre_dose_vitals"]["diastolic"] = json!(130);
    d["monitoring_vitals"][1]["heart_rate"] = json!(400);
    d["monitoring_vitals"][0]["time"] = json!("2026-09-15T10:10:00-05:00");
    d["adverse_events"][0]["severity"] = json!("catastrophic");
    let r = kpost(&app, &format!("/kap/v1/patients/{pid}/dosing-sessions"), &d).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let paths: Vec<&str> = r.body["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    for expected in [
        "dose.body_weight_kg",
        "pre_dose_vitals.diastolic",
        "monitoring_vitals[1].heart_rate",
        "monitoring_vitals[0].time",
        "adverse_events[0].severity",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    // Over the clinic's per-route limit (1 mg/kg IV by default).
    let mut d = record("dosing");
    d["dose"]["mg_per_kg"] = json!(1.2);
    let r = kpost(&app, &format!("/kap/v1/patients/{pid}/dosing-sessions"), &d).await;
    assert_eq!(r.status, 422);
    assert!(
        r.diagnostics()
            .contains("above the clinic's limit of 1 mg/kg"),
        "{}",
        r.diagnostics()
    );
    // Zero dose.
    let mut d = record("dosing");
    d["dose"] = json!({ "mg": 0 });
    let r = kpost(&app, &format!("/kap/v1/patients/{pid}/dosing-sessions"), &d).await;
    assert_eq!(r.status, 422);
    assert!(
        r.diagnostics().contains("greater than 0 mg"),
        "{}",
        r.diagnostics()
    );

    // Patients: a bad email and a blank name, both reported.
    let mut pat = record("patient");
    pat["email"] = json!("useratexample.com");
    pat["family_name"] = json!("  ");
    let r = kpost(&app, "/kap/v1/patients", &pat).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let paths: Vec<&str> = r.body["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["family_name", "email"]);

    // Malformed JSON and unknown fields: 400 naming the field.
    let mut d = record("dosing");
    d["dose"]["mg_per_kgs"] = json!(0.5);
    let r = kpost(&app, &format!("/kap/v1/patients/{pid}/dosing-sessions"), &d).await;
    assert_eq!(r.status, 400);
    assert!(r.text.contains("mg_per_kgs"), "{}", r.text);
    let mut d = record("dosing");
    d["scores"][0]["value"] = json!("eighteen");
    let r = kpost(&app, &format!("/kap/v1/patients/{pid}/dosing-sessions"), &d).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["issue"][0]["expression"][0], "scores[0].value");
}

#[tokio::test]
async fn configured_dose_limits_apply() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.kap.max_mg_per_kg.insert("iv".into(), 0.4);
    })
    .await;
    let (pid, _, _) = enrolled_with_course(&app).await;
    let r = kpost(
        &app,
        &format!("/kap/v1/patients/{pid}/dosing-sessions"),
        &record("dosing"),
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(
        r.diagnostics().contains("limit of 0.4 mg/kg"),
        "{}",
        r.diagnostics()
    );
    // The limit also applies to a dose in mg when the body weight is known.
    let mut d = record("dosing");
    d["dose"] = json!({ "mg": 40, "body_weight_kg": 72.5 });
    let r = kpost(&app, &format!("/kap/v1/patients/{pid}/dosing-sessions"), &d).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["issue"][0]["expression"][0], "dose.mg");
}

#[tokio::test]
async fn sessions_need_an_active_course_of_the_same_patient() {
    let app = spawn_app().await;
    let p = created(&app, "/kap/v1/patients", &record("patient")).await;
    let pid = p["id"].as_str().unwrap();
    let r = kpost(
        &app,
        &format!("/kap/v1/patients/{pid}/dosing-sessions"),
        &record("dosing"),
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(r.diagnostics().contains("no active course"));

    // A not-eligible evaluation revokes the course.
    let mut ev = record("evaluation");
    ev["eligibility"] =
        json!({ "decision": "not-eligible", "reason": "Uncontrolled hypertension" });
    ev["contraindications"][0]["present"] = json!(true);
    let ev = created(&app, &format!("/kap/v1/patients/{pid}/evaluations"), &ev).await;
    let course = ev["course_id"].as_str().unwrap();
    let plan = app.get(&format!("/fhir/CarePlan/{course}")).await;
    assert_eq!(plan.body["status"], "revoked");
    let mut d = record("dosing");
    d["course_id"] = json!(course);
    let r = kpost(&app, &format!("/kap/v1/patients/{pid}/dosing-sessions"), &d).await;
    assert_eq!(r.status, 422);
    assert!(r.diagnostics().contains("revoked"), "{}", r.diagnostics());

    // Eligible with a contraindication present is refused.
    let mut ev = record("evaluation");
    ev["contraindications"][2]["present"] = json!(true);
    let r = kpost(&app, &format!("/kap/v1/patients/{pid}/evaluations"), &ev).await;
    assert_eq!(r.status, 422);
    assert!(r.diagnostics().contains("pregnancy"));

    // Another patient's course.
    let (other, other_course, _) = enrolled_with_course(&app).await;
    assert_ne!(other, pid);
    let mut d = record("dosing");
    d["course_id"] = json!(other_course);
    let r = kpost(&app, &format!("/kap/v1/patients/{pid}/dosing-sessions"), &d).await;
    assert_eq!(r.status, 422);
    assert!(
        r.diagnostics().contains("another patient"),
        "{}",
        r.diagnostics()
    );

    // A second open course for the same patient is refused.
    let r = kpost(
        &app,
        &format!("/kap/v1/patients/{other}/evaluations"),
        &record("evaluation"),
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(r.diagnostics().contains("already has an open course"));

    // Unknown patient.
    let r = kpost(
        &app,
        "/kap/v1/patients/nobody/dosing-sessions",
        &record("dosing"),
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn follow_up_can_discontinue_the_course() {
    let app = spawn_app().await;
    let (pid, course, _) = enrolled_with_course(&app).await;
    let mut fu = record("follow-up");
    fu["course_decision"] = json!("discontinue");
    fu["scores"][0]["value"] = json!(15);
    let fu = created(&app, &format!("/kap/v1/patients/{pid}/follow-ups"), &fu).await;
    assert_eq!(fu["treatment_response"]["response"], false);
    assert_eq!(fu["treatment_response"]["remission"], false);
    let plan = app.get(&format!("/fhir/CarePlan/{course}")).await;
    assert_eq!(plan.body["status"], "revoked");
}

#[tokio::test]
async fn psychotherapy_notes_are_labelled_and_withheld_without_the_scope() {
    let app = spawn_app().await;
    let (pid, _, _) = enrolled_with_course(&app).await;
    let int = created(
        &app,
        &format!("/kap/v1/patients/{pid}/integration-sessions"),
        &record("integration"),
    )
    .await;
    let id = int["id"].as_str().unwrap();
    let note = app.get(&format!("/fhir/Observation/{id}-note")).await;
    assert_eq!(note.status, 200);
    let labels: Vec<&str> = note.body["meta"]["security"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect();
    assert!(
        labels.contains(&"R") && labels.contains(&"PSY"),
        "{labels:?}"
    );

    let clinician = app.client_for("user/*.cruds", None).await;
    let r = kap(
        &app,
        &clinician,
        reqwest::Method::GET,
        &format!("/kap/v1/integration-sessions/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body.get("note").is_none(),
        "note released without the scope"
    );
    assert!(r.body.get("themes").is_none());
    assert_eq!(r.body["note_withheld"], true);
    assert_eq!(
        r.body["wellbeing"], 7,
        "the rest of the session is ordinary clinical data"
    );
    assert!(!r.text.contains("grandmother"));
    let r = app
        .get_with(&clinician, &format!("/fhir/Observation/{id}-note"))
        .await;
    assert_eq!(r.status, 404);

    // With the scope, the note is there.
    let therapist = app
        .client_for("user/*.cruds kap/psychotherapy-notes.read", None)
        .await;
    let r = kap(
        &app,
        &therapist,
        reqwest::Method::GET,
        &format!("/kap/v1/integration-sessions/{id}"),
        None,
    )
    .await;
    assert!(r.body["note"].as_str().unwrap().contains("grandmother"));
    assert!(r.body.get("note_withheld").is_none());

    // A token that may not write Encounters cannot record a session at all.
    let reader = app.client_for("user/*.rs", None).await;
    let r = kap(
        &app,
        &reader,
        reqwest::Method::POST,
        &format!("/kap/v1/patients/{pid}/integration-sessions"),
        Some(&record("integration")),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);

    // A patient-context token sees only its own patient.
    let other = created(&app, "/kap/v1/patients", &record("patient")).await;
    let own = app.client_for("patient/*.rs", Some(&pid)).await;
    let r = kap(
        &app,
        &own,
        reqwest::Method::GET,
        &format!("/kap/v1/patients/{}", other["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    let r = kap(
        &app,
        &own,
        reqwest::Method::GET,
        &format!("/kap/v1/patients/{pid}/course"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn updates_rewrite_the_record_and_remove_what_it_no_longer_has() {
    let app = spawn_app().await;
    let (pid, _, _) = enrolled_with_course(&app).await;
    let dose = created(
        &app,
        &format!("/kap/v1/patients/{pid}/dosing-sessions"),
        &record("dosing"),
    )
    .await;
    let id = dose["id"].as_str().unwrap();
    let mut changed = record("dosing");
    changed["adverse_events"] = json!([changed["adverse_events"][0]]);
    changed["notes"] = json!("Infusion via 20G cannula, right forearm.");
    let r = kput(&app, &format!("/kap/v1/dosing-sessions/{id}"), &changed).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["adverse_events"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["notes"], "Infusion via 20G cannula, right forearm.");
    assert_eq!(
        app.get(&format!("/fhir/Observation/{id}-ae1")).await.status,
        410
    );
    let ma = app
        .get(&format!("/fhir/MedicationAdministration/{id}-dose"))
        .await;
    assert_eq!(ma.body["meta"]["versionId"], "2");
    let provs = app.get("/fhir/Provenance?_count=100").await;
    assert!(
        provs.body["entry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["resource"]["activity"]["coding"][0]["code"] == "UPDATE")
    );
    // Invalid update: nothing changes.
    let mut bad = record("dosing");
    bad["route"] = json!("rectal");
    let r = kput(&app, &format!("/kap/v1/dosing-sessions/{id}"), &bad).await;
    assert_eq!(r.status, 422);
    assert_eq!(
        app.get(&format!("/fhir/MedicationAdministration/{id}-dose"))
            .await
            .body["meta"]["versionId"],
        "2"
    );
    // Wrong kind of record for the id.
    let r = kget(&app, &format!("/kap/v1/follow-ups/{id}")).await;
    assert_eq!(r.status, 404);
    // Patients can be updated too.
    let mut pat = record("patient");
    pat["phone"] = json!("+1 555 0199");
    let r = kput(&app, &format!("/kap/v1/patients/{pid}"), &pat).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["phone"], "+1 555 0199");
}

#[tokio::test]
async fn existing_fhir_patients_are_linked_and_fhir_writes_show_up_in_the_kap_api() {
    let app = spawn_app().await;
    // An EHR's Patient, with its MRN.
    let ehr_patient = app
        .create(&json!({
            "resourceType": "Patient",
            "identifier": [{ "system": "urn:oid:2.16.840.1.113883.19.5", "value": "EHR-42" }],
            "name": [{ "family": "Nakamura", "given": ["Ken"] }, { "use": "nickname", "given": ["Kenny"] }],
            "birthDate": "1979-11-02"
        }))
        .await;
    let r = kpost(
        &app,
        "/kap/v1/patients/link",
        &json!({ "identifier": { "system": "urn:oid:2.16.840.1.113883.19.5", "value": "EHR-42" } }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], ehr_patient.as_str());
    assert_eq!(r.body["family_name"], "Nakamura");
    let fhir = app.get(&format!("/fhir/Patient/{ehr_patient}")).await;
    assert_eq!(
        fhir.body["name"].as_array().unwrap().len(),
        2,
        "the EHR's data is kept"
    );
    assert_eq!(
        fhir.body["identifier"][0]["system"],
        "urn:kap-gateway:patient"
    );
    let r = kpost(
        &app,
        "/kap/v1/patients/link",
        &json!({ "identifier": { "system": "x", "value": "none" } }),
    )
    .await;
    assert_eq!(r.status, 404);

    let ev = created(
        &app,
        &format!("/kap/v1/patients/{ehr_patient}/evaluations"),
        &record("evaluation"),
    )
    .await;
    let fu = created(
        &app,
        &format!("/kap/v1/patients/{ehr_patient}/follow-ups"),
        &{
            let mut f = record("follow-up");
            f["course_decision"] = json!("continue");
            f
        },
    )
    .await;
    // An app writes a GAD-7 score for the follow-up through the FHIR API, in the KAP score profile.
    let fu_id = fu["id"].as_str().unwrap();
    app.create(&json!({
        "resourceType": "Observation",
        "meta": { "profile": ["http://kap-gateway.org/fhir/StructureDefinition/kap-score"] },
        "identifier": [{ "system": "urn:example:app", "value": "gad7-1" }],
        "status": "final",
        "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey" }] }],
        "code": { "coding": [{ "system": "http://loinc.org", "code": "70274-6" }] },
        "subject": { "reference": format!("Patient/{ehr_patient}") },
        "encounter": { "reference": format!("Encounter/{fu_id}") },
        "effectiveDateTime": "2026-10-28T10:00:00-05:00",
        "valueInteger": 3
    }))
    .await;
    let r = kget(&app, &format!("/kap/v1/follow-ups/{fu_id}")).await;
    let gad: Vec<&Value> = r.body["scores"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["instrument"] == "gad-7")
        .collect();
    assert_eq!(gad.len(), 2, "{}", r.text);
    assert_eq!(gad[1]["value"], 3);

    // A dosing session written entirely through FHIR appears in the list.
    let course = ev["course_id"].as_str().unwrap();
    let enc = app
        .create(&json!({
            "resourceType": "Encounter",
            "meta": { "profile": ["http://kap-gateway.org/fhir/StructureDefinition/kap-session"] },
            "extension": [{ "url": "http://kap-gateway.org/fhir/StructureDefinition/kap-course-reference", "valueReference": { "reference": format!("CarePlan/{course}") } }],
            "identifier": [{ "system": "urn:example:ehr", "value": "enc-9" }],
            "status": "finished",
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB" },
            "type": [{ "coding": [{ "system": "http://kap-gateway.org/fhir/CodeSystem/kap", "code": "dosing-session" }] }],
            "subject": { "reference": format!("Patient/{ehr_patient}") },
            "period": { "start": "2026-09-29T10:00:00-05:00", "end": "2026-09-29T12:00:00-05:00" }
        }))
        .await;
    app.create(&json!({
        "resourceType": "MedicationAdministration",
        "meta": { "profile": ["http://kap-gateway.org/fhir/StructureDefinition/kap-ketamine-administration"] },
        "identifier": [{ "system": "urn:example:ehr", "value": "ma-9" }],
        "status": "completed",
        "medicationCodeableConcept": { "coding": [{ "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "2201623" }] },
        "subject": { "reference": format!("Patient/{ehr_patient}") },
        "context": { "reference": format!("Encounter/{enc}") },
        "effectivePeriod": { "start": "2026-09-29T10:10:00-05:00" },
        "dosage": {
            "text": "56 mg intranasal",
            "route": { "coding": [{ "system": "http://snomed.info/sct", "code": "46713006" }] },
            "dose": { "value": 56, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg" }
        }
    }))
    .await;
    let list = kget(
        &app,
        &format!("/kap/v1/patients/{ehr_patient}/dosing-sessions"),
    )
    .await;
    assert_eq!(list.status, 200);
    let sessions = list.body.as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{}", list.text);
    assert_eq!(sessions[0]["id"], enc.as_str());
    assert_eq!(sessions[0]["medication"], "esketamine");
    assert_eq!(sessions[0]["route"], "intranasal");
    assert_eq!(sessions[0]["dose"]["mg"], 56);
}

/// Runs `kap-gateway seed --demo --patients 8` on the app's database, off the test's runtime (which also runs the
/// app: blocking it could leave one of the app's transactions open while the seed waits for it).
async fn run_seed(database_url: &str) -> std::process::Output {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kap-gateway"))
            .args(["seed", "--demo", "--patients", "8", "--database-url", &url])
            .env_remove("KAPGW_DATABASE_URL")
            .output()
            .expect("run seed")
    })
    .await
    .expect("seed task")
}

#[tokio::test]
async fn seed_demo_loads_a_cohort_through_the_kap_api() {
    let app = spawn_app().await;
    let out = run_seed(&app.database_url).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "seed failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("loaded 8 demo patients"), "{stdout}");
    let patients = app
        .search_ids("Patient?identifier=urn:kap-gateway:demo|&_count=100")
        .await;
    assert_eq!(patients.len(), 8);
    let mut statuses = Vec::new();
    let mut routes = Vec::new();
    let mut adverse = 0;
    for pid in &patients {
        let v = kget(&app, &format!("/kap/v1/patients/{pid}/course")).await;
        assert_eq!(v.status, 200, "{}", v.text);
        statuses.push(v.body["status"].as_str().unwrap().to_owned());
        for d in v.body["doses"].as_array().unwrap() {
            routes.push(d["route"].as_str().unwrap().to_owned());
        }
        adverse += v.body["adverse_events"].as_array().unwrap().len();
    }
    for s in ["completed", "active", "revoked", "draft"] {
        assert!(
            statuses.iter().any(|x| x == s),
            "no {s} course in {statuses:?}"
        );
    }
    for r in ["iv", "im", "intranasal", "sublingual", "oral"] {
        assert!(routes.iter().any(|x| x == r), "no {r} dose in {routes:?}");
    }
    assert!(adverse > 0);
    // Running it again does not duplicate the cohort.
    let again = run_seed(&app.database_url).await;
    assert!(String::from_utf8_lossy(&again.stdout).contains("already loaded"));
    assert_eq!(
        app.search_ids("Patient?identifier=urn:kap-gateway:demo|&_count=100")
            .await
            .len(),
        8
    );
}
