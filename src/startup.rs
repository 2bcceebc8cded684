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
use crate::workers::Stage;

/// A built, not yet running, gateway.
pub struct Application {
    port: u16,
    server: Server,
    /// A second handle on the listening socket, to stop new connections before the server stops (see `run_until`).
    listener: Option<TcpListener>,
    pub state: AppState,
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

/// How often the SQLite write-ahead log is checkpointed in the background (see `Db::checkpoint`).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Builds the shared application state.
pub fn build_state(
    config: &Config,
    store: Store,
    base_url: String,
    auth: Authenticator,
    workers: crate::workers::Workers,
    audit: crate::audit::AuditLog,
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
            .chain(crate::bulk::type_operations())
            .collect(),
        system_operations: crate::bulk::system_operations(),
        read_only_types: crate::fhir::profile::CONFORMANCE_TYPES
            .iter()
            .map(|t| (*t).to_owned())
            .collect(),
    };
    let fhir = FhirService::new(store.clone(), base_url.clone())
        .with_outbox(crate::sync::Outbox::new(&config.ehr))
        .with_audit(audit.clone());
    AppState {
        config: config.clone(),
        base_url,
        kap: crate::kap::service::KapService::new(fhir.clone(), config.kap.clone()),
        fhir,
        audit,
        metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
        workers,
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
        // Background workers register here (see `crate::workers`): readiness reports them, shutdown stops them.
        let workers = crate::workers::Workers::new();
        // Another replica (or `kap-gateway keys rotate`) may rotate keys: pick them up regularly.
        let ring = auth.keys.clone();
        workers.spawn(
            "signing-key-reload",
            Stage::Background,
            Some(Duration::from_secs(180)),
            |w| async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = w.stopping() => return,
                        _ = tick.tick() => {}
                    }
                    if let Err(e) = ring.reload().await {
                        tracing::warn!(error = %e, "could not reload the signing keys");
                    }
                    w.beat();
                }
            },
        );
        let audit = match config.audit_journal_dir() {
            Some(dir) => crate::audit::AuditLog::start_journal(store.clone(), &workers, &dir)
                .await
                .with_context(|| format!("cannot open the audit journal in {}", dir.display()))?,
            None => crate::audit::AuditLog::start(store.clone(), &workers),
        };
        if store.db.backend() == crate::store::db::Backend::Sqlite {
            let db = store.db.clone();
            workers.spawn(
                "sqlite-checkpoint",
                Stage::Background,
                Some(Duration::from_secs(60)),
                |w| async move {
                    loop {
                        tokio::select! {
                            _ = w.stopping() => return,
                            _ = tokio::time::sleep(CHECKPOINT_INTERVAL) => {}
                        }
                        match db.checkpoint().await {
                            Ok((log, _)) if log > crate::store::db::SQLITE_LOG_LIMIT_FRAMES => {
                                match db.restart_log().await {
                                    Ok(true) => tracing::debug!(frames = log, "SQLite log restarted"),
                                    // Readers kept it busy: the next round tries again.
                                    Ok(false) => tracing::debug!(
                                        frames = log,
                                        "SQLite log not restarted yet: readers still in it"
                                    ),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "could not restart the SQLite log")
                                    }
                                }
                                w.beat();
                            }
                            Ok(_) => w.beat(),
                            Err(e) => {
                                tracing::warn!(error = %e, "could not checkpoint the SQLite log")
                            }
                        }
                    }
                },
            );
        }
        let state = build_state(&config, store, base_url, auth, workers.clone(), audit);
        crate::bulk::worker::start(state.fhir.clone(), config.bulk.clone(), &workers);
        // EHR sync: the configuration is checked (keys read) even when this process runs no worker. The worker and
        // the periodic pull run under the worker registry: shutdown lets them finish the delivery in progress.
        if !config.ehr.is_empty() {
            state.metrics.set_outbox_source(std::sync::Arc::new(
                crate::sync::outbox::MetricsSource {
                    db: state.store.db.clone(),
                    ehrs: crate::sync::config::names_and_urls(&config.ehr),
                },
            ));
            let worker = crate::sync::worker::Worker::new(
                state.store.db.clone(),
                &config.ehr,
                config.sync.clone(),
            )
            .map_err(|e| anyhow::anyhow!("EHR sync configuration: {e}"))?;
            if config.sync.worker {
                let targets = worker.targets().to_vec();
                let fhir = state.fhir.clone();
                workers.spawn("ehr-sync", Stage::Background, None, |w| async move {
                    let (stop, stopped) = tokio::sync::watch::channel(false);
                    let task = tokio::spawn(worker.run(stopped));
                    w.stopping().await;
                    let _ = stop.send(true);
                    let _ = task.await;
                });
                workers.spawn("ehr-pull", Stage::Background, None, |w| async move {
                    let (stop, stopped) = tokio::sync::watch::channel(false);
                    let task =
                        tokio::spawn(crate::sync::pull::run_periodic(fhir, targets, stopped));
                    w.stopping().await;
                    let _ = stop.send(true);
                    let _ = task.await;
                });
            }
        }
        let app_state = state.clone();
        // Signals are handled in `run_until_stopped` (actix would treat SIGINT as a forced stop).
        let mut server = HttpServer::new(move || create_app(app_state.clone()))
            .disable_signals()
            .shutdown_timeout(config.shutdown_timeout_secs)
            .client_request_timeout(Duration::from_secs(60));
        if config.http_workers > 0 {
            server = server.workers(config.http_workers);
        }
        let control = listener.try_clone().ok();
        let server = server.listen(listener)?.run();
        Ok(Application {
            port,
            server,
            listener: control,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` resolves, then shuts down gracefully: with a drain period (`shutdown_drain_secs`), not
    /// ready but still serving for that long; then no new connections; in-flight requests and the background
    /// workers' current work finish; the audit writers write what is queued; all within `shutdown_timeout_secs` of
    /// the signal.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let Application {
            server,
            state,
            listener,
            ..
        } = self;
        let handle = server.handle();
        let workers = state.workers.clone();
        let db = state.store.db.clone();
        let timeout = Duration::from_secs(state.config.shutdown_timeout_secs);
        let mut server = std::pin::pin!(server);
        // The server ended on its own (it cannot bind or its workers failed).
        let ended_early = async |result: std::io::Result<()>| {
            workers.signal(Stage::Background);
            workers.signal(Stage::AfterRequests);
            db.close().await;
            result
        };
        tokio::select! {
            result = &mut server => return ended_early(result).await,
            () = stop => {}
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let drain = Duration::from_secs(state.config.shutdown_drain_secs);
        if !drain.is_zero() {
            // Readiness fails at once; requests are still served until load balancers have noticed.
            workers.begin_drain();
            tracing::info!(
                drain_secs = drain.as_secs(),
                "shutting down: draining (not ready, still serving)"
            );
            tokio::select! {
                result = &mut server => return ended_early(result).await,
                () = tokio::time::sleep(drain) => {}
            }
        }
        tracing::info!(
            timeout_secs = timeout.as_secs(),
            "shutting down: no new connections; finishing in-flight requests and background work"
        );
        workers.signal(Stage::Background);
        // actix drops the connections it has accepted but not yet handed to a worker when it stops: first refuse
        // new connections (shutting the listening socket down makes further connects fail at once instead of
        // waiting in the backlog), give the workers a moment to take up what was already accepted, then stop.
        // actix's accept loop reports the socket closed under it as an accept error (and again each time it
        // retries): expected from here until the server has stopped, so not logged.
        let closing = crate::telemetry::ListenerClosing::start();
        if let Some(listener) = listener {
            let socket = socket2::Socket::from(listener);
            if let Err(e) = socket.shutdown(std::net::Shutdown::Read) {
                tracing::debug!(error = %e, "could not shut the listening socket down");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stop_http = handle.stop(true);
        let (result, (), late) = tokio::join!(
            &mut server,
            stop_http,
            workers.wait(Stage::Background, deadline)
        );
        drop(closing);
        workers.signal(Stage::AfterRequests);
        let mut late = late;
        late.extend(workers.wait(Stage::AfterRequests, deadline).await);
        if late.is_empty() {
            tracing::info!("shutdown complete");
        } else {
            tracing::warn!(workers = ?late, "shutdown timeout reached: these workers were still running");
        }
        drop(state);
        db.close().await;
        result
    }
}

/// Resolves at SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
                }
            }
            _ => {
                tracing::error!("cannot listen for SIGTERM/SIGINT; stop the process with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
