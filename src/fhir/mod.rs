//! FHIR protocol machinery: supported types, search-parameter registry, search parsing, validation, outcomes and
//! the CapabilityStatement. Knows nothing of HTTP or of the database.

pub mod capability;
pub mod datetime;
pub mod extract;
pub mod labels;
pub mod outcome;
pub mod profile;
pub mod registry;
pub mod search;
pub mod validate;
