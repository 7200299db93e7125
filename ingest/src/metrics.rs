//! Every metric name in one place, and the Prometheus recorder.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Readings by `channel`, `type` and `outcome` (accepted, duplicate, rejected).
pub const READINGS: &str = "vigil_readings_total";
/// Refusals by `channel` and `reason` (readings and whole messages).
pub const REJECTS: &str = "vigil_rejects_total";
pub const MQTT_MESSAGES: &str = "vigil_mqtt_messages_received_total";
pub const MQTT_ACKS: &str = "vigil_mqtt_messages_acked_total";
/// Acks skipped because the message came on an earlier connection; the broker redelivers it.
pub const MQTT_STALE_ACKS: &str = "vigil_mqtt_stale_acks_total";
pub const MQTT_CONNECTION_ERRORS: &str = "vigil_mqtt_connection_errors_total";
pub const BROKER_CONNECTED: &str = "vigil_mqtt_connected";
pub const GRPC_REFUSED: &str = "vigil_grpc_refused_total";
pub const RATE_LIMITED: &str = "vigil_rate_limited_total";
pub const BATCH_READINGS: &str = "vigil_batch_readings";
pub const COMMIT_SECONDS: &str = "vigil_commit_seconds";
pub const WRITE_RETRIES: &str = "vigil_write_retries_total";
pub const WRITE_FAILURES: &str = "vigil_write_failures_total";
pub const QUEUE_DEPTH: &str = "vigil_writer_queue_depth";
pub const PARTITIONS_DROPPED: &str = "vigil_partitions_dropped_total";

/// The process-wide recorder, installed on first use (several services may share a process
/// in tests; a process has one recorder).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| match install() {
            Ok(handle) => handle,
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                PrometheusBuilder::new().build_recorder().handle()
            }
        })
        .clone()
}

fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(COMMIT_SECONDS.into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(BATCH_READINGS.into()),
            &[
                1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0,
            ],
        )?
        .install_recorder()
}

/// The exporter does not age out histogram data by itself.
pub async fn run_upkeep(handle: PrometheusHandle, token: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}
