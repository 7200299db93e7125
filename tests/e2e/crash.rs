//! The service process dies (SIGKILL) after receiving messages but before committing them;
//! after a restart the broker redelivers and every reading is stored exactly once.

use serde_json::json;

use crate::{child::ChildService, harness::*};

fn glucose(minutes_ago: i64) -> String {
    json!({ "type": "blood_glucose", "measured_at": now_rfc3339(-60 * minutes_ago),
            "value": 5.0 + (minutes_ago % 40) as f64 / 10.0, "unit": "mmol/L",
            "specimen": "interstitial" })
    .to_string()
}

/// A service holding `n` received readings that it has not committed: batches wait a
/// minute in the writer, so a kill or a signal lands between receipt and commit.
async fn holding(n: i64) -> (TestDb, vigil_ingest::Settings, ChildService, String) {
    let db = TestDb::create().await;
    let s = settings(&db.url);
    let holding = [
        ("VIGIL_BATCH__LINGER_MS", "60000".to_string()),
        ("VIGIL_BATCH__MAX_READINGS", "1000000".to_string()),
    ];
    let service = ChildService::start(&s, &holding).await;
    let reg = register(&db.url, "cgm").await;
    let device = MqttDevice::connect(None).await;
    let topic = format!("{}/devices/{}/readings", s.mqtt.topic_root, reg.device);
    for i in 0..n {
        device.publish(&topic, glucose(i + 1)).await;
    }
    eventually("every message received by the service", || async {
        service.metric("vigil_mqtt_messages_received_total").await >= n as f64
    })
    .await;
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 0);
    assert_eq!(service.metric("vigil_mqtt_messages_acked_total").await, 0.0);
    (db, s, service, topic)
}

#[tokio::test]
async fn a_killed_service_loses_and_duplicates_nothing() {
    let n = 200;
    let (db, s, service, _) = holding(n).await;
    service.kill().await;

    let restarted = ChildService::start(&s, &[]).await;
    let client = db.client().await;
    wait_count(&client, "SELECT count(*) FROM readings", n).await;
    eventually("every redelivered message acknowledged", || async {
        restarted.metric("vigil_mqtt_messages_acked_total").await >= n as f64
    })
    .await;
    assert_eq!(
        count(&client, "SELECT count(DISTINCT key) FROM readings").await,
        n
    );
    assert_eq!(count(&client, "SELECT count(*) FROM quarantine").await, 0);
    restarted.terminate().await;
}

#[tokio::test]
async fn sigterm_commits_and_acknowledges_what_was_received() {
    let n = 50;
    let (db, s, service, topic) = holding(n).await;
    service.terminate().await;
    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, n);

    // Everything was acknowledged before exit: a restart receives nothing again.
    let restarted = ChildService::start(&s, &[]).await;
    let probe = MqttDevice::connect(None).await;
    probe.publish(&topic, glucose(n + 5)).await;
    wait_count(&client, "SELECT count(*) FROM readings", n + 1).await;
    eventually("probe acknowledged", || async {
        restarted.metric("vigil_mqtt_messages_acked_total").await >= 1.0
    })
    .await;
    assert_eq!(
        restarted.metric("vigil_mqtt_messages_received_total").await,
        1.0,
        "nothing redelivered after a graceful stop"
    );
    restarted.terminate().await;
}
