//! The KAP record fixtures (tests/fixtures/kap/records/) and the comparison helper the KAP tests share; included
//! with `#[path]` by the test crates that use it.

#![allow(dead_code, clippy::expect_used)]

use serde_json::Value;

/// A KAP record fixture by name (`patient`, `evaluation`, `preparation`, `dosing`, `integration`, `follow-up`).
pub fn record(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/kap/records/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect("fixture JSON")
}

/// The record as read back, without the fields the gateway computes.
pub fn without_computed(mut v: Value) -> Value {
    let m = v.as_object_mut().expect("object");
    for k in [
        "id",
        "patient_id",
        "course_id",
        "session_number",
        "treatment_response",
    ] {
        m.remove(k);
    }
    for key in ["vitals", "pre_dose_vitals"] {
        if let Some(r) = m.get_mut(key).and_then(Value::as_object_mut) {
            r.remove("flags");
        }
    }
    if let Some(rs) = m.get_mut("monitoring_vitals").and_then(Value::as_array_mut) {
        for r in rs {
            r.as_object_mut().expect("reading").remove("flags");
        }
    }
    v
}
