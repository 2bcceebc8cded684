//! `/metrics` (Prometheus text), `/health/ready` with the background workers, and the hooks other modules use.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use kap_gateway::auth::registry::{ClientKind, NewClient};
use kap_gateway::config::Config;
use kap_gateway::metrics::{OutboxSource, OutboxStats};
use kap_gateway::startup::Application;
use kap_gateway::workers::Stage;
use serde_json::{Value, json};

use crate::helpers::*;

/// The value of one sample line (`name{labels} value`) of a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn metrics_text(address: &str) -> String {
    let resp = reqwest::get(format!("{address}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    resp.text().await.unwrap()
}

#[tokio::test]
async fn requests_are_counted_and_timed_by_route_template_and_status() {
    let app = spawn_app().await;
    let id = app
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Metricsdottir"}]}))
        .await;
    assert_eq!(app.get(&format!("/fhir/Patient/{id}")).await.status, 200);
    assert_eq!(app.get(&format!("/fhir/Patient/{id}")).await.status, 200);
    assert_eq!(app.get("/fhir/Patient/no-such-patient").await.status, 404);
    assert_eq!(
        app.get("/fhir/Patient?family=Metricsdottir").await.status,
        200
    );

    let text = metrics_text(&app.address).await;
    let read = r#"{method="GET",route="/fhir/{type}/{id}",status="200"}"#;
    assert_eq!(
        sample(&text, &format!("kapgw_http_requests_total{read}")),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"kapgw_http_requests_total{method="GET",route="/fhir/{type}/{id}",status="404"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"kapgw_http_requests_total{method="POST",route="/fhir/{type}",status="201"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("kapgw_http_request_duration_seconds_count{read}")
        ),
        Some(2.0)
    );
    let sum = sample(
        &text,
        &format!("kapgw_http_request_duration_seconds_sum{read}"),
    )
    .unwrap();
    assert!(sum > 0.0);
    let inf = r#"kapgw_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/fhir/{type}/{id}",status="200"}"#;
    assert_eq!(sample(&text, inf), Some(2.0));
    // Route templates only: no id, no search value.
    assert!(!text.contains(&id));
    assert!(!text.contains("Metricsdottir"));
    assert!(!text.contains("no-such-patient"));
    // The pool, the workers and the outbox are described.
    assert_eq!(
        sample(&text, "kapgw_db_pool_max_connections"),
        Some(5.0),
        "{text}"
    );
    assert!(sample(&text, r#"kapgw_db_pool_connections{state="idle"}"#).is_some());
    assert!(sample(&text, r#"kapgw_db_pool_connections{state="in_use"}"#).is_some());
    // The audit journal's importer (beside a SQLite file), or the group-commit writer (PostgreSQL).
    assert_eq!(
        sample(&text, r#"kapgw_worker_up{worker="audit-importer"}"#)
            .or_else(|| sample(&text, r#"kapgw_worker_up{worker="audit-writer"}"#)),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"kapgw_worker_up{worker="signing-key-reload"}"#),
        Some(1.0)
    );
    for family in [
        "kapgw_outbox_depth",
        "kapgw_outbox_oldest_age_seconds",
        "kapgw_tokens_issued",
        "kapgw_tokens_refused",
        "kapgw_ehr_requests",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
    }
}

#[tokio::test]
async fn token_grants_and_refusals_are_counted_by_grant_type_and_error() {
    let app = spawn_app().await;
    registry(&app)
        .await
        .add_client(NewClient {
            client_id: "metrics-backend".into(),
            name: "Metrics backend".into(),
            kind: ClientKind::ConfidentialSymmetric,
            secret: Some("a-long-enough-secret-for-metrics".into()),
            redirect_uris: vec![],
            allowed_scopes: "system/Patient.rs".into(),
            jwks: None,
            jwks_uri: None,
        })
        .await
        .unwrap();
    let token = |secret: &'static str| {
        app.anonymous
            .post(format!("{}/auth/token", app.address))
            .basic_auth("metrics-backend", Some(secret))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&scope=system%2FPatient.rs")
            .send()
    };
    assert_eq!(
        token("a-long-enough-secret-for-metrics")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        token("a-long-enough-secret-for-metrics")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(token("the-wrong-secret").await.unwrap().status(), 401);
    let text = metrics_text(&app.address).await;
    assert_eq!(
        sample(
            &text,
            r#"kapgw_tokens_issued_total{grant_type="client_credentials"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"kapgw_tokens_refused_total{grant_type="client_credentials",error="invalid_client"}"#
        ),
        Some(1.0),
        "{text}"
    );
}

async fn build_app() -> (Application, Option<tempfile::TempDir>) {
    let (database_url, dir) = fresh_database().await;
    let config = Config {
        listen: "127.0.0.1:0".into(),
        database_url,
        db_max_connections: 3,
        http_workers: 1,
        ..Config::default()
    };
    (Application::build(config).await.unwrap(), dir)
}

#[tokio::test]
async fn readiness_reports_the_workers_and_fails_when_one_has_stopped() {
    let (app, _dir) = build_app().await;
    let address = format!("http://127.0.0.1:{}", app.port());
    let workers = app.state.workers.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    workers.spawn("short-lived", Stage::Background, None, |_w| async move {
        let _ = stop_rx.await;
    });
    tokio::spawn(app.run_until_stopped());
    let ready = reqwest::get(format!("{address}/health/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["workers"], "pass");
    let names: Vec<&str> = body["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"audit-writer") || names.contains(&"audit-importer"),
        "{names:?}"
    );
    assert!(names.contains(&"signing-key-reload"), "{names:?}");
    assert!(names.contains(&"short-lived"), "{names:?}");

    // The worker ends: the instance is no longer ready, and says which worker is missing.
    stop_tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = reqwest::get(format!("{address}/health/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "fail");
    assert_eq!(body["checks"]["workers"], "fail");
    assert_eq!(body["checks"]["database"], "pass");
    let dead = body["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "short-lived")
        .unwrap();
    assert_eq!(dead["running"], false);
    let text = metrics_text(&address).await;
    assert_eq!(
        sample(&text, r#"kapgw_worker_up{worker="short-lived"}"#),
        Some(0.0)
    );
    // Liveness is unaffected.
    let live = reqwest::get(format!("{address}/health/live"))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
}

struct FixedOutbox(Vec<OutboxStats>);

impl OutboxSource for FixedOutbox {
    fn stats(&self) -> futures_util::future::BoxFuture<'_, anyhow::Result<Vec<OutboxStats>>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

#[tokio::test]
async fn the_outbox_gauges_show_what_the_registered_source_reports_per_ehr() {
    let (app, _dir) = build_app().await;
    let address = format!("http://127.0.0.1:{}", app.port());
    let metrics = app.state.metrics.clone();
    tokio::spawn(app.run_until_stopped());
    // No source registered (no EHR sync): the families exist without series.
    let text = metrics_text(&address).await;
    assert!(!text.contains("kapgw_outbox_depth{"));
    metrics.set_outbox_source(Arc::new(FixedOutbox(vec![
        OutboxStats {
            ehr: "ehr-a".into(),
            depth: 7,
            oldest_age_secs: 42.5,
        },
        OutboxStats {
            ehr: "ehr-b".into(),
            depth: 0,
            oldest_age_secs: 0.0,
        },
    ])));
    metrics.ehr_request("ehr-a", true);
    metrics.ehr_request("ehr-a", false);
    let text = metrics_text(&address).await;
    assert_eq!(
        sample(&text, r#"kapgw_outbox_depth{ehr="ehr-a"}"#),
        Some(7.0)
    );
    assert_eq!(
        sample(&text, r#"kapgw_outbox_depth{ehr="ehr-b"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"kapgw_outbox_oldest_age_seconds{ehr="ehr-a"}"#),
        Some(42.5)
    );
    assert_eq!(
        sample(
            &text,
            r#"kapgw_ehr_requests_total{ehr="ehr-a",outcome="error"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn shutdown_stops_background_workers_and_flushes_the_audit_writers() {
    let (app, _dir) = build_app().await;
    let workers = app.state.workers.clone();
    let db = app.state.store.db.clone();
    let (finished_tx, finished_rx) = tokio::sync::oneshot::channel::<()>();
    workers.spawn(
        "delivery",
        Stage::Background,
        Some(Duration::from_secs(60)),
        |w| async move {
            w.stopping().await;
            // The delivery in progress completes after the signal.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = finished_tx.send(());
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async move {
        let _ = stop_rx.await;
    }));
    stop_tx.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert!(
        finished_rx.await.is_ok(),
        "the worker finished its delivery"
    );
    assert!(workers.status().iter().all(|w| !w.running));
    // The pool is closed once everything has stopped.
    assert!(db.begin_read().await.is_err());
}
