//! `vigil alerts`: wires the alert worker from the library crates — clinician gRPC API,
//! the event listener, escalation and windowed rules, deliveries, and health and metrics —
//! and stops them together.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vigil_alerts::{
    deliver::{Deliverer, MqttTarget},
    events,
    grpc::Alerts,
    worker,
};
use vigil_ingest::{
    Settings,
    grpc::{self, server::serve_services},
    health::Health,
    http, metrics,
    store::{self, migrate},
};
use vigil_proto::v1::alert_service_server::AlertServiceServer;

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = store::pool::build(&settings.database)?;
    let grpc_tls = grpc::tls::server_config(
        &settings.grpc.tls,
        settings.alerts.grpc_listen,
        "alerts.grpc_listen",
    )?;
    let grpc_listener = TcpListener::bind(settings.alerts.grpc_listen)
        .await
        .with_context(|| format!("binding the alert API on {}", settings.alerts.grpc_listen))?;
    let http_listener = TcpListener::bind(settings.alerts.http_listen)
        .await
        .with_context(|| format!("binding HTTP on {}", settings.alerts.http_listen))?;
    let health = Health::new(false);
    let token = CancellationToken::new();
    let http_task = tokio::spawn(http::serve(
        http_listener,
        pool.clone(),
        health.clone(),
        metrics::handle(),
        token.clone(),
    ));

    // The worker needs the schema; `vigil ingest` (or `vigil migrate`) applies it.
    let mut backoff = Duration::from_millis(200);
    loop {
        let current = async { migrate::is_current(&*pool.get().await?).await }.await;
        match current {
            Ok(true) => break,
            Ok(false) => warn!("migrations are pending; waiting for `vigil migrate`"),
            Err(e) => warn!(error = %e, "database not ready"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                token.cancel();
                return Ok(());
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    health.set_database(true);

    let events = Arc::new(Notify::new());
    let pg_config: tokio_postgres::Config = settings.database.url.parse()?;
    let deliverer = Deliverer::new(
        pool.clone(),
        settings.alerts.clone(),
        MqttTarget {
            host: settings.mqtt.host.clone(),
            port: settings.mqtt.port,
            username: settings
                .alerts
                .mqtt_username
                .clone()
                .or_else(|| settings.mqtt.username.clone()),
            password: settings
                .alerts
                .mqtt_password
                .clone()
                .or_else(|| settings.mqtt.password.clone()),
            client_id: settings.alerts.mqtt_client_id.clone(),
            topic_root: settings.mqtt.topic_root.clone(),
            tls_ca_file: settings.mqtt.tls_ca_file.clone(),
        },
    )?;
    let mut tasks = vec![
        tokio::spawn(events::listen(
            pg_config,
            events::CHANNEL,
            events.clone(),
            token.clone(),
        )),
        tokio::spawn(worker::run(
            pool.clone(),
            settings.alerts.clone(),
            token.clone(),
        )),
        tokio::spawn(deliverer.run(events.clone(), token.clone())),
    ];
    let alerts = Alerts::new(pool.clone(), events.clone(), token.clone());
    let grpc_task = tokio::spawn(serve_services(
        grpc_listener,
        grpc_tls,
        |router| router.add_service(AlertServiceServer::new(alerts)),
        "vigil.v1.AlertService",
        health.clone(),
        token.clone(),
    ));
    info!(grpc = %settings.alerts.grpc_listen, "alert worker running");

    shutdown.cancelled().await;
    info!("alert worker stopping");
    health.set_stopping();
    token.cancel();
    let grace = Duration::from_secs(settings.shutdown.grace_period_secs);
    if tokio::time::timeout(grace, grpc_task).await.is_err() {
        warn!("alert API did not stop within the grace period");
    }
    for task in tasks.drain(..) {
        let _ = tokio::time::timeout(grace, task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    Ok(())
}
