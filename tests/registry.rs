//! The registry of OAuth clients and users against a real database (a temporary SQLite file, or a fresh
//! PostgreSQL database when `KAPGW_TEST_POSTGRES_URL` is set), through the library and through the command line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use kap_gateway::auth::registry::{ClientKind, NewClient, Registry, RegistryError, Role};
use kap_gateway::config::Config;
use kap_gateway::startup::connect_store;
use serde_json::json;

/// A database of the test's own: the URL and the directory to keep alive for SQLite.
struct TestDb {
    url: String,
    dir: tempfile::TempDir,
}

/// A fresh database URL: a temporary SQLite file, or a new PostgreSQL database when `KAPGW_TEST_POSTGRES_URL` is
/// set. A configured but unreachable PostgreSQL fails the test: it is never silently skipped.
async fn fresh_database() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match std::env::var("KAPGW_TEST_POSTGRES_URL") {
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
            parsed.to_string()
        }
        _ => format!("sqlite://{}", dir.path().join("r.db").display()),
    };
    TestDb { url, dir }
}

async fn open(db: &TestDb) -> Registry {
    let config = Config {
        database_url: db.url.clone(),
        db_max_connections: 2,
        ..Config::default()
    };
    let store = connect_store(&config).await.expect("open the store");
    Registry::new(store.db)
}

async fn fresh_registry() -> (Registry, TestDb) {
    let db = fresh_database().await;
    (open(&db).await, db)
}

const SECRET: &str = "s3cret-that-is-long-enough";

fn public_client(id: &str) -> NewClient {
    NewClient {
        client_id: id.into(),
        name: "Intake questionnaire".into(),
        kind: ClientKind::Public,
        secret: None,
        redirect_uris: vec!["https://intake.example.org/callback".into()],
        allowed_scopes: "openid fhirUser launch/patient patient/*.rs".into(),
        jwks: None,
        jwks_uri: None,
    }
}

fn symmetric_client(id: &str) -> NewClient {
    NewClient {
        kind: ClientKind::ConfidentialSymmetric,
        secret: Some(SECRET.into()),
        redirect_uris: vec!["http://localhost:8000/cb".into()],
        allowed_scopes: "openid fhirUser user/*.rs offline_access".into(),
        ..public_client(id)
    }
}

fn rsa_jwks() -> serde_json::Value {
    json!({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS384", "n": "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw", "e": "AQAB"}]})
}

fn asymmetric_client(id: &str) -> NewClient {
    NewClient {
        kind: ClientKind::ConfidentialAsymmetric,
        redirect_uris: vec![],
        allowed_scopes: "system/*.rs".into(),
        jwks: Some(rsa_jwks()),
        ..public_client(id)
    }
}

fn invalid_reason(result: Result<impl std::fmt::Debug, RegistryError>) -> String {
    match result {
        Err(RegistryError::Invalid(reason)) => reason,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn clients_of_each_kind_can_be_added_listed_read_back_and_removed() {
    let (registry, _db) = fresh_registry().await;
    let public = registry.add_client(public_client("intake")).await.unwrap();
    assert_eq!(public.kind, ClientKind::Public);
    assert!(public.created_at > 0);
    registry
        .add_client(symmetric_client("billing"))
        .await
        .unwrap();
    registry
        .add_client(asymmetric_client("backend"))
        .await
        .unwrap();
    registry
        .add_client(NewClient {
            jwks: None,
            jwks_uri: Some("https://backend.example.org/jwks.json".into()),
            ..asymmetric_client("backend-2")
        })
        .await
        .unwrap();

    let listed = registry.list_clients().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, ["backend", "backend-2", "billing", "intake"]);

    let intake = registry.client("intake").await.unwrap().unwrap();
    assert_eq!(intake.name, "Intake questionnaire");
    assert_eq!(
        intake.redirect_uris,
        ["https://intake.example.org/callback"]
    );
    assert_eq!(
        intake.allowed_scopes,
        "openid fhirUser launch/patient patient/*.rs"
    );
    assert_eq!(intake.jwks, None);
    let backend = registry.client("backend").await.unwrap().unwrap();
    assert_eq!(backend.kind, ClientKind::ConfidentialAsymmetric);
    assert_eq!(backend.jwks, Some(rsa_jwks()));
    assert!(backend.redirect_uris.is_empty());
    let backend2 = registry.client("backend-2").await.unwrap().unwrap();
    assert_eq!(
        backend2.jwks_uri.as_deref(),
        Some("https://backend.example.org/jwks.json")
    );
    let billing = registry.client("billing").await.unwrap().unwrap();
    assert_eq!(billing.kind, ClientKind::ConfidentialSymmetric);
    // The secret is nowhere in what the registry hands out.
    assert!(!serde_json::to_string(&billing).unwrap().contains(SECRET));

    assert!(registry.remove_client("intake").await.unwrap());
    assert!(!registry.remove_client("intake").await.unwrap());
    assert!(registry.client("intake").await.unwrap().is_none());
    assert_eq!(registry.list_clients().await.unwrap().len(), 3);
}

#[tokio::test]
async fn invalid_clients_are_refused_with_a_reason_and_nothing_is_stored() {
    let (registry, _db) = fresh_registry().await;
    let cases: Vec<(NewClient, &str)> = vec![
        (
            NewClient {
                secret: Some(SECRET.into()),
                ..public_client("a")
            },
            "no secret",
        ),
        (
            NewClient {
                redirect_uris: vec![],
                ..public_client("a")
            },
            "redirect URI",
        ),
        (
            NewClient {
                secret: None,
                ..symmetric_client("a")
            },
            "needs a secret",
        ),
        (
            NewClient {
                secret: Some("too-short".into()),
                ..symmetric_client("a")
            },
            "at least 16",
        ),
        (
            NewClient {
                redirect_uris: vec!["https://app.example.org/cb#section".into()],
                ..public_client("a")
            },
            "fragment",
        ),
        (
            NewClient {
                redirect_uris: vec!["http://app.example.org/cb".into()],
                ..public_client("a")
            },
            "https",
        ),
        (
            NewClient {
                redirect_uris: vec!["/relative/cb".into()],
                ..public_client("a")
            },
            "absolute",
        ),
        (
            NewClient {
                allowed_scopes: "openid patient/Observation.frobnicate".into(),
                ..public_client("a")
            },
            "not a valid SMART scope",
        ),
        (
            NewClient {
                allowed_scopes: "  ".into(),
                ..public_client("a")
            },
            "at least one scope",
        ),
        (
            NewClient {
                jwks: None,
                ..asymmetric_client("a")
            },
            "jwks or jwks_uri",
        ),
        (
            NewClient {
                jwks: Some(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})),
                ..asymmetric_client("a")
            },
            "kty",
        ),
        (
            NewClient {
                jwks: Some(json!([{"kty": "RSA", "n": "x", "e": "AQAB"}])),
                ..asymmetric_client("a")
            },
            "keys",
        ),
        (public_client("has space"), "client id"),
        (public_client(""), "client id"),
    ];
    for (client, expected) in cases {
        let shown = format!("{client:?}");
        let reason = invalid_reason(registry.add_client(client).await);
        assert!(
            reason.contains(expected),
            "{shown}: reason '{reason}' lacks '{expected}'"
        );
    }
    assert!(registry.list_clients().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_client_id_can_be_registered_only_once() {
    let (registry, _db) = fresh_registry().await;
    registry.add_client(public_client("intake")).await.unwrap();
    let again = registry.add_client(symmetric_client("intake")).await;
    assert!(matches!(again, Err(RegistryError::Exists(_))), "{again:?}");
    let kept = registry.client("intake").await.unwrap().unwrap();
    assert_eq!(kept.kind, ClientKind::Public);
}

#[tokio::test]
async fn a_client_secret_verifies_only_for_its_own_symmetric_client() {
    let (registry, _db) = fresh_registry().await;
    registry
        .add_client(symmetric_client("billing"))
        .await
        .unwrap();
    registry.add_client(public_client("intake")).await.unwrap();
    assert!(
        registry
            .verify_client_secret("billing", SECRET)
            .await
            .unwrap()
    );
    assert!(
        !registry
            .verify_client_secret("billing", "s3cret-that-is-long-enougH")
            .await
            .unwrap()
    );
    assert!(!registry.verify_client_secret("billing", "").await.unwrap());
    assert!(
        !registry
            .verify_client_secret("nobody", SECRET)
            .await
            .unwrap()
    );
    assert!(
        !registry
            .verify_client_secret("intake", SECRET)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn users_keep_their_roles_and_are_found_only_with_the_right_password() {
    let (registry, _db) = fresh_registry().await;
    let rivera = registry
        .add_user(
            "dr.rivera",
            "correct horse",
            Role::Therapist,
            Some("Practitioner/rivera"),
        )
        .await
        .unwrap();
    assert_eq!(rivera.role, Role::Therapist);
    registry
        .add_user("nurse@clinic", "battery staple", Role::Clinician, None)
        .await
        .unwrap();
    registry
        .add_user("ops", "admin password", Role::Admin, None)
        .await
        .unwrap();
    registry
        .add_user(
            "pat-7",
            "patient password",
            Role::Patient,
            Some("Patient/7"),
        )
        .await
        .unwrap();

    let users = registry.list_users().await.unwrap();
    let summary: Vec<(String, Role, Option<String>)> = users
        .into_iter()
        .map(|u| (u.username, u.role, u.fhir_user))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "dr.rivera".to_owned(),
                Role::Therapist,
                Some("Practitioner/rivera".to_owned())
            ),
            ("nurse@clinic".to_owned(), Role::Clinician, None),
            ("ops".to_owned(), Role::Admin, None),
            (
                "pat-7".to_owned(),
                Role::Patient,
                Some("Patient/7".to_owned())
            ),
        ]
    );

    let signed_in = registry
        .verify_password("dr.rivera", "correct horse")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(signed_in.username, "dr.rivera");
    assert_eq!(signed_in.fhir_user.as_deref(), Some("Practitioner/rivera"));
    assert!(
        registry
            .verify_password("dr.rivera", "Correct horse")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        registry
            .verify_password("dr.nobody", "correct horse")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        registry.user("pat-7").await.unwrap().unwrap().role,
        Role::Patient
    );

    let again = registry
        .add_user("ops", "another password", Role::Clinician, None)
        .await;
    assert!(matches!(again, Err(RegistryError::Exists(_))), "{again:?}");
    assert!(
        registry
            .verify_password("ops", "admin password")
            .await
            .unwrap()
            .is_some()
    );

    assert!(registry.remove_user("ops").await.unwrap());
    assert!(!registry.remove_user("ops").await.unwrap());
    assert!(
        registry
            .verify_password("ops", "admin password")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn invalid_users_are_refused_with_a_reason() {
    let (registry, _db) = fresh_registry().await;
    let cases: [(&str, &str, Role, Option<&str>, &str); 5] = [
        (
            "dr rivera",
            "correct horse",
            Role::Clinician,
            None,
            "username",
        ),
        ("dr.rivera", "short", Role::Clinician, None, "at least 8"),
        (
            "dr.rivera",
            "correct horse",
            Role::Clinician,
            Some("Organization/1"),
            "Practitioner/<id>",
        ),
        ("pat", "correct horse", Role::Patient, None, "Patient/<id>"),
        (
            "dr.rivera",
            "correct horse",
            Role::Therapist,
            Some("Patient/1"),
            "cannot be a Patient",
        ),
    ];
    for (username, password, role, fhir_user, expected) in cases {
        let reason = invalid_reason(registry.add_user(username, password, role, fhir_user).await);
        assert!(
            reason.contains(expected),
            "{username}: '{reason}' lacks '{expected}'"
        );
    }
    assert!(registry.list_users().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_unknown_username_costs_about_as_much_time_as_a_wrong_password() {
    let (registry, _db) = fresh_registry().await;
    registry
        .add_user("dr.rivera", "correct horse", Role::Clinician, None)
        .await
        .unwrap();
    // The first check of an unknown user also prepares the dummy hash; time the later ones.
    registry.verify_password("warm-up", "x").await.unwrap();
    let time = |username: &'static str| {
        let registry = registry.clone();
        async move {
            let start = Instant::now();
            for _ in 0..3 {
                assert!(
                    registry
                        .verify_password(username, "wrong password")
                        .await
                        .unwrap()
                        .is_none()
                );
            }
            start.elapsed()
        }
    };
    let known = time("dr.rivera").await;
    let unknown = time("dr.nobody").await;
    // Generous bounds: the point is that the unknown case hashes too, not a benchmark.
    assert!(
        unknown * 3 >= known && known * 3 >= unknown,
        "wrong password {known:?}, unknown user {unknown:?}"
    );
    assert!(unknown > Duration::from_millis(1));
}

const CONFIG_TOML: &str = r#"
database_url = "sqlite://ignored.db"

[[clients]]
client_id = "intake"
name = "Intake questionnaire"
kind = "public"
redirect_uris = ["https://intake.example.org/callback"]
allowed_scopes = "openid fhirUser launch/patient patient/*.rs"

[[clients]]
client_id = "billing"
name = "Billing export"
kind = "confidential-symmetric"
secret_env = "CARGO_PKG_DESCRIPTION"
redirect_uris = ["https://billing.example.org/cb"]
allowed_scopes = "user/Claim.rs"

[[clients]]
client_id = "backend"
name = "Nightly sync"
kind = "confidential-asymmetric"
jwks = '{"keys":[{"kty":"EC","crv":"P-384","x":"AAAA","y":"BBBB","kid":"ec1"}]}'
allowed_scopes = "system/*.rs"

[[clients]]
client_id = "backend-table"
name = "Reporting"
kind = "confidential-asymmetric"
allowed_scopes = "system/Observation.rs"
[clients.jwks]
keys = [{ kty = "RSA", n = "u1SU1LfV", e = "AQAB" }]

[[users]]
username = "dr.rivera"
password = "correct horse"
role = "therapist"
fhir_user = "Practitioner/rivera"

[[users]]
username = "ops"
password_env = "CARGO_PKG_NAME"
role = "admin"
"#;

fn config_from_toml(text: &str) -> Config {
    Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(text))
        .extract()
        .expect("the test configuration parses")
}

#[tokio::test]
async fn clients_and_users_of_the_configuration_file_are_inserted_then_replaced() {
    // `*_env` entries name variables that cargo sets for the test process, as the crate forbids `unsafe`
    // (which `std::env::set_var` needs).
    let env_secret = env!("CARGO_PKG_DESCRIPTION");
    let env_password = env!("CARGO_PKG_NAME");
    let (registry, _db) = fresh_registry().await;
    let config = config_from_toml(CONFIG_TOML);
    assert_eq!(config.clients.len(), 4);
    assert_eq!(config.users.len(), 2);
    registry.load_from_config(&config).await.unwrap();

    let ids: Vec<String> = registry
        .list_clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(ids, ["backend", "backend-table", "billing", "intake"]);
    assert!(
        registry
            .verify_client_secret("billing", env_secret)
            .await
            .unwrap()
    );
    let backend = registry.client("backend").await.unwrap().unwrap();
    assert_eq!(backend.jwks.unwrap()["keys"][0]["kid"], "ec1");
    let table = registry.client("backend-table").await.unwrap().unwrap();
    assert_eq!(table.jwks.unwrap()["keys"][0]["kty"], "RSA");
    assert_eq!(
        registry.user("ops").await.unwrap().unwrap().role,
        Role::Admin
    );
    assert!(
        registry
            .verify_password("ops", env_password)
            .await
            .unwrap()
            .is_some()
    );
    let first_created = registry.client("intake").await.unwrap().unwrap().created_at;

    // Loading again (the next start) with changed entries replaces them in place.
    let changed = CONFIG_TOML
        .replace("name = \"Intake questionnaire\"", "name = \"Intake v2\"")
        .replace(
            "password = \"correct horse\"",
            "password = \"battery staple\"",
        );
    registry
        .load_from_config(&config_from_toml(&changed))
        .await
        .unwrap();
    assert_eq!(registry.list_clients().await.unwrap().len(), 4);
    assert_eq!(registry.list_users().await.unwrap().len(), 2);
    let intake = registry.client("intake").await.unwrap().unwrap();
    assert_eq!(intake.name, "Intake v2");
    assert_eq!(intake.created_at, first_created);
    assert!(
        registry
            .verify_password("dr.rivera", "correct horse")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        registry
            .verify_password("dr.rivera", "battery staple")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn an_invalid_configuration_entry_is_reported_by_name() {
    let (registry, _db) = fresh_registry().await;
    let config = config_from_toml(
        "[[clients]]\nclient_id = \"bad\"\nname = \"Bad\"\nkind = \"public\"\nallowed_scopes = \"openid\"\n",
    );
    let reason = invalid_reason(registry.load_from_config(&config).await);
    assert!(
        reason.contains("client 'bad'") && reason.contains("redirect URI"),
        "{reason}"
    );

    let config = config_from_toml(
        "[[users]]\nusername = \"u\"\npassword_env = \"KAPGW_REGISTRY_TEST_UNSET\"\nrole = \"admin\"\n",
    );
    let reason = invalid_reason(registry.load_from_config(&config).await);
    assert!(
        reason.contains("user 'u'") && reason.contains("KAPGW_REGISTRY_TEST_UNSET"),
        "{reason}"
    );

    let config = config_from_toml(
        "[[users]]\nusername = \"u\"\npassword = \"long enough\"\nrole = \"superuser\"\n",
    );
    let reason = invalid_reason(registry.load_from_config(&config).await);
    assert!(reason.contains("unknown role"), "{reason}");

    // A misspelt key is a configuration error, as elsewhere in the file.
    let parsed: Result<Config, _> = Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(
            "[[users]]\nusername = \"u\"\npasword = \"x\"\nrole = \"admin\"\n",
        ))
        .extract();
    assert!(parsed.is_err());
}

/// Runs the built binary in `dir` (so that no stray `kap-gateway.toml` is read) against the test database.
fn cli(db: &TestDb, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kap-gateway"));
    command
        .args(args)
        .args(["--database-url", &db.url])
        .current_dir(db.dir.path())
        .env_remove("KAPGW_CONFIG")
        .env_remove("KAPGW_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("run kap-gateway");
    if let Some(input) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("kap-gateway exits")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn the_command_line_adds_lists_and_removes_clients_and_users_without_showing_secrets() {
    let db = fresh_database().await;
    let secret_env = [("APP_SECRET", SECRET)];
    let out = cli(
        &db,
        &[
            "clients",
            "add",
            "--id",
            "cli-app",
            "--name",
            "CLI app",
            "--kind",
            "confidential-symmetric",
            "--secret-env",
            "APP_SECRET",
            "--redirect-uri",
            "https://app.example.org/cb",
            "--redirect-uri",
            "http://127.0.0.1:9000/cb",
            "--scopes",
            "openid fhirUser user/*.rs",
        ],
        &secret_env,
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("cli-app"));

    let jwks = rsa_jwks().to_string();
    let out = cli(
        &db,
        &[
            "clients",
            "add",
            "--id",
            "sync",
            "--name",
            "Nightly sync",
            "--kind",
            "confidential-asymmetric",
            "--jwks",
            &jwks,
            "--scopes",
            "system/*.rs",
        ],
        &[],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let out = cli(
        &db,
        &[
            "clients",
            "add",
            "--id",
            "bad",
            "--name",
            "Bad",
            "--kind",
            "public",
            "--secret",
            SECRET,
            "--redirect-uri",
            "https://x.example.org/cb",
            "--scopes",
            "openid",
        ],
        &[],
        None,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("public client has no secret"),
        "{}",
        stderr(&out)
    );

    let out = cli(&db, &["clients", "list"], &[], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    assert!(
        listing.contains("cli-app") && listing.contains("confidential-symmetric"),
        "{listing}"
    );
    assert!(
        listing.contains("https://app.example.org/cb,http://127.0.0.1:9000/cb"),
        "{listing}"
    );
    assert!(
        listing.contains("sync") && listing.contains("system/*.rs"),
        "{listing}"
    );
    assert!(!listing.contains("bad"), "{listing}");
    assert!(
        !listing.contains(SECRET) && !listing.contains("$argon2"),
        "{listing}"
    );

    let out = cli(
        &db,
        &[
            "users",
            "add",
            "--username",
            "dr.rivera",
            "--password-env",
            "RIVERA_PW",
            "--role",
            "therapist",
            "--fhir-user",
            "Practitioner/rivera",
        ],
        &[("RIVERA_PW", "correct horse")],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(
        &db,
        &[
            "users",
            "add",
            "--username",
            "pat-7",
            "--role",
            "patient",
            "--fhir-user",
            "Patient/7",
        ],
        &[],
        Some("patient password\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(
        &db,
        &[
            "users",
            "add",
            "--username",
            "x",
            "--password",
            "short",
            "--role",
            "admin",
        ],
        &[],
        None,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("at least 8"), "{}", stderr(&out));

    let out = cli(&db, &["users", "list"], &[], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    assert!(
        listing.contains("dr.rivera") && listing.contains("therapist"),
        "{listing}"
    );
    assert!(listing.contains("Practitioner/rivera"), "{listing}");
    assert!(
        listing.contains("pat-7") && listing.contains("Patient/7"),
        "{listing}"
    );
    assert!(
        !listing.contains("correct horse") && !listing.contains("$argon2"),
        "{listing}"
    );

    let out = cli(&db, &["clients", "remove", "cli-app"], &[], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&db, &["clients", "remove", "cli-app"], &[], None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let out = cli(&db, &["users", "remove", "pat-7"], &[], None);
    assert!(out.status.success(), "{}", stderr(&out));

    // What the command line stored is what the server will check.
    let registry = open(&db).await;
    assert!(registry.client("cli-app").await.unwrap().is_none());
    assert!(registry.client("sync").await.unwrap().is_some());
    assert!(
        registry
            .verify_password("dr.rivera", "correct horse")
            .await
            .unwrap()
            .is_some()
    );
    assert!(registry.user("pat-7").await.unwrap().is_none());
}

#[tokio::test]
async fn the_printed_configuration_never_shows_a_secret_or_password() {
    let db = fresh_database().await;
    let path = db.dir.path().join("gw.toml");
    std::fs::write(&path, CONFIG_TOML).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kap-gateway"))
        .args(["config", "--config"])
        .arg(&path)
        .current_dir(db.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    assert!(
        printed.contains("dr.rivera") && printed.contains("CARGO_PKG_DESCRIPTION"),
        "{printed}"
    );
    assert!(!printed.contains("correct horse"), "{printed}");
}
