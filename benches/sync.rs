//! EHR sync benchmark: delivery throughput to a fast local EHR, and what the outbox adds to a KAP write.
//!
//! 1. **Outbox cost**: the same KAP write (a `transaction` Bundle of a kap-score Observation and its kap-session
//!    Encounter, as the KAP API writes a record) timed with no EHR configured and with one, in turns; prints the
//!    mean and p50/p99 latency of both and the difference.
//! 2. **Delivery throughput**: the outbox rows those writes left (two per record) delivered by one worker to the
//!    fake EHR of the test suite (a real HTTP FHIR server on loopback, answering at once); prints resources/s.
//!
//! Figures are printed, never asserted. Run:
//!
//! ```text
//! cargo bench --bench sync                    # SQLite, 1,000 records over 50 patients
//! cargo bench --bench sync -- --quick         # 100 records
//! KAPGW_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench sync -- --postgres
//! ```
//!
//! Options: `--records N` (`KAPGW_BENCH_RECORDS`, 1000), `--patients N` (50), `--batch N` rows delivered at once
//! (16), `--quick`, `--postgres` (a fresh database `kapgw_bench_<uuid>` on the server of `KAPGW_TEST_POSTGRES_URL`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss
)]

#[path = "../tests/api/fake_ehr.rs"]
mod fake_ehr;

use std::time::{Duration, Instant};

use kap_gateway::auth::access::Access;
use kap_gateway::service::FhirService;
use kap_gateway::store::Store;
use kap_gateway::store::db::Db;
use kap_gateway::sync::Outbox;
use kap_gateway::sync::config::{EhrConfig, SyncConfig};
use kap_gateway::sync::worker::Worker;
use serde_json::{Value, json};

struct Options {
    records: usize,
    patients: usize,
    batch: u32,
    postgres: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let quick = args.iter().any(|a| a == "--quick");
    Options {
        records: value("--records")
            .or_else(|| {
                std::env::var("KAPGW_BENCH_RECORDS")
                    .ok()
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(if quick { 100 } else { 1000 }),
        patients: value("--patients").unwrap_or(if quick { 10 } else { 50 }),
        batch: value("--batch").unwrap_or(16) as u32,
        postgres: args.iter().any(|a| a == "--postgres"),
    }
}

fn example(name: &str) -> Value {
    let path = format!(
        "{}/profiles/examples/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A KAP record as one transaction: a session Encounter and a PHQ-9 score of patient `p`.
fn record(p: usize, n: usize, tag: &str) -> Value {
    let mut enc = example("Encounter-kap-example-evaluation");
    enc["id"] = json!(format!("enc-{tag}-{n}"));
    enc["identifier"][0]["value"] = json!(format!("ses-{tag}-{n}"));
    enc["subject"]["reference"] = json!(format!("Patient/p{p}"));
    let mut obs = example("Observation-kap-example-phq9-baseline");
    obs["id"] = json!(format!("obs-{tag}-{n}"));
    obs["identifier"][0]["value"] = json!(format!("sc-{tag}-{n}"));
    obs["subject"]["reference"] = json!(format!("Patient/p{p}"));
    obs["encounter"]["reference"] = json!(format!("Encounter/enc-{tag}-{n}"));
    obs["valueInteger"] = json!((n % 28) as i64);
    json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": enc, "request": {"method": "PUT", "url": format!("Encounter/enc-{tag}-{n}")}},
            {"resource": obs, "request": {"method": "PUT", "url": format!("Observation/obs-{tag}-{n}")}}
        ]
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn database(postgres: bool) -> (String, Option<tempfile::TempDir>) {
    if postgres {
        use sqlx::Connection as _;
        let url = std::env::var("KAPGW_TEST_POSTGRES_URL").expect("KAPGW_TEST_POSTGRES_URL");
        let name = format!("kapgw_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut parsed = url::Url::parse(&url).unwrap();
        parsed.set_path(&format!("/{name}"));
        (parsed.to_string(), None)
    } else {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        (url, Some(dir))
    }
}

async fn run(o: Options) {
    let fake = fake_ehr::FakeEhr::start().await;
    let (url, _dir) = database(o.postgres).await;
    let db = Db::connect(&url, 8).await.unwrap();
    db.migrate().await.unwrap();
    let store = Store::new(db.clone());
    let base = "http://127.0.0.1:8080/fhir".to_owned();
    let ehr = EhrConfig {
        patient_identifier_system: Some("urn:oid:2.16.840.1.113883.19.5".into()),
        ..EhrConfig::new("bench", &fake.base())
    };
    let plain = FhirService::new(store.clone(), base.clone());
    let with_outbox = plain
        .clone()
        .with_outbox(Outbox::new(std::slice::from_ref(&ehr)));
    let access = Access::internal();

    for p in 0..o.patients {
        let mut pt = example("Patient-kap-example-patient");
        pt["id"] = json!(format!("p{p}"));
        pt["identifier"][0]["value"] = json!(format!("pt-{p}"));
        pt["identifier"][1]["value"] = json!(format!("MRN-{p}"));
        with_outbox
            .update(&access, "Patient", &format!("p{p}"), pt, None)
            .await
            .unwrap();
    }

    // 1. The outbox's cost on a KAP write: alternate writes without and with an EHR configured.
    let mut without = Vec::with_capacity(o.records);
    let mut with = Vec::with_capacity(o.records);
    for n in 0..o.records {
        let p = n % o.patients;
        let t = Instant::now();
        plain
            .process_bundle(&access, record(p, n, "plain"))
            .await
            .unwrap();
        without.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        with_outbox
            .process_bundle(&access, record(p, n, "sync"))
            .await
            .unwrap();
        with.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    without.sort_by(f64::total_cmp);
    with.sort_by(f64::total_cmp);
    println!(
        "KAP write (transaction of 2 resources), {} records on {}:",
        o.records,
        db.backend().name()
    );
    println!(
        "  without outbox: mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms",
        mean(&without),
        percentile(&without, 0.5),
        percentile(&without, 0.99)
    );
    println!(
        "  with outbox:    mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms",
        mean(&with),
        percentile(&with, 0.5),
        percentile(&with, 0.99)
    );
    println!(
        "  outbox cost:    {:+.2} ms mean ({:+.1} %)",
        mean(&with) - mean(&without),
        (mean(&with) / mean(&without) - 1.0) * 100.0
    );

    // 2. Delivery throughput of everything queued (patients + 2 rows per record).
    let counts = kap_gateway::sync::outbox::counts(&db, "bench")
        .await
        .unwrap();
    let queued = counts.get("pending").copied().unwrap_or(0);
    let settings = SyncConfig {
        worker: false,
        batch: o.batch,
        ..SyncConfig::default()
    };
    let worker = Worker::new(db.clone(), &[ehr], settings).unwrap();
    let t = Instant::now();
    let mut delivered = 0usize;
    loop {
        let r = worker.run_once().await.unwrap();
        delivered += r.delivered;
        assert_eq!(r.dead, 0, "the fake EHR refused a record");
        if r.claimed == 0 {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "Delivery to a local EHR over loopback: {delivered} of {queued} resources in {secs:.2} s = {:.0} resources/s (batch {}, {} patients)",
        delivered as f64 / secs,
        o.batch,
        o.patients
    );
    fake.down().await;
    db.close().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn main() {
    let o = options();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(o));
}
