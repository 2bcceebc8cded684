//! SMART on FHIR authorization: the built-in authorization server (discovery, authorize with its pages, token,
//! introspection, revocation, signing keys), trust of an external issuer, scopes, and the access context every
//! request carries (https://hl7.org/fhir/smart-app-launch/STU2.2/).

pub mod access;
pub mod keys;
pub mod pages;
pub mod registry;
pub mod scopes;
pub mod server;
pub mod tokens;
