//! Integration tests: the gateway over HTTP, on SQLite by default and on PostgreSQL when
//! `KAPGW_TEST_POSTGRES_URL` is set (each test gets its own database).

mod helpers;
#[path = "../common/kap_records.rs"]
mod kap_records;

mod audit;
mod bulk;
mod errors;
mod fake_ehr;
mod fhir_search;
mod fhir_write;
mod kap;
mod observability;
mod openapi_routes;
mod profiles;
mod r4_examples;
mod smart_enforcement;
mod smart_external;
mod smart_oauth;
mod sync;
mod transaction;
