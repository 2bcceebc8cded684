//! The `kap-gateway` command: parse the command line, load configuration, start logging, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kap_gateway::auth::registry::{ClientKind, NewClient, Registry, RegistryError, Role};
use kap_gateway::config::{Config, Overrides};
use kap_gateway::startup::{Application, connect_store};

/// mimalloc instead of the C library's allocator: a request allocates and frees many small buffers on one worker
/// thread while SQLite's connection threads do the same, and glibc's per-thread arenas, locks and consolidation took
/// about an eighth of the gateway's CPU under load (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// FHIR R4 interoperability gateway for ketamine-assisted psychotherapy (KAP) clinics.
///
/// Configuration is layered: built-in defaults < TOML file (kap-gateway.toml in the working directory, or
/// --config) < KAPGW_* environment variables (e.g. KAPGW_DATABASE_URL) < command-line flags.
#[derive(Debug, Parser)]
#[command(name = "kap-gateway", version, about, long_about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "KAPGW_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default when no command is given).
    Serve(DbArgs),
    /// Apply database migrations and exit.
    Migrate(DbArgs),
    /// Print the effective configuration (after all layers) as TOML and exit.
    Config(DbArgs),
    /// Register, list and remove the OAuth clients of the built-in authorization server.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Register, list and remove the users who sign in to the built-in authorization server.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Show or rotate the keys that sign access tokens.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create an EHR launch context: prints the opaque `launch` value an EHR passes to a SMART app.
    ///
    /// Example: kap-gateway launch --patient alice --encounter enc-1
    Launch(LaunchArgs),
    /// Load demo data: `seed --demo` writes a synthetic KAP cohort through the KAP API's code path (complete and
    /// partial courses, every route, adverse events, responders and non-responders) and registers demo clients and
    /// users to try every endpoint with. For trying the gateway out, never for a clinic's real database.
    Seed(SeedArgs),
    /// EHR sync: outbox status, retry of dead letters, pull from an EHR, disclosure authorizations.
    #[command(subcommand)]
    Sync(SyncCommand),
    /// The EHR connections of the configuration.
    #[command(subcommand)]
    Ehr(EhrCommand),
}

#[derive(Debug, clap::Args)]
struct SeedArgs {
    /// Load the demo cohort (required: seeding has no other mode yet).
    #[arg(long)]
    demo: bool,
    /// Number of demo patients.
    #[arg(long, value_name = "N", default_value_t = 20)]
    patients: usize,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Subcommand)]
enum SyncCommand {
    /// Queue depth, oldest pending age, last success and error per EHR, and dead letters.
    Status {
        /// Print JSON (as GET /admin/sync) instead of tables.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Put dead letters back in the queue: one (--seq), one EHR's (--ehr) or all (--all).
    Retry {
        #[arg(long, value_name = "SEQ")]
        seq: Option<i64>,
        #[arg(long, value_name = "NAME")]
        ehr: Option<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Pull a patient (found by identifier) and their AllergyIntolerance, Condition and MedicationStatement
    /// resources from an EHR; with --all, every patient known to that EHR.
    ///
    /// Example: kap-gateway sync pull --ehr clinic-ehr --identifier 'urn:oid:2.16.840.1.113883.19.5|MRN-5521907'
    Pull {
        #[arg(long, value_name = "NAME")]
        ehr: String,
        #[arg(long, value_name = "SYSTEM|VALUE")]
        identifier: Option<String>,
        #[arg(long, conflicts_with = "identifier")]
        all: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Record a patient's authorization to disclose psychotherapy notes to an EHR (or every EHR with --ehr '*').
    Authorize {
        /// Local Patient id.
        #[arg(long, value_name = "ID")]
        patient: String,
        #[arg(long, value_name = "NAME", default_value = "*")]
        ehr: String,
        /// Where the signed authorization is kept.
        #[arg(long, value_name = "TEXT")]
        reference: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
enum EhrCommand {
    /// List the configured EHR connections (name, base URL, authentication, kinds pushed, patient identifier system).
    List,
}

#[derive(Debug, clap::Args)]
struct LaunchArgs {
    /// Id of the Patient in context.
    #[arg(long, value_name = "ID")]
    patient: String,
    /// Id of the Encounter in context.
    #[arg(long, value_name = "ID")]
    encounter: Option<String>,
    /// Seconds the launch value stays usable.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    ttl: i64,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List the public signing keys that currently verify tokens (the JWKS).
    List(StoreArgs),
    /// Start signing with a new key. The previous key keeps verifying for [auth] key_overlap_secs (default
    /// 3900 s, longer than any token lives) so tokens already issued stay valid; running gateways pick the new
    /// key up when they next see a token signed with it, or at their next start.
    Rotate(StoreArgs),
}

#[derive(Debug, Subcommand)]
enum ClientsCommand {
    /// Register a client. Secrets are stored only as Argon2id hashes.
    ///
    /// Example: kap-gateway clients add --id intake --name "Intake app" --kind public
    /// --redirect-uri https://intake.example.org/callback --scopes "openid fhirUser launch/patient patient/*.rs"
    Add(ClientAddArgs),
    /// List the registered clients (secrets are never shown).
    List(StoreArgs),
    /// Remove a client.
    Remove {
        /// The client id.
        #[arg(value_name = "ID")]
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, clap::Args)]
struct ClientAddArgs {
    /// Client id: 1 to 128 characters among A-Z a-z 0-9 . _ -
    #[arg(long, value_name = "ID")]
    id: String,
    /// Human-readable name, shown on the consent page.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// How the client authenticates: public (PKCE only), confidential-symmetric (a secret) or
    /// confidential-asymmetric (a signed JWT, keys from --jwks or --jwks-uri).
    #[arg(long, value_enum, value_name = "KIND")]
    kind: KindArg,
    /// Secret of a confidential-symmetric client (at least 16 characters). Prefer --secret-env: command lines are
    /// visible to other users of the machine.
    #[arg(long, value_name = "SECRET", conflicts_with = "secret_env")]
    secret: Option<String>,
    /// Name of an environment variable holding the secret of a confidential-symmetric client.
    #[arg(long, value_name = "VAR")]
    secret_env: Option<String>,
    /// Allowed redirect URI (repeatable): absolute https URL without fragment; http only for localhost and
    /// 127.0.0.1. At least one for public and confidential-symmetric clients.
    #[arg(long = "redirect-uri", value_name = "URI")]
    redirect_uris: Vec<String>,
    /// Space-separated SMART scopes the client may be granted, e.g. "openid fhirUser patient/*.rs".
    #[arg(long, value_name = "SCOPES")]
    scopes: String,
    /// Public keys of a confidential-asymmetric client: a JWKS as inline JSON ({"keys":[...]}) or a file holding it.
    #[arg(long, value_name = "FILE_OR_JSON", conflicts_with = "jwks_uri")]
    jwks: Option<String>,
    /// URL where a confidential-asymmetric client publishes its JWKS.
    #[arg(long, value_name = "URL")]
    jwks_uri: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KindArg {
    Public,
    ConfidentialSymmetric,
    ConfidentialAsymmetric,
}

impl From<KindArg> for ClientKind {
    fn from(k: KindArg) -> ClientKind {
        match k {
            KindArg::Public => ClientKind::Public,
            KindArg::ConfidentialSymmetric => ClientKind::ConfidentialSymmetric,
            KindArg::ConfidentialAsymmetric => ClientKind::ConfidentialAsymmetric,
        }
    }
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Register a user. Passwords are stored only as Argon2id hashes.
    ///
    /// Without --password or --password-env the password is read from standard input (its first line).
    Add(UserAddArgs),
    /// List the registered users (passwords are never shown).
    List(StoreArgs),
    /// Remove a user.
    Remove {
        /// The username.
        #[arg(value_name = "USERNAME")]
        username: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, clap::Args)]
struct UserAddArgs {
    /// Username: 1 to 128 characters among A-Z a-z 0-9 . _ @ -
    #[arg(long, value_name = "USERNAME")]
    username: String,
    /// Password (at least 8 characters). Prefer --password-env or standard input: command lines are visible to
    /// other users of the machine.
    #[arg(long, value_name = "PASSWORD", conflicts_with = "password_env")]
    password: Option<String>,
    /// Name of an environment variable holding the password.
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,
    /// clinician, therapist (may also see psychotherapy notes), admin (may manage and read the audit trail) or
    /// patient (only their own record).
    #[arg(long, value_enum, value_name = "ROLE")]
    role: RoleArg,
    /// The FHIR resource the user is: Practitioner/<id>, or Patient/<id> (required for the patient role).
    #[arg(long, value_name = "REFERENCE")]
    fhir_user: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Clinician,
    Therapist,
    Admin,
    Patient,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Clinician => Role::Clinician,
            RoleArg::Therapist => Role::Therapist,
            RoleArg::Admin => Role::Admin,
            RoleArg::Patient => Role::Patient,
        }
    }
}

/// The database of the registry commands.
#[derive(Debug, Clone, Default, clap::Args)]
struct StoreArgs {
    /// Database URL: sqlite://FILE (created when missing) or postgres://USER@HOST:PORT/DB
    /// [default: sqlite://kap-gateway.db].
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
}

#[derive(Debug, Clone, Default, clap::Args)]
struct DbArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 or 0.0.0.0:8080 [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Database URL: sqlite://FILE (created when missing) or postgres://USER@HOST:PORT/DB
    /// [default: sqlite://kap-gateway.db].
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Public base URL of the FHIR API, when behind a proxy [default: http://ADDR/fhir].
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
}

impl DbArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            database_url: self.database_url.clone(),
            base_url: self.base_url.clone(),
        }
    }
}

fn load(cli: &Cli, args: &DbArgs) -> Result<Config, String> {
    Config::load(cli.config.as_deref(), &args.overrides())
        .map_err(|e| format!("configuration error: {e}"))
}

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        None => serve(&cli, &DbArgs::default()).await,
        Some(Command::Serve(args)) => serve(&cli, args).await,
        Some(Command::Migrate(args)) => migrate(&cli, args).await,
        Some(Command::Config(args)) => load(&cli, args).and_then(|c| {
            toml::to_string(&c)
                .map(|s| print!("{s}"))
                .map_err(|e| e.to_string())
        }),
        Some(Command::Clients(command)) => clients(&cli, command).await,
        Some(Command::Users(command)) => users(&cli, command).await,
        Some(Command::Keys(command)) => keys(&cli, command).await,
        Some(Command::Launch(args)) => launch(&cli, args).await,
        Some(Command::Seed(args)) => seed(&cli, args).await,
        Some(Command::Sync(command)) => sync(&cli, command).await,
        Some(Command::Ehr(EhrCommand::List)) => ehr_list(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kap-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: &Cli, args: &DbArgs) -> Result<(), String> {
    let config = load(cli, args)?;
    let telemetry = kap_gateway::telemetry::init_with_traces(&config.log_level, &config.log_format);
    let app = match Application::build(config.clone()).await {
        Ok(app) => app,
        Err(e) => {
            flush_traces(telemetry).await;
            return Err(format!("{e:#}"));
        }
    };
    tracing::info!(
        port = app.port(),
        database = config.database_url.split(':').next().unwrap_or(""),
        base_url = %app.state.base_url,
        "kap-gateway listening"
    );
    let result = app.run_until_stopped().await.map_err(|e| e.to_string());
    flush_traces(telemetry).await;
    result
}

/// Sends the spans still queued for export (the exporter blocks, so off the async threads).
async fn flush_traces(telemetry: kap_gateway::telemetry::Telemetry) {
    if telemetry.exporting() {
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    } else {
        telemetry.shutdown();
    }
}

async fn migrate(cli: &Cli, args: &DbArgs) -> Result<(), String> {
    let config = load(cli, args)?;
    kap_gateway::telemetry::init(&config.log_level, &config.log_format);
    connect_store(&config).await.map_err(|e| format!("{e:#}"))?;
    println!("migrations applied");
    Ok(())
}

/// Opens the configured database (applying migrations) for a registry command.
/// Loads the configuration and opens (and migrates) the database named by `store` or the configuration.
async fn open_store(
    cli: &Cli,
    store: &StoreArgs,
) -> Result<(Config, kap_gateway::store::Store), String> {
    let overrides = Overrides {
        database_url: store.database_url.clone(),
        ..Overrides::default()
    };
    let config = Config::load(cli.config.as_deref(), &overrides)
        .map_err(|e| format!("configuration error: {e}"))?;
    kap_gateway::telemetry::init(&config.log_level, &config.log_format);
    let opened = connect_store(&config).await.map_err(|e| format!("{e:#}"))?;
    Ok((config, opened))
}

/// The demo clients and users `seed --demo` registers (documented in the README; demo credentials only).
const DEMO_SECRET: &str = "kap-demo-secret-0001";
const DEMO_PASSWORD: &str = "kap-demo-password";

async fn seed(cli: &Cli, args: &SeedArgs) -> Result<(), String> {
    if !args.demo {
        return Err("nothing to do: use `kap-gateway seed --demo` to load the demo cohort".into());
    }
    let (config, store) = open_store(cli, &args.store).await?;
    let registry = Registry::new(store.db.clone());
    let demo_redirect = "http://localhost:9000/callback".to_owned();
    for client in [
        NewClient {
            client_id: "kap-demo-backend".into(),
            name: "KAP demo backend service".into(),
            kind: ClientKind::ConfidentialSymmetric,
            secret: Some(DEMO_SECRET.into()),
            redirect_uris: vec![demo_redirect.clone()],
            allowed_scopes: format!(
                "system/*.cruds system/AuditEvent.rs {}",
                kap_gateway::auth::access::PSYCHOTHERAPY_SCOPE
            ),
            jwks: None,
            jwks_uri: None,
        },
        NewClient {
            client_id: "kap-demo-app".into(),
            name: "KAP demo app".into(),
            kind: ClientKind::Public,
            secret: None,
            redirect_uris: vec![demo_redirect.clone()],
            allowed_scopes: format!(
                "openid fhirUser launch launch/patient offline_access patient/*.rs user/*.cruds {}",
                kap_gateway::auth::access::PSYCHOTHERAPY_SCOPE
            ),
            jwks: None,
            jwks_uri: None,
        },
    ] {
        registry
            .upsert_client(client)
            .await
            .map_err(registry_error)?;
    }
    for (user, role) in [
        ("demo-clinician", Role::Clinician),
        ("demo-therapist", Role::Therapist),
        ("demo-admin", Role::Admin),
    ] {
        registry
            .upsert_user(
                user,
                DEMO_PASSWORD,
                role,
                Some("Practitioner/demo-psychiatrist"),
            )
            .await
            .map_err(registry_error)?;
    }
    let fhir = kap_gateway::service::FhirService::new(store.clone(), config.fhir_base_url());
    // The clinician the demo records name.
    fhir.process_bundle(
        &kap_gateway::auth::access::Access::internal(),
        serde_json::json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [{
                "resource": {
                    "resourceType": "Practitioner", "id": "demo-psychiatrist",
                    "name": [{ "family": "Lee", "given": ["Jordan"], "prefix": ["Dr."] }]
                },
                "request": { "method": "PUT", "url": "Practitioner/demo-psychiatrist" }
            }]
        }),
    )
    .await
    .map_err(|e| format!("cannot write the demo practitioner: {}", e.outcome()))?;
    let kap = kap_gateway::kap::service::KapService::new(fhir, config.kap.clone());
    let started = std::time::Instant::now();
    let report = kap_gateway::kap::seed::demo_cohort(&kap, args.patients)
        .await
        .map_err(|e| format!("seeding failed: {}", e.outcome()))?;
    if report.already_loaded {
        println!("the demo cohort is already loaded; demo clients and users were refreshed");
    } else {
        println!(
            "loaded {} demo patients and {} KAP records in {:.1} s",
            report.patients,
            report.records,
            started.elapsed().as_secs_f64()
        );
        if let Some(first) = report.patient_ids.first() {
            println!("first patient: {first}  (GET /kap/v1/patients/{first}/course)");
        }
    }
    println!(
        "demo backend client: kap-demo-backend / {DEMO_SECRET} (client_credentials, system scopes)\n\
         demo app: kap-demo-app (public, PKCE, redirect {demo_redirect})\n\
         demo users: demo-clinician, demo-therapist, demo-admin / {DEMO_PASSWORD}"
    );
    Ok(())
}

async fn launch(cli: &Cli, args: &LaunchArgs) -> Result<(), String> {
    let (_, opened) = open_store(cli, &args.store).await?;
    let launch = kap_gateway::auth::server::create_launch(
        &opened.db,
        &args.patient,
        args.encounter.as_deref(),
        args.ttl,
    )
    .await
    .map_err(|e| e.to_string())?;
    println!("{launch}");
    Ok(())
}

async fn keys(cli: &Cli, command: &KeysCommand) -> Result<(), String> {
    use kap_gateway::auth::keys::KeyRing;
    match command {
        KeysCommand::List(store) => {
            let (_, opened) = open_store(cli, store).await?;
            let ring = KeyRing::load_or_create(&opened.db)
                .await
                .map_err(|e| e.to_string())?;
            let jwks = ring.jwks();
            let current = ring.current_kid().unwrap_or_default();
            for key in jwks["keys"].as_array().cloned().unwrap_or_default() {
                let kid = key["kid"].as_str().unwrap_or_default();
                let role = if kid == current {
                    "signing"
                } else {
                    "verifying only"
                };
                println!("{kid}  {}  {role}", key["alg"].as_str().unwrap_or_default());
            }
        }
        KeysCommand::Rotate(store) => {
            let (config, opened) = open_store(cli, store).await?;
            let overlap = config
                .auth
                .key_overlap_secs
                .max(config.auth.access_token_secs);
            let kid = KeyRing::rotate(&opened.db, overlap)
                .await
                .map_err(|e| e.to_string())?;
            println!("new signing key {kid}; the previous key verifies for another {overlap} s");
        }
    }
    Ok(())
}

async fn registry(cli: &Cli, store: &StoreArgs) -> Result<Registry, String> {
    let (_, opened) = open_store(cli, store).await?;
    Ok(Registry::new(opened.db))
}

fn registry_error(e: RegistryError) -> String {
    e.to_string()
}

/// A secret given directly or named by an environment variable.
fn secret_arg(direct: Option<&String>, env: Option<&String>) -> Result<Option<String>, String> {
    match (direct, env) {
        (Some(s), _) => Ok(Some(s.clone())),
        (None, Some(var)) => std::env::var(var)
            .map(Some)
            .map_err(|_| format!("environment variable {var} is not set")),
        (None, None) => Ok(None),
    }
}

/// The `--jwks` value: inline JSON when it looks like an object, otherwise the path of a file holding it.
fn jwks_arg(value: &str) -> Result<serde_json::Value, String> {
    let text = if value.trim_start().starts_with('{') {
        value.to_owned()
    } else {
        std::fs::read_to_string(value)
            .map_err(|e| format!("cannot read the JWKS file {value}: {e}"))?
    };
    serde_json::from_str(&text).map_err(|e| format!("the JWKS is not valid JSON: {e}"))
}

async fn clients(cli: &Cli, command: &ClientsCommand) -> Result<(), String> {
    match command {
        ClientsCommand::Add(args) => {
            let new = NewClient {
                client_id: args.id.clone(),
                name: args.name.clone(),
                kind: args.kind.into(),
                secret: secret_arg(args.secret.as_ref(), args.secret_env.as_ref())?,
                redirect_uris: args.redirect_uris.clone(),
                allowed_scopes: args.scopes.clone(),
                jwks: args.jwks.as_deref().map(jwks_arg).transpose()?,
                jwks_uri: args.jwks_uri.clone(),
            };
            let registry = registry(cli, &args.store).await?;
            let client = registry.add_client(new).await.map_err(registry_error)?;
            println!("client '{}' registered ({})", client.client_id, client.kind);
        }
        ClientsCommand::List(store) => {
            let registry = registry(cli, store).await?;
            let rows = registry
                .list_clients()
                .await
                .map_err(registry_error)?
                .into_iter()
                .map(|c| {
                    vec![
                        c.client_id,
                        c.kind.to_string(),
                        c.name,
                        if c.redirect_uris.is_empty() {
                            "-".to_owned()
                        } else {
                            c.redirect_uris.join(",")
                        },
                        c.allowed_scopes,
                    ]
                })
                .collect();
            print_table(&["ID", "KIND", "NAME", "REDIRECT URIS", "SCOPES"], rows);
        }
        ClientsCommand::Remove { id, store } => {
            let registry = registry(cli, store).await?;
            if !registry.remove_client(id).await.map_err(registry_error)? {
                return Err(RegistryError::NotFound(format!("client '{id}'")).to_string());
            }
            println!("client '{id}' removed");
        }
    }
    Ok(())
}

async fn users(cli: &Cli, command: &UsersCommand) -> Result<(), String> {
    match command {
        UsersCommand::Add(args) => {
            let password = match secret_arg(args.password.as_ref(), args.password_env.as_ref())? {
                Some(p) => p,
                None => read_password(&args.username)?,
            };
            let registry = registry(cli, &args.store).await?;
            let user = registry
                .add_user(
                    &args.username,
                    &password,
                    args.role.into(),
                    args.fhir_user.as_deref(),
                )
                .await
                .map_err(registry_error)?;
            println!("user '{}' registered ({})", user.username, user.role);
        }
        UsersCommand::List(store) => {
            let registry = registry(cli, store).await?;
            let rows = registry
                .list_users()
                .await
                .map_err(registry_error)?
                .into_iter()
                .map(|u| {
                    vec![
                        u.username,
                        u.role.to_string(),
                        u.fhir_user.unwrap_or_else(|| "-".to_owned()),
                        kap_gateway::fhir::datetime::format_instant(u.created_at),
                    ]
                })
                .collect();
            print_table(&["USERNAME", "ROLE", "FHIR USER", "CREATED"], rows);
        }
        UsersCommand::Remove { username, store } => {
            let registry = registry(cli, store).await?;
            if !registry
                .remove_user(username)
                .await
                .map_err(registry_error)?
            {
                return Err(RegistryError::NotFound(format!("user '{username}'")).to_string());
            }
            println!("user '{username}' removed");
        }
    }
    Ok(())
}

/// Reads a password from the first line of standard input, prompting (without echo) when it is a terminal.
fn read_password(username: &str) -> Result<String, String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let stdin = std::io::stdin();
    let echo = if stdin.is_terminal() {
        eprint!("Password for {username}: ");
        let _ = std::io::stderr().flush();
        Some(EchoOff::new())
    } else {
        None
    };
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    if echo.is_some() {
        eprintln!();
    }
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(
            "no password given (use --password-env VAR or write it to standard input)".to_owned(),
        );
    }
    Ok(password)
}

/// Turns terminal echo off while a password is typed, and back on when dropped (also on error paths).
struct EchoOff;

impl EchoOff {
    fn new() -> EchoOff {
        stty("-echo");
        EchoOff
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        stty("echo");
    }
}

// Best effort: without `stty` the password is still read, only visibly.
fn stty(arg: &str) {
    let _ = std::process::Command::new("stty")
        .arg(arg)
        .stdin(std::process::Stdio::inherit())
        .status();
}

/// Prints rows under headers in aligned columns; the last column is not padded.
fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn ehr_list(cli: &Cli) -> Result<(), String> {
    let config = load(cli, &DbArgs::default())?;
    kap_gateway::sync::config::check_all(&config.ehr)?;
    let rows = config
        .ehr
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.base_url.clone(),
                match e.auth {
                    kap_gateway::sync::config::EhrAuthKind::SmartBackend => format!(
                        "smart-backend ({}, {})",
                        e.client_id.clone().unwrap_or_default(),
                        e.algorithm
                    ),
                    kap_gateway::sync::config::EhrAuthKind::Bearer => "bearer".into(),
                    kap_gateway::sync::config::EhrAuthKind::None => "none".into(),
                },
                e.push.join(","),
                e.patient_identifier_system.clone().unwrap_or_default(),
                format!("{} s", e.timeout_secs),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "BASE URL",
            "AUTH",
            "PUSH",
            "PATIENT IDENTIFIER SYSTEM",
            "TIMEOUT",
        ],
        rows,
    );
    Ok(())
}

async fn sync(cli: &Cli, command: &SyncCommand) -> Result<(), String> {
    use kap_gateway::sync::outbox;
    match command {
        SyncCommand::Status { json, store } => {
            let (config, opened) = open_store(cli, store).await?;
            let ehrs = kap_gateway::sync::config::names_and_urls(&config.ehr);
            let status = outbox::status(&opened.db, &ehrs, 1000)
                .await
                .map_err(|e| e.to_string())?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?
                );
                return Ok(());
            }
            print_table(
                &[
                    "EHR",
                    "PENDING",
                    "RETRYING",
                    "DEAD",
                    "WITHHELD",
                    "DELIVERED",
                    "OLDEST PENDING",
                    "LAST SUCCESS",
                    "LAST ERROR",
                ],
                status
                    .ehrs
                    .iter()
                    .map(|e| {
                        vec![
                            e.name.clone(),
                            e.pending.to_string(),
                            e.retrying.to_string(),
                            e.dead.to_string(),
                            e.withheld.to_string(),
                            e.delivered.to_string(),
                            e.oldest_pending_age_secs
                                .map(|s| format!("{s:.1} s"))
                                .unwrap_or_default(),
                            e.last_success.clone().unwrap_or_default(),
                            match (&e.last_error_at, &e.last_error) {
                                (Some(at), Some(err)) => format!("{at} {err}"),
                                _ => String::new(),
                            },
                        ]
                    })
                    .collect(),
            );
            if !status.dead_letters.is_empty() {
                println!();
                print_table(
                    &["SEQ", "EHR", "RESOURCE", "IDENTIFIER", "ATTEMPTS", "ERROR"],
                    status
                        .dead_letters
                        .iter()
                        .map(|d| {
                            vec![
                                d.seq.to_string(),
                                d.ehr.clone(),
                                format!("{}/_history/{}", d.resource, d.version),
                                d.identifier.clone(),
                                d.attempts.to_string(),
                                d.error.clone().unwrap_or_default(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        SyncCommand::Retry {
            seq,
            ehr,
            all,
            store,
        } => {
            if seq.is_none() && ehr.is_none() && !all {
                return Err("say which dead letters to retry: --seq N, --ehr NAME or --all".into());
            }
            let (_, opened) = open_store(cli, store).await?;
            let n = outbox::retry_dead(&opened.db, *seq, ehr.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            println!("{n} dead letter(s) queued again");
        }
        SyncCommand::Pull {
            ehr,
            identifier,
            all,
            store,
        } => {
            let (config, opened) = open_store(cli, store).await?;
            let worker = kap_gateway::sync::worker::Worker::new(
                opened.db.clone(),
                &config.ehr,
                config.sync.clone(),
            )?;
            let target = worker
                .targets()
                .iter()
                .find(|t| &t.config.name == ehr)
                .ok_or_else(|| format!("no EHR named {ehr:?} is configured"))?;
            let service = kap_gateway::service::FhirService::new(opened, config.fhir_base_url())
                .with_outbox(kap_gateway::sync::Outbox::new(&config.ehr));
            let identifiers = match (identifier, all) {
                (Some(i), _) => vec![i.clone()],
                (None, true) => {
                    kap_gateway::sync::pull::known_identifiers(&service, target).await?
                }
                (None, false) => return Err("give --identifier SYSTEM|VALUE or --all".into()),
            };
            let mut failed = 0;
            for id in identifiers {
                match kap_gateway::sync::pull::pull_patient(&service, target, &id).await {
                    Ok(report) => println!(
                        "{}",
                        serde_json::to_string(&report).map_err(|e| e.to_string())?
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("kap-gateway: pull of {id} failed: {e}");
                    }
                }
            }
            if failed > 0 {
                return Err(format!("{failed} pull(s) failed"));
            }
        }
        SyncCommand::Authorize {
            patient,
            ehr,
            reference,
            store,
        } => {
            let (config, opened) = open_store(cli, store).await?;
            if ehr != "*" && !config.ehr.iter().any(|e| &e.name == ehr) {
                return Err(format!("no EHR named {ehr:?} is configured"));
            }
            let n = outbox::authorize_disclosure(
                &opened.db,
                patient,
                ehr,
                "kap-gateway sync authorize",
                reference.as_deref(),
            )
            .await
            .map_err(|e| e.to_string())?;
            println!("authorization recorded; {n} withheld note(s) queued again");
        }
    }
    Ok(())
}
