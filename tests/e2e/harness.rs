//! Shared set-up for the end-to-end tests: a fresh database per test, the service on
//! ephemeral ports, MQTT topics under a per-test root, and helpers that poll for
//! conditions instead of sleeping.

use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use rumqttc::v5::{
    AsyncClient, Event, MqttOptions,
    mqttbytes::{QoS, v5::Packet},
};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, metadata::MetadataValue};
use uuid::Uuid;
use vigil_ingest::{Application, Settings, config::TimescaleMode, store::admin};
use vigil_proto::v1::{Reading, ingest_service_client::IngestServiceClient};

pub use crate::database::{TestDb, connect};

pub const WAIT: Duration = Duration::from_secs(20);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn mqtt_host() -> String {
    env_or("VIGIL_TEST_MQTT_HOST", "127.0.0.1")
}

pub fn mqtt_port() -> u16 {
    env_or("VIGIL_TEST_MQTT_PORT", "1883")
        .parse()
        .expect("VIGIL_TEST_MQTT_PORT is a port number")
}

/// Settings for a service isolated from every other test: its own database, topic root,
/// share group, client id and ephemeral ports.
pub fn settings(db_url: &str) -> Settings {
    let tag = Uuid::new_v4().simple().to_string();
    let mut s = Settings::default();
    s.database.url = db_url.to_string();
    s.storage.timescaledb = TimescaleMode::Auto;
    s.mqtt.host = mqtt_host();
    s.mqtt.port = mqtt_port();
    s.mqtt.client_id = format!("vigil-test-{tag}");
    s.mqtt.topic_root = format!("test/{tag}/vigil/v1");
    s.mqtt.share_group = format!("g{tag}");
    s.mqtt.session_expiry_secs = 300;
    s.grpc.listen = "127.0.0.1:0".parse().expect("addr");
    s.http.listen = "127.0.0.1:0".parse().expect("addr");
    s.shutdown.grace_period_secs = 10;
    s
}

pub struct TestApp {
    pub settings: Settings,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts the service in this process and waits until it reports ready.
    pub async fn spawn(settings: Settings) -> Self {
        let app = Application::build(settings.clone())
            .await
            .expect("application builds");
        let grpc_addr = app.grpc_addr().expect("grpc enabled");
        let http_addr = app.http_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let test_app = Self {
            settings,
            grpc_addr,
            http_addr,
            shutdown,
            task: Some(task),
        };
        test_app.wait_ready().await;
        test_app
    }

    pub async fn wait_ready(&self) {
        let addr = self.http_addr;
        eventually("service ready", || async move {
            http_get(addr, "/readyz").await.map(|(code, _)| code) == Some(200)
        })
        .await;
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("clean shutdown");
        }
    }

    pub fn readings_topic(&self, device: Uuid) -> String {
        format!(
            "{}/devices/{device}/readings",
            self.settings.mqtt.topic_root
        )
    }

    pub fn results_topic(&self, device: Uuid) -> String {
        format!("{}/devices/{device}/results", self.settings.mqtt.topic_root)
    }

    pub async fn grpc(&self) -> IngestServiceClient<tonic::transport::Channel> {
        IngestServiceClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("grpc connects")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Sum of every sample of `name` (all label sets) on a /metrics page.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let Some((_, body)) = http_get(addr, "/metrics").await else {
        return 0.0;
    };
    body.lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ') | Some(b'{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A minimal HTTP/1.1 GET; returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

/// Polls `check` until it holds, failing the test after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

pub async fn wait_count(db: &tokio_postgres::Client, sql: &str, n: i64) {
    let mut last = -1;
    let start = Instant::now();
    loop {
        let c = count(db, sql).await;
        if c >= n {
            assert_eq!(c, n, "{sql}: more rows than expected");
            return;
        }
        if c != last {
            last = c;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out: {sql} returned {last}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Registered {
    pub team: Uuid,
    pub patient: Uuid,
    pub device: Uuid,
    pub token: String,
}

/// A team, a patient and a device bound to the patient since a day ago.
pub async fn register(db_url: &str, kind: &str) -> Registered {
    let mut client = connect(db_url).await;
    let team = admin::add_team(&mut client, &format!("team {}", Uuid::new_v4()))
        .await
        .expect("team");
    let (patient, _) = admin::add_patient(&mut client, &team.to_string(), None, None)
        .await
        .expect("patient");
    let since = OffsetDateTime::now_utc() - time::Duration::days(1);
    let device = admin::add_device(&mut client, Uuid::new_v4(), patient, kind, None, since)
        .await
        .expect("device");
    Registered {
        team,
        patient,
        device: device.id,
        token: device.token,
    }
}

pub async fn add_device(db_url: &str, patient: Uuid, kind: &str) -> (Uuid, String) {
    let mut client = connect(db_url).await;
    let since = OffsetDateTime::now_utc() - time::Duration::days(1);
    let device = admin::add_device(&mut client, Uuid::new_v4(), patient, kind, None, since)
        .await
        .expect("device");
    (device.id, device.token)
}

/// An MQTT v5 publisher that also collects what arrives on one results topic.
pub struct MqttDevice {
    pub client: AsyncClient,
    results: mpsc::UnboundedReceiver<Value>,
    task: JoinHandle<()>,
}

impl MqttDevice {
    pub async fn connect(results_topic: Option<String>) -> Self {
        let id = format!("dev-{}", Uuid::new_v4().simple());
        let mut options = MqttOptions::new(id, mqtt_host(), mqtt_port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(Some(4 * 1024 * 1024));
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (tx, results) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let sub_client = client.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => match &results_topic {
                        Some(topic) => {
                            let _ = sub_client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                        }
                        None => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                    },
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(v) = serde_json::from_slice(&p.payload) {
                            let _ = tx.send(v);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(WAIT, ready_rx)
            .await
            .expect("mqtt device connects")
            .expect("ready signal");
        Self {
            client,
            results,
            task,
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish queued");
    }

    pub async fn next_result(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.results.recv())
            .await
            .expect("a result message arrives")
            .expect("results channel open")
    }
}

impl Drop for MqttDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn now_rfc3339(offset_secs: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs))
        .replace_nanosecond(0)
        .expect("valid")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}

pub fn glucose_pb(measured_at: &str, value: f64, unit: &str) -> Reading {
    Reading {
        r#type: "blood_glucose".into(),
        measured_at: measured_at.into(),
        value: Some(value),
        unit: unit.into(),
        ..Default::default()
    }
}
