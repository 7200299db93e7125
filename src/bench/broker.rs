//! MQTT measurements from one publisher: the broker ceiling (the messages go to a bare
//! subscriber that only acknowledges) and the same messages through the ingest service.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use rumqttc::v5::{
    AsyncClient, Event, EventLoop, MqttOptions,
    mqttbytes::{QoS, v5::Packet},
};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use vigil_ingest::config::MqttSettings;

/// Messages the publisher may have unacknowledged at once.
const INFLIGHT: u16 = 1000;

/// A QoS 1 publisher whose event loop runs in the background; `sent` waits for every PUBACK.
pub struct Publisher {
    client: AsyncClient,
    acked: watch::Receiver<u64>,
    _stop: DropGuard,
}

fn options(mqtt: &MqttSettings, client_id: String) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, &mqtt.host, mqtt.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_outgoing_inflight_upper_limit(INFLIGHT);
    options.set_receive_maximum(Some(INFLIGHT));
    if let (Some(user), Some(password)) = (&mqtt.username, &mqtt.password) {
        options.set_credentials(user.clone(), password.clone());
    }
    options
}

/// Polls `eventloop` until stopped, calling `on_packet` for every incoming packet and
/// signalling the first CONNACK.
fn drive(
    mut eventloop: EventLoop,
    stop: CancellationToken,
    mut on_packet: impl FnMut(&Packet) + Send + 'static,
) -> oneshot::Receiver<()> {
    let (connected_tx, connected) = oneshot::channel();
    tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(packet)) => {
                    if matches!(packet, Packet::ConnAck(_))
                        && let Some(tx) = connected_tx.take()
                    {
                        let _ = tx.send(());
                    }
                    on_packet(&packet);
                }
                Ok(Event::Outgoing(_)) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    connected
}

async fn connected(rx: oneshot::Receiver<()>) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .context("no MQTT connection within 10 s")?
        .context("MQTT connection task ended")
}

impl Publisher {
    pub async fn connect(mqtt: &MqttSettings, client_id: String) -> anyhow::Result<Self> {
        let (client, eventloop) = AsyncClient::new(options(mqtt, client_id), usize::from(INFLIGHT));
        let (acked_tx, acked) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let ready = drive(eventloop, stop.clone(), move |packet| {
            if matches!(packet, Packet::PubAck(_)) {
                acked_tx.send_modify(|n| *n += 1);
            }
        });
        connected(ready).await?;
        Ok(Self {
            client,
            acked,
            _stop: stop.drop_guard(),
        })
    }

    /// Publishes every `(topic, payload)` at QoS 1 and waits for the broker's PUBACKs.
    pub async fn publish_all(&mut self, messages: &[(String, Bytes)]) -> anyhow::Result<()> {
        let target = *self.acked.borrow() + messages.len() as u64;
        for (topic, payload) in messages {
            self.client
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                .await
                .context("MQTT publish")?;
        }
        tokio::time::timeout(
            Duration::from_secs(600),
            self.acked.wait_for(|n| *n >= target),
        )
        .await
        .context("the broker did not acknowledge every message")??;
        Ok(())
    }
}

/// Readings/s from the first publish until a bare subscriber has received every message.
pub async fn ceiling(
    mqtt: &MqttSettings,
    tag: &str,
    messages: &[(String, Bytes)],
) -> anyhow::Result<f64> {
    let filter = format!("bench/{tag}/ceiling/#");
    let (client, eventloop) = AsyncClient::new(
        options(mqtt, format!("bench-{tag}-sub")),
        usize::from(INFLIGHT),
    );
    let (received_tx, mut received) = watch::channel(0u64);
    let (subscribed_tx, subscribed) = watch::channel(false);
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let ready = drive(eventloop, stop, move |packet| match packet {
        Packet::Publish(_) => received_tx.send_modify(|n| *n += 1),
        Packet::SubAck(_) => {
            let _ = subscribed_tx.send(true);
        }
        _ => {}
    });
    connected(ready).await?;
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let mut subscribed = subscribed;
    tokio::time::timeout(Duration::from_secs(10), subscribed.wait_for(|s| *s))
        .await
        .context("no SUBACK")??;

    let rerouted: Vec<(String, Bytes)> = messages
        .iter()
        .enumerate()
        .map(|(i, (_, payload))| (format!("bench/{tag}/ceiling/{}", i % 1000), payload.clone()))
        .collect();
    let mut publisher = Publisher::connect(mqtt, format!("bench-{tag}-ceiling")).await?;
    let started = Instant::now();
    publisher.publish_all(&rerouted).await?;
    let n = messages.len() as u64;
    if tokio::time::timeout(Duration::from_secs(600), received.wait_for(|r| *r >= n))
        .await
        .is_err()
    {
        bail!(
            "the bare subscriber received {} of {n} messages",
            *received.borrow()
        );
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The broker's own version string from `$SYS`, or "MQTT broker" when it does not say.
pub async fn version(mqtt: &MqttSettings, tag: &str) -> String {
    let (client, eventloop) = AsyncClient::new(options(mqtt, format!("bench-{tag}-sys")), 10);
    let (tx, mut rx) = watch::channel(None::<String>);
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let ready = drive(eventloop, stop, move |packet| {
        if let Packet::Publish(p) = packet {
            let _ = tx.send(Some(String::from_utf8_lossy(&p.payload).into_owned()));
        }
    });
    if connected(ready).await.is_err()
        || client
            .subscribe("$SYS/broker/version", QoS::AtMostOnce)
            .await
            .is_err()
    {
        return "MQTT broker".into();
    }
    match tokio::time::timeout(Duration::from_secs(3), rx.wait_for(Option::is_some)).await {
        Ok(Ok(v)) => v.clone().unwrap_or_default(),
        _ => "MQTT broker".into(),
    }
}
