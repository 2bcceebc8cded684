//! Configuration, layered once at start: built-in defaults < TOML file < `KAPGW_*` environment variables <
//! command-line flags, parsed into typed values.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Default TOML file read when present in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "kap-gateway.toml";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on.
    pub listen: String,
    /// `sqlite://FILE` (created when missing) or `postgres://USER@HOST/DB`.
    pub database_url: String,
    /// Public base URL of the FHIR API, used in `Location`, `fullUrl` and paging links. Defaults to
    /// `http://<listen>/fhir`; set it when the gateway runs behind a proxy.
    pub base_url: Option<String>,
    /// Largest request body accepted, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Database connection pool size.
    pub db_max_connections: u32,
    /// Where each request's AuditEvent is made durable before its response leaves (see `audit::journal`):
    /// `auto` (the default: a journal directory `<file>-audit` beside a SQLite database file; none for PostgreSQL
    /// or an in-memory SQLite), `off` (a database commit per group of requests), or the path of a journal
    /// directory (for PostgreSQL replicas: a persistent volume of each replica's own, or one they share).
    pub audit_journal: String,
    /// HTTP worker threads (0 = one per core).
    pub http_workers: usize,
    /// Log format: `text` or `json`.
    pub log_format: String,
    /// Log filter, as `RUST_LOG` (e.g. `info`, `kap_gateway=debug`).
    pub log_level: String,
    /// Seconds from SIGTERM/SIGINT until the process exits at the latest: in-flight requests, the background
    /// workers' current work and the queued audit events get this long to finish.
    pub shutdown_timeout_secs: u64,
    /// Seconds after SIGTERM/SIGINT during which the gateway still serves while `/health/ready` answers 503, so that
    /// load balancers stop sending it requests before it stops accepting them. Part of `shutdown_timeout_secs`, and
    /// shorter than it.
    pub shutdown_drain_secs: u64,
    /// OAuth clients registered at start-up (`[[clients]]` tables), replacing stored ones with the same id.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Users registered at start-up (`[[users]]` tables), replacing stored ones with the same username.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Authorization: token lifetimes and an optional external issuer (`[auth]`).
    #[serde(default)]
    pub auth: AuthConfig,
    /// The KAP API's clinical settings (`[kap]`): dosing limits per route.
    #[serde(default)]
    pub kap: crate::kap::rules::KapSettings,
    /// Bulk Data export (`[bulk]`).
    #[serde(default)]
    pub bulk: BulkConfig,
    /// EHR connections (`[[ehr]]` tables) that KAP records are pushed to and demographics pulled from.
    #[serde(default)]
    pub ehr: Vec<crate::sync::config::EhrConfig>,
    /// The outbox worker (`[sync]`).
    #[serde(default)]
    pub sync: crate::sync::config::SyncConfig,
}

/// `[bulk]`: the export worker and the lifetime of exported files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BulkConfig {
    /// Run the export worker in this process (a replica that only serves requests may turn it off; queued jobs
    /// then wait for a replica that runs one).
    pub worker: bool,
    /// How long the files of a completed export stay downloadable, in seconds.
    pub file_ttl_secs: u64,
    /// Resources read per database round trip and written per NDJSON chunk.
    pub page_size: usize,
    /// How long a worker's claim on a job holds without progress, in seconds; an expired claim is taken over.
    pub lease_secs: u64,
    /// How often an idle worker looks for queued jobs, in milliseconds.
    pub poll_ms: u64,
    /// How often expired files are deleted, in seconds.
    pub cleanup_secs: u64,
    /// `Retry-After` of the status endpoint while a job runs, in seconds.
    pub retry_after_secs: u64,
    /// Runs of a job (first run and resumptions after interruptions) before it is marked failed.
    pub max_attempts: i64,
}

impl Default for BulkConfig {
    fn default() -> Self {
        BulkConfig {
            worker: true,
            file_ttl_secs: 3600,
            page_size: 1000,
            lease_secs: 30,
            poll_ms: 1000,
            cleanup_secs: 60,
            retry_after_secs: 2,
            max_attempts: 3,
        }
    }
}

/// `[auth]`: the built-in SMART authorization server and trust of an external one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Run the built-in authorization server and accept its tokens. Turn off to accept only an external issuer's.
    pub builtin: bool,
    /// Lifetime of access tokens from app launches, in seconds (at most 3600).
    pub access_token_secs: i64,
    /// Lifetime of backend-services access tokens, in seconds (at most 300).
    pub backend_token_secs: i64,
    /// Lifetime of refresh tokens, in days.
    pub refresh_token_days: i64,
    /// How long a rotated-out signing key keeps verifying, in seconds (at least the longest token lifetime).
    pub key_overlap_secs: i64,
    /// An external authorization server whose access tokens are trusted (`[auth.external]`).
    pub external: Option<ExternalAuthConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            builtin: true,
            access_token_secs: 3600,
            backend_token_secs: 300,
            refresh_token_days: 30,
            key_overlap_secs: 3900,
            external: None,
        }
    }
}

/// `[auth.external]`: tokens signed (RS384 or ES384) by a key of `jwks_url`, with this `issuer` and `audience`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExternalAuthConfig {
    pub issuer: String,
    pub jwks_url: String,
    /// Expected `aud`; defaults to the FHIR base URL.
    #[serde(default)]
    pub audience: Option<String>,
    /// Claim holding the scopes (space-separated string or array).
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
}

fn default_scope_claim() -> String {
    "scope".into()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://kap-gateway.db".into(),
            base_url: None,
            max_body_bytes: 16 * 1024 * 1024,
            db_max_connections: 10,
            audit_journal: "auto".into(),
            http_workers: 0,
            log_format: "text".into(),
            log_level: "info".into(),
            shutdown_timeout_secs: 30,
            shutdown_drain_secs: 0,
            clients: Vec::new(),
            users: Vec::new(),
            auth: AuthConfig::default(),
            kap: crate::kap::rules::KapSettings::default(),
            bulk: BulkConfig::default(),
            ehr: Vec::new(),
            sync: crate::sync::config::SyncConfig::default(),
        }
    }
}

/// An OAuth client declared in the configuration file:
///
/// ```toml
/// [[clients]]
/// client_id = "intake-app"
/// name = "Intake questionnaire app"
/// kind = "public"   # or "confidential-symmetric" / "confidential-asymmetric"
/// redirect_uris = ["https://intake.example.org/callback"]
/// allowed_scopes = "openid fhirUser launch/patient patient/*.rs"
/// ```
///
/// A symmetric client's secret is given as `secret` or, to keep it out of the file, as `secret_env` (the name of
/// an environment variable holding it). An asymmetric client gives `jwks` (a JSON string or a table) or
/// `jwks_uri`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub client_id: String,
    pub name: String,
    /// `public`, `confidential-symmetric` or `confidential-asymmetric`; checked when the registry loads it, which
    /// keeps this module free of the authorization types.
    pub kind: String,
    /// Never written back out (`kap-gateway config` prints the configuration).
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Space-separated SMART scopes the client may be granted.
    pub allowed_scopes: String,
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
}

// Written by hand so that a logged configuration never shows a secret.
impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("client_id", &self.client_id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_env", &self.secret_env)
            .field("redirect_uris", &self.redirect_uris)
            .field("allowed_scopes", &self.allowed_scopes)
            .field("jwks", &self.jwks)
            .field("jwks_uri", &self.jwks_uri)
            .finish()
    }
}

/// A user declared in the configuration file:
///
/// ```toml
/// [[users]]
/// username = "dr.rivera"
/// password_env = "KAP_RIVERA_PASSWORD"   # or password = "…"
/// role = "therapist"                     # clinician, therapist, admin or patient
/// fhir_user = "Practitioner/rivera"
/// ```
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub username: String,
    /// Never written back out (`kap-gateway config` prints the configuration).
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// `clinician`, `therapist`, `admin` or `patient`; checked when the registry loads it.
    pub role: String,
    /// `Practitioner/<id>` or `Patient/<id>`.
    #[serde(default)]
    pub fhir_user: Option<String>,
}

// Written by hand so that a logged configuration never shows a password.
impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("role", &self.role)
            .field("fhir_user", &self.fhir_user)
            .finish()
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
}

impl Config {
    /// The audit journal directory this configuration asks for, if any (see [`Config::audit_journal`]).
    pub fn audit_journal_dir(&self) -> Option<std::path::PathBuf> {
        match self.audit_journal.as_str() {
            "off" => None,
            "auto" => {
                if !self.database_url.starts_with("sqlite:") {
                    return None;
                }
                let options: sqlx::sqlite::SqliteConnectOptions = self.database_url.parse().ok()?;
                if crate::store::db::sqlite_in_memory(&options, &self.database_url) {
                    return None;
                }
                let mut dir = options.get_filename().as_os_str().to_owned();
                dir.push("-audit");
                Some(dir.into())
            }
            path => Some(path.into()),
        }
    }

    /// Loads the layers. `file` is the explicit `--config` path (an error when missing); otherwise
    /// `kap-gateway.toml` is read if it exists.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(Box::new(figment::Error::from(format!(
                        "configuration file {} does not exist",
                        path.display()
                    ))));
                }
                fig = fig.merge(Toml::file(path));
            }
            None => fig = fig.merge(Toml::file(DEFAULT_CONFIG_FILE)),
        }
        // KAPGW_CONFIG names the file; KAPGW_TEST_* and KAPGW_BENCH_* steer the test suite and the benchmark.
        // A double underscore reaches into a table: KAPGW_AUTH__ACCESS_TOKEN_SECS is `[auth] access_token_secs`.
        fig = fig.merge(
            Env::prefixed("KAPGW_")
                .filter(|key| {
                    let key = key.as_str().to_ascii_lowercase();
                    key != "config" && !key.starts_with("test_") && !key.starts_with("bench_")
                })
                .split("__"),
        );
        fig = fig.merge(Serialized::defaults(overrides));
        let config: Config = fig.extract().map_err(Box::new)?;
        if config.shutdown_drain_secs > 0
            && config.shutdown_drain_secs >= config.shutdown_timeout_secs
        {
            return Err(Box::new(figment::Error::from(format!(
                "shutdown_drain_secs ({}) must be shorter than shutdown_timeout_secs ({}): the drain is part of the \
                 time the process has to stop, and in-flight requests need some of it",
                config.shutdown_drain_secs, config.shutdown_timeout_secs
            ))));
        }
        Ok(config)
    }

    /// The public FHIR base URL without a trailing slash.
    pub fn fhir_base_url(&self) -> String {
        match &self.base_url {
            Some(b) => b.trim_end_matches('/').to_owned(),
            None => format!("http://{}/fhir", self.listen),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:9000\"\ndb_max_connections = 3\n").unwrap();
        let cfg = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:9000");
        assert_eq!(cfg.db_max_connections, 3);
        let cfg = Config::load(
            Some(&path),
            &Overrides {
                listen: Some("127.0.0.1:1".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:1");
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        assert!(Config::load(Some(&path), &Overrides::default()).is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's test jail returns its own error type
    fn a_double_underscore_sets_a_key_of_a_table() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KAPGW_AUTH__ACCESS_TOKEN_SECS", "900");
            jail.set_env("KAPGW_AUTH__BUILTIN", "false");
            jail.set_env("KAPGW_SHUTDOWN_TIMEOUT_SECS", "7");
            let cfg = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(cfg.auth.access_token_secs, 900);
            assert!(!cfg.auth.builtin);
            assert_eq!(cfg.shutdown_timeout_secs, 7);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's test jail returns its own error type
    fn a_drain_period_must_be_shorter_than_the_shutdown_timeout() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KAPGW_SHUTDOWN_TIMEOUT_SECS", "10");
            jail.set_env("KAPGW_SHUTDOWN_DRAIN_SECS", "4");
            let cfg = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(cfg.shutdown_drain_secs, 4);
            jail.set_env("KAPGW_SHUTDOWN_DRAIN_SECS", "10");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(
                err.to_string().contains("shutdown_drain_secs (10)"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn the_default_base_url_follows_the_listen_address() {
        let cfg = Config::default();
        assert_eq!(cfg.fhir_base_url(), "http://127.0.0.1:8080/fhir");
    }
}
