//! The registry of the authorization server's OAuth clients and users: what is registered is checked on the way
//! in, client secrets and passwords are kept only as Argon2id hashes, and checking a credential takes about as
//! long whether or not the account exists, so that timing does not reveal which accounts do.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde_json::Value;

use crate::auth::scopes::ScopeSet;
use crate::config::{ClientConfig, Config, UserConfig};
use crate::fhir::datetime::now_micros;
use crate::store::db::{Col, Db, Row, Sql, is_unique_violation};

/// How a client authenticates at the token endpoint
/// (https://hl7.org/fhir/smart-app-launch/STU2.2/client-confidential-asymmetric.html and siblings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// Cannot keep a secret (a browser or mobile app); relies on PKCE alone.
    Public,
    /// Authenticates with a shared secret (HTTP Basic or `client_secret_post`).
    ConfidentialSymmetric,
    /// Authenticates with a JWT signed by a key from its registered JWKS.
    ConfidentialAsymmetric,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Public => "public",
            ClientKind::ConfidentialSymmetric => "confidential-symmetric",
            ClientKind::ConfidentialAsymmetric => "confidential-asymmetric",
        }
    }
}

impl fmt::Display for ClientKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ClientKind {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "public" => Ok(ClientKind::Public),
            "confidential-symmetric" => Ok(ClientKind::ConfidentialSymmetric),
            "confidential-asymmetric" => Ok(ClientKind::ConfidentialAsymmetric),
            other => Err(RegistryError::Invalid(format!(
                "unknown client kind '{other}' (expected public, confidential-symmetric or confidential-asymmetric)"
            ))),
        }
    }
}

/// A registered client, without its secret.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    pub kind: ClientKind,
    /// Compared exactly (as strings) with the `redirect_uri` of an authorization request.
    pub redirect_uris: Vec<String>,
    /// Space-separated SMART scopes the client may ever be granted.
    pub allowed_scopes: String,
    pub jwks: Option<Value>,
    pub jwks_uri: Option<String>,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
}

impl Client {
    /// The allowed scopes, parsed (they were checked on registration).
    pub fn scopes(&self) -> ScopeSet {
        ScopeSet::parse(&self.allowed_scopes).unwrap_or_default()
    }
}

/// What a user may do beyond what the granted scopes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Clinical staff: sees clinical records but not psychotherapy notes.
    Clinician,
    /// May also see psychotherapy notes.
    Therapist,
    /// May manage the registry and read the audit trail.
    Admin,
    /// Sees only their own compartment.
    Patient,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clinician => "clinician",
            Role::Therapist => "therapist",
            Role::Admin => "admin",
            Role::Patient => "patient",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "clinician" => Ok(Role::Clinician),
            "therapist" => Ok(Role::Therapist),
            "admin" => Ok(Role::Admin),
            "patient" => Ok(Role::Patient),
            other => Err(RegistryError::Invalid(format!(
                "unknown role '{other}' (expected clinician, therapist, admin or patient)"
            ))),
        }
    }
}

/// A registered user, without their password.
#[derive(Debug, Clone, serde::Serialize)]
pub struct User {
    pub username: String,
    pub role: Role,
    /// The FHIR resource the user is (`Practitioner/x` or `Patient/y`), reported as the `fhirUser` claim.
    pub fhir_user: Option<String>,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
}

/// A client to register. `secret` is the plain secret of a symmetric client; only its hash is stored.
#[derive(Clone)]
pub struct NewClient {
    pub client_id: String,
    pub name: String,
    pub kind: ClientKind,
    pub secret: Option<String>,
    pub redirect_uris: Vec<String>,
    pub allowed_scopes: String,
    pub jwks: Option<Value>,
    pub jwks_uri: Option<String>,
}

// Written by hand so that a logged request never shows the secret.
impl fmt::Debug for NewClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewClient")
            .field("client_id", &self.client_id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("redirect_uris", &self.redirect_uris)
            .field("allowed_scopes", &self.allowed_scopes)
            .field("jwks", &self.jwks)
            .field("jwks_uri", &self.jwks_uri)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("stored registry record is unreadable: {0}")]
    Corrupt(String),
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::Invalid(msg.into())
}

/// The registry over the gateway's database.
#[derive(Debug, Clone)]
pub struct Registry {
    db: Db,
}

const CLIENT_COLS: &str =
    "client_id, name, kind, redirect_uris, allowed_scopes, jwks, jwks_uri, created_at";
const CLIENT_KINDS: &[Col] = &[
    Col::Text,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::OptText,
    Col::OptText,
    Col::Int,
];
const USER_COLS: &str = "username, role, fhir_user, created_at";
const USER_KINDS: &[Col] = &[Col::Text, Col::Text, Col::OptText, Col::Int];

fn client_from_row(row: &Row) -> Result<Client> {
    let client_id = row.text(0);
    let corrupt = |what: &str| RegistryError::Corrupt(format!("client '{client_id}': {what}"));
    let kind = ClientKind::from_str(&row.text(2)).map_err(|_| corrupt("unknown kind"))?;
    let redirect_uris: Vec<String> = serde_json::from_str(&row.text(3))
        .map_err(|_| corrupt("redirect_uris is not a JSON array of strings"))?;
    let jwks = match row.opt_text(5) {
        Some(text) => Some(serde_json::from_str(&text).map_err(|_| corrupt("jwks is not JSON"))?),
        None => None,
    };
    Ok(Client {
        name: row.text(1),
        kind,
        redirect_uris,
        allowed_scopes: row.text(4),
        jwks,
        jwks_uri: row.opt_text(6),
        created_at: row.int(7),
        client_id,
    })
}

fn user_from_row(row: &Row) -> Result<User> {
    let username = row.text(0);
    let role = Role::from_str(&row.text(1))
        .map_err(|_| RegistryError::Corrupt(format!("user '{username}': unknown role")))?;
    Ok(User {
        role,
        fhir_user: row.opt_text(2),
        created_at: row.int(3),
        username,
    })
}

/// A client that passed validation, ready to store.
struct CheckedClient {
    client_id: String,
    name: String,
    kind: ClientKind,
    secret: Option<String>,
    redirect_uris_json: String,
    allowed_scopes: String,
    jwks_json: Option<String>,
    jwks_uri: Option<String>,
}

impl Registry {
    pub fn new(db: Db) -> Registry {
        Registry { db }
    }

    /// Registers a new client; `Exists` when the id is taken.
    pub async fn add_client(&self, c: NewClient) -> Result<Client> {
        let checked = check_client(c)?;
        let secret_hash = match &checked.secret {
            Some(s) => Some(hash_off_thread(s.clone()).await?),
            None => None,
        };
        let created_at = now_micros();
        let mut sql = Sql::new(
            "INSERT INTO oauth_clients (client_id, name, kind, secret_hash, redirect_uris, allowed_scopes, jwks, \
             jwks_uri, created_at) VALUES (",
        );
        bind_client(&mut sql, &checked, secret_hash);
        sql.push(", ").bind(created_at).push(")");
        let mut tx = self.db.begin_write().await?;
        match tx.execute(&sql).await {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(RegistryError::Exists(format!(
                    "client '{}'",
                    checked.client_id
                )));
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        checked.into_client(created_at)
    }

    /// Registers a client or replaces the one with the same id (keeping its creation time); used to apply the
    /// configuration file at every start.
    pub async fn upsert_client(&self, c: NewClient) -> Result<Client> {
        let checked = check_client(c)?;
        let secret_hash = match &checked.secret {
            Some(s) => Some(hash_off_thread(s.clone()).await?),
            None => None,
        };
        let mut sql = Sql::new(
            "INSERT INTO oauth_clients (client_id, name, kind, secret_hash, redirect_uris, allowed_scopes, jwks, \
             jwks_uri, created_at) VALUES (",
        );
        bind_client(&mut sql, &checked, secret_hash);
        sql.push(", ").bind(now_micros()).push(
            ") ON CONFLICT (client_id) DO UPDATE SET name = excluded.name, kind = excluded.kind, \
             secret_hash = excluded.secret_hash, redirect_uris = excluded.redirect_uris, \
             allowed_scopes = excluded.allowed_scopes, jwks = excluded.jwks, jwks_uri = excluded.jwks_uri \
             RETURNING created_at",
        );
        let mut tx = self.db.begin_write().await?;
        let rows = tx.fetch(&sql, &[Col::Int]).await?;
        tx.commit().await?;
        let created_at = rows.first().map_or_else(now_micros, |r| r.int(0));
        checked.into_client(created_at)
    }

    pub async fn client(&self, id: &str) -> Result<Option<Client>> {
        let mut sql = Sql::new(&format!(
            "SELECT {CLIENT_COLS} FROM oauth_clients WHERE client_id = "
        ));
        sql.bind(id);
        let mut tx = self.db.begin_read().await?;
        let rows = tx.fetch(&sql, CLIENT_KINDS).await?;
        tx.rollback().await?;
        rows.first().map(client_from_row).transpose()
    }

    /// Every client, by id.
    pub async fn list_clients(&self) -> Result<Vec<Client>> {
        let sql = Sql::new(&format!(
            "SELECT {CLIENT_COLS} FROM oauth_clients ORDER BY client_id"
        ));
        let mut tx = self.db.begin_read().await?;
        let rows = tx.fetch(&sql, CLIENT_KINDS).await?;
        tx.rollback().await?;
        rows.iter().map(client_from_row).collect()
    }

    /// Removes a client; false when there was none with that id.
    pub async fn remove_client(&self, id: &str) -> Result<bool> {
        let mut sql = Sql::new("DELETE FROM oauth_clients WHERE client_id = ");
        sql.bind(id);
        let mut tx = self.db.begin_write().await?;
        let n = tx.execute(&sql).await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// True when `secret` is the secret of the symmetric client `id`. An unknown client or one of another kind is
    /// false, after the same hashing work as a real check.
    pub async fn verify_client_secret(&self, id: &str, secret: &str) -> Result<bool> {
        let mut sql = Sql::new("SELECT kind, secret_hash FROM oauth_clients WHERE client_id = ");
        sql.bind(id);
        let mut tx = self.db.begin_read().await?;
        let rows = tx.fetch(&sql, &[Col::Text, Col::OptText]).await?;
        tx.rollback().await?;
        let stored = rows
            .first()
            .filter(|r| r.text(0) == ClientKind::ConfidentialSymmetric.as_str())
            .and_then(|r| r.opt_text(1));
        verify_off_thread(secret.to_owned(), stored).await
    }

    /// Registers a new user; `Exists` when the username is taken.
    pub async fn add_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
        fhir_user: Option<&str>,
    ) -> Result<User> {
        check_user(username, password, role, fhir_user)?;
        let hash = hash_off_thread(password.to_owned()).await?;
        let created_at = now_micros();
        let mut sql = Sql::new(
            "INSERT INTO users (username, password_hash, role, fhir_user, created_at) VALUES (",
        );
        sql.bind(username)
            .push(", ")
            .bind(hash)
            .push(", ")
            .bind(role.as_str())
            .push(", ")
            .bind(fhir_user)
            .push(", ")
            .bind(created_at)
            .push(")");
        let mut tx = self.db.begin_write().await?;
        match tx.execute(&sql).await {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(RegistryError::Exists(format!("user '{username}'")));
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        Ok(User {
            username: username.to_owned(),
            role,
            fhir_user: fhir_user.map(str::to_owned),
            created_at,
        })
    }

    /// Registers a user or replaces the one with the same username (keeping its creation time).
    pub async fn upsert_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
        fhir_user: Option<&str>,
    ) -> Result<User> {
        check_user(username, password, role, fhir_user)?;
        let hash = hash_off_thread(password.to_owned()).await?;
        let mut sql = Sql::new(
            "INSERT INTO users (username, password_hash, role, fhir_user, created_at) VALUES (",
        );
        sql.bind(username)
            .push(", ")
            .bind(hash)
            .push(", ")
            .bind(role.as_str())
            .push(", ")
            .bind(fhir_user)
            .push(", ")
            .bind(now_micros())
            .push(
                ") ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, \
                 role = excluded.role, fhir_user = excluded.fhir_user RETURNING created_at",
            );
        let mut tx = self.db.begin_write().await?;
        let rows = tx.fetch(&sql, &[Col::Int]).await?;
        tx.commit().await?;
        Ok(User {
            username: username.to_owned(),
            role,
            fhir_user: fhir_user.map(str::to_owned),
            created_at: rows.first().map_or_else(now_micros, |r| r.int(0)),
        })
    }

    pub async fn user(&self, username: &str) -> Result<Option<User>> {
        let mut sql = Sql::new(&format!("SELECT {USER_COLS} FROM users WHERE username = "));
        sql.bind(username);
        let mut tx = self.db.begin_read().await?;
        let rows = tx.fetch(&sql, USER_KINDS).await?;
        tx.rollback().await?;
        rows.first().map(user_from_row).transpose()
    }

    /// Every user, by username.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        let sql = Sql::new(&format!("SELECT {USER_COLS} FROM users ORDER BY username"));
        let mut tx = self.db.begin_read().await?;
        let rows = tx.fetch(&sql, USER_KINDS).await?;
        tx.rollback().await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Removes a user; false when there was none with that username.
    pub async fn remove_user(&self, username: &str) -> Result<bool> {
        let mut sql = Sql::new("DELETE FROM users WHERE username = ");
        sql.bind(username);
        let mut tx = self.db.begin_write().await?;
        let n = tx.execute(&sql).await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// The user when `password` is theirs. An unknown username costs the same hashing work as a wrong password,
    /// so response times do not tell an attacker which usernames exist.
    pub async fn verify_password(&self, username: &str, password: &str) -> Result<Option<User>> {
        let mut sql = Sql::new(&format!(
            "SELECT {USER_COLS}, password_hash FROM users WHERE username = "
        ));
        sql.bind(username);
        let mut cols = USER_KINDS.to_vec();
        cols.push(Col::Text);
        let mut tx = self.db.begin_read().await?;
        let rows = tx.fetch(&sql, &cols).await?;
        tx.rollback().await?;
        let row = rows.first();
        let ok = verify_off_thread(password.to_owned(), row.map(|r| r.text(4))).await?;
        match row {
            Some(r) if ok => Ok(Some(user_from_row(r)?)),
            _ => Ok(None),
        }
    }

    /// Registers (or replaces) the `[[clients]]` and `[[users]]` of the configuration. The first invalid entry
    /// stops the loading with an error naming it, so that a typo in the file stops the start-up rather than
    /// leaving a client half-configured.
    pub async fn load_from_config(&self, cfg: &Config) -> Result<()> {
        for entry in &cfg.clients {
            let context = |e: RegistryError| match e {
                RegistryError::Invalid(msg) => invalid(format!(
                    "client '{}' in the configuration: {msg}",
                    entry.client_id
                )),
                other => other,
            };
            let new = new_client_from_config(entry).map_err(context)?;
            self.upsert_client(new).await.map_err(context)?;
        }
        for entry in &cfg.users {
            let context = |e: RegistryError| match e {
                RegistryError::Invalid(msg) => invalid(format!(
                    "user '{}' in the configuration: {msg}",
                    entry.username
                )),
                other => other,
            };
            let (password, role) = user_from_config(entry).map_err(context)?;
            self.upsert_user(&entry.username, &password, role, entry.fhir_user.as_deref())
                .await
                .map_err(context)?;
        }
        Ok(())
    }
}

fn bind_client(sql: &mut Sql, c: &CheckedClient, secret_hash: Option<String>) {
    sql.bind(&c.client_id)
        .push(", ")
        .bind(&c.name)
        .push(", ")
        .bind(c.kind.as_str())
        .push(", ")
        .bind(secret_hash)
        .push(", ")
        .bind(&c.redirect_uris_json)
        .push(", ")
        .bind(&c.allowed_scopes)
        .push(", ")
        .bind(c.jwks_json.clone())
        .push(", ")
        .bind(c.jwks_uri.clone());
}

impl CheckedClient {
    fn into_client(self, created_at: i64) -> Result<Client> {
        let redirect_uris = serde_json::from_str(&self.redirect_uris_json)
            .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        let jwks = match &self.jwks_json {
            Some(j) => {
                Some(serde_json::from_str(j).map_err(|e| RegistryError::Corrupt(e.to_string()))?)
            }
            None => None,
        };
        Ok(Client {
            client_id: self.client_id,
            name: self.name,
            kind: self.kind,
            redirect_uris,
            allowed_scopes: self.allowed_scopes,
            jwks,
            jwks_uri: self.jwks_uri,
            created_at,
        })
    }
}

/// The value of a secret given directly or through an environment variable, never both.
fn secret_from(
    direct: Option<&String>,
    env: Option<&String>,
    what: &str,
) -> Result<Option<String>> {
    match (direct, env) {
        (Some(_), Some(_)) => Err(invalid(format!("give {what} or {what}_env, not both"))),
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(var)) => std::env::var(var).map(Some).map_err(|_| {
            invalid(format!(
                "environment variable {var} ({what}_env) is not set"
            ))
        }),
        (None, None) => Ok(None),
    }
}

fn new_client_from_config(entry: &ClientConfig) -> Result<NewClient> {
    let jwks = match &entry.jwks {
        // A string holds the JWKS as JSON text; a table is the JWKS itself.
        Some(Value::String(text)) => Some(
            serde_json::from_str(text)
                .map_err(|e| invalid(format!("jwks is not valid JSON: {e}")))?,
        ),
        other => other.clone(),
    };
    Ok(NewClient {
        client_id: entry.client_id.clone(),
        name: entry.name.clone(),
        kind: ClientKind::from_str(&entry.kind)?,
        secret: secret_from(entry.secret.as_ref(), entry.secret_env.as_ref(), "secret")?,
        redirect_uris: entry.redirect_uris.clone(),
        allowed_scopes: entry.allowed_scopes.clone(),
        jwks,
        jwks_uri: entry.jwks_uri.clone(),
    })
}

fn user_from_config(entry: &UserConfig) -> Result<(String, Role)> {
    let password = secret_from(
        entry.password.as_ref(),
        entry.password_env.as_ref(),
        "password",
    )?
    .ok_or_else(|| invalid("a password (password or password_env) is required"))?;
    Ok((password, Role::from_str(&entry.role)?))
}

/// True when `s` is 1 to 128 characters, each ASCII alphanumeric or one of `extra`.
fn is_identifier(s: &str, extra: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

fn check_client(c: NewClient) -> Result<CheckedClient> {
    if !is_identifier(&c.client_id, "._-") {
        return Err(invalid(format!(
            "client id '{}' must be 1 to 128 characters among A-Z a-z 0-9 . _ -",
            c.client_id
        )));
    }
    let name = c.name.trim();
    if name.is_empty() || name.chars().count() > 256 || name.chars().any(char::is_control) {
        return Err(invalid("client name must be 1 to 256 printable characters"));
    }
    let has_keys = c.jwks.is_some() || c.jwks_uri.is_some();
    match c.kind {
        ClientKind::Public => {
            if c.secret.is_some() {
                return Err(invalid("a public client has no secret"));
            }
        }
        ClientKind::ConfidentialSymmetric => match &c.secret {
            None => return Err(invalid("a confidential-symmetric client needs a secret")),
            Some(s) if s.chars().count() < 16 => {
                return Err(invalid("a client secret must be at least 16 characters"));
            }
            Some(_) => {}
        },
        ClientKind::ConfidentialAsymmetric => {
            if c.secret.is_some() {
                return Err(invalid(
                    "a confidential-asymmetric client authenticates with its keys and has no secret",
                ));
            }
            match (&c.jwks, &c.jwks_uri) {
                (None, None) => {
                    return Err(invalid(
                        "a confidential-asymmetric client needs jwks or jwks_uri",
                    ));
                }
                // RFC 7591 §2: the two must not both be given, as they could disagree.
                (Some(_), Some(_)) => return Err(invalid("give jwks or jwks_uri, not both")),
                _ => {}
            }
        }
    }
    if has_keys && c.kind != ClientKind::ConfidentialAsymmetric {
        return Err(invalid(
            "only a confidential-asymmetric client has jwks or jwks_uri",
        ));
    }
    if let Some(jwks) = &c.jwks {
        check_jwks(jwks)?;
    }
    if let Some(uri) = &c.jwks_uri {
        check_url("jwks_uri", uri)?;
    }
    // A public client only ever goes through the browser, so it needs somewhere to be sent back to; confidential
    // clients may be backend services (client_credentials) without one.
    if c.redirect_uris.is_empty() && c.kind == ClientKind::Public {
        return Err(invalid(format!(
            "a {} client needs at least one redirect URI",
            c.kind
        )));
    }
    let mut redirect_uris: Vec<String> = Vec::with_capacity(c.redirect_uris.len());
    for uri in c.redirect_uris {
        check_url("redirect URI", &uri)?;
        if !redirect_uris.contains(&uri) {
            redirect_uris.push(uri);
        }
    }
    let scopes = ScopeSet::parse(&c.allowed_scopes).map_err(|e| invalid(e.to_string()))?;
    if scopes.scopes.is_empty() {
        return Err(invalid("allowed scopes must list at least one scope"));
    }
    let allowed_scopes = scopes
        .scopes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let redirect_uris_json =
        serde_json::to_string(&redirect_uris).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
    let jwks_json = c
        .jwks
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
    Ok(CheckedClient {
        client_id: c.client_id,
        name: name.to_owned(),
        kind: c.kind,
        secret: c.secret,
        redirect_uris_json,
        allowed_scopes,
        jwks_json,
        jwks_uri: c.jwks_uri,
    })
}

/// An absolute `https` URL without fragment or credentials; `http` only on the loopback interface, where native
/// apps receive their redirect (RFC 8252 §7.3).
fn check_url(what: &str, s: &str) -> Result<()> {
    let bad = |why: &str| invalid(format!("{what} '{s}' {why}"));
    if s.trim() != s || s.is_empty() {
        return Err(bad("must not be empty or have surrounding spaces"));
    }
    let url = url::Url::parse(s).map_err(|_| bad("is not an absolute URL"))?;
    // Authorization responses carry the code in the query; a fragment would be lost or misread (RFC 6749 §3.1.2).
    if url.fragment().is_some() {
        return Err(bad("must not have a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not contain credentials"));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(bad("has no host")),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(bad(
            "must use https (http is allowed only for localhost and 127.0.0.1)",
        )),
        _ => Err(bad("must be an http(s) URL")),
    }
}

/// A JSON Web Key Set of public RSA or EC keys (RFC 7517 §5).
fn check_jwks(jwks: &Value) -> Result<()> {
    let keys = jwks
        .as_object()
        .and_then(|o| o.get("keys"))
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("jwks must be a JSON object {\"keys\": [...]}"))?;
    if keys.is_empty() {
        return Err(invalid("jwks must contain at least one key"));
    }
    for (i, key) in keys.iter().enumerate() {
        let Some(key) = key.as_object() else {
            return Err(invalid(format!("jwks key {i} is not a JSON object")));
        };
        // A private key pasted by mistake must not be stored (and so disclosed by `clients list` or the API).
        if key.contains_key("d") {
            return Err(invalid(format!(
                "jwks key {i} is a private key; register the public key only"
            )));
        }
        let has = |m: &str| {
            key.get(m)
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
        };
        let members: &[&str] = match key.get("kty").and_then(Value::as_str) {
            Some("RSA") => &["n", "e"],
            Some("EC") => &["crv", "x", "y"],
            _ => {
                return Err(invalid(format!(
                    "jwks key {i} must have kty \"RSA\" or \"EC\""
                )));
            }
        };
        if let Some(missing) = members.iter().find(|m| !has(m)) {
            return Err(invalid(format!(
                "jwks key {i} lacks its \"{missing}\" member"
            )));
        }
    }
    Ok(())
}

fn check_user(username: &str, password: &str, role: Role, fhir_user: Option<&str>) -> Result<()> {
    if !is_identifier(username, "._@-") {
        return Err(invalid(format!(
            "username '{username}' must be 1 to 128 characters among A-Z a-z 0-9 . _ @ -"
        )));
    }
    if password.chars().count() < 8 {
        return Err(invalid("a password must be at least 8 characters"));
    }
    let reference = match fhir_user {
        Some(r) => Some(parse_fhir_user(r).ok_or_else(|| {
            invalid(format!(
                "fhir user '{r}' must be Practitioner/<id> or Patient/<id>"
            ))
        })?),
        None => None,
    };
    // The role decides which compartment the user's tokens are confined to, so it must agree with who they are.
    match (role, reference) {
        (Role::Patient, Some("Patient")) => Ok(()),
        (Role::Patient, _) => Err(invalid("a patient user needs a fhir user Patient/<id>")),
        (_, Some("Patient")) => Err(invalid(format!("a {role} user cannot be a Patient"))),
        _ => Ok(()),
    }
}

/// The resource type of a `Practitioner/<id>` or `Patient/<id>` reference, the id being a FHIR id.
fn parse_fhir_user(r: &str) -> Option<&'static str> {
    let (ty, id) = r.split_once('/')?;
    let id_ok = (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    match ty {
        "Practitioner" if id_ok => Some("Practitioner"),
        "Patient" if id_ok => Some("Patient"),
        _ => None,
    }
}

/// A hash with the default parameters, checked against when there is no real one so that the work is the same.
static DUMMY_HASH: LazyLock<Option<String>> =
    LazyLock::new(|| hash_secret("no account has this password").ok());

fn hash_secret(secret: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| RegistryError::Hash(e.to_string()))
}

/// Argon2 compares the derived keys in constant time.
fn verify_hash(secret: &str, phc: &str) -> Result<bool> {
    let parsed =
        PasswordHash::new(phc).map_err(|e| RegistryError::Corrupt(format!("stored hash: {e}")))?;
    match Argon2::default().verify_password(secret.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(RegistryError::Hash(e.to_string())),
    }
}

// Argon2 deliberately takes tens of milliseconds of CPU; off the async workers it does not stall other requests.
async fn hash_off_thread(secret: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_secret(&secret))
        .await
        .map_err(|e| RegistryError::Hash(e.to_string()))?
}

/// Verifies `secret` against `stored`, or against the dummy hash (and answers false) when there is none.
async fn verify_off_thread(secret: String, stored: Option<String>) -> Result<bool> {
    tokio::task::spawn_blocking(move || match stored {
        Some(phc) => verify_hash(&secret, &phc),
        None => {
            if let Some(dummy) = DUMMY_HASH.as_deref() {
                let _ = verify_hash(&secret, dummy);
            }
            Ok(false)
        }
    })
    .await
    .map_err(|e| RegistryError::Hash(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls_and_http_on_loopback_are_accepted_as_redirect_uris() {
        for ok in [
            "https://app.example.org/callback",
            "https://app.example.org:8443/cb?x=1",
            "http://localhost:3000/cb",
            "http://127.0.0.1/cb",
            "http://[::1]:9000/cb",
        ] {
            assert!(check_url("redirect URI", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn relative_fragment_bearing_plain_http_and_other_scheme_urls_are_refused() {
        for bad in [
            "/callback",
            "app.example.org/cb",
            "https://app.example.org/cb#frag",
            "https://app.example.org/cb#",
            "http://app.example.org/cb",
            "ftp://app.example.org/cb",
            "com.example.app:/cb",
            "https://user:pw@app.example.org/cb",
            " https://app.example.org/cb",
            "",
        ] {
            assert!(check_url("redirect URI", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_jwks_must_hold_public_rsa_or_ec_keys() {
        let rsa = serde_json::json!({"keys": [{"kty": "RSA", "n": "sXch", "e": "AQAB"}]});
        let ec = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "BB"}]});
        assert!(check_jwks(&rsa).is_ok());
        assert!(check_jwks(&ec).is_ok());
        for bad in [
            serde_json::json!([{"kty": "RSA", "n": "a", "e": "b"}]),
            serde_json::json!({"keys": []}),
            serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
            serde_json::json!({"keys": [{"kty": "RSA", "n": "a"}]}),
            serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "c"}]}),
        ] {
            assert!(check_jwks(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_fhir_user_is_a_practitioner_or_patient_reference() {
        assert_eq!(parse_fhir_user("Practitioner/rivera"), Some("Practitioner"));
        assert_eq!(parse_fhir_user("Patient/p-1.2"), Some("Patient"));
        for bad in [
            "Practitioner/",
            "Organization/x",
            "Patient/a/b",
            "Patient/x_y",
            "rivera",
        ] {
            assert_eq!(parse_fhir_user(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_patient_user_must_be_a_patient_and_staff_must_not_be() {
        assert!(check_user("pat", "long enough", Role::Patient, Some("Patient/1")).is_ok());
        assert!(check_user("pat", "long enough", Role::Patient, None).is_err());
        assert!(check_user("pat", "long enough", Role::Patient, Some("Practitioner/1")).is_err());
        assert!(check_user("doc", "long enough", Role::Clinician, Some("Patient/1")).is_err());
        assert!(check_user("doc", "long enough", Role::Therapist, None).is_ok());
        assert!(check_user("doc", "short", Role::Admin, None).is_err());
        assert!(check_user("bad name", "long enough", Role::Admin, None).is_err());
    }

    #[test]
    fn kinds_and_roles_read_back_what_they_write() {
        for k in [
            ClientKind::Public,
            ClientKind::ConfidentialSymmetric,
            ClientKind::ConfidentialAsymmetric,
        ] {
            assert_eq!(ClientKind::from_str(k.as_str()).ok(), Some(k));
            assert_eq!(serde_json::to_value(k).ok(), Some(Value::from(k.as_str())));
        }
        for r in [Role::Clinician, Role::Therapist, Role::Admin, Role::Patient] {
            assert_eq!(Role::from_str(r.as_str()).ok(), Some(r));
            assert_eq!(serde_json::to_value(r).ok(), Some(Value::from(r.as_str())));
        }
    }

    #[test]
    fn a_logged_new_client_does_not_show_its_secret() {
        let c = NewClient {
            client_id: "c".into(),
            name: "C".into(),
            kind: ClientKind::ConfidentialSymmetric,
            secret: Some("super-secret-value-123".into()),
            redirect_uris: vec![],
            allowed_scopes: "openid".into(),
            jwks: None,
            jwks_uri: None,
        };
        assert!(!format!("{c:?}").contains("super-secret"));
    }
}
