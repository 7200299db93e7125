//! Alert delivery on real PostgreSQL, Mosquitto and a real HTTP receiver: an out-of-range
//! reading reaches the team's MQTT topic and its webhook (signed, with a stable idempotency
//! key), failing receivers get retries and then a dead letter, and two workers never
//! deliver the same row.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use rumqttc::v5::{AsyncClient, Event, MqttOptions, mqttbytes::v5::Packet};
use serde_json::{Value, json};
use sha2::Sha256;
use time::OffsetDateTime;
use tokio::{net::TcpListener, sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use vigil_alerts::{
    config::AlertSettings,
    deliver::{Deliverer, MqttTarget, Round},
};
use vigil_ingest::{Settings, store::pool};

use crate::{child::ChildService, harness::*};

const SECRET: &str = "whsec_e2e_secret";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    idempotency_key: String,
    event_id: String,
    content_type: String,
    signature_valid: bool,
    body: Value,
    answered: u16,
}

#[derive(Default)]
struct ReceiverState {
    /// Requests that have arrived, answered or not.
    arrivals: AtomicUsize,
    requests: Mutex<Vec<Received>>,
    /// Requests still to be answered with 500.
    fail_next: AtomicUsize,
    always_fail: bool,
    /// Slow answers make concurrent rounds overlap.
    delay: Duration,
}

/// A webhook receiver on an ephemeral local port.
struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(fail_first: usize, always_fail: bool, delay: Duration) -> Self {
        let state = Arc::new(ReceiverState {
            fail_next: AtomicUsize::new(fail_first),
            always_fail,
            delay,
            ..Default::default()
        });
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("receiver serves");
        });
        Self { url, state, task }
    }

    fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().expect("lock").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    state.arrivals.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(state.delay).await;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let timestamp = header("x-vigil-timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&body);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (OffsetDateTime::now_utc().unix_timestamp() - t).abs() < 300);
    let fail = state.always_fail
        || state
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    state.requests.lock().expect("lock").push(Received {
        idempotency_key: header("idempotency-key"),
        event_id: header("x-vigil-event-id"),
        content_type: header("content-type"),
        signature_valid: fresh && header("x-vigil-signature") == expected,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        answered: status.as_u16(),
    });
    status
}

async fn add_webhook(db: &tokio_postgres::Client, team: Uuid, url: &str) -> Uuid {
    let id = Uuid::new_v4();
    db.execute(
        "INSERT INTO webhooks (id, team_id, url, secret) VALUES ($1, $2, $3, $4)",
        &[&id, &team, &url, &SECRET],
    )
    .await
    .expect("webhook");
    id
}

/// Fast retries, so backoff tests take milliseconds.
fn alert_settings() -> AlertSettings {
    AlertSettings {
        delivery_backoff_initial_ms: 20,
        delivery_backoff_max_secs: 1,
        webhook_timeout_secs: 5,
        poll_interval_ms: 50,
        ..AlertSettings::default()
    }
}

/// The test's broker and topic root, under a client id of its own.
fn target(settings: &Settings) -> MqttTarget {
    MqttTarget {
        host: settings.mqtt.host.clone(),
        port: settings.mqtt.port,
        username: None,
        password: None,
        client_id: format!("vigil-alerts-test-{}", Uuid::new_v4().simple()),
        topic_root: settings.mqtt.topic_root.clone(),
        tls_ca_file: None,
    }
}

fn deliverer_to(settings: &Settings, alerts: AlertSettings, target: MqttTarget) -> Deliverer {
    let pool = pool::build(&settings.database).expect("pool");
    Deliverer::new(pool, alerts, target).expect("deliverer")
}

fn deliverer(settings: &Settings, alerts: AlertSettings) -> Deliverer {
    deliverer_to(settings, alerts, target(settings))
}

/// Sends a level 2 hypo through ingest over MQTT, which opens a red alert.
async fn raise_hypo(app: &TestApp, reg: &Registered) {
    let mut device = MqttDevice::connect(Some(app.results_topic(reg.device))).await;
    let reading = json!({
        "type": "blood_glucose", "measured_at": now_rfc3339(-60), "value": 2.5, "unit": "mmol/L"
    });
    device
        .publish(&app.readings_topic(reg.device), reading.to_string())
        .await;
    assert_eq!(device.next_result().await["accepted"], 1);
}

/// `n` events of one alert, written directly: the trigger queues their deliveries.
async fn insert_events(db: &tokio_postgres::Client, reg: &Registered, n: i64) {
    let alert = Uuid::new_v4();
    db.execute(
        "INSERT INTO alerts (id, patient_id, team_id, rule_id, rule_version, severity, state,
             title, detail, first_breach_at, latest_breach_at)
         VALUES ($1, $2, $3, $4, 'test@1', 'red', 'open', 'Low glucose', '{}', now(), now())",
        &[&alert, &reg.patient, &reg.team, &format!("test.{alert}")],
    )
    .await
    .expect("alert");
    db.execute(
        "INSERT INTO alert_events (alert_id, team_id, kind, alert)
         SELECT $1, $2, 'updated', jsonb_build_object('id', $1::uuid, 'breach_count', n)
         FROM generate_series(1, $3::bigint) AS n",
        &[&alert, &reg.team, &n],
    )
    .await
    .expect("events");
}

/// Ingest in-process, a registered glucose meter, and a webhook of its team pointing at a
/// receiver started with `Receiver::start(fail_first, always_fail, delay)`.
struct Hooked {
    _db: TestDb,
    app: TestApp,
    reg: Registered,
    client: tokio_postgres::Client,
    receiver: Receiver,
    webhook: Uuid,
}

async fn hooked(fail_first: usize, always_fail: bool, delay: Duration) -> Hooked {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "glucose_meter").await;
    let client = db.client().await;
    let receiver = Receiver::start(fail_first, always_fail, delay).await;
    let webhook = add_webhook(&client, reg.team, &receiver.url).await;
    Hooked {
        _db: db,
        app,
        reg,
        client,
        receiver,
        webhook,
    }
}

/// Runs rounds until no delivery is pending.
async fn deliver_all(deliverer: &Deliverer, db: &tokio_postgres::Client) {
    eventually("every delivery settled", || async {
        deliverer.deliver_due().await.expect("round");
        count(
            db,
            "SELECT count(*) FROM deliveries WHERE state = 'pending'",
        )
        .await
            == 0
    })
    .await;
}

async fn delivery(db: &tokio_postgres::Client, channel: &str) -> (String, i32, Option<String>) {
    let row = db
        .query_one(
            "SELECT state, attempts, last_error FROM deliveries WHERE channel = $1",
            &[&channel],
        )
        .await
        .expect("one delivery on the channel");
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test]
async fn an_out_of_range_reading_reaches_the_team_topic_and_a_signed_webhook() {
    let Hooked {
        _db,
        app,
        reg,
        client,
        receiver,
        webhook,
    } = hooked(0, false, Duration::ZERO).await;
    let topic = format!("{}/teams/{}/alerts", app.settings.mqtt.topic_root, reg.team);
    let mut subscriber = MqttDevice::connect(Some(topic)).await;

    // Only the wake-up can start a round soon enough: the poll interval is a minute.
    let deliverer = deliverer(
        &app.settings,
        AlertSettings {
            poll_interval_ms: 60_000,
            ..alert_settings()
        },
    );
    let wake = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    let worker = tokio::spawn(deliverer.run(Arc::clone(&wake), stop.clone()));
    // Let the first (empty) round pass, so the wake-up below is what finds the event.
    tokio::time::sleep(Duration::from_millis(300)).await;

    raise_hypo(&app, &reg).await;
    let event_id: i64 = client
        .query_one("SELECT id FROM alert_events WHERE kind = 'opened'", &[])
        .await
        .expect("one event")
        .get(0);
    wake.notify_one();

    let published = subscriber.next_result().await;
    assert_eq!(published["event_id"], event_id);
    assert_eq!(published["event_kind"], "opened");
    assert_eq!(published["team_id"], reg.team.to_string());
    assert_eq!(published["patient_id"], reg.patient.to_string());
    assert_eq!(published["severity"], "red");
    assert!(published["event_at"].is_string());

    eventually("webhook received", || async {
        !receiver.requests().is_empty()
    })
    .await;
    eventually("both deliveries recorded", || async {
        count(
            &client,
            "SELECT count(*) FROM deliveries WHERE state = 'delivered' AND delivered_at IS NOT NULL",
        )
        .await
            == 2
    })
    .await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert!(request.signature_valid, "signature verifies: {request:?}");
    assert_eq!(
        request.idempotency_key,
        format!("vigil-event-{event_id}-webhook-{webhook}")
    );
    assert_eq!(request.event_id, event_id.to_string());
    assert_eq!(request.content_type, "application/json");
    // The same payload on both channels.
    assert_eq!(request.body, published);

    stop.cancel();
    tokio::time::timeout(WAIT, worker)
        .await
        .expect("worker stops")
        .expect("worker joins");
    app.stop().await;
}

#[tokio::test]
async fn a_failing_receiver_gets_the_delivery_on_the_third_attempt_with_the_same_key() {
    let Hooked {
        _db,
        app,
        reg,
        client,
        receiver,
        webhook: _,
    } = hooked(2, false, Duration::ZERO).await;
    raise_hypo(&app, &reg).await;

    let deliverer = deliverer(&app.settings, alert_settings());
    let first = deliverer.deliver_due().await.expect("round");
    assert_eq!(first.claimed(), 2, "the MQTT and the webhook delivery");
    assert_eq!(first.retried, 1);
    let (state, attempts, error) = delivery(&client, "webhook").await;
    assert_eq!((state.as_str(), attempts), ("pending", 1));
    assert!(error.expect("error kept").contains("500"));

    deliver_all(&deliverer, &client).await;
    let (state, attempts, _) = delivery(&client, "webhook").await;
    assert_eq!((state.as_str(), attempts), ("delivered", 3));
    let requests = receiver.requests();
    let answers: Vec<u16> = requests.iter().map(|r| r.answered).collect();
    assert_eq!(answers, vec![500, 500, 200]);
    assert!(requests.iter().all(|r| r.signature_valid));
    assert!(
        requests
            .iter()
            .all(|r| r.idempotency_key == requests[0].idempotency_key),
        "one key across retries: {requests:?}"
    );
    assert_eq!(delivery(&client, "mqtt").await.0, "delivered");
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_always_fails_is_dead_lettered_after_the_last_attempt() {
    let Hooked {
        _db,
        app,
        reg,
        client,
        receiver,
        webhook: _,
    } = hooked(0, true, Duration::ZERO).await;
    raise_hypo(&app, &reg).await;

    let deliverer = deliverer(
        &app.settings,
        AlertSettings {
            delivery_max_attempts: 3,
            ..alert_settings()
        },
    );
    let start = Instant::now();
    let mut dead = 0;
    while dead == 0 {
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for the dead letter"
        );
        dead += deliverer.deliver_due().await.expect("round").dead;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dead, 1);
    let (state, attempts, error) = delivery(&client, "webhook").await;
    assert_eq!((state.as_str(), attempts), ("dead", 3));
    assert!(error.expect("error kept").contains("500"));
    assert_eq!(receiver.requests().len(), 3);
    assert_eq!(delivery(&client, "mqtt").await.0, "delivered");
    // A dead letter is not claimed again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        deliverer.deliver_due().await.expect("round"),
        Round::default()
    );
    assert_eq!(receiver.requests().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn two_workers_claim_disjoint_deliveries() {
    const EVENTS: i64 = 60;
    let Hooked {
        _db,
        app,
        reg,
        client,
        receiver,
        webhook,
    } = hooked(0, false, Duration::from_millis(20)).await;
    insert_events(&client, &reg, EVENTS).await;

    let small_rounds = AlertSettings {
        delivery_batch: 10,
        ..alert_settings()
    };
    let a = deliverer(&app.settings, small_rounds.clone());
    let b = deliverer(&app.settings, small_rounds);
    let (mut by_a, mut by_b) = (0, 0);
    for _ in 0..100 {
        let (ra, rb) = tokio::join!(a.deliver_due(), b.deliver_due());
        let (ra, rb) = (ra.expect("round a"), rb.expect("round b"));
        assert_eq!(ra.retried + ra.dead + rb.retried + rb.dead, 0);
        by_a += ra.delivered;
        by_b += rb.delivered;
        if ra.claimed() + rb.claimed() == 0 {
            break;
        }
    }
    let total = usize::try_from(2 * EVENTS).expect("small");
    assert_eq!(
        by_a + by_b,
        total,
        "each delivery delivered by exactly one worker"
    );
    assert!(
        by_a > 0 && by_b > 0,
        "both workers took part: {by_a} + {by_b}"
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM deliveries WHERE state = 'delivered' AND attempts = 1"
        )
        .await,
        2 * EVENTS
    );
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for r in receiver.requests() {
        assert!(r.signature_valid);
        *per_key.entry(r.idempotency_key).or_default() += 1;
    }
    assert_eq!(per_key.len(), total / 2);
    assert!(per_key.values().all(|&n| n == 1), "{per_key:?}");
    let event_ids: Vec<i64> = client
        .query("SELECT id FROM alert_events", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in event_ids {
        assert_eq!(
            per_key.get(&format!("vigil-event-{id}-webhook-{webhook}")),
            Some(&1)
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_publisher_reconnects_after_the_broker_drops_it() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "glucose_meter").await;
    let client = db.client().await;
    let topic = format!("{}/teams/{}/alerts", app.settings.mqtt.topic_root, reg.team);
    let mut subscriber = MqttDevice::connect(Some(topic)).await;
    let target = target(&app.settings);
    let client_id = target.client_id.clone();
    let deliverer = deliverer_to(&app.settings, alert_settings(), target);

    insert_events(&client, &reg, 1).await;
    deliver_all(&deliverer, &client).await;
    let first = subscriber.next_result().await["event_id"].clone();

    // Another client with the same id takes the session over: the broker drops ours.
    let mut options = MqttOptions::new(client_id, mqtt_host(), mqtt_port());
    options.set_keep_alive(Duration::from_secs(30));
    let (_intruder, mut eventloop) = AsyncClient::new(options, 10);
    tokio::time::timeout(WAIT, async {
        while !matches!(
            eventloop.poll().await,
            Ok(Event::Incoming(Packet::ConnAck(_)))
        ) {}
    })
    .await
    .expect("intruder connects");
    drop(eventloop);

    insert_events(&client, &reg, 1).await;
    deliver_all(&deliverer, &client).await;
    let second = subscriber.next_result().await["event_id"].clone();
    assert_ne!(first, second);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM deliveries WHERE state = 'delivered'"
        )
        .await,
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn a_webhook_disabled_after_queueing_is_dead_lettered_without_a_request() {
    let Hooked {
        _db,
        app,
        reg,
        client,
        receiver,
        webhook,
    } = hooked(0, false, Duration::ZERO).await;
    insert_events(&client, &reg, 1).await;
    client
        .execute(
            "UPDATE webhooks SET disabled_at = now() WHERE id = $1",
            &[&webhook],
        )
        .await
        .expect("disable");

    let deliverer = deliverer(&app.settings, alert_settings());
    let round = deliverer.deliver_due().await.expect("round");
    assert_eq!((round.delivered, round.dead), (1, 1));
    let (state, _, error) = delivery(&client, "webhook").await;
    assert_eq!(state, "dead");
    assert_eq!(error.as_deref(), Some("webhook disabled"));
    assert!(receiver.requests().is_empty());
    app.stop().await;
}

/// The worker process is killed while a webhook request is in flight: the delivery is not
/// recorded, so the restarted worker sends it again under the same idempotency key, and
/// the clinician's stream still shows the alert once.
#[tokio::test]
async fn a_worker_killed_mid_delivery_loses_nothing_and_duplicates_nothing_visible() {
    let Hooked {
        _db,
        app,
        reg,
        client,
        receiver,
        webhook: _,
    } = hooked(0, false, Duration::from_secs(3)).await;
    let fast = [
        ("VIGIL_ALERTS__POLL_INTERVAL_MS", "100".to_string()),
        (
            "VIGIL_ALERTS__DELIVERY_BACKOFF_INITIAL_MS",
            "50".to_string(),
        ),
    ];
    let worker = ChildService::alerts(&app.settings, &fast).await;
    raise_hypo(&app, &reg).await;
    eventually("the webhook request is in flight", || async {
        receiver.state.arrivals.load(Ordering::SeqCst) >= 1
    })
    .await;
    worker.kill().await;
    assert_eq!(
        delivery(&client, "webhook").await.0,
        "pending",
        "a killed round records nothing"
    );

    let restarted = ChildService::alerts(&app.settings, &fast).await;
    eventually(
        "the webhook delivery completes after the restart",
        || async {
            count(
                &client,
                "SELECT count(*) FROM deliveries WHERE state = 'delivered'",
            )
            .await
                == 2
        },
    )
    .await;
    let keys: std::collections::HashSet<String> = receiver
        .requests()
        .iter()
        .map(|r| r.idempotency_key.clone())
        .collect();
    assert_eq!(
        keys.len(),
        1,
        "every attempt carries the same idempotency key"
    );
    assert!(
        receiver.state.arrivals.load(Ordering::SeqCst) >= 2,
        "sent again after the crash"
    );
    assert_eq!(count(&client, "SELECT count(*) FROM alerts").await, 1);
    assert_eq!(count(&client, "SELECT count(*) FROM alert_events").await, 1);
    restarted.terminate().await;
    app.stop().await;
}
