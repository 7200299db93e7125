//! Sends simulated readings the way real clients do: a device's own MQTT connection that
//! publishes to its readings topic and listens to its results topic, or a gRPC client holding
//! the device's token. Every answer is counted, so the sender knows what was stored.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use futures_util::{StreamExt as _, stream};
use rumqttc::v5::{
    AsyncClient, Event, MqttOptions,
    mqttbytes::{QoS, v5::Packet},
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{Code, Request, metadata::MetadataValue, transport::Channel};
use uuid::Uuid;
use vigil_ingest::{config::MqttSettings, domain::RawReading};
use vigil_proto::v1::{
    ReadingStatus, SubmitReadingsRequest, SubmitReadingsResponse,
    ingest_service_client::IngestServiceClient,
};

/// Readings per MQTT batch message or gRPC request.
pub const BATCH: usize = 500;
/// How long to wait for the service's answer to everything sent before giving up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
const RETRY_MIN: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// MQTT, one reading per message.
    Mqtt,
    /// MQTT, up to 500 readings per message.
    MqttBatch,
    /// gRPC `SubmitReadings`, up to 500 readings per call.
    Grpc,
    /// gRPC `StreamReadings`, batches of up to 500 on one stream per device.
    GrpcStream,
}

/// What the service answered, summed over every device.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicate: AtomicU64,
    pub rejected: AtomicU64,
    reasons: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    pub fn answered(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
            + self.duplicate.load(Ordering::Relaxed)
            + self.rejected.load(Ordering::Relaxed)
    }

    fn count(&self, status: &str, reason: Option<&str>) {
        match status {
            "accepted" => self.accepted.fetch_add(1, Ordering::Relaxed),
            "duplicate" => self.duplicate.fetch_add(1, Ordering::Relaxed),
            _ => {
                let reason = reason.unwrap_or("unknown").to_string();
                *self
                    .reasons
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(reason)
                    .or_default() += 1;
                self.rejected.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// One MQTT result message (see docs/contract.md).
    fn count_mqtt_result(&self, result: &Value) {
        for r in result["results"].as_array().into_iter().flatten() {
            self.count(
                r["status"].as_str().unwrap_or("rejected"),
                r["reason"].as_str(),
            );
        }
    }

    pub fn count_response(&self, response: &SubmitReadingsResponse) {
        for r in &response.results {
            match r.status() {
                ReadingStatus::Accepted => self.count("accepted", None),
                ReadingStatus::Duplicate => self.count("duplicate", None),
                _ => self.count("rejected", Some(&r.reason)),
            }
        }
    }

    pub fn snapshot(&self) -> Value {
        json!({
            "sent": self.sent.load(Ordering::Relaxed),
            "accepted": self.accepted.load(Ordering::Relaxed),
            "duplicate": self.duplicate.load(Ordering::Relaxed),
            "rejected": self.rejected.load(Ordering::Relaxed),
            "rejected_by_reason": *self.reasons.lock().unwrap_or_else(PoisonError::into_inner),
        })
    }
}

/// A registered device as a client knows it.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub device_id: Uuid,
    pub token: String,
}

/// Where the service listens.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub mqtt: MqttSettings,
    pub grpc: String,
}

/// One device's connection to the service.
pub enum Link {
    Mqtt(MqttLink),
    Grpc {
        client: IngestServiceClient<Channel>,
        device: Credentials,
        stream: bool,
    },
}

impl Link {
    pub async fn open(
        transport: Transport,
        endpoints: &Endpoints,
        device: Credentials,
        grpc: &IngestServiceClient<Channel>,
        tally: Arc<Tally>,
    ) -> anyhow::Result<Self> {
        Ok(match transport {
            Transport::Mqtt | Transport::MqttBatch => Self::Mqtt(
                MqttLink::connect(
                    &endpoints.mqtt,
                    device,
                    transport == Transport::MqttBatch,
                    tally,
                )
                .await?,
            ),
            Transport::Grpc | Transport::GrpcStream => Self::Grpc {
                client: grpc.clone(),
                device,
                stream: transport == Transport::GrpcStream,
            },
        })
    }

    /// Sends `readings` and returns once the service has answered for every one of them.
    pub async fn send(&mut self, readings: Vec<RawReading>, tally: &Tally) -> anyhow::Result<()> {
        if readings.is_empty() {
            return Ok(());
        }
        tally
            .sent
            .fetch_add(readings.len() as u64, Ordering::Relaxed);
        match self {
            Self::Mqtt(link) => link.send(readings).await,
            Self::Grpc {
                client,
                device,
                stream: false,
            } => {
                for chunk in readings.chunks(BATCH) {
                    let response = submit(client, device, chunk.to_vec()).await?;
                    tally.count_response(&response);
                }
                Ok(())
            }
            Self::Grpc {
                client,
                device,
                stream: true,
            } => stream_device(client, device, &readings, tally).await,
        }
    }
}

/// One `StreamReadings` call carrying all of `readings` in batches of [`BATCH`]; returns once
/// every batch is answered.
pub async fn stream_device(
    client: &mut IngestServiceClient<Channel>,
    device: &Credentials,
    readings: &[RawReading],
    tally: &Tally,
) -> anyhow::Result<()> {
    let requests: Vec<SubmitReadingsRequest> = readings
        .chunks(BATCH)
        .enumerate()
        .map(|(i, chunk)| SubmitReadingsRequest {
            batch_id: i.to_string(),
            readings: chunk.iter().cloned().map(Into::into).collect(),
            ..Default::default()
        })
        .collect();
    let expected = requests.len();
    let mut responses = client
        .stream_readings(authorised(stream::iter(requests), &device.token)?)
        .await
        .context("opening the readings stream")?
        .into_inner();
    let mut answered = 0;
    while let Some(response) = responses.next().await {
        tally.count_response(&response.context("readings stream")?);
        answered += 1;
    }
    if answered != expected {
        bail!("the stream answered {answered} of {expected} batches");
    }
    Ok(())
}

/// `message` with the device token as its bearer credential.
pub fn authorised<T>(message: T, token: &str) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).context("token is not ASCII")?,
    );
    Ok(request)
}

/// One `SubmitReadings` call, retried while the service asks the client to back off.
pub async fn submit(
    client: &mut IngestServiceClient<Channel>,
    device: &Credentials,
    readings: Vec<RawReading>,
) -> anyhow::Result<SubmitReadingsResponse> {
    let request = SubmitReadingsRequest {
        device_id: device.device_id.to_string(),
        readings: readings.into_iter().map(Into::into).collect(),
        ..Default::default()
    };
    loop {
        match client
            .submit_readings(authorised(request.clone(), &device.token)?)
            .await
        {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) => {
                let hint = status
                    .metadata()
                    .get("retry-after-ms")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .map_or(RETRY_MIN, Duration::from_millis);
                tokio::time::sleep(hint.max(RETRY_MIN)).await;
            }
            Err(status) => bail!(
                "device {}: {:?}: {}",
                device.device_id,
                status.code(),
                status.message()
            ),
        }
    }
}

/// A device's own MQTT session: publishes QoS 1 to its readings topic and counts the
/// results the service publishes back.
pub struct MqttLink {
    client: AsyncClient,
    topic: String,
    batch: bool,
    /// Results still expected, decremented by the event loop.
    outstanding: watch::Sender<u64>,
    _stop: DropGuard,
}

impl MqttLink {
    async fn connect(
        mqtt: &MqttSettings,
        device: Credentials,
        batch: bool,
        tally: Arc<Tally>,
    ) -> anyhow::Result<Self> {
        let root = &mqtt.topic_root;
        let id = device.device_id;
        let mut options = MqttOptions::new(format!("sim-{}", id.simple()), &mqtt.host, mqtt.port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_credentials(id.to_string(), device.token.clone());
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (outstanding, _) = watch::channel(0u64);
        let (ready_tx, mut ready) = watch::channel(false);
        let results = format!("{root}/devices/{id}/results");
        let stop = CancellationToken::new();
        let counter = outstanding.clone();
        let subscriber = client.clone();
        let cancelled = stop.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = cancelled.cancelled() => return,
                    event = eventloop.poll() => event,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = subscriber.try_subscribe(results.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(result) = serde_json::from_slice::<Value>(&p.payload) {
                            let answered = result["results"].as_array().map_or(0, Vec::len);
                            tally.count_mqtt_result(&result);
                            counter.send_modify(|n| *n = n.saturating_sub(answered as u64));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
            .await
            .with_context(|| {
                format!(
                    "device {id}: no MQTT session with {}:{} within 10 s",
                    mqtt.host, mqtt.port
                )
            })?
            .context("MQTT connection task ended")?;
        Ok(Self {
            client,
            topic: format!("{root}/devices/{id}/readings"),
            batch,
            outstanding,
            _stop: stop.drop_guard(),
        })
    }

    async fn send(&mut self, readings: Vec<RawReading>) -> anyhow::Result<()> {
        self.outstanding
            .send_modify(|n| *n += readings.len() as u64);
        if self.batch {
            for chunk in readings.chunks(BATCH) {
                let payload = serde_json::to_vec(&json!({ "readings": chunk }))?;
                self.publish(payload).await?;
            }
        } else {
            for reading in &readings {
                self.publish(serde_json::to_vec(reading)?).await?;
            }
        }
        let mut outstanding = self.outstanding.subscribe();
        tokio::time::timeout(ANSWER_TIMEOUT, outstanding.wait_for(|n| *n == 0))
            .await
            .context("no result from the service within 2 minutes")?
            .context("MQTT connection task ended")?;
        Ok(())
    }

    async fn publish(&self, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(self.topic.clone(), QoS::AtLeastOnce, false, payload)
            .await
            .context("MQTT publish")
    }
}

/// Sends each device's readings on its own link, `concurrency` devices at a time.
pub async fn send_all(
    work: Vec<(&mut Link, Vec<RawReading>)>,
    tally: &Tally,
    concurrency: usize,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = stream::iter(work)
        .map(|(link, readings)| async move {
            let n = readings.len() as u64;
            link.send(readings, tally).await?;
            progress.inc(n);
            Ok(())
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}
