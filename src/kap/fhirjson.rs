//! Small builders and readers for the FHIR JSON the KAP mapping writes and reads back.
//!
//! Resources are built as `serde_json::Value` (numbers keep the exact text the clinic sent, so `0.50` stays
//! `0.50`), then checked on write against the R4 JSON Schema and their KAP profile like every other write.

use chrono::{DateTime, Duration, FixedOffset};
use serde_json::{Map, Number, Value, json};

use super::codes::{self, KAP, UCUM};
use super::model::Clinician;

pub fn reference(res_type: &str, id: &str) -> Value {
    json!({ "reference": format!("{res_type}/{id}") })
}

/// The id part of a local reference `Type/id` (or of `Type/id/_history/n`), when it names `res_type`.
pub fn ref_id<'a>(reference: &'a Value, res_type: &str) -> Option<&'a str> {
    let r = reference.get("reference")?.as_str()?;
    let rest = r.strip_prefix(res_type)?.strip_prefix('/')?;
    Some(rest.split('/').next().unwrap_or(rest))
}

pub fn clinician_ref(c: &Clinician) -> Value {
    let mut m = Map::new();
    if let Some(id) = &c.id {
        m.insert("reference".into(), json!(format!("Practitioner/{id}")));
    }
    if let Some(name) = &c.name {
        m.insert("display".into(), json!(name));
    }
    Value::Object(m)
}

pub fn clinician_of(reference: &Value) -> Option<Clinician> {
    let id = ref_id(reference, "Practitioner").map(str::to_owned);
    let name = reference
        .get("display")
        .and_then(Value::as_str)
        .map(str::to_owned);
    (id.is_some() || name.is_some()).then_some(Clinician { id, name })
}

pub fn identifier(kind: &str, value: &str) -> Value {
    json!([{ "system": codes::identifier_system(kind), "value": value }])
}

pub fn meta(profile: &str) -> Value {
    json!({ "profile": [codes::profile(profile)] })
}

pub fn quantity(value: &Number, ucum: &str, unit: &str) -> Value {
    json!({ "value": Value::Number(value.clone()), "unit": unit, "system": UCUM, "code": ucum })
}

/// The first coding of a CodeableConcept as (system, code).
pub fn first_code(concept: &Value) -> Option<(&str, &str)> {
    concept["coding"].as_array()?.iter().find_map(|c| {
        Some((
            c.get("system").and_then(Value::as_str).unwrap_or(""),
            c.get("code")?.as_str()?,
        ))
    })
}

/// True when a CodeableConcept has the coding `system|code`.
pub fn has_code(concept: &Value, system: &str, code: &str) -> bool {
    concept["coding"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["system"] == system && c["code"] == code)
    })
}

/// The `kap` code of a CodeableConcept.
pub fn kap_code(concept: &Value) -> Option<&str> {
    concept["coding"]
        .as_array()?
        .iter()
        .find(|c| c["system"] == KAP)
        .and_then(|c| c["code"].as_str())
}

pub fn str_of(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

pub fn number_of(v: &Value) -> Option<Number> {
    match v {
        Value::Number(n) => Some(n.clone()),
        _ => None,
    }
}

pub fn as_f64(n: &Number) -> Option<f64> {
    n.to_string().parse::<f64>().ok()
}

/// A decimal result with at most `places` decimals and no trailing zeros (36.250 → 36.25).
pub fn decimal(value: f64, places: usize) -> Number {
    let text = format!("{value:.places$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    };
    serde_json::from_str::<Number>(&text).unwrap_or_else(|_| Number::from(0))
}

/// Parses a FHIR dateTime with a time and offset (`2026-09-15T10:00:00-05:00`).
pub fn parse_instant(s: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(s).ok()
}

/// `start` plus `minutes`, in `start`'s offset; None when `start` is not a full dateTime.
pub fn plus_minutes(start: &str, minutes: u32) -> Option<String> {
    let t = parse_instant(start)? + Duration::minutes(i64::from(minutes));
    Some(t.format("%Y-%m-%dT%H:%M:%S%:z").to_string())
}

/// Whole minutes from `start` to `end`, when both are full dateTimes and the difference is whole minutes.
pub fn minutes_between(start: &str, end: &str) -> Option<u32> {
    let d = parse_instant(end)? - parse_instant(start)?;
    let secs = d.num_seconds();
    (secs >= 0 && secs % 60 == 0)
        .then(|| u32::try_from(secs / 60).ok())
        .flatten()
}

/// Orders two FHIR dateTimes by the instant they start at (None when either is malformed).
pub fn compare_times(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    let a = crate::fhir::datetime::parse_range(a)?;
    let b = crate::fhir::datetime::parse_range(b)?;
    Some(a.lo.cmp(&b.lo))
}

/// A component with a code from `kap` and a boolean value.
pub fn bool_component(code: &str, value: bool) -> Value {
    json!({ "code": codes::kap(code), "valueBoolean": value })
}

/// The components of an Observation as (kap code, component).
pub fn components(obs: &Value) -> impl Iterator<Item = (&str, &Value)> {
    obs["component"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((kap_code(&c["code"])?, c)))
}

/// The effective time of an Observation (dateTime or the start of a Period).
pub fn effective(obs: &Value) -> Option<String> {
    obs.get("effectiveDateTime")
        .and_then(Value::as_str)
        .or_else(|| obs["effectivePeriod"]["start"].as_str())
        .or_else(|| obs.get("effectiveInstant").and_then(Value::as_str))
        .map(str::to_owned)
}
