//! Delivery of alert events to care teams: each event goes to the team's MQTT topic and to
//! every enabled webhook of the team, at least once.
//!
//! The `deliveries` table is the queue (one row per event and channel, inserted by a trigger
//! on `alert_events`). A round claims due rows with `FOR UPDATE SKIP LOCKED`, delivers them
//! concurrently, records the outcomes and commits, all in one transaction: several workers
//! never work the same row, and a worker that dies mid-round leaves its rows pending for the
//! next one (consumers see at most a duplicate, which they drop by `event_id` or the webhook's
//! `Idempotency-Key`). Failed deliveries are retried with capped exponential backoff and
//! dead-lettered (`state = 'dead'`) after `delivery_max_attempts`.

mod backoff;
mod mqtt;
mod webhook;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use futures_util::{StreamExt, stream};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_postgres::Row;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

pub use webhook::{idempotency_key, signature};

use crate::config::AlertSettings;

/// Counter, labels `channel` (`mqtt`, `webhook`) and `outcome` (`delivered`, `retry`, `dead`).
pub const DELIVERIES_TOTAL: &str = "vigil_alert_deliveries_total";
/// Histogram of one delivery attempt (publish to PUBACK, or request to response), label
/// `channel`.
pub const DELIVERY_SECONDS: &str = "vigil_alert_delivery_seconds";

/// Deliveries of one round in flight at once: enough to hide webhook latency, few enough to
/// stay inside the broker's in-flight window and not flood one slow receiver.
const CONCURRENCY: usize = 16;
/// How long a publish may wait for a broker connection and its PUBACK.
const MQTT_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Stored errors are for operators; a receiver's long message must not bloat the queue.
const MAX_ERROR_CHARS: usize = 500;

const CLAIM: &str = "
    SELECT d.id, d.channel, d.attempts, d.webhook_id,
           e.id AS event_id, e.team_id, e.kind, e.at, e.alert,
           w.url, w.secret, w.disabled_at IS NOT NULL AS webhook_disabled
    FROM deliveries d
    JOIN alert_events e ON e.id = d.event_id
    LEFT JOIN webhooks w ON w.id = d.webhook_id
    WHERE d.state = 'pending' AND d.next_attempt_at <= now()
    ORDER BY d.id
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED";

// clock_timestamp(), not now(): the round's transaction started before the deliveries.
const RECORD: &str = "
    UPDATE deliveries d
    SET state = u.state,
        attempts = d.attempts + 1,
        last_error = COALESCE(u.error, d.last_error),
        delivered_at = CASE WHEN u.state = 'delivered' THEN clock_timestamp() END,
        next_attempt_at = CASE WHEN u.state = 'pending'
                               THEN clock_timestamp() + u.delay_ms * interval '1 millisecond'
                               ELSE d.next_attempt_at END
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[]) AS u(id, state, error, delay_ms)
    WHERE d.id = u.id";

/// Where the worker publishes alert events over MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Unique per worker instance: the broker disconnects an older client with the same id.
    pub client_id: String,
    /// e.g. `vigil/v1`; a team's events go to `{topic_root}/teams/{team_id}/alerts`.
    pub topic_root: String,
    /// CA of the broker's certificate: TLS. Unset: plain TCP, allowed to loopback only.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl MqttTarget {
    pub fn team_topic(&self, team_id: Uuid) -> String {
        format!("{}/teams/{team_id}/alerts", self.topic_root)
    }
}

/// What one round did with the deliveries it claimed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub delivered: usize,
    /// Failed and scheduled again.
    pub retried: usize,
    /// Failed for the last time (or the webhook was disabled): dead-lettered.
    pub dead: usize,
}

impl Round {
    pub fn claimed(&self) -> usize {
        self.delivered + self.retried + self.dead
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("webhook client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    MqttTls(#[from] crate::mqtt_tls::MqttTlsError),
}

pub struct Deliverer {
    pool: Pool,
    settings: AlertSettings,
    target: MqttTarget,
    mqtt: mqtt::Publisher,
    webhooks: webhook::Webhooks,
}

enum Destination {
    Mqtt {
        topic: String,
    },
    Webhook {
        id: Uuid,
        url: String,
        secret: String,
    },
    /// Disabled after the delivery was queued: nobody wants it any more.
    DisabledWebhook,
}

struct Job {
    id: i64,
    attempts: i32,
    channel: &'static str,
    event_id: i64,
    destination: Destination,
    payload: Vec<u8>,
}

enum Outcome {
    Delivered,
    Retry { error: String, delay: Duration },
    Dead { error: String },
}

impl Deliverer {
    /// Connects lazily: the MQTT connection starts with the first round, so this needs no
    /// runtime. Fails only on TLS set-up: the HTTP client, or MQTT to a broker beyond
    /// loopback without a CA file.
    pub fn new(
        pool: Pool,
        settings: AlertSettings,
        mqtt: MqttTarget,
    ) -> Result<Self, DeliverError> {
        let webhooks = webhook::Webhooks::new(Duration::from_secs(settings.webhook_timeout_secs))?;
        Ok(Self {
            pool,
            mqtt: mqtt::Publisher::new(&mqtt, MQTT_ACK_TIMEOUT)?,
            target: mqtt,
            settings,
            webhooks,
        })
    }

    /// Runs rounds until `token` is cancelled: right away when `wake` is notified (on `NOTIFY
    /// vigil_alert_events`; `notify_one` or `notify_waiters`, both are seen even during a
    /// round), after a full batch, and otherwise every `poll_interval_ms` (which also picks up
    /// retries as they fall due). A round in progress finishes before it returns; then the
    /// MQTT connection is closed.
    pub async fn run(self, wake: Arc<Notify>, token: CancellationToken) {
        let interval = Duration::from_millis(self.settings.poll_interval_ms.max(1));
        let batch = usize::try_from(self.settings.delivery_batch).unwrap_or(usize::MAX);
        self.mqtt.start();
        while !token.is_cancelled() {
            // Registered before the round, so a notification that arrives during it is kept.
            let notified = wake.notified();
            let full = match self.deliver_due().await {
                Ok(round) => round.claimed() >= batch,
                Err(e) => {
                    warn!(error = %e, "alert delivery round failed");
                    false
                }
            };
            if full {
                continue;
            }
            tokio::select! {
                _ = token.cancelled() => {}
                _ = notified => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
        self.mqtt.shutdown().await;
    }

    /// One round: claims up to `delivery_batch` due deliveries, attempts each and records the
    /// outcomes, in one transaction.
    pub async fn deliver_due(&self) -> Result<Round, DeliverError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let rows = tx.query(CLAIM, &[&self.settings.delivery_batch]).await?;
        if rows.is_empty() {
            return Ok(Round::default());
        }
        let jobs: Vec<Job> = rows.iter().map(|row| self.job(row)).collect();
        let outcomes: Vec<(i64, Outcome)> = stream::iter(jobs)
            .map(|job| self.attempt(job))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;

        let mut round = Round::default();
        let mut ids = Vec::with_capacity(outcomes.len());
        let mut states = Vec::with_capacity(outcomes.len());
        let mut errors = Vec::with_capacity(outcomes.len());
        let mut delays = Vec::with_capacity(outcomes.len());
        for (id, outcome) in outcomes {
            let (state, error, delay) = match outcome {
                Outcome::Delivered => {
                    round.delivered += 1;
                    ("delivered", None, Duration::ZERO)
                }
                Outcome::Retry { error, delay } => {
                    round.retried += 1;
                    ("pending", Some(error), delay)
                }
                Outcome::Dead { error } => {
                    round.dead += 1;
                    ("dead", Some(error), Duration::ZERO)
                }
            };
            ids.push(id);
            states.push(state);
            errors.push(error);
            delays.push(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        }
        tx.execute(RECORD, &[&ids, &states, &errors, &delays])
            .await?;
        tx.commit().await?;
        Ok(round)
    }

    fn job(&self, row: &Row) -> Job {
        let event_id: i64 = row.get("event_id");
        let channel: &str = row.get("channel");
        let (channel, destination) = match (channel, row.get::<_, Option<Uuid>>("webhook_id")) {
            ("webhook", Some(id)) => {
                let url: Option<String> = row.get("url");
                let secret: Option<String> = row.get("secret");
                let disabled: bool = row.get("webhook_disabled");
                let destination = match (url, secret) {
                    (Some(url), Some(secret)) if !disabled => {
                        Destination::Webhook { id, url, secret }
                    }
                    _ => Destination::DisabledWebhook,
                };
                ("webhook", destination)
            }
            // The table's CHECK ties webhook_id to the webhook channel: everything else is MQTT.
            _ => (
                "mqtt",
                Destination::Mqtt {
                    topic: self.target.team_topic(row.get("team_id")),
                },
            ),
        };
        Job {
            id: row.get("id"),
            attempts: row.get("attempts"),
            channel,
            event_id,
            destination,
            payload: payload(event_id, row.get("kind"), row.get("at"), row.get("alert")),
        }
    }

    async fn attempt(&self, job: Job) -> (i64, Outcome) {
        let started = Instant::now();
        let result = match job.destination {
            Destination::Mqtt { topic } => self.mqtt.publish(topic, job.payload).await,
            Destination::Webhook { id, url, secret } => {
                self.webhooks
                    .post(&url, &secret, job.event_id, id, job.payload)
                    .await
            }
            Destination::DisabledWebhook => {
                metrics::counter!(DELIVERIES_TOTAL, "channel" => job.channel, "outcome" => "dead")
                    .increment(1);
                return (
                    job.id,
                    Outcome::Dead {
                        error: "webhook disabled".into(),
                    },
                );
            }
        };
        metrics::histogram!(DELIVERY_SECONDS, "channel" => job.channel)
            .record(started.elapsed().as_secs_f64());
        let attempts = job.attempts.saturating_add(1);
        let outcome = match result {
            Ok(()) => {
                debug!(
                    delivery = job.id,
                    event = job.event_id,
                    channel = job.channel,
                    "delivered"
                );
                Outcome::Delivered
            }
            Err(error) if attempts >= self.settings.delivery_max_attempts => {
                warn!(delivery = job.id, event = job.event_id, channel = job.channel, attempts, %error,
                    "alert delivery dead-lettered");
                Outcome::Dead {
                    error: truncate(error),
                }
            }
            Err(error) => {
                let delay = backoff::delay(
                    Duration::from_millis(self.settings.delivery_backoff_initial_ms),
                    Duration::from_secs(self.settings.delivery_backoff_max_secs),
                    u32::try_from(attempts).unwrap_or(0),
                );
                debug!(delivery = job.id, event = job.event_id, channel = job.channel, attempts, %error,
                    retry_in_ms = delay.as_millis() as u64, "alert delivery failed");
                Outcome::Retry {
                    error: truncate(error),
                    delay,
                }
            }
        };
        let label = match outcome {
            Outcome::Delivered => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::Dead { .. } => "dead",
        };
        metrics::counter!(DELIVERIES_TOTAL, "channel" => job.channel, "outcome" => label)
            .increment(1);
        (job.id, outcome)
    }
}

/// The alert as of the event, with the event's id, kind and time: the same bytes for MQTT and
/// webhooks, so consumers of both deduplicate by `event_id`.
fn payload(event_id: i64, kind: &str, at: OffsetDateTime, alert: Value) -> Vec<u8> {
    let mut object = match alert {
        Value::Object(object) => object,
        other => Map::from_iter([("alert".to_string(), other)]),
    };
    object.insert("event_id".into(), event_id.into());
    object.insert("event_kind".into(), kind.into());
    let at = at
        .format(&time::format_description::well_known::Rfc3339)
        .map_or(Value::Null, Value::String);
    object.insert("event_at".into(), at);
    Value::Object(object).to_string().into_bytes()
}

fn truncate(mut error: String) -> String {
    if let Some((cut, _)) = error.char_indices().nth(MAX_ERROR_CHARS) {
        error.truncate(cut);
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_is_the_alert_with_its_event() {
        let at = time::macros::datetime!(2026-11-22 07:30:00 UTC);
        let body = payload(42, "opened", at, json!({ "id": "a", "severity": "red" }));
        let value: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            value,
            json!({
                "id": "a", "severity": "red",
                "event_id": 42, "event_kind": "opened", "event_at": "2026-11-22T07:30:00Z"
            })
        );
    }

    #[test]
    fn team_topic_is_under_the_root() {
        let target = MqttTarget {
            host: "h".into(),
            port: 1,
            username: None,
            password: None,
            client_id: "c".into(),
            topic_root: "vigil/v1".into(),
            tls_ca_file: None,
        };
        assert_eq!(
            target.team_topic(Uuid::nil()),
            "vigil/v1/teams/00000000-0000-0000-0000-000000000000/alerts"
        );
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short".into()), "short");
        let long = "é".repeat(MAX_ERROR_CHARS + 10);
        assert_eq!(truncate(long).chars().count(), MAX_ERROR_CHARS);
    }
}
