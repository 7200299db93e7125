//! A publishing-only MQTT v5 connection that reports when the broker has acknowledged each
//! QoS 1 publish, so a delivery is marked done only once the broker owns the message.
//!
//! rumqttc has no per-publish acknowledgement handle, so this pairs them up itself:
//! the event loop takes requests from its channel in order and reports each publish as
//! `Outgoing::Publish(pkid)` in that order (a packet-id collision holds back every later
//! request until it is resolved, so the order survives it). Waiters are queued in the same
//! critical section that queues their publish, get their packet id from the next
//! `Outgoing::Publish`, and complete on the `PUBACK` with that id.
//!
//! On a connection error every waiter fails, and everything rumqttc still holds for the lost
//! connection is dropped under the same lock, so no stale publish can be sent after the
//! reconnect and be paired with a newer waiter. The connection uses a clean start, so the
//! broker has nothing of ours to resend either. Failed waiters are retried by the delivery
//! queue; subscribers see at most a duplicate, which they drop by `event_id`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use rumqttc::{
    Outgoing,
    v5::{
        AsyncClient, ConnectionError, Event, EventLoop, MqttOptions,
        mqttbytes::{
            QoS,
            v5::{Packet, PubAckReason},
        },
    },
};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use super::MqttTarget;
use crate::mqtt_tls::{self, MqttTlsError};

/// Publishes that may wait in rumqttc's channel; beyond this a publish fails at once and is
/// retried by the queue instead of piling up behind a slow broker.
const REQUEST_CAPACITY: usize = 1000;
const INFLIGHT_LIMIT: u16 = 64;
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT_SECS: u64 = 5;
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Default)]
struct Tracker {
    /// Whether publishes may be queued: between a CONNACK and the next connection error.
    connected: bool,
    /// Queued publishes that have not been written yet, in queue order.
    queued: VecDeque<Waiter>,
    /// Written publishes awaiting their PUBACK, by packet id.
    inflight: HashMap<u16, Waiter>,
}

impl Tracker {
    fn on_event(&mut self, event: &Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => match self.queued.pop_front() {
                Some(waiter) => {
                    if let Some(old) = self.inflight.insert(*pkid, waiter) {
                        // rumqttc reuses a packet id only once it is acknowledged, so this
                        // would be a bug there; the old waiter must not hang.
                        let _ = old.send(Err(format!("packet id {pkid} reused")));
                    }
                }
                None => warn!(pkid, "publish written with no delivery waiting for it"),
            },
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(waiter) = self.inflight.remove(&ack.pkid) {
                    let _ = waiter.send(match ack.reason {
                        // No subscriber at the moment is still accepted by the broker: the
                        // team topic is delivered to whoever listens.
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                        reason => Err(format!("broker refused the publish: {reason:?}")),
                    });
                }
            }
            _ => {}
        }
    }

    fn fail_all(&mut self, reason: &str) {
        for waiter in self
            .queued
            .drain(..)
            .chain(self.inflight.drain().map(|(_, w)| w))
        {
            let _ = waiter.send(Err(reason.to_string()));
        }
    }
}

struct Shared {
    tracker: Mutex<Tracker>,
    connected: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tracker> {
        // The tracker's invariants hold between statements, so a panic elsewhere leaves it
        // usable.
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_connected(&self, tracker: &mut Tracker, connected: bool) {
        tracker.connected = connected;
        self.connected.send_replace(connected);
    }
}

pub(super) struct Publisher {
    client: AsyncClient,
    shared: Arc<Shared>,
    /// Taken by the first publish, which starts the event loop: construction needs no runtime.
    eventloop: Mutex<Option<EventLoop>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
    ack_timeout: Duration,
}

impl Publisher {
    pub(super) fn new(target: &MqttTarget, ack_timeout: Duration) -> Result<Self, MqttTlsError> {
        let mut options =
            MqttOptions::new(target.client_id.clone(), target.host.clone(), target.port);
        options.set_transport(mqtt_tls::transport(
            &target.host,
            target.tls_ca_file.as_deref(),
        )?);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_connection_timeout(CONNECT_TIMEOUT_SECS)
            .set_clean_start(true)
            // rumqttc sizes its in-flight table by this (65,535 by default); a round never has
            // more than its concurrency in flight.
            .set_outgoing_inflight_upper_limit(INFLIGHT_LIMIT)
            .set_request_channel_capacity(REQUEST_CAPACITY);
        if let Some(user) = &target.username {
            options.set_credentials(user.clone(), target.password.clone().unwrap_or_default());
        }
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let stop = CancellationToken::new();
        Ok(Self {
            client,
            shared: Arc::new(Shared {
                tracker: Mutex::new(Tracker::default()),
                connected: watch::Sender::new(false),
            }),
            eventloop: Mutex::new(Some(eventloop)),
            task: Mutex::new(None),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            ack_timeout,
        })
    }

    /// Starts the event loop (once), so the connection is up before the first publish.
    pub(super) fn start(&self) {
        let eventloop = self
            .eventloop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(eventloop) = eventloop {
            let task = tokio::spawn(poll_loop(
                eventloop,
                Arc::clone(&self.shared),
                self.stop.clone(),
            ));
            *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        }
    }

    /// Publishes `payload` with QoS 1 and waits for the broker's acknowledgement, waiting for
    /// a connection first if there is none. Bounded by the acknowledgement timeout.
    pub(super) async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        self.start();
        let waited = tokio::time::timeout(self.ack_timeout, async {
            let mut connected = self.shared.connected.subscribe();
            let acked = loop {
                {
                    let mut tracker = self.shared.lock();
                    if tracker.connected {
                        let (tx, rx) = oneshot::channel();
                        self.client
                            .try_publish(topic, QoS::AtLeastOnce, false, payload)
                            .map_err(|e| format!("publish not queued: {e}"))?;
                        tracker.queued.push_back(tx);
                        break rx;
                    }
                }
                if connected.wait_for(|c| *c).await.is_err() {
                    return Err("publisher stopped".to_string());
                }
            };
            acked.await.map_err(|_| "publisher stopped".to_string())?
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no acknowledgement from the broker within {:?}",
                self.ack_timeout
            )),
        }
    }

    /// Sends DISCONNECT after what is queued and stops the event loop.
    pub(super) async fn shutdown(&self) {
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(task) = task else { return };
        if let Err(e) = self.client.try_disconnect() {
            debug!(error = %e, "disconnect not queued");
        }
        if tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .is_err()
        {
            self.stop.cancel();
        }
    }
}

async fn poll_loop(mut eventloop: EventLoop, shared: Arc<Shared>, stop: CancellationToken) {
    let mut backoff = RECONNECT_MIN;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = RECONNECT_MIN;
                let mut tracker = shared.lock();
                shared.set_connected(&mut tracker, true);
                info!("alert publisher connected to broker");
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(event) => shared.lock().on_event(&event),
            Err(e) => {
                connection_lost(&mut eventloop, &shared, &e);
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "alert publisher lost the broker");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
        }
    }
    let mut tracker = shared.lock();
    shared.set_connected(&mut tracker, false);
    tracker.fail_all("publisher stopped");
}

fn connection_lost(eventloop: &mut EventLoop, shared: &Shared, error: &ConnectionError) {
    let mut tracker = shared.lock();
    shared.set_connected(&mut tracker, false);
    // Acknowledgements read in the same batch as the failure are real; settle them first.
    for event in eventloop.state.events.drain(..) {
        tracker.on_event(&event);
    }
    // Under the lock no publish can be queued, so this empties rumqttc of every request of
    // the lost connection, including any queued after its own clean-up.
    eventloop.clean();
    eventloop.pending.clear();
    // rumqttc keeps a publish held back by a packet-id collision across reconnects, where no
    // acknowledgement can ever release it; it would stop every later publish.
    eventloop.state.collision = None;
    tracker.fail_all(&format!("broker connection lost: {error}"));
}
