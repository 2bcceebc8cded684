//! The SMART App Launch pages (sign-in, patient picker, consent) in a real headless Chromium, driven through
//! chromedriver's W3C WebDriver HTTP API: a standalone launch from the authorize URL to a token that opens only the
//! chosen patient, a refused sign-in, and a denied consent.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `chromium chromium-driver`). Without them the test
//! is skipped, unless `KAPGW_TEST_BROWSER=1`, which makes a missing or failing browser fail the test.
//! Screenshots of the pages are written to the `browser` folder of Cargo's target temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use kap_gateway::auth::registry::{ClientKind, NewClient, Registry, Role};
use kap_gateway::config::Config;
use kap_gateway::startup::Application;
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const PASSWORD: &str = "correct horse battery";
const CLIENT_SCOPES: &str = "openid fhirUser launch/patient offline_access patient/*.rs";
const REQUESTED: &str =
    "launch/patient openid fhirUser offline_access patient/Observation.rs patient/Patient.rs";
const STATE: &str = "st&te=/1 ✓";
const WAIT: Duration = Duration::from_secs(20);

// ---- the gateway --------------------------------------------------------------------------------------------------

struct Gateway {
    address: String,
    base: String,
    state: kap_gateway::api::AppState,
    /// A client with full access, as a backend service.
    admin: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn spawn_gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".into(),
        database_url: format!("sqlite://{}", dir.path().join("test.db").display()),
        db_max_connections: 5,
        http_workers: 2,
        ..Config::default()
    };
    let app = Application::build(config).await.expect("build application");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state.clone();
    tokio::spawn(app.run_until_stopped());
    let grant = kap_gateway::auth::tokens::TokenGrant {
        client_id: "test-client".into(),
        subject: "test-user".into(),
        scope: "system/*.cruds".into(),
        lifetime_secs: 600,
        ..Default::default()
    };
    let (token, _) = state.auth.issue_access_token(&grant).await.unwrap();
    Gateway {
        address,
        base: state.base_url.clone(),
        state,
        admin: bearer_client(&token),
        _dir: dir,
    }
}

fn bearer_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn create_patient(gw: &Gateway, given: &str, family: &str, born: &str) -> String {
    let r = gw
        .admin
        .post(format!("{}/fhir/Patient", gw.address))
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Patient", "birthDate": born,
                "name": [{"given": [given], "family": family}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

// ---- where the browser is sent back to ----------------------------------------------------------------------------

/// A loopback server answering `200 done` to everything: the application's redirect URI.
fn spawn_callback() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer_done(stream));
        }
    });
    format!("http://127.0.0.1:{port}/callback")
}

fn answer_done(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone",
    );
}

// ---- chromedriver -------------------------------------------------------------------------------------------------

/// chromedriver with one browser session; the session is closed and the driver stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
    http: reqwest::Client,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Closing the session stops Chromium; a killed chromedriver would leave it running.
        if !self.session.is_empty()
            && let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port))
        {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            let _ = s.read_to_end(&mut Vec::new());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                artifacts().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let profile = tempfile::tempdir().unwrap();
        let mut driver = Driver {
            child,
            port,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .unwrap(),
            session: String::new(),
            _profile: profile,
        };
        let started = Instant::now();
        loop {
            let ready = driver
                .http
                .get(driver.url("/status"))
                .send()
                .await
                .ok()
                .map(|r| r.json::<Value>());
            if let Some(body) = ready
                && let Ok(body) = body.await
                && body["value"]["ready"] == true
            {
                break;
            }
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited: {status}");
            }
            assert!(started.elapsed() < WAIT, "chromedriver did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1000,900",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .chain([format!(
            "--user-data-dir={}",
            driver._profile.path().display()
        )])
        .collect::<Vec<_>>();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let r = driver
            .http
            .post(driver.url("/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session");
        let body: Value = r.json().await.unwrap();
        driver.session = body["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {body}"))
            .to_owned();
        driver
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A WebDriver command of the session; returns its `value`, failing the test on a WebDriver error.
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = self.url(&format!("/session/{}{path}", self.session));
        let mut req = self.http.request(method.clone(), url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert!(
            status.is_success(),
            "{method} {path}: {status} {}",
            body["value"]
        );
        body["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn current_url(&self) -> String {
        let v = self.command(reqwest::Method::GET, "/url", None).await;
        v.as_str().unwrap().to_owned()
    }

    async fn source(&self) -> String {
        let v = self.command(reqwest::Method::GET, "/source", None).await;
        v.as_str().unwrap().to_owned()
    }

    async fn title(&self) -> String {
        let v = self.command(reqwest::Method::GET, "/title", None).await;
        v.as_str().unwrap().to_owned()
    }

    /// The element matching `css`, waiting for it to appear.
    async fn find(&self, css: &str) -> String {
        let started = Instant::now();
        loop {
            let url = self.url(&format!("/session/{}/element", self.session));
            let r = self
                .http
                .post(url)
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .unwrap();
            let ok = r.status().is_success();
            let body: Value = r.json().await.unwrap();
            if ok {
                return body["value"][ELEMENT].as_str().unwrap().to_owned();
            }
            assert!(
                started.elapsed() < WAIT,
                "no element {css} at {}: {}",
                self.current_url().await,
                body["value"]["message"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        )
        .await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// The computed value of a CSS property of the element matching `css`.
    async fn css_value(&self, css: &str, property: &str) -> String {
        let e = self.find(css).await;
        let v = self
            .command(
                reqwest::Method::GET,
                &format!("/element/{e}/css/{property}"),
                None,
            )
            .await;
        v.as_str().unwrap().to_owned()
    }

    async fn is_selected(&self, css: &str) -> bool {
        let e = self.find(css).await;
        self.command(
            reqwest::Method::GET,
            &format!("/element/{e}/selected"),
            None,
        )
        .await
            == true
    }

    /// Waits until the page's title starts with `prefix` (the pages are titled `<page> – kap-gateway`).
    async fn wait_for_title(&self, prefix: &str) {
        let started = Instant::now();
        while !self.title().await.starts_with(prefix) {
            assert!(
                started.elapsed() < WAIT,
                "expected the page {prefix:?}, at {} with {}",
                self.current_url().await,
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the browser is at `prefix`, and returns the query parameters of where it is.
    async fn wait_for_url(&self, prefix: &str) -> HashMap<String, String> {
        let started = Instant::now();
        loop {
            let at = self.current_url().await;
            if at.starts_with(prefix) {
                return url::Url::parse(&at)
                    .unwrap()
                    .query_pairs()
                    .into_owned()
                    .collect();
            }
            assert!(
                started.elapsed() < WAIT,
                "expected to reach {prefix}, at {at} with {}",
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG screenshot of the page to the artifacts folder.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let png = STANDARD.decode(v.as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let path = artifacts().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    async fn close(mut self) {
        self.command(reqwest::Method::DELETE, "", None).await;
        self.session.clear();
    }
}

// ---- the launch ---------------------------------------------------------------------------------------------------

struct Launch {
    url: String,
    verifier: String,
}

fn launch(gw: &Gateway, redirect: &str) -> Launch {
    let verifier = format!(
        "{}-{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let challenge = URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref(),
    );
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", "browser-app")
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", REQUESTED)
        .append_pair("state", STATE)
        .append_pair("aud", &gw.base)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    Launch {
        url: format!("{}/auth/authorize?{query}", gw.address),
        verifier,
    }
}

async fn sign_in(d: &Driver, username: &str, password: &str) {
    d.wait_for_title("Sign in").await;
    d.type_into("input[name=username]", username).await;
    d.type_into("input[name=password]", password).await;
    d.click("form[action='/auth/login'] button[type=submit]")
        .await;
}

async fn pick(d: &Driver, patient: &str) {
    d.wait_for_title("Choose a patient").await;
    d.click(&format!(
        "input[type=radio][name=patient][value='{patient}']"
    ))
    .await;
    d.click("form:has(input[name=patient]) button[type=submit]")
        .await;
}

async fn exchange(gw: &Gateway, code: &str, redirect: &str, verifier: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/auth/token", gw.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", redirect)
                .append_pair("code_verifier", verifier)
                .append_pair("client_id", "browser-app")
                .finish(),
        )
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// A standalone launch: sign in, pick a patient, untick `offline_access`, allow, and use the token.
async fn standalone_launch(gw: &Gateway, d: &Driver, redirect: &str, chosen: &str, other: &str) {
    let l = launch(gw, redirect);
    d.goto(&l.url).await;
    d.wait_for_title("Sign in").await;
    assert!(d.source().await.contains("Browser App"));
    // The page's stylesheet is allowed by its hash in the Content-Security-Policy: the browser must apply it.
    assert_eq!(
        d.css_value("button[type=submit]", "background-color").await,
        "rgba(29, 78, 216, 1)"
    );
    d.screenshot("login").await;
    sign_in(d, "clin", PASSWORD).await;

    d.wait_for_title("Choose a patient").await;
    let picker = d.source().await;
    assert!(picker.contains("Ada Lovelace") && picker.contains("O'Brien &amp; Sons"));
    d.screenshot("picker").await;
    pick(d, chosen).await;

    d.wait_for_title("Allow access?").await;
    let consent = d.source().await;
    assert!(consent.contains("Ada Lovelace"), "{consent}");
    assert!(consent.contains("Read and search Observation records of the selected patient"));
    let offline = "input[type=checkbox][name=scope][value=offline_access]";
    assert!(d.is_selected(offline).await, "every scope starts ticked");
    d.click(offline).await;
    assert!(!d.is_selected(offline).await);
    let shot = d.screenshot("consent").await;
    let _ = writeln!(std::io::stderr(), "consent page: {}", shot.display());
    d.click("button[name=decision][value=allow]").await;

    let params = d.wait_for_url(redirect).await;
    assert_eq!(params.get("state").map(String::as_str), Some(STATE));
    assert!(!params.contains_key("error"), "{params:?}");
    assert!(d.source().await.contains("done"));
    let code = params.get("code").expect("a code");

    let token = exchange(gw, code, redirect, &l.verifier).await;
    let granted: Vec<&str> = token["scope"].as_str().unwrap().split(' ').collect();
    for s in [
        "launch/patient",
        "openid",
        "fhirUser",
        "patient/Observation.rs",
        "patient/Patient.rs",
    ] {
        assert!(granted.contains(&s), "{s} in {granted:?}");
    }
    assert!(!granted.contains(&"offline_access"), "{granted:?}");
    assert_eq!(token["patient"], chosen);
    assert!(token.get("refresh_token").is_none(), "{token}");
    assert!(token["id_token"].is_string(), "{token}");

    let app = bearer_client(token["access_token"].as_str().unwrap());
    let read = |id: &str| app.get(format!("{}/Patient/{id}", gw.base)).send();
    assert_eq!(read(chosen).await.unwrap().status(), 200);
    assert_eq!(read(other).await.unwrap().status(), 404);
}

/// A wrong password leaves the browser on the sign-in page with a message; then a denied consent goes back to the
/// application with `access_denied`.
async fn refused_and_denied(gw: &Gateway, d: &Driver, redirect: &str, chosen: &str) {
    let l = launch(gw, redirect);
    d.goto(&l.url).await;
    sign_in(d, "clin", "not the password").await;
    d.find("p.error").await;
    let page = d.source().await;
    assert!(
        page.contains("The username or password is not correct."),
        "{page}"
    );
    assert!(d.title().await.starts_with("Sign in"));
    assert!(d.current_url().await.starts_with(&gw.address));
    assert!(!page.contains("done"));
    d.screenshot("login-error").await;

    sign_in(d, "clin", PASSWORD).await;
    pick(d, chosen).await;
    d.wait_for_title("Allow access?").await;
    d.click("button[name=decision][value=deny]").await;
    let params = d.wait_for_url(redirect).await;
    assert_eq!(
        params.get("error").map(String::as_str),
        Some("access_denied")
    );
    assert_eq!(params.get("state").map(String::as_str), Some(STATE));
    assert!(!params.contains_key("code"), "{params:?}");
}

#[tokio::test]
async fn smart_launch_pages_work_in_a_real_browser() {
    let required = std::env::var("KAPGW_TEST_BROWSER").is_ok_and(|v| !v.is_empty() && v != "0");
    if !Path::new(CHROMEDRIVER).exists() {
        assert!(
            !required,
            "KAPGW_TEST_BROWSER is set but {CHROMEDRIVER} is missing"
        );
        let _ = writeln!(
            std::io::stderr(),
            "skipped: chromium-driver not installed ({CHROMEDRIVER} is missing)"
        );
        return;
    }

    let gw = spawn_gateway().await;
    let redirect = spawn_callback();
    let registry = Registry::new(gw.state.store.db.clone());
    registry
        .add_client(NewClient {
            client_id: "browser-app".into(),
            name: "Browser App".into(),
            kind: ClientKind::Public,
            secret: None,
            redirect_uris: vec![redirect.clone()],
            allowed_scopes: CLIENT_SCOPES.into(),
            jwks: None,
            jwks_uri: None,
        })
        .await
        .unwrap();
    registry
        .add_user("clin", PASSWORD, Role::Clinician, None)
        .await
        .unwrap();
    let ada = create_patient(&gw, "Ada", "Lovelace", "1985-12-10").await;
    let other = create_patient(&gw, "Owen", "O'Brien & Sons", "1970-01-01").await;

    let driver = Driver::start().await;
    standalone_launch(&gw, &driver, &redirect, &ada, &other).await;
    refused_and_denied(&gw, &driver, &redirect, &ada).await;
    driver.close().await;
}
