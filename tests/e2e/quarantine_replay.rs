use serde_json::json;
use uuid::Uuid;
use vigil_ingest::{
    replay,
    store::{self, admin, quarantine::Filter},
};

use crate::harness::*;

#[tokio::test]
async fn readings_from_an_unregistered_device_are_stored_after_registration_and_replay() {
    let db = TestDb::create().await;
    let app = TestApp::spawn(settings(&db.url)).await;
    let reg = register(&db.url, "glucose_meter").await;
    let newcomer = Uuid::new_v4();
    let mut device = MqttDevice::connect(Some(app.results_topic(newcomer))).await;
    let batch = json!({ "readings": [
        { "type": "blood_glucose", "measured_at": now_rfc3339(-7200), "value": 3.1, "unit": "mmol/L" },
        { "type": "blood_glucose", "measured_at": now_rfc3339(-3600), "value": 55, "unit": "mg/dL" }
    ]});
    device
        .publish(&app.readings_topic(newcomer), batch.to_string())
        .await;
    let result = device.next_result().await;
    assert_eq!(result["rejected"], 2, "{result}");
    assert_eq!(result["results"][0]["reason"], "unknown_device");

    let mut client = connect(&db.url).await;
    let since = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    admin::add_device(
        &mut client,
        newcomer,
        reg.patient,
        "glucose_meter",
        None,
        since,
    )
    .await
    .expect("register the device under its own id");

    let pool = store::pool::build(&app.settings.database).expect("pool");
    let filter = Filter {
        reason: Some("unknown_device".into()),
        limit: 100,
        ..Default::default()
    };
    let report = replay::replay(&pool, &app.settings, &filter)
        .await
        .expect("replay");
    assert_eq!(report.len(), 2);
    assert!(
        report.iter().all(|r| r.outcome == "accepted=1"),
        "{report:?}"
    );
    let rows = client
        .query(
            "SELECT original_value, original_unit, patient_id FROM readings ORDER BY measured_at",
            &[],
        )
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].get::<_, f64>(0), 55.0);
    assert_eq!(rows[1].get::<_, &str>(1), "mg/dL");
    assert!(rows.iter().all(|r| r.get::<_, Uuid>(2) == reg.patient));
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM quarantine WHERE replayed_at IS NULL"
        )
        .await,
        0
    );
    let again = replay::replay(&pool, &app.settings, &filter)
        .await
        .expect("second replay");
    assert!(again.is_empty(), "replayed entries are not replayed twice");
    app.stop().await;
}
