//! Wiring: binds listeners, builds the pool, starts every task, and stops them in order.
//!
//! Shutdown: stop intake (MQTT stops taking messages, gRPC stops accepting calls and ends
//! streams), let messages and calls in flight finish, let the writer commit what it holds,
//! then stop HTTP. Everything after the grace period is abandoned: un-acknowledged MQTT
//! messages are redelivered by the broker on the next start.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use rumqttc::Transport;
use tokio::{net::TcpListener, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::transport::ServerTlsConfig;
use tracing::{error, info, warn};
use vigil_alerts::mqtt_tls;

use crate::{
    config::Settings,
    grpc::{self, service::Ingest},
    health::Health,
    http,
    limits::DeviceLimits,
    metrics,
    mqtt::MqttFrontend,
    store::{self, Pool, maintenance, migrate, writer},
};

pub struct Application {
    settings: Settings,
    pool: Pool,
    health: Health,
    metrics: PrometheusHandle,
    grpc_listener: Option<TcpListener>,
    grpc_tls: Option<ServerTlsConfig>,
    mqtt_transport: Transport,
    http_listener: TcpListener,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = store::pool::build(&settings.database)?;
        let grpc_tls = if settings.grpc.enabled {
            grpc::tls::server_config(&settings.grpc.tls, settings.grpc.listen, "grpc.listen")?
        } else {
            None
        };
        let mqtt_transport =
            mqtt_tls::transport(&settings.mqtt.host, settings.mqtt.tls_ca_file.as_deref())?;
        let grpc_listener = if settings.grpc.enabled {
            Some(
                TcpListener::bind(settings.grpc.listen)
                    .await
                    .with_context(|| format!("binding gRPC on {}", settings.grpc.listen))?,
            )
        } else {
            None
        };
        let http_listener = TcpListener::bind(settings.http.listen)
            .await
            .with_context(|| format!("binding HTTP on {}", settings.http.listen))?;
        Ok(Self {
            health: Health::new(settings.mqtt.enabled),
            metrics: metrics::handle(),
            settings,
            pool,
            grpc_listener,
            grpc_tls,
            mqtt_transport,
            http_listener,
        })
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .unwrap_or(self.settings.http.listen)
    }

    /// Runs until `shutdown` is cancelled, then drains in order within the grace period.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            settings,
            pool,
            health,
            metrics,
            grpc_listener,
            grpc_tls,
            mqtt_transport,
            http_listener,
        } = self;
        let intake = CancellationToken::new();
        let background = CancellationToken::new();
        let writer_shutdown = writer::Shutdown::default();

        let http_task = tokio::spawn(http::serve(
            http_listener,
            pool.clone(),
            health.clone(),
            metrics.clone(),
            background.clone(),
        ));
        tokio::spawn(metrics::run_upkeep(metrics, background.clone()));

        let (handle, writer) = writer::channel(
            pool.clone(),
            settings.batch.clone(),
            settings.quarantine.clone(),
            health.clone(),
            writer_shutdown.clone(),
        );
        let writer_task = tokio::spawn(writer.run());

        let limits = Arc::new(DeviceLimits::new(&settings.rate_limit));
        tokio::spawn(forget_idle_devices(limits.clone(), background.clone()));
        let grpc_task: Option<JoinHandle<anyhow::Result<()>>> = grpc_listener.map(|listener| {
            let ingest = Ingest::new(
                pool.clone(),
                handle.clone(),
                settings.validation.clone(),
                limits.clone(),
                intake.clone(),
            );
            tokio::spawn(grpc::serve(
                listener,
                grpc_tls,
                ingest,
                settings.grpc.max_message_bytes,
                health.clone(),
                intake.clone(),
            ))
        });

        let mut mqtt_task = None;
        if prepare_database(&pool, &settings, &shutdown).await {
            health.set_database(true);
            tokio::spawn(maintenance::run(
                pool.clone(),
                settings.storage.clone(),
                background.clone(),
            ));
            if settings.mqtt.enabled {
                let frontend = MqttFrontend::new(
                    settings.mqtt.clone(),
                    mqtt_transport,
                    settings.validation.clone(),
                    limits.clone(),
                    handle.clone(),
                    health.clone(),
                );
                mqtt_task = Some(tokio::spawn(frontend.run(intake.clone())));
            }
            info!("ingest running");
            shutdown.cancelled().await;
        }
        drop(handle);

        let deadline = Instant::now() + Duration::from_secs(settings.shutdown.grace_period_secs);
        info!(
            grace_secs = settings.shutdown.grace_period_secs,
            "shutting down: stopping intake"
        );
        health.set_stopping();
        intake.cancel();
        writer_shutdown.drain.cancel();
        if let Some(task) = mqtt_task {
            wait(task, deadline, "mqtt front-end").await;
        }
        if let Some(task) = grpc_task
            && let Some(Err(e)) = wait(task, deadline, "grpc server").await
        {
            error!(error = %e, "grpc server failed");
        }
        if wait(writer_task, deadline, "writer").await.is_none() {
            writer_shutdown.abandon.cancel();
        }
        background.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
        info!("stopped");
        Ok(())
    }
}

/// Applies migrations (when configured) or checks they are applied, retrying until the
/// database answers. Returns false when shutdown came first.
async fn prepare_database(pool: &Pool, settings: &Settings, shutdown: &CancellationToken) -> bool {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = async {
            let mut client = pool.get().await?;
            if settings.database.migrate_on_start {
                let applied = migrate::run(&mut client, settings.storage.timescaledb).await?;
                if !applied.is_empty() {
                    info!(?applied, "migrations applied");
                }
                maintenance::apply_policies(&client, &settings.storage).await?;
            } else if !migrate::is_current(&client).await? {
                return Err(store::StoreError::NotFound(
                    "migrations are pending; run `vigil migrate`".into(),
                ));
            }
            maintenance::maintain_partitions(
                &client,
                &settings.storage,
                time::OffsetDateTime::now_utc(),
            )
            .await?;
            Ok::<_, store::StoreError>(())
        };
        match attempt.await {
            Ok(()) => return true,
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "database not ready")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn wait<T>(mut task: JoinHandle<T>, deadline: Instant, name: &str) -> Option<T> {
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            error!(error = %e, task = name, "task ended abnormally");
            None
        }
        Err(_) => {
            warn!(task = name, "grace period over; abandoning");
            task.abort();
            None
        }
    }
}

/// Drops the rate-limit state of devices that have gone quiet, once a minute.
async fn forget_idle_devices(limits: Arc<DeviceLimits>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => limits.forget_idle(),
        }
    }
}
