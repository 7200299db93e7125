//! One task owns the MQTT event loop and never blocks on storage; a second task decodes each
//! message, hands it to the writer and acknowledges it once committed.
//!
//! Acknowledgements follow the order messages arrived in (MQTT 4.6.0-2) because outcomes are
//! awaited through a `FuturesOrdered`. Each message carries the connection epoch it arrived
//! on; an outcome that completes after a reconnect is not acknowledged, because a PUBACK on
//! the new connection could match another message's packet id. The broker redelivers such
//! messages from the resumed session and the writer reports them as duplicates.
//!
//! Results go out on a second connection: QoS 1 publishes occupy the outgoing in-flight
//! window, and on the consuming connection a full window holds back the acknowledgements
//! queued behind them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{StreamExt, stream::FuturesOrdered};
use rumqttc::{
    Transport,
    v5::{
        AsyncClient, Event, EventLoop, MqttOptions,
        mqttbytes::{
            QoS,
            v5::{Packet, Publish, PublishProperties},
        },
    },
};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Topics, decode};
use crate::{
    config::{MqttSettings, ValidationSettings},
    domain::{Channel, Refusal, RejectReason as R, validate::Context},
    health::Health,
    limits::DeviceLimits,
    metrics as m,
    store::writer::{SubmitError, WriterHandle},
    submission::{Outcome, Submission},
};

/// The broker may deliver more than Receive Maximum (Mosquitto enforces it loosely); this
/// bounds how many messages await their commit at once.
const INFLIGHT_FACTOR: usize = 2;
const REQUEST_CHANNEL_CAPACITY: usize = 10_000;
/// Above the service's own limit so oversized messages reach it and are quarantined, instead
/// of being dropped by the broker for exceeding the client's Maximum Packet Size.
const CLIENT_MAX_PACKET: u32 = 16 * 1024 * 1024;

pub struct MqttFrontend {
    settings: MqttSettings,
    transport: Transport,
    validation: ValidationSettings,
    limits: Arc<DeviceLimits>,
    topics: Topics,
    writer: WriterHandle,
    health: Health,
}

struct Delivery {
    publish: Publish,
    epoch: u64,
    received_at: OffsetDateTime,
}

impl MqttFrontend {
    pub fn new(
        settings: MqttSettings,
        transport: Transport,
        validation: ValidationSettings,
        limits: Arc<DeviceLimits>,
        writer: WriterHandle,
        health: Health,
    ) -> Self {
        Self {
            topics: Topics::new(&settings.topic_root),
            settings,
            transport,
            validation,
            limits,
            writer,
            health,
        }
    }

    fn base_options(&self, client_id: String) -> MqttOptions {
        let s = &self.settings;
        let mut options = MqttOptions::new(client_id, s.host.clone(), s.port);
        options
            .set_keep_alive(Duration::from_secs(s.keep_alive_secs))
            .set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY)
            .set_transport(self.transport.clone());
        if let Some(user) = &s.username {
            options.set_credentials(user.clone(), s.password.clone().unwrap_or_default());
        }
        options
    }

    fn options(&self) -> MqttOptions {
        let s = &self.settings;
        let mut options = self.base_options(s.client_id.clone());
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(s.session_expiry_secs))
            .set_manual_acks(true)
            .set_receive_maximum(Some(s.receive_maximum))
            .set_max_packet_size(Some(CLIENT_MAX_PACKET));
        options
    }

    /// Runs until `token` is cancelled, then finishes the messages already taken in,
    /// acknowledges them and disconnects.
    pub async fn run(self, token: CancellationToken) {
        let (client, eventloop) = AsyncClient::new(self.options(), REQUEST_CHANNEL_CAPACITY);
        let epoch = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let polling = CancellationToken::new();
        let poller = tokio::spawn(poll_loop(
            eventloop,
            Some(Consumer {
                client: client.clone(),
                filter: self
                    .topics
                    .shared_readings_filter(&self.settings.share_group),
                epoch: Arc::clone(&epoch),
                deliveries: tx,
                health: self.health.clone(),
            }),
            polling.clone(),
        ));
        let results = if self.settings.publish_results {
            let options = self.base_options(format!("{}-results", self.settings.client_id));
            let (results, eventloop) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
            let task = tokio::spawn(poll_loop(eventloop, None, polling.clone()));
            Some((results, task))
        } else {
            None
        };
        self.process(&client, results.as_ref().map(|r| &r.0), rx, &epoch, token)
            .await;
        // Give each event loop a moment to write what is queued, then DISCONNECT.
        let mut loops = vec![(client, poller)];
        loops.extend(results);
        for (client, task) in loops {
            if let Err(e) = client.disconnect().await {
                debug!(error = %e, "disconnect request not queued");
            }
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                polling.cancel();
            }
        }
        self.health.set_broker(false);
        info!("mqtt front-end stopped");
    }

    async fn process(
        &self,
        client: &AsyncClient,
        results: Option<&AsyncClient>,
        mut rx: mpsc::UnboundedReceiver<Delivery>,
        epoch: &AtomicU64,
        token: CancellationToken,
    ) {
        let cap = usize::from(self.settings.receive_maximum) * INFLIGHT_FACTOR;
        let mut inflight = FuturesOrdered::new();
        let mut stopping = false;
        loop {
            tokio::select! {
                biased;
                Some((delivery, result)) = inflight.next(), if !inflight.is_empty() => {
                    self.complete(client, results, epoch, delivery, result).await;
                }
                _ = token.cancelled(), if !stopping => {
                    info!(pending = inflight.len(), "mqtt intake stopped; finishing messages in flight");
                    stopping = true;
                }
                delivery = rx.recv(), if !stopping && inflight.len() < cap => {
                    let Some(delivery) = delivery else { break };
                    let submission = self.submission(&delivery);
                    let writer = self.writer.clone();
                    inflight.push_back(async move {
                        let result = writer.submit(submission).await;
                        (delivery, result)
                    });
                }
                else => break,
            }
        }
    }

    fn submission(&self, d: &Delivery) -> Submission {
        metrics::counter!(m::MQTT_MESSAGES).increment(1);
        let topic = String::from_utf8_lossy(&d.publish.topic).into_owned();
        let payload = d.publish.payload.clone();
        let device_id = self.topics.device_of(&topic);
        let submission = Submission::new(Channel::Mqtt, device_id, d.received_at, Some(topic));
        let Some(device_id) = device_id else {
            let refusal = Refusal::new(
                R::BadTopic,
                format!(
                    "publish readings to {}/devices/{{device_id}}/readings with a UUID device id",
                    self.settings.topic_root
                ),
            );
            return submission.refused_whole(refusal, payload);
        };
        if payload.len() > self.settings.max_message_bytes {
            let refusal = Refusal::new(
                R::Oversized,
                format!(
                    "message is {} bytes; at most {}",
                    payload.len(),
                    self.settings.max_message_bytes
                ),
            );
            return submission.refused_whole(refusal, payload);
        }
        let ctx = Context {
            device_id,
            channel: Channel::Mqtt,
            received_at: d.received_at,
            rules: &self.validation,
        };
        match decode::decode(&payload, &ctx, self.validation.max_readings_per_submission) {
            Ok(items) => match self.limits.check(device_id, items.len()) {
                Ok(()) => Submission {
                    items,
                    ..submission
                },
                // Kept whole in quarantine (replayable); the device learns why from its result.
                Err(over) => {
                    metrics::counter!(m::RATE_LIMITED, "channel" => "mqtt").increment(1);
                    submission.refused_whole(Refusal::new(R::RateLimited, over.message), payload)
                }
            },
            Err(refusal) => submission.refused_whole(refusal, payload),
        }
    }

    async fn complete(
        &self,
        client: &AsyncClient,
        results: Option<&AsyncClient>,
        epoch: &AtomicU64,
        delivery: Delivery,
        result: Result<Vec<Outcome>, SubmitError>,
    ) {
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(e) => {
                // Not acknowledged: the broker keeps the message and redelivers it.
                warn!(error = %e, "message not stored; left unacknowledged");
                return;
            }
        };
        if delivery.epoch == epoch.load(Ordering::Acquire) {
            match client.ack(&delivery.publish).await {
                Ok(()) => metrics::counter!(m::MQTT_ACKS).increment(1),
                Err(e) => warn!(error = %e, "acknowledgement not queued"),
            }
        } else {
            metrics::counter!(m::MQTT_STALE_ACKS).increment(1);
        }
        if let Some(results) = results {
            self.publish_results(results, &delivery, &outcomes);
        }
    }

    fn publish_results(&self, client: &AsyncClient, delivery: &Delivery, outcomes: &[Outcome]) {
        let topic = String::from_utf8_lossy(&delivery.publish.topic);
        let Some(device_id) = self.topics.device_of(&topic) else {
            return;
        };
        let body = ResultMessage::new(outcomes);
        let Ok(payload) = serde_json::to_vec(&body) else {
            return;
        };
        let properties = PublishProperties {
            correlation_data: delivery
                .publish
                .properties
                .as_ref()
                .and_then(|p| p.correlation_data.clone()),
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        // Results are best effort: a full request queue must not hold up acknowledgements.
        if let Err(e) = client.try_publish_with_properties(
            self.topics.results(device_id),
            QoS::AtLeastOnce,
            false,
            Bytes::from(payload),
            properties,
        ) {
            debug!(error = %e, "result not published");
        }
    }
}

/// What the consuming connection does with broker events; the results connection has none.
struct Consumer {
    client: AsyncClient,
    filter: String,
    epoch: Arc<AtomicU64>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    health: Health,
}

async fn poll_loop(mut eventloop: EventLoop, consumer: Option<Consumer>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                let Some(c) = &consumer else { continue };
                c.epoch.fetch_add(1, Ordering::AcqRel);
                c.health.set_broker(true);
                info!(session_present = ack.session_present, "connected to broker");
                // Subscribe on every connection, not only when the broker has no session:
                // Mosquitto restores a persistent session from disk after a restart but not
                // its shared subscription, and SUBSCRIBE is idempotent.
                if let Err(e) = c.client.try_subscribe(c.filter.clone(), QoS::AtLeastOnce) {
                    warn!(error = %e, "could not queue subscription");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let Some(c) = &consumer else { continue };
                let delivery = Delivery {
                    publish,
                    epoch: c.epoch.load(Ordering::Acquire),
                    received_at: OffsetDateTime::now_utc(),
                };
                if c.deliveries.send(delivery).is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                debug!(?ack.return_codes, "subscribed");
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                if let Some(c) = &consumer {
                    c.health.set_broker(false);
                }
                metrics::counter!(m::MQTT_CONNECTION_ERRORS).increment(1);
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[derive(Serialize)]
struct ResultMessage {
    accepted: usize,
    duplicate: usize,
    rejected: usize,
    results: Vec<ResultEntry>,
}

#[derive(Serialize)]
struct ResultEntry {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl ResultMessage {
    fn new(outcomes: &[Outcome]) -> Self {
        let count = |s: &str| outcomes.iter().filter(|o| o.status() == s).count();
        Self {
            accepted: count("accepted"),
            duplicate: count("duplicate"),
            rejected: count("rejected"),
            results: outcomes
                .iter()
                .enumerate()
                .map(|(index, o)| {
                    let (reason, message) = match o {
                        Outcome::Rejected {
                            reason, message, ..
                        } => (Some(reason.code()), Some(message.clone())),
                        _ => (None, None),
                    };
                    ResultEntry {
                        index,
                        id: o.key().map(|k| k.to_string()),
                        status: o.status(),
                        reason,
                        message,
                    }
                })
                .collect(),
        }
    }
}
