//! The KAP clinical API's domain: the records a clinic keeps over a ketamine-assisted psychotherapy course
//! (`model`), their domain rules (`rules`), their lossless mapping to and from FHIR R4 in the project's profiles
//! (`mapping`, with every code in `codes`), the operations that write them as one FHIR transaction and read them
//! back (`service`), the course view (`course`) and the demo cohort (`seed`).

pub mod codes;
pub mod course;
pub mod fhirjson;
pub mod mapping;
pub mod model;
pub mod rules;
pub mod seed;
pub mod service;
