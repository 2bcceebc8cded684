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
    /// HTTP worker threads (0 = one per core).
    pub http_workers: usize,
    /// Log format: `text` or `json`.
    pub log_format: String,
    /// Log filter, as `RUST_LOG` (e.g. `info`, `kap_gateway=debug`).
    pub log_level: String,
    /// Seconds to wait for in-flight requests on shutdown.
    pub shutdown_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://kap-gateway.db".into(),
            base_url: None,
            max_body_bytes: 16 * 1024 * 1024,
            db_max_connections: 10,
            http_workers: 0,
            log_format: "text".into(),
            log_level: "info".into(),
            shutdown_timeout_secs: 30,
        }
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
        fig = fig.merge(Env::prefixed("KAPGW_").ignore(&["test_postgres_url", "config"]));
        fig = fig.merge(Serialized::defaults(overrides));
        fig.extract().map_err(Box::new)
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
    fn the_default_base_url_follows_the_listen_address() {
        let cfg = Config::default();
        assert_eq!(cfg.fhir_base_url(), "http://127.0.0.1:8080/fhir");
    }
}
