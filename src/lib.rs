//! kap-gateway: a FHIR R4 interoperability gateway for ketamine-assisted psychotherapy clinics.
//!
//! Module map (arrows are allowed imports): `fhir` (protocol machinery, pure) ← `store` (SQLite/PostgreSQL
//! resource store) ← `service` (FHIR interactions) ← `api` (HTTP handlers); `config`, `error`, `workers` are leaves;
//! `metrics` reads the store's pool and the workers; `telemetry` (logs, traces, the request-span middleware) sits beside
//! `api`; `startup` wires everything.

pub mod api;
pub mod audit;
pub mod auth;
pub mod bulk;
pub mod config;
pub mod error;
pub mod fhir;
pub mod kap;
pub mod metrics;
pub mod service;
pub mod startup;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod workers;
