//! Configuration of EHR sync: the `[[ehr]]` connections and the `[sync]` worker settings.

use serde::{Deserialize, Serialize};

/// `[sync]`: how the outbox worker and the periodic pull run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// Run the delivery worker (and the periodic pull) in `serve`. Turn off on replicas that should only serve.
    pub worker: bool,
    /// How often an idle worker looks for due rows, in milliseconds.
    pub poll_interval_ms: u64,
    /// How long a claimed row belongs to one worker, in seconds. A worker that dies holds its rows this long;
    /// then another takes them over. Keep it above the longest EHR timeout.
    pub lease_secs: u64,
    /// Rows (of different patients) claimed and delivered concurrently per step and EHR.
    pub batch: u32,
    /// First retry delay after a transient failure, in milliseconds; doubled on each attempt, with jitter.
    pub backoff_base_ms: u64,
    /// Longest retry delay, in seconds.
    pub backoff_max_secs: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            worker: true,
            poll_interval_ms: 1000,
            lease_secs: 120,
            batch: 16,
            backoff_base_ms: 1000,
            backoff_max_secs: 600,
        }
    }
}

/// How the gateway authenticates to an EHR.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EhrAuthKind {
    /// SMART Backend Services: a client assertion signed with the gateway's private key, exchanged for an access
    /// token at the token endpoint named by the EHR's `.well-known/smart-configuration`.
    SmartBackend,
    /// A static bearer token.
    Bearer,
    /// No authentication.
    #[default]
    None,
}

/// One `[[ehr]]` connection:
///
/// ```toml
/// [[ehr]]
/// name = "clinic-ehr"
/// base_url = "https://ehr.example.org/fhir/r4"
/// auth = "smart-backend"                 # smart-backend, bearer or none
/// client_id = "kap-gateway"
/// private_key_file = "/etc/kap-gateway/ehr-key.pem"   # PKCS#8 PEM; EC P-384 for ES384, RSA for RS384
/// algorithm = "ES384"
/// scope = "system/*.write system/*.read"
/// push = ["*"]                           # or kinds: ["patient", "session", "score", …]
/// patient_identifier_system = "urn:oid:2.16.840.1.113883.19.5"
/// ```
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EhrConfig {
    /// Short name, used in the outbox, logs, metrics and `/admin/sync`.
    pub name: String,
    /// FHIR R4 base URL of the EHR.
    pub base_url: String,
    #[serde(default)]
    pub auth: EhrAuthKind,
    /// SMART: the gateway's client id at the EHR.
    #[serde(default)]
    pub client_id: Option<String>,
    /// SMART: the private key (PKCS#8 PEM) that signs client assertions, from a file or an environment variable.
    #[serde(default)]
    pub private_key_file: Option<String>,
    #[serde(default)]
    pub private_key_env: Option<String>,
    /// SMART: `ES384` (EC P-384 key) or `RS384` (RSA key).
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// SMART: `kid` header of the client assertion (the key's id in the JWKS registered at the EHR).
    #[serde(default)]
    pub key_id: Option<String>,
    /// SMART: scopes requested.
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Bearer: the token, or (better) the name of an environment variable holding it.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
    /// Record kinds (the `<kind>` of `urn:kap-gateway:<kind>`) pushed to this EHR; `*` for all.
    #[serde(default = "default_push")]
    pub push: Vec<String>,
    /// Identifier system the EHR knows patients by (e.g. its MRN system). Patients are matched on it when
    /// pushed and looked up by it when pulled.
    #[serde(default)]
    pub patient_identifier_system: Option<String>,
    /// Whole-request timeout, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Connection timeout, in seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Periodic pull of the patients already known to this EHR, in seconds (0 = only `kap-gateway sync pull`).
    #[serde(default)]
    pub pull_interval_secs: u64,
}

fn default_algorithm() -> String {
    "ES384".into()
}
fn default_scope() -> String {
    "system/*.write system/*.read".into()
}
fn default_push() -> Vec<String> {
    vec!["*".into()]
}
fn default_timeout() -> u64 {
    30
}
fn default_connect_timeout() -> u64 {
    5
}

// Written by hand so that a logged configuration never shows a token.
impl std::fmt::Debug for EhrConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EhrConfig")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("auth", &self.auth)
            .field("client_id", &self.client_id)
            .field("private_key_file", &self.private_key_file)
            .field("private_key_env", &self.private_key_env)
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .field("scope", &self.scope)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_env", &self.token_env)
            .field("push", &self.push)
            .field("patient_identifier_system", &self.patient_identifier_system)
            .field("timeout_secs", &self.timeout_secs)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("pull_interval_secs", &self.pull_interval_secs)
            .finish()
    }
}

/// The configured EHRs as `(name, base URL)`, as the outbox status reads them.
pub fn names_and_urls(ehrs: &[EhrConfig]) -> Vec<(String, String)> {
    ehrs.iter()
        .map(|e| (e.name.clone(), e.base_url.clone()))
        .collect()
}

impl EhrConfig {
    /// A connection with defaults, for code and tests that build configurations.
    pub fn new(name: &str, base_url: &str) -> EhrConfig {
        EhrConfig {
            name: name.into(),
            base_url: base_url.into(),
            auth: EhrAuthKind::None,
            client_id: None,
            private_key_file: None,
            private_key_env: None,
            algorithm: default_algorithm(),
            key_id: None,
            scope: default_scope(),
            token: None,
            token_env: None,
            push: default_push(),
            patient_identifier_system: None,
            timeout_secs: default_timeout(),
            connect_timeout_secs: default_connect_timeout(),
            pull_interval_secs: 0,
        }
    }

    /// Whether records of `kind` go to this EHR.
    pub fn pushes(&self, kind: &str) -> bool {
        self.push.iter().any(|k| k == "*" || k == kind)
    }

    /// Checks what serde cannot: names, URL, the settings each kind of authentication needs.
    pub fn check(&self) -> Result<(), String> {
        let who = format!("[[ehr]] {:?}", self.name);
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(format!(
                "{who}: name must be non-empty letters, digits, '-', '_' or '.'"
            ));
        }
        match url::Url::parse(&self.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(format!("{who}: base_url must be an http(s) URL")),
        }
        match self.auth {
            EhrAuthKind::SmartBackend => {
                if self.client_id.as_deref().unwrap_or("").is_empty() {
                    return Err(format!("{who}: auth = \"smart-backend\" needs client_id"));
                }
                if self.private_key_file.is_none() && self.private_key_env.is_none() {
                    return Err(format!(
                        "{who}: auth = \"smart-backend\" needs private_key_file or private_key_env"
                    ));
                }
                if !matches!(self.algorithm.as_str(), "ES384" | "RS384") {
                    return Err(format!("{who}: algorithm must be ES384 or RS384"));
                }
            }
            EhrAuthKind::Bearer => {
                if self.token.is_none() && self.token_env.is_none() {
                    return Err(format!("{who}: auth = \"bearer\" needs token or token_env"));
                }
            }
            EhrAuthKind::None => {}
        }
        if self.timeout_secs == 0 {
            return Err(format!("{who}: timeout_secs must be at least 1"));
        }
        Ok(())
    }
}

/// Checks every connection and that names are unique.
pub fn check_all(ehrs: &[EhrConfig]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for e in ehrs {
        e.check()?;
        if !seen.insert(e.name.as_str()) {
            return Err(format!("[[ehr]] name {:?} is used twice", e.name));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::{Config, Overrides};

    #[test]
    fn ehr_connections_are_read_from_the_toml_file_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            r#"
[sync]
lease_secs = 30

[[ehr]]
name = "clinic-ehr"
base_url = "https://ehr.example.org/fhir"
auth = "smart-backend"
client_id = "kap-gateway"
private_key_file = "/etc/key.pem"
push = ["patient", "score"]
patient_identifier_system = "urn:oid:1.2.3"

[[ehr]]
name = "lab"
base_url = "http://lab.example.net/fhir"
auth = "bearer"
token_env = "LAB_TOKEN"
"#,
        )
        .unwrap();
        let cfg = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.sync.lease_secs, 30);
        assert_eq!(cfg.ehr.len(), 2);
        assert!(cfg.ehr[0].pushes("score") && !cfg.ehr[0].pushes("dose"));
        assert!(cfg.ehr[1].pushes("dose"));
        assert_eq!(cfg.ehr[0].algorithm, "ES384");
        super::check_all(&cfg.ehr).unwrap();

        let mut bad = cfg.ehr.clone();
        bad[1].name = "clinic-ehr".into();
        assert!(super::check_all(&bad).unwrap_err().contains("twice"));
        let mut no_key = cfg.ehr[0].clone();
        no_key.private_key_file = None;
        assert!(no_key.check().unwrap_err().contains("private_key"));
        let mut no_token = cfg.ehr[1].clone();
        no_token.token_env = None;
        assert!(no_token.check().unwrap_err().contains("token"));
    }
}
