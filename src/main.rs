//! The `kap-gateway` command: parse the command line, load configuration, start logging, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kap_gateway::config::{Config, Overrides};
use kap_gateway::startup::{Application, connect_store};

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
    let command = cli
        .command
        .as_ref()
        .map_or(Command::Serve(DbArgs::default()), |c| match c {
            Command::Serve(a) => Command::Serve(a.clone()),
            Command::Migrate(a) => Command::Migrate(a.clone()),
            Command::Config(a) => Command::Config(a.clone()),
        });
    let result = match &command {
        Command::Serve(args) => serve(&cli, args).await,
        Command::Migrate(args) => migrate(&cli, args).await,
        Command::Config(args) => load(&cli, args).and_then(|c| {
            toml::to_string(&c)
                .map(|s| print!("{s}"))
                .map_err(|e| e.to_string())
        }),
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
    kap_gateway::telemetry::init(&config.log_level, &config.log_format);
    let app = Application::build(config.clone())
        .await
        .map_err(|e| format!("{e:#}"))?;
    tracing::info!(
        port = app.port(),
        database = config.database_url.split(':').next().unwrap_or(""),
        base_url = %app.state.base_url,
        "kap-gateway listening"
    );
    app.run_until_stopped().await.map_err(|e| e.to_string())
}

async fn migrate(cli: &Cli, args: &DbArgs) -> Result<(), String> {
    let config = load(cli, args)?;
    kap_gateway::telemetry::init(&config.log_level, &config.log_format);
    connect_store(&config).await.map_err(|e| format!("{e:#}"))?;
    println!("migrations applied");
    Ok(())
}
