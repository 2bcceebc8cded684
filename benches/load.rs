//! Load benchmark of the real `kap-gateway` binary over loopback, on SQLite and on PostgreSQL.
//!
//! For each backend it starts the gateway as a child process on a database of its own, loads a synthetic data set
//! with `transaction` Bundles, then measures:
//!
//! - transaction ingest of Observations, in resources/s (wall clock);
//! - `GET /fhir/Observation/<id>` at N concurrent connections: requests/s, p50, p99;
//! - `GET /fhir/Observation?patient=<id>&code=http://loinc.org|44261-6&_count=50`: requests/s, p50, p99;
//! - the gateway's peak resident memory (VmHWM), and the benchmark client's own.
//!
//! Figures are printed, never asserted. Run:
//!
//! ```text
//! cargo bench --bench load                                  # SQLite (and PostgreSQL when configured)
//! cargo bench --bench load -- --quick                       # smoke check: 20 patients, 2,000 Observations, 2 s
//! KAPGW_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench load -- --backend both
//! ```
//!
//! Options (after `--`, or as environment variables): `--backend sqlite|postgres|both` (`KAPGW_BENCH_BACKEND`),
//! `--patients N` (`KAPGW_BENCH_PATIENTS`, 1000), `--observations N` (`KAPGW_BENCH_OBSERVATIONS`, 100000),
//! `--seconds S` per load phase (`KAPGW_BENCH_SECONDS`, 10), `--warmup S` (`KAPGW_BENCH_WARMUP`, 1),
//! `--concurrency N` (`KAPGW_BENCH_CONCURRENCY`, 32), `--bundle-size N` (`KAPGW_BENCH_BUNDLE_SIZE`, 500),
//! `--inflight N` bundles posted at once (`KAPGW_BENCH_INFLIGHT`, 3), `--quick`, `--keep` to leave the loaded
//! database behind for inspection (`KAPGW_BENCH_KEEP=1`).
//!
//! The gateway logs at `warn` unless `KAPGW_LOG_LEVEL` says otherwise.
//!
//! PostgreSQL runs use a fresh database `kapgw_bench_<uuid>` on the server of `KAPGW_TEST_POSTGRES_URL` (the role
//! needs `CREATEDB`); it is dropped at the end. Every request carries `Authorization: Bearer <token>`: a
//! backend-services token (`system/*.cruds`) signed with the key the gateway finds in its new database, or
//! `KAPGW_BENCH_TOKEN` when set. Other `KAPGW_*` variables (e.g. `KAPGW_DB_MAX_CONNECTIONS`) reach the gateway
//! unchanged, so its settings can be varied between runs.

#![allow(clippy::cast_precision_loss)]

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{Value, json};

const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_kap-gateway");
const FHIR_JSON: &str = "application/fhir+json";
const LOINC: &str = "http://loinc.org";
const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const MRN_SYSTEM: &str = "urn:oid:2.16.840.1.113883.3.9999.1";
/// The code searched for in the search phase (PHQ-9 total score).
const SEARCH_CODE: &str = "44261-6";
/// 2024-01-01T00:00:00Z; effective times are spread over the following year.
const EPOCH_2024: i64 = 1_704_067_200;

// ---------------------------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    backends: Vec<Backend>,
    patients: usize,
    observations: usize,
    seconds: f64,
    warmup: f64,
    concurrency: usize,
    bundle_size: usize,
    inflight: usize,
    postgres_url: Option<String>,
    token: Option<String>,
    /// Leave the loaded database behind (for EXPLAIN and the like) instead of removing it.
    keep: bool,
}

const USAGE: &str = "usage: cargo bench --bench load -- [--backend sqlite|postgres|both] [--patients N] \
[--observations N] [--seconds S] [--warmup S] [--concurrency N] [--bundle-size N] [--inflight N] [--quick] [--keep]";

fn env_opt(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_num<T: std::str::FromStr>(what: &str, value: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| anyhow!("{what}: '{value}' is not a valid number\n{USAGE}"))
}

fn parse_backends(value: &str) -> Result<Vec<Backend>> {
    match value.trim() {
        "sqlite" => Ok(vec![Backend::Sqlite]),
        "postgres" | "postgresql" | "pg" => Ok(vec![Backend::Postgres]),
        "both" | "all" => Ok(vec![Backend::Sqlite, Backend::Postgres]),
        other => bail!("--backend: '{other}' is not sqlite, postgres or both\n{USAGE}"),
    }
}

impl Options {
    fn parse() -> Result<Options> {
        let postgres_url = env_opt("KAPGW_TEST_POSTGRES_URL");
        let mut o = Options {
            backends: if postgres_url.is_some() {
                vec![Backend::Sqlite, Backend::Postgres]
            } else {
                vec![Backend::Sqlite]
            },
            patients: 1000,
            observations: 100_000,
            seconds: 10.0,
            warmup: 1.0,
            concurrency: 32,
            bundle_size: 500,
            inflight: 3,
            postgres_url,
            token: env_opt("KAPGW_BENCH_TOKEN"),
            keep: env_opt("KAPGW_BENCH_KEEP").is_some_and(|v| v != "0"),
        };
        // Environment first, then the command line, which wins.
        let mut pairs: Vec<(String, String)> = [
            ("backend", "KAPGW_BENCH_BACKEND"),
            ("patients", "KAPGW_BENCH_PATIENTS"),
            ("observations", "KAPGW_BENCH_OBSERVATIONS"),
            ("seconds", "KAPGW_BENCH_SECONDS"),
            ("warmup", "KAPGW_BENCH_WARMUP"),
            ("concurrency", "KAPGW_BENCH_CONCURRENCY"),
            ("bundle-size", "KAPGW_BENCH_BUNDLE_SIZE"),
            ("inflight", "KAPGW_BENCH_INFLIGHT"),
        ]
        .iter()
        .filter_map(|(key, var)| env_opt(var).map(|v| ((*key).to_owned(), v)))
        .collect();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            // `cargo bench` passes `--bench` to every benchmark binary.
            if arg == "--bench" {
                continue;
            }
            if arg == "--help" || arg == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            if arg == "--keep" {
                o.keep = true;
                continue;
            }
            if arg == "--quick" {
                pairs.push(("patients".into(), "20".into()));
                pairs.push(("observations".into(), "2000".into()));
                pairs.push(("seconds".into(), "2".into()));
                continue;
            }
            let Some(flag) = arg.strip_prefix("--") else {
                bail!("unexpected argument '{arg}'\n{USAGE}");
            };
            let (key, value) = match flag.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (
                    flag.to_owned(),
                    args.next()
                        .ok_or_else(|| anyhow!("--{flag} needs a value\n{USAGE}"))?,
                ),
            };
            pairs.push((key, value));
        }
        for (key, value) in pairs {
            match key.as_str() {
                "backend" => o.backends = parse_backends(&value)?,
                "patients" => o.patients = parse_num(&key, &value)?,
                "observations" => o.observations = parse_num(&key, &value)?,
                "seconds" => o.seconds = parse_num(&key, &value)?,
                "warmup" => o.warmup = parse_num(&key, &value)?,
                "concurrency" => o.concurrency = parse_num(&key, &value)?,
                "bundle-size" => o.bundle_size = parse_num(&key, &value)?,
                "inflight" => o.inflight = parse_num(&key, &value)?,
                other => bail!("unknown option --{other}\n{USAGE}"),
            }
        }
        if o.patients == 0 || o.observations == 0 {
            bail!("--patients and --observations must be at least 1");
        }
        if o.concurrency == 0 || o.bundle_size == 0 || o.inflight == 0 {
            bail!("--concurrency, --bundle-size and --inflight must be at least 1");
        }
        if o.seconds.is_nan() || o.seconds <= 0.0 || o.warmup.is_nan() || o.warmup < 0.0 {
            bail!("--seconds must be positive and --warmup not negative");
        }
        if o.backends.contains(&Backend::Postgres) && o.postgres_url.is_none() {
            bail!(
                "the postgres backend needs KAPGW_TEST_POSTGRES_URL, e.g. postgres://postgres@127.0.0.1:5432/test"
            );
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP client

/// The benchmark's HTTP client. Every request is built by [`Client::request`], which adds the headers all requests
/// share (content negotiation and, when configured, the bearer token).
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    origin: Arc<str>,
    token: Option<Arc<str>>,
}

impl Client {
    fn new(origin: &str, connections: usize, token: Option<&str>) -> Result<Client> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections.max(32))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .http1_only()
            .no_proxy()
            .timeout(Duration::from_secs(600))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            origin: origin.trim_end_matches('/').into(),
            token: token.map(Into::into),
        })
    }

    /// A request to `path_and_query` (starting with `/`) on the gateway.
    fn request(&self, method: Method, path_and_query: &str) -> reqwest::RequestBuilder {
        let mut builder = self
            .http
            .request(method, format!("{}{path_and_query}", self.origin))
            .header(ACCEPT, FHIR_JSON);
        if let Some(token) = &self.token {
            builder = builder.bearer_auth(token);
        }
        builder
    }

    fn get(&self, path_and_query: &str) -> reqwest::RequestBuilder {
        self.request(Method::GET, path_and_query)
    }

    fn post_json(&self, path: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        self.request(Method::POST, path)
            .header(CONTENT_TYPE, FHIR_JSON)
            .body(body)
    }
}

/// One keep-alive HTTP/1.1 connection that sends GETs and reads their answers: the load phases' client.
///
/// The load generator shares the machine's cores with the gateway, so it does only what the measurement needs
/// (plain HTTP, `Content-Length` bodies, no redirects or pooling): reqwest, used for loading and the checks, took
/// about 0.3 of the two cores at 10,000 requests/s, and each core it takes is one the gateway does not get.
struct RawConnection {
    stream: tokio::net::TcpStream,
    /// The request head after the path: protocol, `Host`, `Accept`, `Authorization`.
    head_rest: Arc<str>,
    buf: Vec<u8>,
}

impl RawConnection {
    async fn connect(client: &Client) -> Result<RawConnection> {
        let host = client
            .origin
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("{} is not a plain http:// origin", client.origin))?;
        let stream = tokio::net::TcpStream::connect(host)
            .await
            .with_context(|| format!("cannot connect to {host}"))?;
        stream.set_nodelay(true)?;
        let mut head_rest = format!(" HTTP/1.1\r\nHost: {host}\r\nAccept: {FHIR_JSON}\r\n");
        if let Some(token) = &client.token {
            let _ = write!(head_rest, "Authorization: Bearer {token}\r\n");
        }
        head_rest.push_str("\r\n");
        Ok(RawConnection {
            stream,
            head_rest: head_rest.into(),
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends `GET path` and reads the whole answer: its status and body.
    async fn get(&mut self, path: &str) -> Result<(u16, &[u8])> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let request = format!("GET {path}{}", self.head_rest);
        self.stream.write_all(request.as_bytes()).await?;
        self.buf.clear();
        let header_end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the gateway closed the connection");
            }
        };
        let head = std::str::from_utf8(&self.buf[..header_end])?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP answer: {head}"))?;
        let mut length = None;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!(
                    "the gateway answered with Transfer-Encoding {}",
                    value.trim()
                );
            }
        }
        let length = length.ok_or_else(|| anyhow!("an answer without Content-Length: {head}"))?;
        while self.buf.len() < header_end + length {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the gateway closed the connection mid-answer");
            }
        }
        // One request at a time on the connection: nothing can follow the body.
        Ok((status, &self.buf[header_end..header_end + length]))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The gateway under test

/// A running gateway child process; stopped when dropped, so that every error path stops it too.
struct Gateway {
    child: Child,
    origin: String,
}

impl Gateway {
    fn spawn(port: u16, database_url: &str, workdir: &Path) -> Result<Gateway> {
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(GATEWAY_BIN)
            .args(["serve", "--listen", &listen, "--database-url", database_url])
            // No configuration file from wherever the benchmark was started.
            .current_dir(workdir)
            .env_remove("KAPGW_CONFIG")
            .env(
                "KAPGW_LOG_LEVEL",
                env_opt("KAPGW_LOG_LEVEL").unwrap_or_else(|| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {GATEWAY_BIN}"))?;
        Ok(Gateway {
            child,
            origin: format!("http://{listen}"),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/health/ready` until it answers 200.
    async fn wait_ready(&mut self, client: &Client, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the gateway exited during start-up ({status})");
            }
            if let Ok(resp) = client.get("/health/ready").send().await
                && resp.status() == reqwest::StatusCode::OK
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("the gateway was not ready after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Peak resident set size so far, in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(&format!("/proc/{}/status", self.pid()), "VmHWM:")
    }

    fn cpu_ticks(&self) -> Option<u64> {
        proc_cpu_ticks(&format!("/proc/{}/stat", self.pid()))
    }

    /// SIGTERM (graceful shutdown), then SIGKILL if it has not exited within ten seconds.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let terminated = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if terminated {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        eprintln!(
            "warning: the gateway (pid {}) did not exit within 10 s of SIGTERM; killing it",
            self.pid()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------------------------
// Databases

enum Database {
    Sqlite {
        dir: tempfile::TempDir,
        url: String,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
        workdir: tempfile::TempDir,
    },
}

impl Database {
    async fn create(backend: Backend, opts: &Options) -> Result<Database> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                Ok(Database::Sqlite { dir, url })
            }
            Backend::Postgres => {
                use sqlx::Connection as _;
                let admin_url = opts
                    .postgres_url
                    .clone()
                    .ok_or_else(|| anyhow!("KAPGW_TEST_POSTGRES_URL is not set"))?;
                let name = format!("kapgw_bench_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .context("cannot connect to KAPGW_TEST_POSTGRES_URL")?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("cannot create database {name}"))?;
                let _ = conn.close().await;
                let mut url =
                    url::Url::parse(&admin_url).context("KAPGW_TEST_POSTGRES_URL is not a URL")?;
                url.set_path(&format!("/{name}"));
                let workdir = tempfile::tempdir().context("cannot create a temporary directory")?;
                Ok(Database::Postgres {
                    admin_url,
                    name,
                    url: url.to_string(),
                    workdir,
                })
            }
        }
    }

    fn url(&self) -> &str {
        match self {
            Database::Sqlite { url, .. } | Database::Postgres { url, .. } => url,
        }
    }

    fn workdir(&self) -> &Path {
        match self {
            Database::Sqlite { dir, .. } => dir.path(),
            Database::Postgres { workdir, .. } => workdir.path(),
        }
    }

    /// Size on disk: the SQLite files (database, WAL, shared memory), or `pg_database_size`.
    async fn size_bytes(&self) -> Option<u64> {
        match self {
            Database::Sqlite { dir, .. } => {
                let entries = std::fs::read_dir(dir.path()).ok()?;
                Some(
                    entries
                        .filter_map(|e| e.ok()?.metadata().ok())
                        .map(|m| m.len())
                        .sum(),
                )
            }
            Database::Postgres {
                admin_url, name, ..
            } => {
                use sqlx::Connection as _;
                let mut conn = sqlx::PgConnection::connect(admin_url).await.ok()?;
                let size: Option<i64> = sqlx::query_scalar("SELECT pg_database_size($1)")
                    .bind(name)
                    .fetch_one(&mut conn)
                    .await
                    .ok();
                let _ = conn.close().await;
                size.and_then(|s| u64::try_from(s).ok())
            }
        }
    }

    /// Leaves the database in place and says where it is.
    fn keep(self, backend: Backend) {
        match self {
            Database::Sqlite { dir, url } => {
                let _ = dir.keep();
                println!("[{}] database kept: {url}", backend.name());
            }
            Database::Postgres { url, .. } => {
                println!("[{}] database kept: {url}", backend.name());
            }
        }
    }

    /// Removes the database (the SQLite directory goes with the value).
    async fn destroy(self) {
        if let Database::Postgres {
            admin_url, name, ..
        } = self
        {
            use sqlx::Connection as _;
            let dropped = async {
                let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await
            }
            .await;
            if let Err(e) = dropped {
                eprintln!("warning: could not drop database {name}: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Synthetic data

/// SplitMix64: small, fast, good enough to pick ids and spread values.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn patient_id(i: usize) -> String {
    format!("pat-{i}")
}

fn observation_id(i: usize) -> String {
    format!("obs-{i}")
}

/// Which of the four kinds Observation `i` is: each patient gets them in turn (PHQ-9, GAD-7, heart rate, weight).
fn observation_kind(i: usize, patients: usize) -> usize {
    (i / patients) % 4
}

/// How many PHQ-9 Observations patient `p` has: what the search phase should find.
fn expected_phq9(p: usize, patients: usize, observations: usize) -> usize {
    (p..observations)
        .step_by(patients)
        .filter(|&i| observation_kind(i, patients) == 0)
        .count()
}

fn patient(i: usize) -> Value {
    let h = mix64(i as u64 ^ 0x5EED);
    let year = 1950 + (h % 55);
    let month = 1 + (h >> 8) % 12;
    let day = 1 + (h >> 16) % 28;
    json!({
        "resourceType": "Patient",
        "id": patient_id(i),
        "identifier": [{
            "use": "usual",
            "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR" }] },
            "system": MRN_SYSTEM,
            "value": format!("MRN{i:07}")
        }],
        "active": true,
        "name": [{ "family": format!("Synthetic{}", i % 97), "given": [format!("Patient{i}")] }],
        "gender": if h & 1 == 0 { "female" } else { "male" },
        "birthDate": format!("{year:04}-{month:02}-{day:02}")
    })
}

fn category(code: &str, display: &str) -> Value {
    json!([{ "coding": [{ "system": OBS_CATEGORY, "code": code, "display": display }] }])
}

fn loinc(code: &str, display: &str) -> Value {
    json!({ "coding": [{ "system": LOINC, "code": code, "display": display }], "text": display })
}

fn observation(i: usize, patients: usize) -> Value {
    let h = mix64(i as u64);
    let offset = i64::try_from(h % (365 * 86_400)).unwrap_or(0);
    let effective = chrono::DateTime::from_timestamp(EPOCH_2024 + offset, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "2024-06-01T12:00:00Z".to_owned());
    let v = h >> 32;
    let mut obs = json!({
        "resourceType": "Observation",
        "id": observation_id(i),
        "status": "final",
        "subject": { "reference": format!("Patient/{}", patient_id(i % patients)) },
        "effectiveDateTime": effective,
    });
    let (cat, code, value_key, value) = match observation_kind(i, patients) {
        0 => (
            category("survey", "Survey"),
            loinc(
                SEARCH_CODE,
                "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]",
            ),
            "valueInteger",
            json!(v % 28),
        ),
        1 => (
            category("survey", "Survey"),
            loinc(
                "70274-6",
                "Generalized anxiety disorder 7 item (GAD-7) total score [Reported.PHQ]",
            ),
            "valueInteger",
            json!(v % 22),
        ),
        2 => (
            category("vital-signs", "Vital Signs"),
            loinc("8867-4", "Heart rate"),
            "valueQuantity",
            json!({ "value": 50 + v % 60, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min" }),
        ),
        _ => (
            category("vital-signs", "Vital Signs"),
            loinc("29463-7", "Body weight"),
            "valueQuantity",
            json!({ "value": 45.0 + (v % 750) as f64 / 10.0, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg" }),
        ),
    };
    if let Value::Object(map) = &mut obs {
        map.insert("category".into(), cat);
        map.insert("code".into(), code);
        map.insert(value_key.into(), value);
    }
    obs
}

/// A `transaction` Bundle of PUT entries (client-chosen ids), serialized.
fn transaction_bundle(fhir_base: &str, resources: impl Iterator<Item = Value>) -> Result<Vec<u8>> {
    let entries: Vec<Value> = resources
        .map(|r| {
            let url = format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap_or_default(),
                r["id"].as_str().unwrap_or_default()
            );
            json!({
                "fullUrl": format!("{fhir_base}/{url}"),
                "resource": r,
                "request": { "method": "PUT", "url": url }
            })
        })
        .collect();
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
    Ok(serde_json::to_vec(&bundle)?)
}

// ---------------------------------------------------------------------------------------------------------------
// Measurements

/// Latencies in microseconds; percentiles from the sorted sample (exact, every request is kept).
#[derive(Default)]
struct Latencies(Vec<u32>);

impl Latencies {
    fn record(&mut self, d: Duration) {
        self.0
            .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    fn merge(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    fn finish(&mut self) {
        self.0.sort_unstable();
    }

    /// The `q` quantile (0..=1) in milliseconds, after `finish`.
    fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        f64::from(self.0[rank - 1]) / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.0.last().map_or(f64::NAN, |v| f64::from(*v) / 1000.0)
    }
}

const CLOCK_TICKS_PER_SEC: f64 = 100.0;

fn proc_status_kib(path: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which may contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) clock ticks of all CPUs together.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Where the CPU went during a phase, in cores (1.0 = one core fully busy).
#[derive(Clone, Copy, Default)]
struct CpuUse {
    gateway: f64,
    client: f64,
    machine: f64,
}

struct CpuProbe {
    at: Instant,
    gateway: u64,
    client: u64,
    machine: (u64, u64),
}

impl CpuProbe {
    fn start(gateway: &Gateway) -> CpuProbe {
        CpuProbe {
            at: Instant::now(),
            gateway: gateway.cpu_ticks().unwrap_or(0),
            client: proc_cpu_ticks("/proc/self/stat").unwrap_or(0),
            machine: machine_ticks().unwrap_or((0, 0)),
        }
    }

    fn stop(&self, gateway: &Gateway) -> CpuUse {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let gw = gateway
            .cpu_ticks()
            .unwrap_or(0)
            .saturating_sub(self.gateway);
        let cl = proc_cpu_ticks("/proc/self/stat")
            .unwrap_or(0)
            .saturating_sub(self.client);
        let (busy, total) = machine_ticks().unwrap_or((0, 0));
        let d_busy = busy.saturating_sub(self.machine.0) as f64;
        let d_total = total.saturating_sub(self.machine.1) as f64;
        CpuUse {
            gateway: gw as f64 / CLOCK_TICKS_PER_SEC / secs,
            client: cl as f64 / CLOCK_TICKS_PER_SEC / secs,
            machine: if d_total > 0.0 {
                d_busy / d_total * cores() as f64
            } else {
                f64::NAN
            },
        }
    }
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let other = (self.machine - self.gateway - self.client).max(0.0);
        write!(
            f,
            "gateway {:.2}, bench {:.2}, other {:.2} (database server, other jobs), idle {:.2} of {} cores",
            self.gateway,
            self.client,
            other,
            (cores() as f64 - self.machine).max(0.0),
            cores()
        )
    }
}

struct IngestStats {
    resources: usize,
    bundles: usize,
    seconds: f64,
    bundle_latency: Latencies,
    cpu: CpuUse,
}

impl IngestStats {
    fn per_second(&self) -> f64 {
        self.resources as f64 / self.seconds
    }
}

struct PhaseStats {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    seconds: f64,
    latency: Latencies,
    cpu: CpuUse,
}

impl PhaseStats {
    fn per_second(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
}

struct Report {
    backend: Backend,
    startup: Duration,
    patients_seconds: f64,
    ingest: IngestStats,
    read: PhaseStats,
    search: PhaseStats,
    search_matches: usize,
    gateway_rss_kib: Option<u64>,
    db_bytes: Option<u64>,
    load_before: String,
    load_after: String,
}

// ---------------------------------------------------------------------------------------------------------------
// Phases

/// Posts `count` resources built by `make(i)` as transaction Bundles of `opts.bundle_size`, `opts.inflight` at once.
async fn ingest<F>(
    client: &Client,
    gateway: &Gateway,
    opts: &Options,
    count: usize,
    make: F,
) -> Result<IngestStats>
where
    F: Fn(usize) -> Value + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let bundles = count.div_ceil(opts.bundle_size);
    let next = Arc::new(AtomicUsize::new(0));
    let fhir_base: Arc<str> = format!("{}/fhir", client.origin).into();
    let probe = CpuProbe::start(gateway);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..opts.inflight.min(bundles) {
        let (client, make, next, fhir_base) = (
            client.clone(),
            make.clone(),
            next.clone(),
            fhir_base.clone(),
        );
        let size = opts.bundle_size;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= bundles {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let range = b * size..((b + 1) * size).min(count);
                let body = transaction_bundle(&fhir_base, range.clone().map(|i| make(i)))?;
                let t0 = Instant::now();
                let resp = client
                    .post_json("/fhir", body)
                    .send()
                    .await
                    .with_context(|| format!("transaction bundle {b} failed"))?;
                let status = resp.status();
                let text = resp.text().await?;
                latencies.record(t0.elapsed());
                if status != reqwest::StatusCode::OK {
                    bail!(
                        "transaction bundle {b} (resources {}..{}) answered {status}: {}",
                        range.start,
                        range.end,
                        text.chars().take(600).collect::<String>()
                    );
                }
            }
        }));
    }
    let mut bundle_latency = Latencies::default();
    for task in tasks {
        bundle_latency.merge(task.await??);
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = probe.stop(gateway);
    bundle_latency.finish();
    Ok(IngestStats {
        resources: count,
        bundles,
        seconds,
        bundle_latency,
        cpu,
    })
}

/// `concurrency` workers each issuing GETs of `make_path(rng)` back to back for `seconds`.
async fn load_phase<F>(
    client: &Client,
    gateway: &Gateway,
    concurrency: usize,
    seconds: f64,
    seed: u64,
    make_path: F,
) -> Result<PhaseStats>
where
    F: Fn(&mut Rng) -> String + Send + Sync + 'static,
{
    let make_path = Arc::new(make_path);
    let probe = CpuProbe::start(gateway);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let (client, make_path) = (client.clone(), make_path.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(mix64(seed ^ (w as u64).wrapping_mul(0x1000_0001)));
            let mut latency = Latencies::default();
            let mut errors = 0usize;
            let mut first_error = None;
            let mut connection = None;
            while Instant::now() < deadline {
                let path = make_path(&mut rng);
                let t0 = Instant::now();
                let conn = match &mut connection {
                    Some(c) => c,
                    slot => match RawConnection::connect(&client).await {
                        Ok(c) => slot.insert(c),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(format!("{e:#}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let outcome = match conn.get(&path).await {
                    Ok((200, _)) => Ok(()),
                    Ok((status, body)) => Err(format!(
                        "GET {path} answered {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )),
                    Err(e) => {
                        connection = None;
                        Err(format!("GET {path} failed: {e:#}"))
                    }
                };
                match outcome {
                    Ok(()) => latency.record(t0.elapsed()),
                    Err(message) => {
                        errors += 1;
                        first_error.get_or_insert(message);
                    }
                }
            }
            (latency, errors, first_error)
        }));
    }
    let mut latency = Latencies::default();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let (l, e, f) = task.await?;
        latency.merge(l);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = probe.stop(gateway);
    latency.finish();
    Ok(PhaseStats {
        ok: latency.0.len(),
        errors,
        first_error,
        seconds,
        latency,
        cpu,
    })
}

/// Issues a backend-services access token (`system/*.cruds`, one hour) that the gateway about to serve
/// `database_url` at `fhir_base` will accept: the signing key is created in that database, where the gateway finds
/// it at start.
async fn mint_token(database_url: &str, fhir_base: &str) -> Result<String> {
    use kap_gateway::auth::keys::KeyRing;
    use kap_gateway::auth::tokens::{Authenticator, TokenGrant};
    let config = kap_gateway::config::Config {
        database_url: database_url.to_owned(),
        db_max_connections: 1,
        ..kap_gateway::config::Config::default()
    };
    let store = kap_gateway::startup::connect_store(&config).await?;
    let keys = KeyRing::load_or_create(&store.db)
        .await
        .map_err(|e| anyhow!("cannot create the token-signing key: {e}"))?;
    let auth = Authenticator::new(
        keys,
        store.db.clone(),
        fhir_base.to_owned(),
        fhir_base.to_owned(),
        None,
    );
    let grant = TokenGrant {
        client_id: "kap-load-bench".into(),
        subject: "kap-load-bench".into(),
        scope: "system/*.cruds".into(),
        lifetime_secs: 3600,
        ..TokenGrant::default()
    };
    let issued = auth.issue_access_token(&grant).await;
    store.db.close().await;
    let (token, _jti) = issued.map_err(|e| anyhow!("cannot issue an access token: {e}"))?;
    Ok(token)
}

/// Checks that a read and the benchmark's search answer what the data set implies, and returns the match count.
async fn preflight(client: &Client, opts: &Options) -> Result<usize> {
    let read_path = format!(
        "/fhir/Observation/{}",
        observation_id(opts.observations - 1)
    );
    let resp = client.get(&read_path).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if status != reqwest::StatusCode::OK || body["id"] != observation_id(opts.observations - 1) {
        bail!("GET {read_path} answered {status}: {body}");
    }
    let search_path = search_path(0);
    let resp = client.get(&search_path).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    let matches = body["entry"].as_array().map_or(0, |entries| {
        entries
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .count()
    });
    let expected = expected_phq9(0, opts.patients, opts.observations).min(50);
    if status != reqwest::StatusCode::OK || matches != expected {
        bail!(
            "GET {search_path} answered {status} with {matches} matches, expected {expected}: {}",
            body.to_string().chars().take(600).collect::<String>()
        );
    }
    Ok(matches)
}

fn search_path(patient: usize) -> String {
    format!(
        "/fhir/Observation?patient={}&code={LOINC}%7C{SEARCH_CODE}&_count=50",
        patient_id(patient)
    )
}

async fn run_backend(backend: Backend, opts: &Options) -> Result<Report> {
    let db = Database::create(backend, opts).await?;
    let result = tokio::select! {
        r = run_on(backend, &db, opts) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let result = match result {
        Ok(mut report) => {
            report.db_bytes = db.size_bytes().await;
            Ok(report)
        }
        Err(e) => Err(e),
    };
    if opts.keep {
        db.keep(backend);
    } else {
        db.destroy().await;
    }
    result
}

async fn run_on(backend: Backend, db: &Database, opts: &Options) -> Result<Report> {
    let load_before = load_average();
    let port = free_port()?;
    let token = match &opts.token {
        Some(token) => token.clone(),
        None => mint_token(db.url(), &format!("http://127.0.0.1:{port}/fhir")).await?,
    };
    let mut gateway = Gateway::spawn(port, db.url(), db.workdir())?;
    let client = Client::new(
        &gateway.origin,
        opts.concurrency.max(opts.inflight),
        Some(&token),
    )?;
    let startup = gateway
        .wait_ready(&client, Duration::from_secs(120))
        .await?;
    println!(
        "[{}] gateway pid {} ready on {} in {:.2} s; load average {load_before}",
        backend.name(),
        gateway.pid(),
        gateway.origin,
        startup.as_secs_f64()
    );

    let patients = ingest(&client, &gateway, opts, opts.patients, patient).await?;
    println!(
        "[{}] loaded {} Patients in {:.2} s",
        backend.name(),
        opts.patients,
        patients.seconds
    );
    let n_patients = opts.patients;
    let ingest_stats = ingest(&client, &gateway, opts, opts.observations, move |i| {
        observation(i, n_patients)
    })
    .await?;
    println!(
        "[{}] loaded {} Observations in {:.2} s: {:.0} resources/s",
        backend.name(),
        opts.observations,
        ingest_stats.seconds,
        ingest_stats.per_second()
    );

    let search_matches = preflight(&client, opts).await?;
    let n_obs = opts.observations;
    let read_path =
        move |rng: &mut Rng| format!("/fhir/Observation/{}", observation_id(rng.below(n_obs)));
    let search = move |rng: &mut Rng| search_path(rng.below(n_patients));

    if opts.warmup > 0.0 {
        load_phase(
            &client,
            &gateway,
            opts.concurrency,
            opts.warmup,
            1,
            read_path,
        )
        .await?;
    }
    let read = load_phase(
        &client,
        &gateway,
        opts.concurrency,
        opts.seconds,
        2,
        read_path,
    )
    .await?;
    println!(
        "[{}] read: {:.0} req/s, {} errors",
        backend.name(),
        read.per_second(),
        read.errors
    );
    if opts.warmup > 0.0 {
        load_phase(&client, &gateway, opts.concurrency, opts.warmup, 3, search).await?;
    }
    let search_stats =
        load_phase(&client, &gateway, opts.concurrency, opts.seconds, 4, search).await?;
    println!(
        "[{}] search: {:.0} req/s, {} errors",
        backend.name(),
        search_stats.per_second(),
        search_stats.errors
    );

    let gateway_rss_kib = gateway.peak_rss_kib();
    drop(client);
    gateway.stop();
    Ok(Report {
        backend,
        startup,
        patients_seconds: patients.seconds,
        ingest: ingest_stats,
        read,
        search: search_stats,
        search_matches,
        gateway_rss_kib,
        db_bytes: None,
        load_before,
        load_after: load_average(),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Output

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn phase_row(name: &str, p: &PhaseStats) -> String {
    format!(
        "  {name:<7} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
        p.ok,
        p.per_second(),
        p.latency.quantile_ms(0.5),
        p.latency.quantile_ms(0.99),
        p.latency.max_ms(),
        p.errors
    )
}

fn print_report(r: &Report, opts: &Options) {
    let mut out = String::new();
    let name = r.backend.name();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "== {name} == {} patients, {} observations, {} connections, {} s per phase ==",
        opts.patients, opts.observations, opts.concurrency, opts.seconds
    );
    let i = &r.ingest;
    let _ = writeln!(
        out,
        "  ingest   {} Observations in {} transaction bundles of {} ({} in flight): {:.2} s = {:.0} resources/s \
         (bundle p50 {:.0} ms, p99 {:.0} ms); {} Patients took {:.2} s",
        i.resources,
        i.bundles,
        opts.bundle_size,
        opts.inflight,
        i.seconds,
        i.per_second(),
        i.bundle_latency.quantile_ms(0.5),
        i.bundle_latency.quantile_ms(0.99),
        opts.patients,
        r.patients_seconds
    );
    let _ = writeln!(out, "           cpu: {}", i.cpu);
    let _ = writeln!(
        out,
        "  {:<7} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "phase", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "errors"
    );
    let _ = writeln!(out, "{}", phase_row("read", &r.read));
    let _ = writeln!(out, "           cpu: {}", r.read.cpu);
    let _ = writeln!(out, "{}", phase_row("search", &r.search));
    let _ = writeln!(
        out,
        "           cpu: {}; {} matches per search",
        r.search.cpu, r.search_matches
    );
    for (phase, p) in [("read", &r.read), ("search", &r.search)] {
        if let Some(e) = &p.first_error {
            let _ = writeln!(out, "  first {phase} error: {e}");
        }
    }
    let _ = writeln!(
        out,
        "  gateway peak RSS (VmHWM) {}; database size {}; start-up {:.2} s; load average before {} / after {}",
        mib(r.gateway_rss_kib),
        r.db_bytes
            .map_or("?".into(), |b| format!("{:.0} MiB", b as f64 / 1048576.0)),
        r.startup.as_secs_f64(),
        r.load_before,
        r.load_after
    );
    if r.backend == Backend::Sqlite {
        let check = |ok: bool| if ok { "met" } else { "MISSED" };
        let rss_ok = r.gateway_rss_kib.is_some_and(|k| k * 1024 < 200_000_000);
        let _ = writeln!(
            out,
            "  targets: reads >= 15000/s {}; search >= 3000/s {}; ingest >= 5000 resources/s {}; RSS < 200 MB {}",
            check(r.read.per_second() >= 15_000.0),
            check(r.search.per_second() >= 3_000.0),
            check(r.ingest.per_second() >= 5_000.0),
            check(rss_ok)
        );
    }
    print!("{out}");
}

fn print_markdown(reports: &[Report], opts: &Options) {
    println!();
    println!(
        "{} Patients, {} Observations; {} connections over loopback, {} s per phase; {} cores; bench client peak RSS {}",
        opts.patients,
        opts.observations,
        opts.concurrency,
        opts.seconds,
        cores(),
        mib(proc_status_kib("/proc/self/status", "VmHWM:"))
    );
    println!();
    println!(
        "| Backend | Ingest (resources/s) | Read (req/s) | Read p50 / p99 (ms) | Search (req/s) | Search p50 / p99 (ms) | Gateway peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {} |",
            match r.backend {
                Backend::Sqlite => "SQLite",
                Backend::Postgres => "PostgreSQL",
            },
            r.ingest.per_second(),
            r.read.per_second(),
            r.read.latency.quantile_ms(0.5),
            r.read.latency.quantile_ms(0.99),
            r.search.per_second(),
            r.search.latency.quantile_ms(0.5),
            r.search.latency.quantile_ms(0.99),
            mib(r.gateway_rss_kib)
        );
    }
}

async fn run(opts: Options) -> bool {
    let gateway_env: Vec<String> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("KAPGW_")
                && !k.starts_with("KAPGW_BENCH_")
                && k != "KAPGW_TEST_POSTGRES_URL"
                && k != "KAPGW_CONFIG"
        })
        .map(|(k, _)| k)
        .collect();
    println!(
        "load benchmark: backends {:?}, {} patients, {} observations, {} s per phase (+{} s warm-up), {} connections, \
         bundles of {} ({} in flight), {} cores, load average {}{}",
        opts.backends.iter().map(|b| b.name()).collect::<Vec<_>>(),
        opts.patients,
        opts.observations,
        opts.seconds,
        opts.warmup,
        opts.concurrency,
        opts.bundle_size,
        opts.inflight,
        cores(),
        load_average(),
        if gateway_env.is_empty() {
            String::new()
        } else {
            format!("; gateway settings from {}", gateway_env.join(", "))
        }
    );
    let mut reports = Vec::new();
    let mut ok = true;
    for &backend in &opts.backends {
        match run_backend(backend, &opts).await {
            Ok(report) => {
                print_report(&report, &opts);
                reports.push(report);
            }
            Err(e) => {
                eprintln!("[{}] benchmark failed: {e:#}", backend.name());
                ok = false;
            }
        }
    }
    if !reports.is_empty() {
        print_markdown(&reports, &opts);
    }
    ok
}

fn main() -> ExitCode {
    let opts = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load benchmark: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load benchmark: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if runtime.block_on(run(opts)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
