use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vigil_ingest::{
    Application, Settings,
    broker::sync as broker_sync,
    store::{self, maintenance, migrate},
    telemetry,
};

use crate::{
    admin::{self, AdminCommand},
    bench::{self, BenchArgs},
    simulate::{self, SimulateArgs},
};

/// Remote monitoring of people with hypertension and diabetes.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about, long_about = None)]
pub struct Cli {
    /// TOML configuration file (see config/vigil.example.toml). Environment variables
    /// `VIGIL_<SECTION>__<KEY>` override it.
    #[arg(long, short, global = true, env = "VIGIL_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database if needed and apply pending migrations (safe to run concurrently).
    Migrate,
    /// Run the ingest service: MQTT subscriber, gRPC server, HTTP health and metrics.
    Ingest,
    /// Run the alert worker: clinician gRPC API, windowed rules, escalation, deliveries.
    Alerts,
    /// Keep the MQTT broker's password and ACL files in step with the database (devices,
    /// services, care teams) and make it reload them; runs beside the broker.
    BrokerSync {
        /// Sync once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Registry and quarantine administration.
    Admin {
        /// Print machine-readable JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Enrol synthetic patients and send their readings over MQTT or gRPC (see docs/simulator.md).
    Simulate {
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        args: SimulateArgs,
    },
    /// Measure storage, broker and service throughput, a sustained burst, alert latency and
    /// memory in one run on this machine (see docs/benchmarks.md).
    Bench(BenchArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Migrate => {
            telemetry::init(&settings.log);
            migrate_database(&settings).await
        }
        Command::Ingest => {
            telemetry::init(&settings.log);
            let app = Application::build(settings).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal(shutdown.clone()));
            app.run_until_stopped(shutdown).await
        }
        Command::Alerts => {
            telemetry::init(&settings.log);
            let shutdown = CancellationToken::new();
            tokio::spawn(signal(shutdown.clone()));
            crate::alerts_app::run(settings, shutdown).await
        }
        Command::BrokerSync { once } => {
            telemetry::init(&settings.log);
            if once {
                let pool = store::pool::build(&settings.database)?;
                let client = pool.get().await.context("connecting to the database")?;
                let outcome = broker_sync::sync_once(
                    &**client,
                    &settings.mqtt.topic_root,
                    &settings.broker_sync,
                )
                .await?;
                println!(
                    "{} broker identities; files {}; broker {}",
                    outcome.identities,
                    if outcome.changed {
                        "updated"
                    } else {
                        "unchanged"
                    },
                    if outcome.reloaded {
                        "reloaded"
                    } else {
                        "not signalled"
                    }
                );
                return Ok(());
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(signal(shutdown.clone()));
            broker_sync::run(settings, shutdown).await
        }
        Command::Admin { json, command } => admin::run(&settings, command, json).await,
        Command::Simulate { json, args } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(signal(shutdown.clone()));
            simulate::run(&settings, args, json, shutdown).await
        }
        Command::Bench(args) => {
            telemetry::init(&settings.log);
            bench::run(cli.config.as_deref(), &settings, args).await
        }
    }
}

async fn migrate_database(settings: &Settings) -> anyhow::Result<()> {
    if store::pool::create_database_if_missing(&settings.database.url).await? {
        println!("created database");
    }
    let pool = store::pool::build(&settings.database)?;
    let mut client = pool.get().await.context("connecting to the database")?;
    let applied = migrate::run(&mut client, settings.storage.timescaledb).await?;
    maintenance::apply_policies(&client, &settings.storage).await?;
    let engine = maintenance::engine(&client).await?;
    if applied.is_empty() {
        println!("migrations up to date (storage: {engine})");
    } else {
        println!("applied migrations {applied:?} (storage: {engine})");
    }
    Ok(())
}

async fn signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    token.cancel();
}
