//! Security labels the gateway acts on (https://hl7.org/fhir/R4/security-labels.html).

/// `meta.security` system and code that mark psychotherapy notes (psychiatry information sensitivity).
pub const PSY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const PSY_CODE: &str = "PSY";

/// The confidentiality label that goes with them (restricted).
pub const CONFIDENTIALITY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
pub const RESTRICTED_CODE: &str = "R";

/// True if a resource is labelled as a psychotherapy note.
pub fn is_psychotherapy(resource: &serde_json::Value) -> bool {
    resource
        .pointer("/meta/security")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|labels| {
            labels
                .iter()
                .any(|l| l["code"] == PSY_CODE && l["system"] == PSY_SYSTEM)
        })
}
