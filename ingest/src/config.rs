//! Service configuration: built-in defaults, then an optional TOML file, then `VIGIL_*`
//! environment variables (`__` separates sections: `VIGIL_DATABASE__URL`). Unknown keys and
//! out-of-range values are errors that name the offending key.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub storage: StorageSettings,
    pub mqtt: MqttSettings,
    pub grpc: GrpcSettings,
    pub http: HttpSettings,
    pub batch: BatchSettings,
    pub validation: ValidationSettings,
    pub quarantine: QuarantineSettings,
    pub shutdown: ShutdownSettings,
    pub rate_limit: RateLimitSettings,
    pub broker_sync: BrokerSyncSettings,
    pub log: LogSettings,
    pub alerts: vigil_alerts::config::AlertSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// libpq-style URL. Secrets belong in `VIGIL_DATABASE__URL`, not in the file.
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout_secs: u64,
    /// Apply pending migrations when `vigil ingest` starts.
    pub migrate_on_start: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/vigil".into(),
            pool_size: 8,
            connect_timeout_secs: 5,
            migrate_on_start: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TimescaleMode {
    /// Use TimescaleDB when the extension is installed and preloaded, plain partitions otherwise.
    Auto,
    /// Always use native PostgreSQL partitioning.
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    pub timescaledb: TimescaleMode,
    /// Readings older than this are dropped whole partitions/chunks at a time; 0 keeps
    /// everything. The default follows the NHS Records Management Code of Practice
    /// (adult health records: 8 years).
    pub retention_days: u32,
    /// TimescaleDB only: chunks older than this are compressed.
    pub compress_after_days: u32,
    /// Plain PostgreSQL only: monthly partitions are created this many months ahead.
    pub partitions_ahead_months: u32,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            timescaledb: TimescaleMode::Auto,
            retention_days: 2922,
            compress_after_days: 30,
            partitions_ahead_months: 2,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSettings {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// Must be stable per instance and unique across instances: the broker keeps this
    /// client's session (and its unacknowledged messages) under it.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// CA that signed the broker's certificate: connect with TLS. Unset: plain TCP, which
    /// is allowed only to a broker on loopback. Also used by the alert worker.
    pub tls_ca_file: Option<PathBuf>,
    /// Topics are `{topic_root}/devices/{device_id}/readings` and `.../results`.
    pub topic_root: String,
    /// Shared-subscription group; instances in one group split the load.
    pub share_group: String,
    /// How long the broker keeps the session while the service is away.
    pub session_expiry_secs: u32,
    pub keep_alive_secs: u64,
    /// Messages delivered but not yet acknowledged (MQTT v5 Receive Maximum).
    pub receive_maximum: u16,
    /// Larger payloads are quarantined as `oversized`.
    pub max_message_bytes: usize,
    pub publish_results: bool,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "vigil-ingest-0".into(),
            username: None,
            password: None,
            tls_ca_file: None,
            topic_root: "vigil/v1".into(),
            share_group: "vigil-ingest".into(),
            session_expiry_secs: 86_400,
            keep_alive_secs: 30,
            receive_maximum: 5000,
            max_message_bytes: 256 * 1024,
            publish_results: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSettings {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Largest request accepted, in bytes.
    pub max_message_bytes: usize,
    /// TLS for the ingest API and the alert worker's clinician API. Required whenever
    /// either listens beyond loopback.
    pub tls: TlsSettings,
}

/// A server certificate chain and its private key, PEM files. Both or neither.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_message_bytes: 4 * 1024 * 1024,
            tls: TlsSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub listen: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    /// A batch is committed once it holds this many readings...
    pub max_readings: usize,
    /// ...or when the oldest waiting request is this old.
    pub linger_ms: u64,
    /// Submissions (MQTT messages or gRPC batches) waiting for the writer. When full,
    /// MQTT stops acknowledging and gRPC answers RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Upper bound of the retry backoff while the database is unreachable.
    pub max_retry_backoff_ms: u64,
    /// Batches written at once, each on its own connection and transaction, so one batch's
    /// COMMIT overlaps the next one's inserts.
    pub max_in_flight: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_readings: 2000,
            linger_ms: 10,
            queue_capacity: 1024,
            max_retry_backoff_ms: 5000,
            max_in_flight: 2,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationSettings {
    /// Readings measured further in the future than this are rejected (device clock fault).
    pub max_future_skew_secs: u64,
    /// Readings measured longer ago than this are rejected (typically a reset device clock).
    pub max_age_days: u32,
    /// Readings received this long after they were measured are flagged as late (backfill).
    pub late_after_secs: u64,
    /// Readings accepted in one MQTT message or one gRPC batch.
    pub max_readings_per_submission: usize,
}

impl Default for ValidationSettings {
    fn default() -> Self {
        Self {
            max_future_skew_secs: 300,
            max_age_days: 400,
            late_after_secs: 3600,
            max_readings_per_submission: 5000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuarantineSettings {
    /// Raw payload bytes kept per quarantined entry; the rest is cut and flagged.
    pub max_payload_bytes: usize,
}

impl Default for QuarantineSettings {
    fn default() -> Self {
        Self {
            max_payload_bytes: 64 * 1024,
        }
    }
}

/// Where `vigil broker-sync` writes Mosquitto's password and ACL files, and the broker's
/// pid file (for SIGHUP); the paths match deploy/mosquitto/vigil.conf.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSyncSettings {
    pub password_file: PathBuf,
    pub acl_file: PathBuf,
    /// Unset: write the files without signalling (the broker reads them when it starts).
    pub pid_file: Option<PathBuf>,
    /// Full re-sync interval, whatever notifications arrived.
    pub resync_secs: u64,
}

impl Default for BrokerSyncSettings {
    fn default() -> Self {
        Self {
            password_file: "/etc/mosquitto/vigil/passwords".into(),
            acl_file: "/etc/mosquitto/vigil/acl".into(),
            pid_file: Some("/run/mosquitto/vigil.pid".into()),
            resync_secs: 60,
        }
    }
}

/// Per-device intake limit (see `limits`). Zero in either field turns it off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Sustained readings per second per device.
    pub readings_per_second: u32,
    /// Readings a device may send at once before the sustained rate applies.
    pub burst_readings: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            readings_per_second: 20,
            burst_readings: 25_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    pub grace_period_secs: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            grace_period_secs: 20,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `tracing` filter directive; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info,tokio_postgres=warn".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("configuration file {0} does not exist")]
    MissingFile(String),
}

impl Settings {
    /// Defaults, then `file` (which must exist when given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::figment(file)?.extract_settings()
    }

    fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.display().to_string()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // VIGIL_CONFIG names the file itself, and VIGIL_TEST_* belong to the test suite.
        let env = Env::prefixed("VIGIL_")
            .filter(|key| {
                key != "config" && !key.as_str().to_ascii_lowercase().starts_with("test_")
            })
            .split("__");
        Ok(figment.merge(env))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                problem: problem.into(),
            }
        }
        if self.database.url.parse::<tokio_postgres::Config>().is_err() {
            return Err(invalid(
                "database.url",
                "is not a valid PostgreSQL connection URL",
            ));
        }
        if self.database.pool_size < 2 {
            return Err(invalid(
                "database.pool_size",
                "must be at least 2 (the writer holds one connection)",
            ));
        }
        if self.mqtt.client_id.trim().is_empty() {
            return Err(invalid("mqtt.client_id", "must not be empty"));
        }
        if self.mqtt.session_expiry_secs == 0 {
            return Err(invalid(
                "mqtt.session_expiry_secs",
                "must be above 0, or the broker drops unacknowledged messages on reconnect",
            ));
        }
        if self.mqtt.topic_root.is_empty()
            || self.mqtt.topic_root.contains(['+', '#'])
            || self.mqtt.topic_root.ends_with('/')
        {
            return Err(invalid(
                "mqtt.topic_root",
                "must be a non-empty topic without wildcards or a trailing '/'",
            ));
        }
        if self.mqtt.share_group.is_empty() || self.mqtt.share_group.contains(['/', '+', '#']) {
            return Err(invalid(
                "mqtt.share_group",
                "must be a non-empty name without '/', '+' or '#'",
            ));
        }
        if self.mqtt.receive_maximum == 0 {
            return Err(invalid("mqtt.receive_maximum", "must be at least 1"));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.mqtt.max_message_bytes) {
            return Err(invalid(
                "mqtt.max_message_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        if self.validation.max_readings_per_submission == 0 {
            return Err(invalid(
                "validation.max_readings_per_submission",
                "must be at least 1",
            ));
        }
        if self.batch.max_readings == 0 {
            return Err(invalid("batch.max_readings", "must be at least 1"));
        }
        if self.batch.max_in_flight == 0 || self.batch.max_in_flight > self.database.pool_size {
            return Err(invalid(
                "batch.max_in_flight",
                "must be between 1 and database.pool_size",
            ));
        }
        if self.batch.queue_capacity == 0 {
            return Err(invalid("batch.queue_capacity", "must be at least 1"));
        }
        if self.batch.linger_ms > 60_000 {
            return Err(invalid("batch.linger_ms", "must be at most 60000"));
        }
        if self.validation.max_age_days == 0 {
            return Err(invalid("validation.max_age_days", "must be at least 1"));
        }
        if self.storage.partitions_ahead_months == 0 {
            return Err(invalid(
                "storage.partitions_ahead_months",
                "must be at least 1",
            ));
        }
        if self.alerts.delivery_max_attempts < 1 {
            return Err(invalid(
                "alerts.delivery_max_attempts",
                "must be at least 1",
            ));
        }
        if self.alerts.mqtt_client_id.trim().is_empty()
            || self.alerts.mqtt_client_id == self.mqtt.client_id
        {
            return Err(invalid(
                "alerts.mqtt_client_id",
                "must be non-empty and differ from mqtt.client_id",
            ));
        }
        if self.quarantine.max_payload_bytes < 256 {
            return Err(invalid(
                "quarantine.max_payload_bytes",
                "must be at least 256",
            ));
        }
        Ok(())
    }
}

trait ExtractSettings {
    fn extract_settings(&self) -> Result<Settings, ConfigError>;
}

impl ExtractSettings for Figment {
    fn extract_settings(&self) -> Result<Settings, ConfigError> {
        let settings: Settings = self.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
// figment's `Jail` closures must return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn the_example_file_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/vigil.example.toml");
        let loaded: Settings = Figment::from(Toml::file_exact(&path))
            .extract()
            .expect("example config parses");
        assert_eq!(loaded, Settings::default());
    }

    #[test]
    fn an_unknown_key_names_itself() {
        Jail::expect_with(|jail| {
            jail.create_file("v.toml", "[batch]\nlinger = 5\n")?;
            let err = Settings::load(Some(Path::new("v.toml"))).expect_err("unknown key");
            let text = err.to_string();
            assert!(text.contains("linger"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_the_file() {
        Jail::expect_with(|jail| {
            jail.create_file("v.toml", "[mqtt]\nport = 1884\n")?;
            jail.set_env("VIGIL_MQTT__PORT", "2883");
            jail.set_env("VIGIL_TEST_DATABASE_URL", "ignored");
            let settings = Settings::load(Some(Path::new("v.toml"))).expect("loads");
            assert_eq!(settings.mqtt.port, 2883);
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_its_key() {
        Jail::expect_with(|jail| {
            jail.set_env("VIGIL_MQTT__SESSION_EXPIRY_SECS", "0");
            let err = Settings::load(None).expect_err("invalid");
            assert!(
                err.to_string().contains("mqtt.session_expiry_secs"),
                "{err}"
            );
            jail.set_env("VIGIL_MQTT__SESSION_EXPIRY_SECS", "ten");
            let err = Settings::load(None).expect_err("invalid type");
            assert!(
                err.to_string()
                    .to_lowercase()
                    .contains("session_expiry_secs"),
                "{err}"
            );
            Ok(())
        });
    }
}
