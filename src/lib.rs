//! kap-gateway: a FHIR R4 interoperability gateway for ketamine-assisted psychotherapy clinics.
//!
//! Module map (arrows are allowed imports): `fhir` (protocol machinery, pure) ← `store` (SQLite/PostgreSQL
//! resource store) ← `service` (FHIR interactions) ← `api` (HTTP handlers); `config`, `error`, `telemetry` are
//! leaves; `startup` wires everything.

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod error;
pub mod fhir;
pub mod service;
pub mod startup;
pub mod store;
pub mod sync;
pub mod telemetry;
