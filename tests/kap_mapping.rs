//! The KAP ⇄ FHIR mapping without a server: every record kind maps to FHIR that matches its golden fixture
//! (tests/fixtures/kap/fhir/), validates against base R4 and the KAP profiles, and maps back to exactly the record.
//! Set `KAPGW_BLESS=1` to rewrite the golden files after a deliberate mapping change (and review the diff).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kap_gateway::kap::mapping::{self, Ctx, Gathered};
use kap_gateway::kap::model::*;
use serde_json::{Value, json};

#[path = "common/kap_records.rs"]
mod kap_records;
use kap_records::{record, without_computed};

const CTX: Ctx<'static> = Ctx {
    record_id: "rec-0001",
    patient_id: "pat-0001",
    course_id: "crs-0001",
};

/// Compares with the golden file, or writes it when blessing.
fn golden(name: &str, resources: &[Value]) {
    let path = format!(
        "{}/tests/fixtures/kap/fhir/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let actual = serde_json::to_string_pretty(&Value::Array(resources.to_vec())).unwrap() + "\n";
    if std::env::var("KAPGW_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing golden file {path}"));
    assert_eq!(
        serde_json::from_str::<Value>(&expected).unwrap(),
        serde_json::from_str::<Value>(&actual).unwrap(),
        "{name}: mapping output differs from {path} (KAPGW_BLESS=1 rewrites it)"
    );
}

/// Every resource passes base R4 validation and the KAP profile it claims, and claims one.
fn conforms(resources: &[Value]) {
    for r in resources {
        let t = r["resourceType"].as_str().unwrap();
        assert!(
            !kap_gateway::fhir::profile::claimed_kap_profiles(r).is_empty(),
            "{t}/{} claims no KAP profile",
            r["id"]
        );
        if let Err(e) = kap_gateway::service::validate_for_write(t, r) {
            panic!("{t}/{} is not valid R4: {:?}", r["id"], e.issues);
        }
        if let Err(issues) = kap_gateway::fhir::profile::validate_claimed_profiles(r) {
            let text: Vec<String> = issues
                .iter()
                .map(|i| format!("{}: {}", i.expression, i.message))
                .collect();
            panic!("{t}/{} breaks its profile:\n{}", r["id"], text.join("\n"));
        }
    }
}

fn gathered(resources: &[Value]) -> Gathered {
    let of = |t: &str| -> Vec<Value> {
        resources
            .iter()
            .filter(|r| r["resourceType"] == t)
            .cloned()
            .collect()
    };
    Gathered {
        encounter: of("Encounter").into_iter().next().expect("an Encounter"),
        observations: of("Observation"),
        conditions: of("Condition"),
        administrations: of("MedicationAdministration"),
        goals: of("Goal"),
        withheld: false,
    }
}

#[test]
fn evaluation_maps_to_golden_fhir_and_back() {
    let input = record("evaluation");
    let ev: Evaluation = serde_json::from_value(input.clone()).unwrap();
    let mut resources = mapping::evaluation_to_fhir(&CTX, &ev);
    let plan = mapping::course_plan(&CTX, &ev, &resources, None);
    resources.push(plan.clone());
    golden("evaluation", &resources);
    conforms(&resources);
    let back = mapping::evaluation_from_fhir(&gathered(&resources), Some(&plan));
    assert_eq!(
        without_computed(serde_json::to_value(&back).unwrap()),
        input
    );
    // Decimal precision is kept as sent (72.50 stays 72.50).
    let weight = resources
        .iter()
        .find(|r| r["code"]["coding"][0]["code"] == "29463-7")
        .unwrap();
    assert_eq!(weight["valueQuantity"]["value"].to_string(), "72.50");
    // The plan: eligible → active, one activity per session kind with its planned count.
    assert_eq!(plan["status"], "active");
    assert_eq!(plan["activity"].as_array().unwrap().len(), 5);
    assert_eq!(plan["activity"][2]["detail"]["status"], "scheduled");
    assert_eq!(
        plan["activity"][2]["detail"]["scheduledTiming"]["repeat"]["count"],
        2
    );
    assert_eq!(plan["activity"][0]["detail"]["status"], "completed");
}

#[test]
fn preparation_maps_to_golden_fhir_and_back() {
    let input = record("preparation");
    let p: Preparation = serde_json::from_value(input.clone()).unwrap();
    let resources = mapping::preparation_to_fhir(&CTX, &p);
    golden("preparation", &resources);
    conforms(&resources);
    let back = mapping::preparation_from_fhir(&gathered(&resources));
    assert_eq!(
        without_computed(serde_json::to_value(&back).unwrap()),
        input
    );
}

#[test]
fn dosing_maps_to_golden_fhir_and_back_with_computed_mg_and_flags() {
    let input = record("dosing");
    let d: Dosing = serde_json::from_value(input.clone()).unwrap();
    let resources = mapping::dosing_to_fhir(&CTX, &d);
    golden("dosing", &resources);
    conforms(&resources);
    let back = mapping::dosing_from_fhir(&gathered(&resources));
    let mut out = without_computed(serde_json::to_value(&back).unwrap());
    // mg is computed from mg/kg × body weight, and both inputs are kept.
    assert_eq!(out["dose"]["mg"].to_string(), "36.25");
    out["dose"].as_object_mut().unwrap().remove("mg");
    assert_eq!(out, input);
    assert_eq!(back.dose.mg_per_kg.unwrap().to_string(), "0.50");
    // Abnormal values are kept and flagged.
    assert_eq!(
        back.monitoring_vitals[0]
            .flags
            .get("systolic")
            .map(String::as_str),
        Some("H")
    );
    assert_eq!(
        back.monitoring_vitals[0]
            .flags
            .get("diastolic")
            .map(String::as_str),
        Some("H")
    );
    assert_eq!(
        back.monitoring_vitals[1]
            .flags
            .get("spo2")
            .map(String::as_str),
        Some("L")
    );
    assert!(back.pre_dose_vitals.unwrap().flags.is_empty());
    let dose = resources
        .iter()
        .find(|r| r["resourceType"] == "MedicationAdministration")
        .unwrap();
    assert_eq!(dose["dosage"]["dose"]["value"].to_string(), "36.25");
    assert_eq!(
        dose["dosage"]["rateQuantity"]["value"].to_string(),
        "54.375"
    );
    assert_eq!(dose["effectivePeriod"]["end"], "2026-09-15T11:00:00-05:00");
}

#[test]
fn integration_maps_to_golden_fhir_and_back_with_psychotherapy_labels() {
    let mut input = record("integration");
    input["related_dosing_sessions"] = json!(["dose-0001"]);
    let s: Integration = serde_json::from_value(input.clone()).unwrap();
    let resources = mapping::integration_to_fhir(&CTX, &s);
    golden("integration", &resources);
    conforms(&resources);
    let note = resources
        .iter()
        .find(|r| r["code"]["coding"][0]["code"] == "integration-note")
        .unwrap();
    let labels: Vec<&str> = note["meta"]["security"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["R", "PSY", "PSYTHPN"]);
    assert_eq!(note["focus"][0]["reference"], "Encounter/dose-0001");
    // Nothing else of the session carries the labels.
    for r in resources.iter().filter(|r| r["id"] != note["id"]) {
        assert!(
            r["meta"].get("security").is_none(),
            "{} is labelled",
            r["id"]
        );
    }
    let back = mapping::integration_from_fhir(&gathered(&resources));
    assert_eq!(
        without_computed(serde_json::to_value(&back).unwrap()),
        input
    );
}

#[test]
fn follow_up_maps_to_golden_fhir_and_back_with_response_and_remission() {
    let input = record("follow-up");
    let f: FollowUp = serde_json::from_value(input.clone()).unwrap();
    let resources = mapping::follow_up_to_fhir(&CTX, &f, Some((21, "ev-0001-sc0-phq-9")));
    golden("follow-up", &resources);
    conforms(&resources);
    let back = mapping::follow_up_from_fhir(&gathered(&resources), Some(21));
    let tr = back.treatment_response.clone().unwrap();
    assert!(tr.response, "21 → 4 is a drop of more than 50 %");
    assert!(tr.remission, "4 is below 5");
    assert_eq!(tr.percent_change.to_string(), "-81");
    assert_eq!(
        without_computed(serde_json::to_value(&back).unwrap()),
        input
    );
    let response = resources
        .iter()
        .find(|r| r["code"]["coding"][0]["code"] == "treatment-response")
        .unwrap();
    assert_eq!(
        response["derivedFrom"][0]["reference"],
        "Observation/ev-0001-sc0-phq-9"
    );
}

#[test]
fn patient_maps_to_fhir_and_back() {
    let input = record("patient");
    let p: PatientRecord = serde_json::from_value(input.clone()).unwrap();
    let resource = mapping::patient_to_fhir("pat-0001", &p, None);
    golden("patient", std::slice::from_ref(&resource));
    conforms(std::slice::from_ref(&resource));
    let back = mapping::patient_from_fhir(&resource);
    let mut out = serde_json::to_value(&back).unwrap();
    out.as_object_mut().unwrap().remove("id");
    assert_eq!(out, input);
}

#[test]
fn treatment_response_thresholds() {
    let r = mapping::treatment_response(20, 10);
    assert!(r.response && !r.remission, "exactly 50 % is a response");
    let r = mapping::treatment_response(20, 11);
    assert!(!r.response);
    let r = mapping::treatment_response(8, 4);
    assert!(r.response && r.remission);
    assert_eq!(r.percent_change.to_string(), "-50");
}
