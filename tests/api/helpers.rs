//! `spawn_app()`: a gateway on a free port with a database of its own, and a client to talk to it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kap_gateway::config::Config;
use kap_gateway::startup::Application;
use serde_json::Value;

pub struct TestApp {
    pub address: String,
    /// The authenticator of the running gateway, to mint tokens with chosen scopes.
    pub auth: kap_gateway::auth::tokens::Authenticator,
    /// A client that sends no token.
    pub anonymous: reqwest::Client,
    pub base: String,
    pub client: reqwest::Client,
    pub database_url: String,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh database URL: a temporary SQLite file, or a new PostgreSQL database when `KAPGW_TEST_POSTGRES_URL` is
/// set. A configured but unreachable PostgreSQL fails the test: it is never silently skipped.
pub async fn fresh_database() -> (String, Option<tempfile::TempDir>) {
    match std::env::var("KAPGW_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            use sqlx::Connection as _;
            let name = format!("kapgw_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
                panic!("KAPGW_TEST_POSTGRES_URL is set but PostgreSQL is unreachable: {e}")
            });
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let mut parsed = url::Url::parse(&url).expect("KAPGW_TEST_POSTGRES_URL is a URL");
            parsed.set_path(&format!("/{name}"));
            (parsed.to_string(), None)
        }
        _ => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("test.db").display());
            (url, Some(dir))
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        kap_gateway::telemetry::init("debug", "text");
    }
    let (database_url, dir) = fresh_database().await;
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        database_url: database_url.clone(),
        db_max_connections: 5,
        http_workers: 2,
        ..Config::default()
    };
    adjust(&mut config);
    let app = Application::build(config).await.expect("build application");
    let port = app.port();
    let base = app.state.base_url.clone();
    let auth = app.state.auth.clone();
    tokio::spawn(app.run_until_stopped());
    // The default client acts as a backend service with full access, notes included.
    let token = mint(
        &auth,
        "system/*.cruds system/AuditEvent.rs kap/psychotherapy-notes.read",
        None,
    )
    .await;
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        base,
        auth,
        anonymous: reqwest::Client::new(),
        client: client_with_token(&token),
        database_url,
        _dir: dir,
    }
}

/// Issues an access token of the running gateway.
pub async fn mint(
    auth: &kap_gateway::auth::tokens::Authenticator,
    scope: &str,
    patient: Option<&str>,
) -> String {
    let grant = kap_gateway::auth::tokens::TokenGrant {
        client_id: "test-client".into(),
        subject: "test-user".into(),
        scope: scope.into(),
        patient: patient.map(str::to_owned),
        lifetime_secs: 600,
        ..Default::default()
    };
    auth.issue_access_token(&grant)
        .await
        .expect("issue token")
        .0
}

/// A client that sends `token` on every request.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The diagnostics of an OperationOutcome, joined.
    pub fn diagnostics(&self) -> String {
        self.body["issue"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        format!(
                            "{} @ {}",
                            i["diagnostics"].as_str().unwrap_or(""),
                            i["expression"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    }

    /// Ids of the `match` entries of a searchset.
    pub fn match_ids(&self) -> Vec<String> {
        self.body["entry"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["search"]["mode"] == "match")
                    .map(|e| e["resource"]["id"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn link(&self, relation: &str) -> Option<String> {
        self.body["link"].as_array().and_then(|links| {
            links
                .iter()
                .find(|l| l["relation"] == relation)
                .and_then(|l| l["url"].as_str().map(str::to_owned))
        })
    }
}

pub async fn into_resp(r: reqwest::Response) -> Resp {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        body,
        text,
    }
}

impl TestApp {
    /// A client whose token carries `scope` (and `patient` context).
    pub async fn client_for(&self, scope: &str, patient: Option<&str>) -> reqwest::Client {
        client_with_token(&mint(&self.auth, scope, patient).await)
    }

    /// GET with a given client.
    pub async fn get_with(&self, client: &reqwest::Client, path: &str) -> Resp {
        into_resp(client.get(self.url(path)).send().await.expect("request")).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> Resp {
        into_resp(
            self.client
                .get(self.url(path))
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    pub async fn get_url(&self, url: &str) -> Resp {
        into_resp(self.client.get(url).send().await.expect("request")).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.client.request(method, self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        into_resp(req.send().await.expect("request")).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(reqwest::Method::POST, path, Some(body), &[])
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.send(reqwest::Method::PUT, path, Some(body), &[]).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(reqwest::Method::DELETE, path, None, &[]).await
    }

    /// Creates a resource and returns its id, failing the test on anything but 201.
    pub async fn create(&self, resource: &Value) -> String {
        let t = resource["resourceType"].as_str().expect("resourceType");
        let r = self.post(&format!("/fhir/{t}"), resource).await;
        assert_eq!(r.status, 201, "create {t}: {}", r.text);
        r.body["id"].as_str().expect("id").to_owned()
    }

    /// Searches and returns the match ids.
    pub async fn search_ids(&self, query: &str) -> Vec<String> {
        let r = self.get(&format!("/fhir/{query}")).await;
        assert_eq!(r.status, 200, "search {query}: {}", r.text);
        r.match_ids()
    }
}

/// Removes `id` and `meta.versionId` / `meta.lastUpdated` (and an emptied `meta`) for comparisons.
pub fn without_server_fields(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        obj.remove("id");
        let empty = obj
            .get_mut("meta")
            .and_then(Value::as_object_mut)
            .map(|m| {
                m.remove("versionId");
                m.remove("lastUpdated");
                m.is_empty()
            })
            .unwrap_or(false);
        if empty {
            obj.remove("meta");
        }
    }
    v
}

/// The OAuth client and user registry of the app's database, through a connection pool of its own.
pub async fn registry(app: &TestApp) -> kap_gateway::auth::registry::Registry {
    kap_gateway::auth::registry::Registry::new(app_db(app).await)
}

/// A connection pool to the app's database (migrations are already applied by the app).
pub async fn app_db(app: &TestApp) -> kap_gateway::store::db::Db {
    let config = Config {
        database_url: app.database_url.clone(),
        db_max_connections: 2,
        ..Config::default()
    };
    kap_gateway::startup::connect_store(&config)
        .await
        .expect("open the app's database")
        .db
}
