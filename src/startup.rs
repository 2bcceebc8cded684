//! Wiring: database pool and migrations, services, and the HTTP server (`Application::build` → `port` →
//! `run_until_stopped`), shared by `main` and the integration tests.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::HttpServer;
use actix_web::dev::Server;
use anyhow::Context as _;

use crate::api::{AppState, create_app};
use crate::auth::keys::KeyRing;
use crate::auth::tokens::{Authenticator, ExternalIssuer};
use crate::config::Config;
use crate::fhir::capability::CapabilityInput;
use crate::fhir::registry::SUPPORTED_TYPES;
use crate::service::FhirService;
use crate::store::Store;
use crate::store::db::Db;

/// A built, not yet running, gateway.
pub struct Application {
    port: u16,
    server: Server,
    pub state: AppState,
    /// Stops the sync worker and periodic pull; they finish the delivery in progress.
    sync_stop: tokio::sync::watch::Sender<bool>,
    sync_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Connects to the database and applies migrations.
pub async fn connect_store(config: &Config) -> anyhow::Result<Store> {
    let db = Db::connect(&config.database_url, config.db_max_connections)
        .await
        .with_context(|| format!("cannot open the {} database", scheme(&config.database_url)))?;
    db.migrate()
        .await
        .context("cannot apply database migrations")?;
    Ok(Store::new(db))
}

fn scheme(url: &str) -> &str {
    url.split(':').next().unwrap_or("unknown")
}

/// Builds the shared application state.
pub fn build_state(
    config: &Config,
    store: Store,
    base_url: String,
    auth: Authenticator,
) -> AppState {
    let capability = CapabilityInput {
        base_url: base_url.clone(),
        software_version: env!("CARGO_PKG_VERSION").to_owned(),
        security: config
            .auth
            .builtin
            .then(|| crate::auth::server::smart_security_extension(&base_url)),
        supported_profiles: crate::fhir::profile::resource_profiles()
            .map(|(t, url)| (t.to_owned(), url.to_owned()))
            .collect(),
        type_operations: SUPPORTED_TYPES
            .iter()
            .map(|t| {
                (
                    (*t).to_owned(),
                    "validate".to_owned(),
                    "http://hl7.org/fhir/OperationDefinition/Resource-validate".to_owned(),
                )
            })
            .collect(),
        read_only_types: crate::fhir::profile::CONFORMANCE_TYPES
            .iter()
            .map(|t| (*t).to_owned())
            .collect(),
        ..CapabilityInput::default()
    };
    AppState {
        config: config.clone(),
        base_url: base_url.clone(),
        fhir: FhirService::new(store.clone(), base_url)
            .with_outbox(crate::sync::Outbox::new(&config.ehr)),
        audit: crate::audit::AuditLog::start(store.clone()),
        store,
        capability,
        auth,
    }
}

impl Application {
    /// Binds the listener (port 0 picks a free port), connects the store and builds the server.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(&config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let port = listener.local_addr()?.port();
        let base_url = match &config.base_url {
            Some(_) => config.fhir_base_url(),
            None => {
                let host = config
                    .listen
                    .rsplit_once(':')
                    .map(|(h, _)| h)
                    .unwrap_or("127.0.0.1");
                format!("http://{host}:{port}/fhir")
            }
        };
        let store = connect_store(&config).await?;
        crate::fhir::validate::warm_up(SUPPORTED_TYPES);
        let keys = KeyRing::load_or_create(&store.db)
            .await
            .context("cannot load or create the token-signing keys")?;
        crate::auth::registry::Registry::new(store.db.clone())
            .load_from_config(&config)
            .await
            .context("cannot register the clients and users of the configuration")?;
        let external = config.auth.external.as_ref().map(|e| ExternalIssuer {
            issuer: e.issuer.clone(),
            jwks_url: e.jwks_url.clone(),
            audience: e.audience.clone().unwrap_or_else(|| base_url.clone()),
            scope_claim: e.scope_claim.clone(),
        });
        let auth = Authenticator::new(
            keys,
            store.db.clone(),
            base_url.clone(),
            base_url.clone(),
            external,
        )
        .with_builtin(config.auth.builtin);
        // Another replica (or `kap-gateway keys rotate`) may rotate keys: pick them up regularly.
        let ring = auth.keys.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = ring.reload().await {
                    tracing::warn!(error = %e, "could not reload the signing keys");
                }
            }
        });
        let state = build_state(&config, store, base_url, auth);
        // EHR sync: the configuration is checked (keys read) even when this process runs no worker.
        let (sync_stop, stopped) = tokio::sync::watch::channel(false);
        let mut sync_tasks = Vec::new();
        if !config.ehr.is_empty() {
            let worker = crate::sync::worker::Worker::new(
                state.store.db.clone(),
                &config.ehr,
                config.sync.clone(),
            )
            .map_err(|e| anyhow::anyhow!("EHR sync configuration: {e}"))?;
            if config.sync.worker {
                let targets = worker.targets().to_vec();
                sync_tasks.push(tokio::spawn(worker.run(stopped.clone())));
                sync_tasks.push(tokio::spawn(crate::sync::pull::run_periodic(
                    state.fhir.clone(),
                    targets,
                    stopped,
                )));
            }
        }
        let app_state = state.clone();
        let mut server = HttpServer::new(move || create_app(app_state.clone()))
            .shutdown_timeout(config.shutdown_timeout_secs)
            .client_request_timeout(Duration::from_secs(60));
        if config.http_workers > 0 {
            server = server.workers(config.http_workers);
        }
        let server = server.listen(listener)?.run();
        Ok(Application {
            port,
            server,
            state,
            sync_stop,
            sync_tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server is stopped (SIGINT/SIGTERM stop it gracefully).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let db = self.state.store.db.clone();
        let result = self.server.await;
        let _ = self.sync_stop.send(true);
        for task in self.sync_tasks {
            let _ = task.await;
        }
        db.close().await;
        result
    }
}
