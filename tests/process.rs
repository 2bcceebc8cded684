//! The real `kap-gateway` binary in its own process: trace export to an in-process OTLP receiver, what reaches
//! spans and log lines, and graceful shutdown on SIGTERM and SIGINT under load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/kap_records.rs"]
mod kap_records;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kap_records::record;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_kap-gateway");
const SECRET: &str = "process-test-secret-0123456789";

/// A minimal OTLP/HTTP receiver: accepts `POST /v1/traces` (protobuf) and keeps every request it decodes.
struct OtlpReceiver {
    port: u16,
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

impl OtlpReceiver {
    fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let sink = sink.clone();
                std::thread::spawn(move || serve_otlp(stream, &sink));
            }
        });
        OtlpReceiver { port, received }
    }

    fn spans(&self) -> Vec<Span> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|rs| rs.scope_spans.iter())
            .flat_map(|ss| ss.spans.iter().cloned())
            .collect()
    }
}

/// Serves HTTP/1.1 requests on one connection (keep-alive), answering 200 with an empty export response.
fn serve_otlp(stream: std::net::TcpStream, sink: &Mutex<Vec<ExportTraceServiceRequest>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).unwrap();
        if line.starts_with("POST /v1/traces") {
            let request = ExportTraceServiceRequest::decode(body.as_slice())
                .expect("the exporter sends OTLP protobuf");
            sink.lock().unwrap().push(request);
        }
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// A gateway process with its stderr collected line by line.
struct Gateway {
    child: Child,
    address: String,
    logs: Arc<Mutex<Vec<String>>>,
    dir: Option<tempfile::TempDir>,
}

impl Gateway {
    /// Registers a backend client with the CLI, then starts `serve` on a free port with JSON logs.
    fn start(envs: &[(&str, String)]) -> Gateway {
        Gateway::start_in(tempfile::tempdir().unwrap(), envs)
    }

    /// The same in `dir`, whose database (`gw.db`) may already exist, its client registered.
    fn start_in(dir: tempfile::TempDir, envs: &[(&str, String)]) -> Gateway {
        let database_url = format!("sqlite://{}", dir.path().join("gw.db").display());
        if !dir.path().join("gw.db").exists() {
            Gateway::register_client(&dir, &database_url);
        }
        Gateway::serve(dir, &database_url, envs)
    }

    /// Kills the process at once (no shutdown) and hands back its directory.
    fn crash(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().unwrap()
    }

    fn register_client(dir: &tempfile::TempDir, database_url: &str) {
        let status = Command::new(BIN)
            .args([
                "clients",
                "add",
                "--id",
                "ops-test",
                "--name",
                "Process test",
            ])
            .args([
                "--kind",
                "confidential-symmetric",
                "--secret-env",
                "OPS_TEST_SECRET",
            ])
            .args([
                "--scopes",
                "system/*.cruds system/AuditEvent.rs kap/psychotherapy-notes.read",
            ])
            .args(["--database-url", database_url])
            .env("OPS_TEST_SECRET", SECRET)
            .env_remove("RUST_LOG")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn serve(dir: tempfile::TempDir, database_url: &str, envs: &[(&str, String)]) -> Gateway {
        let mut command = Command::new(BIN);
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
            ])
            .env_remove("RUST_LOG")
            .env("KAPGW_LOG_FORMAT", "json")
            .env("KAPGW_LOG_LEVEL", "debug")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "kap-gateway listening"
                {
                    let _ = port_tx.send(v["port"].as_u64().unwrap());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the gateway did not start: {:?}", logs.lock().unwrap()));
        Gateway {
            child,
            address: format!("http://127.0.0.1:{port}"),
            logs,
            dir: Some(dir),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `Bundle.total` of the search `query` (after `/fhir/`), which must answer 200.
    async fn count(&self, token: &str, query: &str) -> usize {
        let resp = reqwest::Client::new()
            .get(format!("{}/fhir/{query}", self.address))
            .header("Authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()["total"]
            .as_u64()
            .unwrap() as usize
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    async fn token(&self, extra_headers: reqwest::header::HeaderMap) -> String {
        let resp = reqwest::Client::new()
            .post(format!("{}/auth/token", self.address))
            .basic_auth("ops-test", Some(SECRET))
            .headers(extra_headers)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&scope=system%2F*.cruds%20system%2FAuditEvent.rs%20kap%2Fpsychotherapy-notes.read")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            AnyValue::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything a span carries as text: name, attributes, events and their attributes, status message.
fn span_text(span: &Span) -> String {
    let mut out = format!("{} {:?} {:?}", span.name, span.attributes, span.status);
    for event in &span.events {
        out.push_str(&format!(" {} {:?}", event.name, event.attributes));
    }
    out
}

#[tokio::test]
async fn spans_are_exported_with_their_links_and_carry_no_personal_data() {
    let receiver = OtlpReceiver::start();
    let mut gw = Gateway::start(&[
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.port),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_SERVICE_NAME", "kapgw-under-test".into()),
    ]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut traced = reqwest::header::HeaderMap::new();
    traced.insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let token = gw.token(traced.clone()).await;
    let client = reqwest::Client::new();
    let fhir = format!("{}/fhir", gw.address);
    let ct = ("Content-Type", "application/fhir+json");
    let auth = ("Authorization", format!("Bearer {token}"));

    // Values that must never leave the request: names, a birth date, note text, search values.
    let secrets = [
        "Quixotica",
        "Zemblanova",
        "1971-02-03",
        "ceiling was breathing",
        "Vexillum",
        "Orrery",
    ];
    let patient = json!({
        "resourceType": "Patient",
        "name": [{"family": "Zemblanova", "given": ["Quixotica"]}],
        "birthDate": "1971-02-03",
    });
    let created = client
        .post(format!("{fhir}/Patient"))
        .header(ct.0, ct.1)
        .header(auth.0, &auth.1)
        .headers(traced.clone())
        .body(patient.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let pid = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let note = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "Integration session reflection"},
        "subject": {"reference": format!("Patient/{pid}")},
        "note": [{"text": "Said the ceiling was breathing; felt the Orrery turning"}],
    });
    let resp = client
        .post(format!("{fhir}/Observation"))
        .header(ct.0, ct.1)
        .header(auth.0, &auth.1)
        .body(note.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    for query in [
        "Patient?name=Quixotica&birthdate=1971-02-03",
        "Patient?family:exact=Zemblanova",
        "Observation?patient.name=Quixotica",
        "Patient?birthdate=Vexillum",
    ] {
        let resp = client
            .get(format!("{fhir}/{query}"))
            .header(auth.0, &auth.1)
            .send()
            .await
            .unwrap();
        assert!(resp.status() == 200 || resp.status() == 400, "{query}");
    }
    let resp = client
        .post(format!("{fhir}/Patient/_search"))
        .header(auth.0, &auth.1)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("family=Zemblanova&birthdate=1971-02-03")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut updated = patient.clone();
    updated["id"] = json!(pid);
    updated["name"][0]["given"] = json!(["Quixotica", "Vexillum"]);
    let resp = client
        .put(format!("{fhir}/Patient/{pid}"))
        .header(ct.0, ct.1)
        .header(auth.0, &auth.1)
        .body(updated.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // KAP writes full of the same values: an enrolment, an evaluation, a psychotherapy note.
    let kap = format!("{}/kap/v1", gw.address);
    let mut kap_patient = record("patient");
    kap_patient["family_name"] = json!("Zemblanova");
    kap_patient["given_names"] = json!(["Quixotica"]);
    kap_patient["birth_date"] = json!("1971-02-03");
    let mut kap_posts = vec![("patients".to_owned(), kap_patient)];
    let resp = client
        .post(format!("{kap}/patients"))
        .header("Content-Type", "application/json")
        .header(auth.0, &auth.1)
        .body(kap_posts[0].1.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let kap_pid = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut evaluation = record("evaluation");
    evaluation["summary"] = json!("Quixotica Zemblanova, born 1971-02-03, Vexillum");
    let mut integration = record("integration");
    integration["note"] = json!("Said the ceiling was breathing; felt the Orrery turning");
    kap_posts = vec![
        (format!("patients/{kap_pid}/evaluations"), evaluation),
        (
            format!("patients/{kap_pid}/integration-sessions"),
            integration,
        ),
    ];
    for (path, body) in &kap_posts {
        let resp = client
            .post(format!("{kap}/{path}"))
            .header("Content-Type", "application/json")
            .header(auth.0, &auth.1)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{path}");
    }

    // A clean stop flushes the spans still queued.
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{status:?}");

    let spans = receiver.spans();
    let resources = receiver.received.lock().unwrap().clone();
    assert!(
        format!("{resources:?}").contains("kapgw-under-test"),
        "OTEL_SERVICE_NAME names the service"
    );
    // The token request continued the caller's trace.
    let token_span = spans
        .iter()
        .find(|s| attr(s, "http.route").as_deref() == Some("/auth/token"))
        .expect("a span for the token request");
    assert_eq!(hex(&token_span.trace_id), trace_id);
    assert_eq!(hex(&token_span.parent_span_id), caller_span);
    assert_eq!(token_span.name, "POST /auth/token");
    // The create: route template, status, interaction and client id; a child span for its audit write.
    let create = spans
        .iter()
        .find(|s| {
            attr(s, "http.route").as_deref() == Some("/fhir/{type}")
                && attr(s, "fhir.interaction").as_deref() == Some("create")
                && hex(&s.trace_id) == trace_id
        })
        .expect("a span for the create, in the caller's trace");
    assert_eq!(hex(&create.parent_span_id), caller_span);
    assert_eq!(
        attr(create, "http.response.status_code").as_deref(),
        Some("201")
    );
    assert_eq!(attr(create, "client.id").as_deref(), Some("ops-test"));
    assert_eq!(attr(create, "http.request.method").as_deref(), Some("POST"));
    let audit = spans
        .iter()
        .find(|s| s.name == "audit.write" && s.parent_span_id == create.span_id)
        .expect("the audit write is a child of the request span");
    assert_eq!(audit.trace_id, create.trace_id);
    // Requests without a traceparent start their own traces; each has its server span.
    let searches: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            attr(s, "fhir.interaction").as_deref() == Some("search-type")
                && attr(s, "http.route").is_some()
        })
        .collect();
    assert!(searches.len() >= 5, "{}", searches.len());
    assert!(searches.iter().all(|s| s.parent_span_id.is_empty()));
    assert!(
        searches
            .iter()
            .any(|s| attr(s, "http.response.status_code").as_deref() == Some("400"))
    );

    // Nothing personal anywhere: spans (names, attributes, events) and every log line.
    let logs = gw.logs();
    assert!(logs.lines().count() > 10, "{logs}");
    assert!(
        logs.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "JSON lines only"
    );
    for span in &spans {
        let text = span_text(span);
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "span {} carries {secret}: {text}",
                span.name
            );
        }
        assert!(
            !text.contains("name="),
            "span {} carries a query string: {text}",
            span.name
        );
    }
    for secret in secrets {
        assert!(!logs.contains(secret), "a log line carries {secret}");
    }
    assert!(!logs.contains("name=Quixotica") && !logs.contains("birthdate="));
}

/// How one request of [`load`] ended (the error texts are read through `Debug`, in assertion messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Outcome {
    /// An answer with this status, read to its end.
    Answered(u16),
    /// The connection failed before any answer came (the error, and the Patient identifier value the request
    /// carried). A connection the kernel completed just before the listener closed, but that the server never
    /// accepted, ends like this; [`shutdown_under_load`] checks that such a request had no effect.
    NoAnswer(String, String),
    /// An answer that began but was cut off.
    Cut(String),
}

/// Starts `clients` tasks that each send requests in a loop until `stop`; returns their outcomes.
async fn load(
    address: String,
    token: String,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(Outcome, Instant)> {
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (address, token, stop) = (address.clone(), token.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // A new connection per request: an error is then either a refused connection (the listener is
            // closed) or a failure of an accepted request.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let mut outcomes = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let value = format!("{i}-{n}");
                let body = json!({"resourceType": "Patient", "active": true,
                    "identifier": [{"system": "urn:load", "value": value}]});
                let result = client
                    .post(format!("{address}/fhir/Patient"))
                    .header("Content-Type", "application/fhir+json")
                    .header("Authorization", format!("Bearer {token}"))
                    .body(body.to_string())
                    .send()
                    .await;
                match result {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        // The whole body must arrive, too.
                        match resp.bytes().await {
                            Ok(_) => outcomes.push((Outcome::Answered(status), Instant::now())),
                            Err(e) => {
                                outcomes.push((Outcome::Cut(format!("{e:?}")), Instant::now()));
                            }
                        }
                    }
                    Err(e) if e.is_connect() => break,
                    Err(e) => {
                        outcomes.push((Outcome::NoAnswer(format!("{e:?}"), value), Instant::now()));
                        break;
                    }
                }
            }
            outcomes
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// The tests that put a gateway under load run one at a time: on two cores, a second loaded gateway beside a
/// shutting-down one leaves connections in the listener's backlog when it closes (reset by the kernel).
static LOAD_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn shutdown_under_load(signal: &str) {
    let _one_at_a_time = LOAD_TESTS.lock().await;
    let mut gw = Gateway::start(&[("KAPGW_SHUTDOWN_TIMEOUT_SECS", "20".into())]);
    let token = gw.token(reqwest::header::HeaderMap::new()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(load(gw.address.clone(), token, 8, stop.clone()));
    // Let the load build up, then signal while requests are in flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let signalled = Instant::now();
    gw.signal(signal);
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(25)))
        .expect("the gateway exits within the shutdown timeout");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = load.await.unwrap();
    assert!(status.success(), "exit status {status:?}\n{}", gw.logs());
    let answered = outcomes
        .iter()
        .filter(|(o, _)| matches!(o, Outcome::Answered(_)))
        .count();
    assert!(answered > 20, "the load ran: {answered} answers");
    // Requests in flight at the signal were finished, not dropped.
    let after = outcomes
        .iter()
        .filter(|(o, at)| matches!(o, Outcome::Answered(201)) && *at > signalled)
        .count();
    assert!(after > 0, "no request completed after the signal");
    let failures: Vec<&Outcome> = outcomes
        .iter()
        .map(|(o, _)| o)
        .filter(|o| !matches!(o, Outcome::Answered(201) | Outcome::NoAnswer(..)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        outcomes.len(),
        &failures[..failures.len().min(5)]
    );
    let logs = gw.logs();
    assert!(logs.contains("shutdown complete"), "{logs}");
    // Closing the listener is part of the plan, not an error for the operator to chase.
    assert!(!logs.contains("Error accepting connection"), "{logs}");
    // Stopped means stopped: nothing listens any more.
    assert!(std::net::TcpStream::connect(gw.address.trim_start_matches("http://")).is_err());
    // A request that got no answer at all was never taken up: its connection waited in the kernel's queue when
    // the listener closed (TCP gives the server no way to refuse those). It must have left no trace.
    let unanswered: Vec<&String> = outcomes
        .iter()
        .filter_map(|(o, _)| match o {
            Outcome::NoAnswer(_, value) => Some(value),
            _ => None,
        })
        .collect();
    if unanswered.is_empty() {
        return;
    }
    assert!(
        unanswered.len() <= 8,
        "at most one unanswered request per client: {outcomes:?}"
    );
    let gw = Gateway::start_in(gw.dir.take().unwrap(), &[]);
    let token = gw.token(reqwest::header::HeaderMap::new()).await;
    for value in unanswered {
        let found = gw
            .count(
                &token,
                &format!("Patient?identifier=urn:load|{value}&_summary=count"),
            )
            .await;
        assert_eq!(
            found, 0,
            "the unanswered create {value} was carried out: {outcomes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_fails_no_accepted_request_and_exits_0() {
    shutdown_under_load("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_is_as_graceful_as_sigterm() {
    shutdown_under_load("INT").await;
}

/// With a drain period, a signalled gateway first reports not ready while it goes on serving (load balancers stop
/// sending it requests), and only then stops accepting and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_period_fails_readiness_while_requests_are_still_served() {
    let mut gw = Gateway::start(&[
        ("KAPGW_SHUTDOWN_DRAIN_SECS", "5".into()),
        ("KAPGW_SHUTDOWN_TIMEOUT_SECS", "20".into()),
    ]);
    let token = gw.token(reqwest::header::HeaderMap::new()).await;
    let client = reqwest::Client::new();
    let ready = async || {
        let resp = client
            .get(format!("{}/health/ready", gw.address))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    };
    assert_eq!(ready().await.0, 200);
    let signalled = Instant::now();
    gw.signal("TERM");
    // Readiness fails as soon as the signal is handled, naming the shutdown ...
    let body = loop {
        let (status, body) = ready().await;
        if status == 503 {
            break body;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "still ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(body["checks"]["shutdown"], "fail", "{body}");
    // ... while the gateway still serves, writes included.
    let created = client
        .post(format!("{}/fhir/Patient", gw.address))
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/fhir+json")
        .body(r#"{"resourceType":"Patient","identifier":[{"system":"urn:drain","value":"d1"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(
        gw.count(&token, "Patient?identifier=urn:drain|d1&_summary=count")
            .await,
        1
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "the requests above ran within the drain period"
    );
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(20)))
        .expect("the gateway exits after the drain");
    assert!(status.success(), "{status:?}\n{}", gw.logs());
    let logs = gw.logs();
    assert!(
        logs.contains("draining (not ready, still serving)"),
        "{logs}"
    );
    assert!(logs.contains("shutdown complete"), "{logs}");
}

/// The audit journal's promise: a request answered is audited, even if the process dies the next moment. Patients
/// are created under load, the process is killed without warning, and a new process on the same files must show
/// an AuditEvent for every create that was answered (and the Patient itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_answered_before_a_crash_is_in_the_audit_trail_after_restart() {
    let _one_at_a_time = LOAD_TESTS.lock().await;
    let gw = Gateway::start(&[]);
    let token = gw.token(reqwest::header::HeaderMap::new()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(load(gw.address.clone(), token, 8, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dir = tokio::task::block_in_place(|| gw.crash());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = load
        .await
        .unwrap()
        .iter()
        .filter(|(o, _)| matches!(o, Outcome::Answered(201)))
        .count();
    assert!(answered > 20, "the load ran: {answered} answers");
    let journal_root = dir.path().join("gw.db-audit");
    assert!(
        journal_root.is_dir(),
        "the journal lives beside the database"
    );

    let gw = Gateway::start_in(dir, &[]);
    let token = gw.token(reqwest::header::HeaderMap::new()).await;
    let created = gw.count(&token, "Patient?_summary=count").await;
    let audited = gw
        .count(&token, "AuditEvent?subtype=create&_summary=count")
        .await;
    assert!(
        created >= answered,
        "{created} Patients stored, {answered} creates answered"
    );
    assert!(
        audited >= answered,
        "{audited} create events, {answered} creates answered"
    );
    // An event is written before the response, a Patient committed before the event: never more events than
    // Patients (a create whose transaction failed would be audited with its error status, but none failed here).
    assert!(
        audited <= created,
        "{audited} create events for {created} Patients"
    );
    // The crashed process's journal was imported and removed; only the running one's remains.
    let left: Vec<_> = std::fs::read_dir(&journal_root).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}\n{}", gw.logs());
}
