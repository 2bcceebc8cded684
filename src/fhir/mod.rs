//! FHIR protocol machinery: supported types, search-parameter registry, validation, bundles and outcomes.
//! Knows nothing of HTTP or of the database.
