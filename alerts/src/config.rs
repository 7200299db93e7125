//! Settings of the alert worker (`[alerts]` in the Vigil configuration file).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// `vigil.v1.AlertService` for clinicians.
    pub grpc_listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics` of the alert worker.
    pub http_listen: SocketAddr,
    /// MQTT client id of the worker's publisher; stable and unique per instance.
    pub mqtt_client_id: String,
    /// The worker's own broker identity (a `vigil admin broker-account` with role alerts);
    /// unset: `mqtt.username` / `mqtt.password`, shared with the ingest service.
    pub mqtt_username: Option<String>,
    pub mqtt_password: Option<String>,
    /// An unacknowledged red alert is escalated after this long.
    pub escalate_red_after_secs: u64,
    /// How often windowed rules (home BP average, CGM time in range, missing data) run.
    pub windowed_interval_secs: u64,
    /// How often the delivery queue and escalations are checked when no event wakes them.
    pub poll_interval_ms: u64,
    /// Delivery attempts before a delivery is dead-lettered.
    pub delivery_max_attempts: i32,
    /// Retry backoff: first delay, doubled per attempt up to the cap.
    pub delivery_backoff_initial_ms: u64,
    pub delivery_backoff_max_secs: u64,
    pub webhook_timeout_secs: u64,
    /// Deliveries claimed per round.
    pub delivery_batch: i64,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9465)),
            mqtt_client_id: "vigil-alerts-0".into(),
            mqtt_username: None,
            mqtt_password: None,
            escalate_red_after_secs: 900,
            windowed_interval_secs: 900,
            poll_interval_ms: 1000,
            delivery_max_attempts: 10,
            delivery_backoff_initial_ms: 1000,
            delivery_backoff_max_secs: 600,
            webhook_timeout_secs: 10,
            delivery_batch: 100,
        }
    }
}
