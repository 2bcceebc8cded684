//! Bulk data: `Patient/{id}/$everything` and the FHIR Bulk Data Access 2.0 export
//! (https://hl7.org/fhir/uv/bulkdata/export.html) at system, patient and group level.
//!
//! An export is a job row in the database (`bulk_jobs`). A background worker claims queued jobs with a lease,
//! reads each resource type in keyset pages through the same search code — and therefore the same authorization —
//! as `GET /fhir/{type}` by the requesting token, and appends each page as one NDJSON chunk (`bulk_chunks`)
//! together with its resume point, in one transaction. An interrupted job is resumed from that point by the next
//! worker that claims it; a job that keeps failing is marked failed. Files live in the database, so a file written
//! by one replica can be downloaded through any other, and they are deleted when they expire.

pub mod api;
pub mod everything;
pub mod jobs;
pub mod worker;

use crate::fhir::registry;

/// The NDJSON media type of exported files.
pub const NDJSON: &str = "application/fhir+ndjson";

/// The resource types of the patient compartment that an export can hold, `Patient` first.
pub fn compartment_types() -> Vec<&'static str> {
    registry::SUPPORTED_TYPES
        .iter()
        .copied()
        .filter(|t| *t == "Patient" || !registry::patient_compartment_params(t).is_empty())
        .collect()
}

/// Operations on types, for the CapabilityStatement: (type, name, definition).
pub fn type_operations() -> Vec<(String, String, String)> {
    [
        (
            "Patient",
            "everything",
            "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        ),
        (
            "Patient",
            "export",
            "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
        ),
        (
            "Group",
            "export",
            "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
        ),
    ]
    .iter()
    .map(|(t, n, d)| ((*t).to_owned(), (*n).to_owned(), (*d).to_owned()))
    .collect()
}

/// System operations, for the CapabilityStatement: (name, definition).
pub fn system_operations() -> Vec<(String, String)> {
    vec![(
        "export".to_owned(),
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export".to_owned(),
    )]
}
