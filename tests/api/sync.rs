//! EHR sync end to end: KAP resources written over FHIR are delivered to a fake EHR (a real HTTP server on
//! loopback) exactly once per business identifier, through outages, throttling, rejections, token expiry,
//! concurrent workers and a killed gateway process; pull brings an EHR's patient and conditions back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kap_gateway::store::db::Db;
use kap_gateway::sync::config::{EhrAuthKind, EhrConfig, SyncConfig};
use kap_gateway::sync::worker::Worker;
use serde_json::{Value, json};

use crate::fake_ehr::{FakeEhr, Fault};
use crate::helpers::{TestApp, spawn_app_with};
use crate::kap_records::record;

const MRN: &str = "urn:oid:2.16.840.1.113883.19.5";

fn example(name: &str) -> Value {
    let path = format!(
        "{}/profiles/examples/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn fast_settings() -> SyncConfig {
    SyncConfig {
        worker: false,
        poll_interval_ms: 20,
        lease_secs: 30,
        batch: 16,
        backoff_base_ms: 20,
        backoff_max_secs: 1,
    }
}

fn ehr_config(fake: &FakeEhr) -> EhrConfig {
    EhrConfig {
        patient_identifier_system: Some(MRN.into()),
        timeout_secs: 5,
        connect_timeout_secs: 1,
        ..EhrConfig::new("fake", &fake.base())
    }
}

struct Sync {
    app: TestApp,
    /// A client with the `kap/sync.admin` scope.
    admin: reqwest::Client,
    fake: Arc<FakeEhr>,
    db: Db,
    worker: Worker,
}

/// A gateway with one EHR (the fake) configured, its worker driven by the test.
async fn setup(adjust: impl FnOnce(&mut EhrConfig)) -> Sync {
    let fake = FakeEhr::start().await;
    let mut ehr = ehr_config(&fake);
    adjust(&mut ehr);
    let cfg = ehr.clone();
    let app = spawn_app_with(move |c| {
        c.ehr = vec![cfg];
        c.sync = fast_settings();
    })
    .await;
    let db = Db::connect(&app.database_url, 4).await.unwrap();
    let worker = Worker::new(db.clone(), &[ehr], fast_settings()).unwrap();
    let admin = app.client_for("kap/sync.admin", None).await;
    Sync {
        admin,
        app,
        fake,
        db,
        worker,
    }
}

impl Sync {
    async fn put(&self, r: &Value) {
        let t = r["resourceType"].as_str().unwrap();
        let id = r["id"].as_str().unwrap();
        let resp = self
            .app
            .client
            .put(self.app.url(&format!("/fhir/{t}/{id}")))
            .header("Content-Type", "application/fhir+json")
            .body(r.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(
            status == 200 || status == 201,
            "PUT {t}/{id}: {status} {}",
            resp.text().await.unwrap()
        );
    }

    async fn counts(&self) -> BTreeMap<String, i64> {
        kap_gateway::sync::outbox::counts(&self.db, "fake")
            .await
            .unwrap()
    }

    /// Runs worker steps until nothing is pending (or panics after `limit`).
    async fn drain(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            self.worker.run_once().await.unwrap();
            if self.counts().await.get("pending").copied().unwrap_or(0) == 0 {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "outbox not drained: {:?}",
                self.counts().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The patient, a practitioner (not a KAP resource) and a PHQ-9 score with its encounter.
async fn write_basics(s: &Sync) {
    s.put(&example("Practitioner-kap-example-practitioner"))
        .await;
    s.put(&example("Patient-kap-example-patient")).await;
    s.put(&example("Encounter-kap-example-evaluation")).await;
    s.put(&example("Observation-kap-example-phq9-baseline"))
        .await;
}

/// A KAP score for the example patient with business identifier `value`.
fn score(id: &str, value: &str, score: i64) -> Value {
    let mut r = example("Observation-kap-example-phq9-baseline");
    r["id"] = json!(id);
    r["identifier"][0]["value"] = json!(value);
    r["valueInteger"] = json!(score);
    r
}

/// A second patient with its own score, for ordering tests.
fn other_patient() -> (Value, Value) {
    let mut p = example("Patient-kap-example-patient");
    p["id"] = json!("other-patient");
    p["identifier"][0]["value"] = json!("pt-000999");
    p["identifier"][1]["value"] = json!("MRN-999");
    let mut o = score("other-score", "sc-other", 7);
    o["subject"]["reference"] = json!("Patient/other-patient");
    (p, o)
}

fn writes_for(fake: &FakeEhr, value: &str) -> usize {
    fake.writes()
        .iter()
        .filter(|r| {
            r.identifier()
                .is_some_and(|i| i.ends_with(&format!("|{value}")))
                && r.status < 300
        })
        .count()
}

#[tokio::test]
async fn kap_writes_reach_the_ehr_once_each_as_r4_with_references_rewritten() {
    let s = setup(|_| {}).await;
    write_basics(&s).await;
    // Enqueued in the write transactions: the practitioner has no KAP profile and stays local.
    assert_eq!(s.counts().await.get("pending"), Some(&3));
    s.drain(Duration::from_secs(10)).await;
    assert_eq!(s.counts().await.get("delivered"), Some(&3));

    let writes = s.fake.writes();
    assert_eq!(writes.len(), 3, "{writes:#?}");
    for w in &writes {
        assert_eq!(
            w.content_type.as_deref(),
            Some("application/fhir+json; fhirVersion=4.0")
        );
        assert_eq!(
            w.accept.as_deref(),
            Some("application/fhir+json; fhirVersion=4.0")
        );
        let tp = w.traceparent.as_deref().expect("traceparent");
        assert!(tp.starts_with("00-") && tp.len() == 55, "{tp}");
    }
    // The patient is matched on the EHR's identifier system, the others updated on their business identifier.
    assert_eq!(writes[0].method, "POST");
    assert_eq!(
        writes[0].identifier().as_deref(),
        Some(&*format!("{MRN}|MRN-5521907"))
    );
    assert_eq!(writes[2].method, "PUT");
    assert_eq!(
        writes[2].identifier().as_deref(),
        Some("urn:kap-gateway:score|sc-0001-phq9")
    );
    let patient_id = s.fake.stored("Patient")[0].id.clone();
    let encounter_id = s.fake.stored("Encounter")[0].id.clone();
    let obs = &s.fake.stored("Observation")[0].body;
    assert_eq!(
        obs["subject"]["reference"],
        json!(format!("Patient/{patient_id}"))
    );
    assert_eq!(
        obs["encounter"]["reference"],
        json!(format!("Encounter/{encounter_id}"))
    );
    // A practitioner the EHR cannot resolve is referenced by its NPI.
    assert!(
        obs["performer"][0]["reference"]
            .as_str()
            .unwrap()
            .starts_with("Practitioner?identifier=http")
    );
    assert_eq!(obs["valueInteger"], json!(21));

    // An update is a second conditional update of the same EHR resource, not a new one.
    s.put(&score("kap-example-phq9-baseline", "sc-0001-phq9", 18))
        .await;
    s.drain(Duration::from_secs(10)).await;
    let stored = s.fake.stored_with("urn:kap-gateway:score", "sc-0001-phq9");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].body["valueInteger"], json!(18));
    assert_eq!(stored[0].version, 2);
}

#[tokio::test]
async fn an_ehr_outage_while_records_are_written_loses_and_duplicates_nothing() {
    let s = setup(|_| {}).await;
    s.fake.down().await;
    write_basics(&s).await;
    for i in 0..8 {
        s.put(&score(&format!("score-{i}"), &format!("sc-{i}"), i))
            .await;
    }
    let (p, o) = other_patient();
    s.put(&p).await;
    s.put(&o).await;
    // A record updated during the outage: both versions go, in order.
    s.put(&score("score-3", "sc-3", 27)).await;
    for _ in 0..5 {
        s.worker.run_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let counts = s.counts().await;
    assert_eq!(counts.get("delivered"), None, "{counts:?}");
    assert_eq!(counts.get("pending"), Some(&14));
    let status = s.app.get_with(&s.admin, "/admin/sync").await;
    assert_eq!(status.status, 200, "{}", status.text);
    let ehr = &status.body["ehrs"][0];
    assert_eq!(ehr["pending"], json!(14));
    assert!(
        ehr["last_error"].as_str().unwrap().contains("network"),
        "{ehr}"
    );
    assert!(ehr["oldest_pending_age_secs"].as_f64().unwrap() > 0.0);
    assert!(ehr["last_success"].is_null());
    let metrics = s.app.get_with(&s.admin, "/admin/sync/metrics").await;
    assert!(
        metrics
            .text
            .contains("kapgw_sync_pending{ehr=\"fake\"} 14\n"),
        "{}",
        metrics.text
    );

    s.fake.up().await;
    s.drain(Duration::from_secs(20)).await;
    assert_eq!(s.counts().await.get("delivered"), Some(&14));
    for i in 0..8 {
        let v = format!("sc-{i}");
        assert_eq!(
            s.fake.stored_with("urn:kap-gateway:score", &v).len(),
            1,
            "{v}"
        );
    }
    assert_eq!(s.fake.stored("Patient").len(), 2);
    assert_eq!(s.fake.stored("Observation").len(), 10);
    let sc3 = s.fake.stored_with("urn:kap-gateway:score", "sc-3");
    assert_eq!(sc3[0].body["valueInteger"], json!(27));
    assert_eq!(writes_for(&s.fake, "sc-3"), 2);
    let status = s.app.get_with(&s.admin, "/admin/sync").await;
    assert_eq!(status.body["ehrs"][0]["pending"], json!(0));
    assert!(status.body["ehrs"][0]["last_success"].is_string());
    let metrics = s.app.get_with(&s.admin, "/admin/sync/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text
            .contains("kapgw_sync_pending{ehr=\"fake\"} 0\n"),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("kapgw_sync_delivered_total{ehr=\"fake\"} 14\n")
    );
    assert!(
        metrics
            .text
            .contains("kapgw_sync_last_success_timestamp_seconds{ehr=\"fake\"} 1")
    );
    assert!(
        metrics
            .text
            .contains("kapgw_sync_last_error_timestamp_seconds{ehr=\"fake\"} 1")
    );
}

#[tokio::test]
async fn server_errors_and_throttling_are_retried_and_retry_after_is_honoured() {
    let s = setup(|_| {}).await;
    s.put(&example("Patient-kap-example-patient")).await;
    s.fake.with(|st| {
        st.script
            .extend([Fault::Status(500), Fault::Status(503), Fault::TooMany(1)]);
    });
    s.drain(Duration::from_secs(15)).await;
    let writes = s.fake.writes();
    let statuses: Vec<u16> = writes.iter().map(|w| w.status).collect();
    assert_eq!(statuses, vec![500, 503, 429, 201]);
    let waited = writes[3].at.duration_since(writes[2].at);
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After ignored: {waited:?}"
    );
    assert_eq!(s.fake.stored("Patient").len(), 1);
    assert_eq!(s.counts().await.get("delivered"), Some(&1));
}

#[tokio::test]
async fn a_rejected_record_becomes_a_dead_letter_with_the_ehrs_outcome_while_the_rest_go_on() {
    let s = setup(|_| {}).await;
    s.fake.with(|st| st.reject.push("sc-1".into()));
    s.put(&example("Patient-kap-example-patient")).await;
    for i in 0..3 {
        s.put(&score(&format!("score-{i}"), &format!("sc-{i}"), i))
            .await;
    }
    s.drain(Duration::from_secs(10)).await;
    let counts = s.counts().await;
    assert_eq!(counts.get("dead"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("delivered"), Some(&3));
    // The later record of the same patient went on.
    assert_eq!(s.fake.stored_with("urn:kap-gateway:score", "sc-2").len(), 1);
    assert_eq!(writes_for(&s.fake, "sc-1"), 0);

    let status = s.app.get_with(&s.admin, "/admin/sync").await;
    assert_eq!(status.status, 200);
    let dead = &status.body["dead_letters"][0];
    assert_eq!(dead["identifier"], json!("urn:kap-gateway:score|sc-1"));
    assert_eq!(dead["status"], json!(422));
    assert_eq!(dead["outcome"]["resourceType"], json!("OperationOutcome"));
    assert_eq!(
        dead["outcome"]["issue"][0]["diagnostics"],
        json!("record sc-1 refused by the EHR")
    );
    assert_eq!(status.body["ehrs"][0]["dead"], json!(1));

    // Once the EHR accepts it, a retry delivers it.
    s.fake.with(|st| st.reject.clear());
    let seq = dead["seq"].as_i64().unwrap();
    let retry = s
        .admin
        .post(s.app.url(&format!("/admin/sync/retry?seq={seq}")))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status().as_u16(), 200);
    let body: Value = retry.json().await.unwrap();
    assert_eq!(body["requeued"], json!(1));
    s.drain(Duration::from_secs(10)).await;
    assert_eq!(s.fake.stored_with("urn:kap-gateway:score", "sc-1").len(), 1);
    assert_eq!(s.counts().await.get("dead"), None);
}

#[tokio::test]
async fn a_failing_record_holds_back_its_patient_only_and_order_is_kept() {
    let s = setup(|_| {}).await;
    s.put(&example("Patient-kap-example-patient")).await;
    let (p, o) = other_patient();
    s.put(&p).await;
    s.drain(Duration::from_secs(10)).await;
    s.fake.with(|st| st.fail_once.push("sc-a1".into()));
    s.put(&score("a1", "sc-a1", 1)).await;
    s.put(&score("a2", "sc-a2", 2)).await;
    s.put(&o).await;
    s.worker.run_once().await.unwrap();
    // The other patient's record went; this patient's second record waits for the first.
    assert_eq!(writes_for(&s.fake, "sc-other"), 1);
    assert_eq!(writes_for(&s.fake, "sc-a2"), 0);
    s.drain(Duration::from_secs(10)).await;
    let order: Vec<String> = s
        .fake
        .writes()
        .iter()
        .filter(|w| w.status < 300)
        .filter_map(|w| w.identifier())
        .filter(|i| i.contains("sc-a"))
        .collect();
    assert_eq!(
        order,
        vec!["urn:kap-gateway:score|sc-a1", "urn:kap-gateway:score|sc-a2"]
    );
}

/// A gateway whose EHR connection uses SMART Backend Services with a fresh EC P-384 key the fake EHR trusts.
async fn setup_smart() -> Sync {
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pkcs8.as_ref());
    let lines: Vec<String> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    // The key is read when the worker is built, so the file may go once setup returns.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("ehr-key.pem");
    std::fs::write(&key_file, pem).unwrap();
    let key_path = key_file.display().to_string();
    let s = setup(move |e| {
        e.auth = EhrAuthKind::SmartBackend;
        e.client_id = Some("kap-gateway-test".into());
        e.private_key_file = Some(key_path);
        e.algorithm = "ES384".into();
    })
    .await;
    s.fake.with(|st| {
        st.client_key = Some(public);
        st.client_id = "kap-gateway-test".into();
    });
    s
}

#[tokio::test]
async fn an_access_token_expiring_mid_stream_is_refreshed() {
    let s = setup_smart().await;
    s.put(&example("Patient-kap-example-patient")).await;
    s.drain(Duration::from_secs(10)).await;
    assert_eq!(s.fake.with(|st| st.token_requests), 1);
    // A second delivery reuses the cached token.
    s.put(&score("t1", "sc-t1", 3)).await;
    s.drain(Duration::from_secs(10)).await;
    assert_eq!(s.fake.with(|st| st.token_requests), 1);

    s.fake.expire_tokens();
    s.put(&score("t2", "sc-t2", 4)).await;
    s.put(&score("t3", "sc-t3", 5)).await;
    s.drain(Duration::from_secs(10)).await;
    assert_eq!(s.fake.with(|st| st.token_requests), 2);
    let statuses: Vec<u16> = s.fake.writes().iter().map(|w| w.status).collect();
    assert_eq!(statuses, vec![201, 201, 401, 201, 201], "{statuses:?}");
    assert_eq!(s.counts().await.get("delivered"), Some(&4));
    assert!(s.fake.writes().iter().all(|w| {
        w.authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer tok-"))
    }));
}

#[tokio::test]
async fn psychotherapy_notes_wait_for_the_patients_recorded_authorization() {
    let s = setup(|_| {}).await;
    write_basics(&s).await;
    s.put(&example("Encounter-kap-example-dosing")).await;
    s.put(&example("Encounter-kap-example-integration")).await;
    s.put(&example("Observation-kap-example-integration-note"))
        .await;
    s.drain(Duration::from_secs(10)).await;
    assert_eq!(s.counts().await.get("withheld"), Some(&1));
    assert!(
        s.fake
            .stored_with("urn:kap-gateway:integration-note", "ses-0004-note")
            .is_empty()
    );
    let status = s.app.get_with(&s.admin, "/admin/sync").await;
    assert_eq!(status.body["ehrs"][0]["withheld"], json!(1));

    let recorded = s
        .admin
        .post(s.app.url("/admin/sync/authorizations"))
        .json(&json!({"patient": "kap-example-patient", "ehr": "fake", "reference": "consent form 2026-09-20"}))
        .send()
        .await
        .unwrap();
    assert_eq!(recorded.status().as_u16(), 201);
    let body: Value = recorded.json().await.unwrap();
    assert_eq!(body["requeued"], json!(1));
    s.drain(Duration::from_secs(10)).await;
    let notes = s
        .fake
        .stored_with("urn:kap-gateway:integration-note", "ses-0004-note");
    assert_eq!(notes.len(), 1);
    // Its labels travel with it.
    assert!(
        notes[0].body["meta"]["security"]
            .to_string()
            .contains("PSY")
    );
}

#[tokio::test]
async fn deletions_are_conditional_deletes_on_the_business_identifier() {
    let s = setup(|_| {}).await;
    write_basics(&s).await;
    s.drain(Duration::from_secs(10)).await;
    assert_eq!(s.fake.stored("Observation").len(), 1);
    let resp = s
        .app
        .client
        .delete(s.app.url("/fhir/Observation/kap-example-phq9-baseline"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    s.drain(Duration::from_secs(10)).await;
    let last = s.fake.writes().pop().unwrap();
    assert_eq!(last.method, "DELETE");
    assert_eq!(
        last.identifier().as_deref(),
        Some("urn:kap-gateway:score|sc-0001-phq9")
    );
    assert!(s.fake.stored("Observation").is_empty());
}

#[tokio::test]
async fn admin_sync_needs_an_administrator_or_the_sync_scope() {
    let s = setup(|_| {}).await;
    let system = s.app.client_for("system/*.cruds", None).await;
    let refused = s.app.get_with(&system, "/admin/sync").await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.body["resourceType"], json!("OperationOutcome"));
    let anonymous = s.app.get_with(&s.app.anonymous, "/admin/sync").await;
    assert_eq!(anonymous.status, 401);
    let admin = s.app.client_for("kap/sync.admin", None).await;
    let ok = s.app.get_with(&admin, "/admin/sync").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body["ehrs"][0]["name"], json!("fake"));
    assert_eq!(ok.body["ehrs"][0]["base_url"], json!(s.fake.base()));
}

#[tokio::test]
async fn a_dead_workers_lease_expires_and_another_worker_takes_over() {
    let s = setup(|_| {}).await;
    s.put(&example("Patient-kap-example-patient")).await;
    // A worker claims the row and dies without finishing it.
    let claimed = kap_gateway::sync::outbox::claim(&s.db, "fake", "dead-worker", 1, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let report = s.worker.run_once().await.unwrap();
    assert_eq!(report.claimed, 0, "the lease is still held");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = s.worker.run_once().await.unwrap();
    assert_eq!(report.delivered, 1);
    assert_eq!(s.fake.stored("Patient").len(), 1);
}

#[tokio::test]
async fn two_workers_on_one_postgres_database_never_deliver_a_row_twice() {
    let s = setup(|_| {}).await;
    if s.db.backend() != kap_gateway::store::db::Backend::Postgres {
        eprintln!(
            "skipped: SQLite serves one gateway process by design; set KAPGW_TEST_POSTGRES_URL to run this test"
        );
        return;
    }
    s.fake.with(|st| st.slow = Duration::from_millis(5));
    let mut patients = Vec::new();
    for p in 0..6 {
        let mut pt = example("Patient-kap-example-patient");
        pt["id"] = json!(format!("p{p}"));
        pt["identifier"][0]["value"] = json!(format!("pt-{p}"));
        pt["identifier"][1]["value"] = json!(format!("MRN-{p}"));
        s.put(&pt).await;
        patients.push(format!("p{p}"));
    }
    for i in 0..30 {
        let mut o = score(&format!("o{i}"), &format!("sc-{i}"), i % 27);
        o["subject"]["reference"] = json!(format!("Patient/p{}", i % 6));
        s.put(&o).await;
    }
    let ehr = ehr_config(&s.fake);
    let mut small = fast_settings();
    small.batch = 3;
    let w1 = Worker::new(s.db.clone(), std::slice::from_ref(&ehr), small.clone()).unwrap();
    let db2 = Db::connect(&s.app.database_url, 4).await.unwrap();
    let w2 = Worker::new(db2, &[ehr], small).unwrap();
    let run = |w: Worker| async move {
        let mut delivered = 0;
        for _ in 0..200 {
            let r = w.run_once().await.unwrap();
            delivered += r.delivered;
            if r.claimed == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        delivered
    };
    let (a, b) = tokio::join!(tokio::spawn(run(w1)), tokio::spawn(run(w2)));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a + b, 36, "{a} + {b}");
    assert!(a > 0 && b > 0, "both workers took part: {a} + {b}");
    assert_eq!(s.fake.writes().len(), 36, "one request per row");
    for i in 0..30 {
        assert_eq!(writes_for(&s.fake, &format!("sc-{i}")), 1);
    }
}

#[tokio::test]
async fn pull_stores_the_ehrs_patient_and_conditions_with_their_source_incrementally() {
    let s = setup(|_| {}).await;
    s.put(&example("Patient-kap-example-patient")).await;
    let remote = s.fake.seed(json!({
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": "MRN-5521907"}],
        "name": [{"family": "Rivera", "given": ["Alexandra"]}],
        "gender": "female",
        "birthDate": "1987-04-12",
        "address": [{"city": "Portland", "state": "OR"}]
    }));
    s.fake.seed(json!({
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertensive disorder"}]},
        "subject": {"reference": format!("Patient/{remote}")}
    }));
    s.fake.seed(json!({
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "294640001", "display": "Ketamine allergy"}]},
        "patient": {"reference": format!("Patient/{remote}")}
    }));
    s.fake.seed(json!({
        "resourceType": "MedicationStatement",
        "status": "active",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "2670", "display": "codeine"}]},
        "subject": {"reference": format!("Patient/{remote}")}
    }));
    let service = kap_gateway::service::FhirService::new(
        kap_gateway::store::Store::new(s.db.clone()),
        s.app.base.clone(),
    );
    let target = &s.worker.targets()[0];
    let identifier = format!("{MRN}|MRN-5521907");
    let report = kap_gateway::sync::pull::pull_patient(&service, target, &identifier)
        .await
        .unwrap();
    assert_eq!(
        report.patient.as_deref(),
        Some("Patient/kap-example-patient")
    );
    assert_eq!(report.written.len(), 4, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(report.skipped_types.is_empty(), "{report:?}");

    let patient = s.app.get("/fhir/Patient/kap-example-patient").await;
    assert_eq!(patient.body["name"][0]["given"][0], json!("Alexandra"));
    assert_eq!(patient.body["address"][0]["city"], json!("Portland"));
    // Our identifiers and profile stay.
    assert!(patient.text.contains("urn:kap-gateway:patient"));
    assert!(patient.text.contains("kap-patient"));
    assert_eq!(
        patient.body["meta"]["source"],
        json!(format!("{}/Patient/{remote}", s.fake.base()))
    );
    let conditions = s
        .app
        .get("/fhir/Condition?subject=Patient/kap-example-patient")
        .await;
    let condition = &conditions.body["entry"][0]["resource"];
    assert_eq!(condition["code"]["coding"][0]["code"], json!("38341003"));
    assert!(
        condition["meta"]["source"]
            .as_str()
            .unwrap()
            .starts_with(&s.fake.base())
    );
    let provenance = s
        .app
        .get(&format!("/fhir/{}", report.provenance.clone().unwrap()))
        .await;
    assert_eq!(provenance.body["target"].as_array().unwrap().len(), 4);
    // The contraindication screen's inputs: the allergy and the medication, found by patient.
    let allergies = s
        .app
        .get("/fhir/AllergyIntolerance?patient=Patient/kap-example-patient")
        .await;
    assert_eq!(
        allergies.body["entry"][0]["resource"]["code"]["coding"][0]["code"],
        json!("294640001"),
        "{}",
        allergies.text
    );
    let meds = s
        .app
        .get("/fhir/MedicationStatement?patient=kap-example-patient&status=active")
        .await;
    assert_eq!(meds.match_ids().len(), 1, "{}", meds.text);
    assert_eq!(
        provenance.body["entity"][0]["what"]["reference"],
        json!(format!("{}/Patient/{remote}", s.fake.base()))
    );

    // Again: only what changed since, asked with _lastUpdated.
    let again = kap_gateway::sync::pull::pull_patient(&service, target, &identifier)
        .await
        .unwrap();
    assert!(again.written.is_empty(), "{again:?}");
    assert!(again.provenance.is_none());
    let asked = s
        .fake
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.target.starts_with("/fhir/Condition?"))
        .unwrap();
    assert!(asked.target.contains("_lastUpdated=gt"), "{}", asked.target);
}

/// Starts the real gateway binary on `db_url` with the fake EHR configured; returns the child and its base URL.
fn spawn_gateway(config: &std::path::Path) -> (std::process::Child, String) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kap-gateway"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("KAPGW_LOG_FORMAT", "json")
        .env("KAPGW_LOG_LEVEL", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent
                && line.contains("kap-gateway listening")
                && let Some(port) = line.split("\"port\":").nth(1)
            {
                let port: String = port.chars().take_while(char::is_ascii_digit).collect();
                let _ = tx.send(port);
                sent = true;
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("gateway did not start");
    (child, format!("http://127.0.0.1:{port}"))
}

#[tokio::test]
async fn killing_the_gateway_mid_delivery_loses_and_duplicates_nothing_after_restart() {
    let fake = FakeEhr::start().await;
    let (database_url, _dir) = crate::helpers::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kap-gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
database_url = "{database_url}"
http_workers = 1

[[clients]]
client_id = "writer"
name = "Test writer"
kind = "confidential-symmetric"
secret = "a-long-test-secret-of-enough-length"
allowed_scopes = "system/*.cruds"

[sync]
poll_interval_ms = 50
lease_secs = 2
batch = 4
backoff_base_ms = 50
backoff_max_secs = 1

[[ehr]]
name = "fake"
base_url = "{}"
patient_identifier_system = "{MRN}"
timeout_secs = 5
"#,
            fake.base()
        ),
    )
    .unwrap();
    // Slow enough that the process dies with deliveries in flight.
    fake.with(|st| st.slow = Duration::from_millis(300));
    let (mut child, address) = spawn_gateway(&config);
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{address}/auth/token"))
        .basic_auth("writer", Some("a-long-test-secret-of-enough-length"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.cruds"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let put = |address: String, r: Value, token: String| {
        let http = http.clone();
        async move {
            let t = r["resourceType"].as_str().unwrap().to_owned();
            let id = r["id"].as_str().unwrap().to_owned();
            let resp = http
                .put(format!("{address}/fhir/{t}/{id}"))
                .bearer_auth(token)
                .header("Content-Type", "application/fhir+json")
                .body(r.to_string())
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
        }
    };
    put(
        address.clone(),
        example("Practitioner-kap-example-practitioner"),
        token.clone(),
    )
    .await;
    let mut expected = Vec::new();
    for p in 0..4 {
        let mut pt = example("Patient-kap-example-patient");
        pt["id"] = json!(format!("p{p}"));
        pt["identifier"][0]["value"] = json!(format!("pt-{p}"));
        pt["identifier"][1]["value"] = json!(format!("MRN-{p}"));
        put(address.clone(), pt, token.clone()).await;
        for i in 0..3 {
            let v = format!("sc-{p}-{i}");
            let mut o = score(&format!("o{p}-{i}"), &v, i);
            o["subject"]["reference"] = json!(format!("Patient/p{p}"));
            put(address.clone(), o, token.clone()).await;
            expected.push(v);
        }
    }
    // Wait until deliveries are under way, then kill -9.
    let start = Instant::now();
    while fake.writes().len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no delivery started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = fake.writes().len();
    assert!(
        before < 16,
        "everything was delivered before the kill: {before}"
    );

    fake.with(|st| st.slow = Duration::from_millis(10));
    let (mut child, _address) = spawn_gateway(&config);
    let start = Instant::now();
    loop {
        let done = expected
            .iter()
            .all(|v| !fake.stored_with("urn:kap-gateway:score", v).is_empty())
            && fake.stored("Patient").len() == 4;
        if done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not everything arrived after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let any redelivery of the rows in flight at the kill land, then stop cleanly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    child.wait().unwrap();
    for v in &expected {
        assert_eq!(
            fake.stored_with("urn:kap-gateway:score", v).len(),
            1,
            "{v} duplicated or lost"
        );
    }
    assert_eq!(fake.stored("Patient").len(), 4);
    assert_eq!(fake.stored("Observation").len(), 12);
    assert!(fake.stored("Practitioner").is_empty());
}

#[tokio::test]
async fn a_backend_service_registered_for_the_sync_scope_gets_it_with_client_credentials() {
    let app = spawn_app_with(|c| {
        c.clients = vec![kap_gateway::config::ClientConfig {
            client_id: "ops".into(),
            name: "Operations".into(),
            kind: "confidential-symmetric".into(),
            secret: Some("an-operations-secret-long-enough".into()),
            secret_env: None,
            redirect_uris: Vec::new(),
            allowed_scopes: "system/*.rs kap/sync.admin".into(),
            jwks: None,
            jwks_uri: None,
        }];
    })
    .await;
    let token: Value = app
        .anonymous
        .post(app.url("/auth/token"))
        .basic_auth("ops", Some("an-operations-secret-long-enough"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs kap/sync.admin"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        token["scope"].as_str().unwrap().contains("kap/sync.admin"),
        "{token}"
    );
    let client = crate::helpers::client_with_token(token["access_token"].as_str().unwrap());
    let status = app.get_with(&client, "/admin/sync").await;
    assert_eq!(status.status, 200, "{}", status.text);
    assert_eq!(status.body["ehrs"], json!([]));
    assert_eq!(status.body["dead_letters"], json!([]));
}

#[tokio::test]
async fn a_transaction_enqueues_its_kap_resources_with_it_or_not_at_all() {
    let s = setup(|_| {}).await;
    s.put(&example("Patient-kap-example-patient")).await;
    let before = s.counts().await.get("pending").copied().unwrap_or(0);
    let enc = example("Encounter-kap-example-evaluation");
    let obs = example("Observation-kap-example-phq9-baseline");
    let bundle = |if_match: Option<&str>| {
        let mut obs_request =
            json!({"method": "PUT", "url": "Observation/kap-example-phq9-baseline"});
        if let Some(m) = if_match {
            obs_request["ifMatch"] = json!(m);
        }
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": enc, "request": {"method": "PUT", "url": "Encounter/kap-example-evaluation"}},
            {"resource": obs, "request": obs_request}
        ]})
    };
    // The second entry fails after the first was written: the whole transaction rolls back, queue included.
    let resp = s
        .app
        .client
        .post(s.app.url("/fhir"))
        .header("Content-Type", "application/fhir+json")
        .body(bundle(Some("W/\"7\"")).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 412);
    assert_eq!(
        s.counts().await.get("pending").copied().unwrap_or(0),
        before
    );
    let resp = s
        .app
        .client
        .post(s.app.url("/fhir"))
        .header("Content-Type", "application/fhir+json")
        .body(bundle(None).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        s.counts().await.get("pending").copied().unwrap_or(0),
        before + 2
    );
    s.drain(Duration::from_secs(10)).await;
    assert_eq!(s.fake.stored("Encounter").len(), 1);
    assert_eq!(s.fake.stored("Observation").len(), 1);
}

#[tokio::test]
async fn the_periodic_pull_refreshes_every_local_patient_the_ehr_knows_and_stops_on_shutdown() {
    let s = setup(|e| e.pull_interval_secs = 1).await;
    s.put(&example("Patient-kap-example-patient")).await;
    s.fake.seed(json!({
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": "MRN-5521907"}],
        "name": [{"family": "Rivera", "given": ["Alex", "Jordan"]}],
        "gender": "female",
        "birthDate": "1987-04-12"
    }));
    let service = kap_gateway::service::FhirService::new(
        kap_gateway::store::Store::new(s.db.clone()),
        s.app.base.clone(),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(kap_gateway::sync::pull::run_periodic(
        service,
        s.worker.targets().to_vec(),
        stopped,
    ));
    let start = Instant::now();
    loop {
        let p = s.app.get("/fhir/Patient/kap-example-patient").await;
        if p.body["name"][0]["given"][1] == json!("Jordan") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no pull happened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the pull loop stops on shutdown")
        .unwrap();
    let status = s.app.get_with(&s.admin, "/admin/sync").await;
    assert!(status.body["ehrs"][0]["last_pull"].is_string());
}

#[tokio::test]
async fn an_access_token_is_renewed_before_it_expires() {
    let s = setup_smart().await;
    // Two-second tokens are renewed after one second (half their life), before the EHR would refuse them.
    s.fake.with(|st| st.token_lifetime = 2);
    s.put(&example("Patient-kap-example-patient")).await;
    s.drain(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.put(&score("r1", "sc-r1", 3)).await;
    s.drain(Duration::from_secs(10)).await;
    assert_eq!(s.fake.with(|st| st.token_requests), 2);
    let statuses: Vec<u16> = s.fake.writes().iter().map(|w| w.status).collect();
    assert_eq!(statuses, vec![201, 201], "no request was refused");
}

/// A KAP API write (one FHIR transaction of many new resources) queues every KAP resource it writes, and they reach
/// the EHR once each; the psychotherapy note waits for the patient's authorization.
#[tokio::test]
async fn kap_api_records_are_queued_and_delivered_with_their_transaction() {
    let s = setup(|_| {}).await;
    let post = |path: String, body: Value| {
        let app = &s.app;
        async move {
            let r = app
                .client
                .post(app.url(&path))
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201, "{path}");
            r.json::<Value>().await.unwrap()
        }
    };
    let mut patient = record("patient");
    patient["identifiers"] = json!([{ "system": MRN, "value": "MRN-7700" }]);
    let p = post("/kap/v1/patients".into(), patient).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    post(
        format!("/kap/v1/patients/{pid}/evaluations"),
        record("evaluation"),
    )
    .await;
    let dose = post(
        format!("/kap/v1/patients/{pid}/dosing-sessions"),
        record("dosing"),
    )
    .await;
    post(
        format!("/kap/v1/patients/{pid}/integration-sessions"),
        record("integration"),
    )
    .await;
    s.drain(Duration::from_secs(20)).await;
    // The dosing session's Encounter, its dose and an adverse event reached the EHR, each once.
    let dose_id = dose["id"].as_str().unwrap();
    for (system, value) in [
        ("urn:kap-gateway:session", dose_id.to_owned()),
        ("urn:kap-gateway:dose", format!("{dose_id}-dose")),
        ("urn:kap-gateway:adverse-event", format!("{dose_id}-ae0")),
    ] {
        assert_eq!(
            s.fake.stored_with(system, &value).len(),
            1,
            "{system}|{value}"
        );
    }
    assert_eq!(s.fake.stored("CarePlan").len(), 1, "the course");
    // The note is withheld until the patient's authorization to disclose it is recorded.
    assert!(
        s.fake
            .stored("Observation")
            .iter()
            .all(|o| o.body["code"]["coding"][0]["code"] != "integration-note")
    );
    assert!(s.counts().await.get("withheld").copied().unwrap_or(0) >= 1);
}
