use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn single_and_batch_messages_are_stored_in_canonical_units_with_originals_kept() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "health_app").await;
    let mut device = MqttDevice::connect(Some(app.results_topic(reg.device))).await;
    let topic = app.readings_topic(reg.device);

    let single = json!({
        "type": "blood_glucose", "measured_at": now_rfc3339(-60),
        "value": 90, "unit": "mg/dL", "specimen": "capillary", "meal": "fasting"
    });
    device.publish(&topic, single.to_string()).await;
    let result = device.next_result().await;
    assert_eq!(result["accepted"], 1, "{result}");

    let batch = json!({ "readings": [
        { "type": "blood_pressure", "measured_at": now_rfc3339(-3 * 3600),
          "systolic": 152, "diastolic": 96, "pulse": 71, "unit": "mmHg",
          "posture": "sitting", "arm": "left", "flags": ["irregular_pulse"] },
        { "type": "heart_rate", "measured_at": now_rfc3339(-120), "value": 64, "unit": "bpm" },
        { "type": "blood_ketones", "measured_at": now_rfc3339(-180), "value": 1.8, "unit": "mmol/L" },
        { "type": "body_weight", "measured_at": now_rfc3339(-240), "value": 200, "unit": "[lb_av]" },
        { "type": "blood_glucose", "measured_at": now_rfc3339(-300), "range": "low",
          "unit": "mg/dL", "specimen": "interstitial" }
    ]});
    device.publish(&topic, batch.to_string()).await;
    let result = device.next_result().await;
    assert_eq!(result["accepted"], 5, "{result}");

    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT value, unit, original_value, original_unit, specimen, meal, channel, patient_id
             FROM readings WHERE type = 'blood_glucose' AND range IS NULL",
            &[],
        )
        .await
        .expect("glucose row");
    let value: f64 = row.get(0);
    assert!((value - 90.0 / 18.0156).abs() < 1e-9, "{value}");
    assert_eq!(row.get::<_, &str>(1), "mmol/L");
    assert_eq!(row.get::<_, f64>(2), 90.0);
    assert_eq!(row.get::<_, &str>(3), "mg/dL");
    assert_eq!(row.get::<_, &str>(4), "capillary");
    assert_eq!(row.get::<_, &str>(5), "fasting");
    assert_eq!(row.get::<_, &str>(6), "mqtt");
    assert_eq!(row.get::<_, uuid::Uuid>(7), reg.patient);

    let bp = client
        .query_one(
            "SELECT systolic, diastolic, pulse, unit, original_unit, flags, posture, arm, late
             FROM readings WHERE type = 'blood_pressure'",
            &[],
        )
        .await
        .expect("bp row");
    assert_eq!(
        (
            bp.get::<_, f64>(0),
            bp.get::<_, f64>(1),
            bp.get::<_, f64>(2)
        ),
        (152.0, 96.0, 71.0)
    );
    assert_eq!(bp.get::<_, &str>(3), "mm[Hg]");
    assert_eq!(bp.get::<_, &str>(4), "mmHg");
    assert_eq!(bp.get::<_, Vec<String>>(5), vec!["irregular_pulse"]);
    assert_eq!(
        (bp.get::<_, &str>(6), bp.get::<_, &str>(7)),
        ("sitting", "left")
    );
    assert!(bp.get::<_, bool>(8), "three hours old is a backfill");

    let weight: f64 = client
        .query_one("SELECT value FROM readings WHERE type = 'body_weight'", &[])
        .await
        .expect("weight")
        .get(0);
    assert!((weight - 90.718_474).abs() < 1e-6);
    let lo = client
        .query_one(
            "SELECT value IS NULL, range FROM readings WHERE type = 'blood_glucose' AND range IS NOT NULL",
            &[],
        )
        .await
        .expect("LO reading kept");
    assert!(lo.get::<_, bool>(0));
    assert_eq!(lo.get::<_, &str>(1), "low");
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 6);
    app.stop().await;
}

#[tokio::test]
async fn a_device_reissued_to_another_patient_attributes_readings_by_measurement_time() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let first = register(&db.url, "bp_monitor").await;
    let mut client = connect(&db.url).await;
    let (second, _) =
        vigil_ingest::store::admin::add_patient(&mut client, &first.team.to_string(), None, None)
            .await
            .expect("second patient");
    let handover = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    vigil_ingest::store::admin::rebind_device(&mut client, first.device, second, handover)
        .await
        .expect("rebind");

    let mut device = MqttDevice::connect(Some(app.results_topic(first.device))).await;
    let reading = |at: String| json!({ "type": "blood_pressure", "measured_at": at, "systolic": 130, "diastolic": 80 });
    let batch = json!({ "readings": [reading(now_rfc3339(-3 * 3600)), reading(now_rfc3339(-60))] });
    device
        .publish(&app.readings_topic(first.device), batch.to_string())
        .await;
    assert_eq!(device.next_result().await["accepted"], 2);

    let rows = client
        .query("SELECT patient_id FROM readings ORDER BY measured_at", &[])
        .await
        .expect("rows");
    let patients: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(patients, vec![first.patient, second]);
    app.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_1_publishers_are_served_too() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "scale").await;
    let mut options = MqttOptions::new(
        format!("v311-{}", uuid::Uuid::new_v4().simple()),
        mqtt_host(),
        mqtt_port(),
    );
    options.set_keep_alive(std::time::Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("v3.1.1 connection failed: {e}"),
            }
        }
    });
    let reading = json!({ "type": "body_weight", "measured_at": now_rfc3339(-60),
                          "value": 82.4, "unit": "kg" });
    client
        .publish(
            app.readings_topic(reg.device),
            QoS::AtLeastOnce,
            false,
            reading.to_string(),
        )
        .await
        .expect("publish queued");
    tokio::time::timeout(WAIT, poller)
        .await
        .expect("broker acknowledged")
        .expect("poller");
    let client = db.client().await;
    wait_count(
        &client,
        "SELECT count(*) FROM readings WHERE type = 'body_weight'",
        1,
    )
    .await;
    app.stop().await;
}
