//! Bulk Data export benchmark: one system-level `$export` of a large database, through the HTTP API of a gateway
//! running in this process.
//!
//! It fills a fresh database with N resources (1 Patient per 10 Observations, about 0.5 kB each, written straight
//! into the `resources` table), starts the gateway on it, and then measures, as a bulk client would see it:
//!
//! - the export: kick-off → status 200, in resources/s (the worker reads the database in keyset pages through the
//!   search code and writes NDJSON chunks back to it);
//! - the download of every file, in resources/s and MB/s, each line counted;
//! - peak resident memory (VmHWM) of the process during export and download, the seeding excluded (the peak is
//!   reset after seeding through `/proc/self/clear_refs`), so bounded memory shows as a flat figure whatever N is.
//!
//! Figures are printed, never asserted. Run:
//!
//! ```text
//! cargo bench --bench export                                   # SQLite, 1,000,000 resources
//! cargo bench --bench export -- --resources 20000              # a quick check
//! KAPGW_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench export -- --backend postgres
//! ```
//!
//! Options (after `--`): `--resources N` (1000000), `--backend sqlite|postgres`, `--page-size N` (the gateway's
//! `bulk.page_size`, 1000). PostgreSQL runs use a fresh database `kapgw_bench_<uuid>` on the server of
//! `KAPGW_TEST_POSTGRES_URL` (the role needs `CREATEDB`); it is dropped at the end.

#![allow(clippy::cast_precision_loss, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use kap_gateway::config::Config;
use kap_gateway::startup::Application;
use kap_gateway::store::db::Sql;

struct Options {
    resources: usize,
    backend: String,
    page_size: usize,
}

fn options() -> Result<Options> {
    let mut o = Options {
        resources: 1_000_000,
        backend: "sqlite".into(),
        page_size: 1000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--resources" => o.resources = args.next().context("--resources N")?.parse()?,
            "--backend" => o.backend = args.next().context("--backend sqlite|postgres")?,
            "--page-size" => o.page_size = args.next().context("--page-size N")?.parse()?,
            "--bench" => {}
            other => return Err(anyhow!("unknown option {other}")),
        }
    }
    Ok(o)
}

fn proc_status_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

/// A fresh database URL (and, for PostgreSQL, the admin URL and name to drop it with).
async fn database(
    backend: &str,
    dir: &std::path::Path,
) -> Result<(String, Option<(String, String)>)> {
    if backend == "postgres" {
        use sqlx::Connection as _;
        let admin = std::env::var("KAPGW_TEST_POSTGRES_URL")
            .context("--backend postgres needs KAPGW_TEST_POSTGRES_URL")?;
        let name = format!("kapgw_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let mut url = url::Url::parse(&admin)?;
        url.set_path(&format!("/{name}"));
        Ok((url.to_string(), Some((admin, name))))
    } else {
        Ok((
            format!("sqlite://{}", dir.join("export-bench.db").display()),
            None,
        ))
    }
}

fn observation(i: usize, patient: usize, micros: i64) -> String {
    let instant = kap_gateway::fhir::datetime::format_instant(micros);
    serde_json::json!({
        "resourceType": "Observation",
        "id": format!("obs-{i}"),
        "meta": {"versionId": "1", "lastUpdated": instant},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6", "display": "PHQ-9 total score"}]},
        "subject": {"reference": format!("Patient/p{patient}")},
        "encounter": {"reference": format!("Encounter/e{patient}")},
        "effectiveDateTime": "2026-03-14T10:30:00Z",
        "issued": "2026-03-14T10:45:00Z",
        "valueInteger": i % 28,
        "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H"}]}]
    })
    .to_string()
}

fn patient(p: usize, micros: i64) -> String {
    let instant = kap_gateway::fhir::datetime::format_instant(micros);
    serde_json::json!({
        "resourceType": "Patient",
        "id": format!("p{p}"),
        "meta": {"versionId": "1", "lastUpdated": instant},
        "identifier": [{"system": "urn:kap:mrn", "value": format!("MRN-{p:08}")}],
        "name": [{"family": "Example", "given": ["Pat", format!("{p}")]}],
        "gender": "unknown",
        "birthDate": "1980-01-01"
    })
    .to_string()
}

/// Writes `n` resources straight into `resources` in multi-row statements, 10,000 per transaction.
async fn seed(db: &kap_gateway::store::db::Db, n: usize) -> Result<()> {
    let micros = kap_gateway::fhir::datetime::now_micros() - 60_000_000;
    let mut written = 0usize;
    while written < n {
        let mut tx = db.begin_write().await?;
        let end = (written + 10_000).min(n);
        let mut i = written;
        while i < end {
            let stop = (i + 200).min(end);
            let mut sql = Sql::new(
                "INSERT INTO resources (res_type, id, version, last_updated, deleted, content) VALUES ",
            );
            for k in i..stop {
                if k > i {
                    sql.push(", ");
                }
                let (t, id, content) = if k % 11 == 0 {
                    ("Patient", format!("p{}", k / 11), patient(k / 11, micros))
                } else {
                    (
                        "Observation",
                        format!("obs-{k}"),
                        observation(k, k / 11, micros),
                    )
                };
                sql.push("(")
                    .bind(t)
                    .push(", ")
                    .bind(id)
                    .push(", 1, ")
                    .bind(micros)
                    .push(", 0, ")
                    .bind(content)
                    .push(")");
            }
            tx.execute(&sql).await?;
            i = stop;
        }
        tx.commit().await?;
        written = end;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = options()?;
    let dir = tempfile::tempdir()?;
    let (database_url, drop_pg) = database(&o.backend, dir.path()).await?;
    println!(
        "bulk export benchmark: {} resources on {}, page size {}",
        o.resources, o.backend, o.page_size
    );
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        database_url: database_url.clone(),
        log_level: "warn".into(),
        ..Config::default()
    };
    config.bulk.page_size = o.page_size;
    config.bulk.poll_ms = 50;
    let store = kap_gateway::startup::connect_store(&config).await?;
    let t = Instant::now();
    seed(&store.db, o.resources).await?;
    println!(
        "  seeded in {:.1} s (peak RSS while seeding {})",
        t.elapsed().as_secs_f64(),
        mib(proc_status_kib("VmHWM:"))
    );
    store.db.close().await;
    // From here on, the peak covers only the gateway's start, the export and the download.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = proc_status_kib("VmRSS:");

    let app = Application::build(config).await?;
    let address = format!("http://127.0.0.1:{}", app.port());
    let grant = kap_gateway::auth::tokens::TokenGrant {
        client_id: "bench".into(),
        subject: "bench".into(),
        scope: "system/*.rs".into(),
        lifetime_secs: 3600,
        ..Default::default()
    };
    let token = app
        .state
        .auth
        .issue_access_token(&grant)
        .await
        .map_err(|e| anyhow!("cannot issue a token: {e}"))?
        .0;
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let auth = format!("Bearer {token}");

    let t = Instant::now();
    let kick = client
        .get(format!("{address}/fhir/$export"))
        .header("authorization", &auth)
        .header("prefer", "respond-async")
        .send()
        .await?;
    if kick.status().as_u16() != 202 {
        return Err(anyhow!(
            "kick-off: {} {}",
            kick.status(),
            kick.text().await?
        ));
    }
    let status_url = kick
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .context("Content-Location")?
        .to_owned();
    let manifest: serde_json::Value = loop {
        let r = client
            .get(&status_url)
            .header("authorization", &auth)
            .send()
            .await?;
        match r.status().as_u16() {
            202 => tokio::time::sleep(Duration::from_millis(100)).await,
            200 => break r.json().await?,
            s => return Err(anyhow!("status {s}: {}", r.text().await?)),
        }
    };
    let export_secs = t.elapsed().as_secs_f64();
    let peak_export = proc_status_kib("VmHWM:");

    let t = Instant::now();
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut listed = 0u64;
    for f in manifest["output"].as_array().context("output")? {
        listed += f["count"].as_u64().unwrap_or(0);
        let mut r = client
            .get(f["url"].as_str().context("url")?)
            .header("authorization", &auth)
            .send()
            .await?;
        while let Some(chunk) = r.chunk().await? {
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    let download_secs = t.elapsed().as_secs_f64();

    println!(
        "  export:   {} resources in {:.2} s = {:.0} resources/s",
        listed,
        export_secs,
        listed as f64 / export_secs
    );
    println!(
        "  download: {} lines, {:.1} MB in {:.2} s = {:.0} resources/s, {:.1} MB/s",
        lines,
        bytes as f64 / 1e6,
        download_secs,
        lines as f64 / download_secs,
        bytes as f64 / 1e6 / download_secs
    );
    println!(
        "  peak RSS (VmHWM) {} after export, {} after download (RSS before the gateway started {}{})",
        mib(peak_export),
        mib(proc_status_kib("VmHWM:")),
        mib(rss_before),
        if reset {
            ""
        } else {
            "; peak could not be reset, it includes seeding"
        }
    );
    if lines != o.resources as u64 || listed != o.resources as u64 {
        println!(
            "  MISMATCH: {} resources seeded, {listed} listed, {lines} downloaded",
            o.resources
        );
    }
    if let Some((admin, name)) = drop_pg {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
    Ok(())
}
