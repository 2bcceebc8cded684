//! kap-gateway: a FHIR R4 interoperability gateway for ketamine-assisted psychotherapy clinics.

pub mod fhir;
