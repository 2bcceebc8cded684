//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! One [`Metrics`] per application, in `AppState::metrics` (an `Arc`; clone it into background workers). Every name
//! starts with `kapgw_`:
//!
//! | Metric | Type | Labels |
//! |---|---|---|
//! | `kapgw_http_requests_total` | counter | `method`, `route` (template), `status` |
//! | `kapgw_http_request_duration_seconds` | histogram | `method`, `route`, `status` |
//! | `kapgw_db_pool_connections` | gauge | `state` (`in_use`, `idle`) |
//! | `kapgw_db_pool_max_connections` | gauge | |
//! | `kapgw_outbox_depth` | gauge | `ehr` |
//! | `kapgw_outbox_oldest_age_seconds` | gauge | `ehr` |
//! | `kapgw_ehr_requests_total` | counter | `ehr`, `outcome` (`success`, `error`) |
//! | `kapgw_tokens_issued_total` | counter | `grant_type` |
//! | `kapgw_tokens_refused_total` | counter | `grant_type`, `error` (the OAuth error code) |
//! | `kapgw_worker_up` | gauge | `worker` (1 running and beating, 0 not) |
//!
//! Hooks for other modules:
//! - the EHR outbox registers where its depth comes from, read at each scrape:
//!   `state.metrics.set_outbox_source(Arc::new(MyOutbox { .. }))` with [`OutboxSource`]; until one is set the
//!   outbox gauges have no series;
//! - each EHR call is counted with `metrics.ehr_request("epic-prod", ok)`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The depth of one EHR's outbox at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxStats {
    /// The EHR's configured name.
    pub ehr: String,
    /// Messages waiting for delivery.
    pub depth: i64,
    /// Age of the oldest waiting message, in seconds (0 when empty).
    pub oldest_age_secs: f64,
}

/// Where the outbox gauges come from; asked once per scrape.
pub trait OutboxSource: Send + Sync {
    fn stats(&self) -> futures_util::future::BoxFuture<'_, anyhow::Result<Vec<OutboxStats>>>;
}

/// The application's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
    pool: Family<Labels, Gauge>,
    pool_max: Gauge,
    outbox_depth: Family<Labels, Gauge>,
    outbox_age: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    ehr_requests: Family<Labels, Counter>,
    tokens_issued: Family<Labels, Counter>,
    tokens_refused: Family<Labels, Counter>,
    workers: Family<Labels, Gauge>,
    outbox_source: RwLock<Option<Arc<dyn OutboxSource>>>,
}

/// Latency buckets from 1 ms to about 16 s.
fn duration_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 16.0,
    ])
}

/// Grant types are counted by name only when they are ones the server knows (a label never takes arbitrary input).
fn grant_label(grant_type: &str) -> String {
    match grant_type {
        "authorization_code" | "refresh_token" | "client_credentials" => grant_type.to_owned(),
        _ => "other".to_owned(),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kapgw");
        let requests = Family::<Labels, Counter>::default();
        let durations = Family::<Labels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let pool = Family::<Labels, Gauge>::default();
        let pool_max = Gauge::default();
        let outbox_depth = Family::<Labels, Gauge>::default();
        let outbox_age = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let ehr_requests = Family::<Labels, Counter>::default();
        let tokens_issued = Family::<Labels, Counter>::default();
        let tokens_refused = Family::<Labels, Counter>::default();
        let workers = Family::<Labels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status",
            durations.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database connections open, by state (in_use, idle)",
            pool.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Size limit of the database connection pool",
            pool_max.clone(),
        );
        registry.register(
            "outbox_depth",
            "Messages waiting in the EHR outbox, per EHR",
            outbox_depth.clone(),
        );
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest message waiting in the EHR outbox, per EHR",
            outbox_age.clone(),
        );
        registry.register(
            "ehr_requests",
            "Requests to EHRs, per EHR and outcome (success, error)",
            ehr_requests.clone(),
        );
        registry.register(
            "tokens_issued",
            "Access tokens issued by the built-in authorization server, by grant type",
            tokens_issued.clone(),
        );
        registry.register(
            "tokens_refused",
            "Token requests refused by the built-in authorization server, by grant type and OAuth error",
            tokens_refused.clone(),
        );
        registry.register(
            "worker_up",
            "Background workers: 1 when running (and beating, for those that beat), else 0",
            workers.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            pool,
            pool_max,
            outbox_depth,
            outbox_age,
            ehr_requests,
            tokens_issued,
            tokens_refused,
            workers,
            outbox_source: RwLock::new(None),
        }
    }

    /// Counts one answered request. `route` is the route template (`/fhir/{type}/{id}`), never the path.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let labels: Labels = vec![
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("status", status.to_string()),
        ];
        self.requests.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one token request of the built-in authorization server: `refused` is its OAuth error code.
    pub fn token_result(&self, grant_type: &str, refused: Option<&str>) {
        match refused {
            None => {
                self.tokens_issued
                    .get_or_create(&vec![("grant_type", grant_label(grant_type))])
                    .inc();
            }
            Some(error) => {
                self.tokens_refused
                    .get_or_create(&vec![
                        ("grant_type", grant_label(grant_type)),
                        ("error", error.to_owned()),
                    ])
                    .inc();
            }
        }
    }

    /// Counts one request to an EHR (for the sync worker).
    pub fn ehr_request(&self, ehr: &str, success: bool) {
        let outcome = if success { "success" } else { "error" };
        self.ehr_requests
            .get_or_create(&vec![
                ("ehr", ehr.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    /// Names where the outbox gauges come from (the EHR sync module calls this once at start).
    pub fn set_outbox_source(&self, source: Arc<dyn OutboxSource>) {
        if let Ok(mut slot) = self.outbox_source.write() {
            *slot = Some(source);
        }
    }

    /// Refreshes the gauges read at scrape time and renders the Prometheus text format.
    pub async fn render(
        &self,
        db: &crate::store::db::Db,
        max_connections: u32,
        workers: &crate::workers::Workers,
    ) -> String {
        let (open, idle) = db.pool_stats();
        let idle = i64::try_from(idle).unwrap_or(i64::MAX);
        let open = i64::from(open);
        self.pool
            .get_or_create(&vec![("state", "in_use".to_owned())])
            .set((open - idle).max(0));
        self.pool
            .get_or_create(&vec![("state", "idle".to_owned())])
            .set(idle);
        self.pool_max.set(i64::from(max_connections));
        for w in workers.status() {
            self.workers
                .get_or_create(&vec![("worker", w.name.clone())])
                .set(i64::from(w.healthy));
        }
        let source = self.outbox_source.read().ok().and_then(|s| s.clone());
        if let Some(source) = source {
            match source.stats().await {
                Ok(stats) => {
                    self.outbox_depth.clear();
                    self.outbox_age.clear();
                    for s in stats {
                        let labels: Labels = vec![("ehr", s.ehr)];
                        self.outbox_depth.get_or_create(&labels).set(s.depth);
                        self.outbox_age
                            .get_or_create(&labels)
                            .set(s.oldest_age_secs);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not read the outbox depth"),
            }
        }
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "could not encode the metrics");
        }
        describe_empty_families(out)
    }
}

/// Families that have no series yet (no EHR configured, no token requested) are left out by the encoder; they are
/// described anyway (HELP and TYPE without samples, as the text format allows) so that dashboards and alerts can
/// be set up before the first value.
fn describe_empty_families(out: String) -> String {
    const FAMILIES: [(&str, &str, &str); 6] = [
        (
            "outbox_depth",
            "gauge",
            "Messages waiting in the EHR outbox, per EHR.",
        ),
        (
            "outbox_oldest_age_seconds",
            "gauge",
            "Age of the oldest message waiting in the EHR outbox, per EHR.",
        ),
        (
            "ehr_requests",
            "counter",
            "Requests to EHRs, per EHR and outcome (success, error).",
        ),
        (
            "tokens_issued",
            "counter",
            "Access tokens issued by the built-in authorization server, by grant type.",
        ),
        (
            "tokens_refused",
            "counter",
            "Token requests refused by the built-in authorization server, by grant type and OAuth error.",
        ),
        (
            "http_requests",
            "counter",
            "HTTP requests answered, by method, route template and status.",
        ),
    ];
    let mut missing = String::new();
    for (name, kind, help) in FAMILIES {
        if !out.contains(&format!("# TYPE kapgw_{name} ")) {
            missing.push_str(&format!(
                "# HELP kapgw_{name} {help}\n# TYPE kapgw_{name} {kind}\n"
            ));
        }
    }
    match out.rfind("# EOF") {
        Some(at) => format!("{}{missing}{}", &out[..at], &out[at..]),
        None => out + &missing,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unknown_grant_types_share_one_label() {
        let m = Metrics::new();
        m.token_result("client_credentials", None);
        m.token_result("<script>", Some("unsupported_grant_type"));
        let mut out = String::new();
        encode(&mut out, &m.registry).unwrap();
        assert!(out.contains("kapgw_tokens_issued_total{grant_type=\"client_credentials\"} 1"));
        assert!(out.contains(
            "kapgw_tokens_refused_total{grant_type=\"other\",error=\"unsupported_grant_type\"} 1"
        ));
        assert!(!out.contains("<script>"));
    }
}
